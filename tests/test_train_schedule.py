"""Learning-rate schedules (pure functions of the step plus plateau state), EMA and the loss."""
import math

import pytest
import torch

from mlip.train.ema import EMA
from mlip.train.loss import LossWeights, compute_loss
from mlip.train.schedule import LRSchedule


def sched(kind, **kw):
    cfg = {"type": kind, "warmup_epochs": 0.0, "factor": 0.5, "patience": 1, "threshold": 0.0, "min_lr": 0.001}
    cfg.update(kw)
    return cfg


def test_warmup_then_cosine_to_min_lr_then_stage_two():
    s = LRSchedule(sched("cosine", warmup_epochs=1), base_lr=0.1, steps_per_epoch=10, max_epochs=5,
                   stage_two_epoch=4, stage_two_lr=0.002)
    assert s.lr(0, 0) == pytest.approx(0.01) and s.lr(0, 4) == pytest.approx(0.05)
    assert s.lr(1, 10) == pytest.approx(0.1)  # warm-up done, cosine starts at the base rate
    assert s.lr(3, 39) == pytest.approx(0.001, abs=5e-4)  # annealed by the end of stage one
    mid = s.lr(2, 25)
    assert mid == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * 15 / 30)))
    assert s.lr(4, 40) == 0.002 and s.lr(4, 49) == 0.002


def test_plateau_reduces_after_patience_and_state_round_trips():
    s = LRSchedule(sched("plateau"), base_lr=0.1, steps_per_epoch=5, max_epochs=100)
    assert not s.end_epoch(0, 1.0)
    assert not s.end_epoch(1, 1.0)  # one bad epoch: within patience
    assert s.end_epoch(2, 1.0)      # two: reduce
    assert s.lr(3, 15) == pytest.approx(0.05)
    t = LRSchedule(sched("plateau"), base_lr=0.1, steps_per_epoch=5, max_epochs=100)
    t.load_state_dict(s.state_dict())
    assert t.lr(3, 15) == s.lr(3, 15) and t.bad_epochs == s.bad_epochs
    for _ in range(20):
        s.end_epoch(4, 2.0)
    assert s.lr(5, 0) == pytest.approx(0.001)  # never below min_lr


def test_ema_trails_the_weights():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model)
    d = min(0.9, 2.0 / 11.0)  # warm-up of the decay on the first update
    assert torch.allclose(ema.model.weight, d * before + (1 - d) * model.weight)
    assert not ema.model.weight.requires_grad


def test_loss_masks_missing_labels_and_huber():
    out = {"total_energy": torch.tensor([1.0, 5.0], dtype=torch.float64), "forces": torch.ones(3, 3),
           "stress": torch.zeros(2, 3, 3)}
    batch = {"ref_energy": torch.tensor([0.0, 0.0], dtype=torch.float64), "num_atoms": torch.tensor([1, 2]),
             "energy_weight": torch.tensor([1.0, 0.0]),  # the second structure has no energy label
             "ref_forces": torch.zeros(3, 3), "forces_weight": torch.tensor([1.0, 1.0, 0.0]),
             "ref_stress": torch.ones(2, 3, 3), "stress_weight": torch.tensor([0.0, 1.0])}
    loss, terms = compute_loss(out, batch, LossWeights(1.0, 2.0, 3.0))
    assert terms["energy"] == pytest.approx(1.0) and terms["forces"] == pytest.approx(1.0)
    assert terms["stress"] == pytest.approx(1.0) and float(loss) == pytest.approx(6.0)
    _, huber = compute_loss(out, batch, LossWeights(1.0, 1.0, 0.0), kind="huber", huber_delta=0.5)
    assert huber["forces"] == pytest.approx(0.5 * (1.0 - 0.25))  # linear branch: delta (|x| - delta/2)
    _, total = compute_loss(out, batch, LossWeights(1.0, 0.0, 0.0), energy_per_atom=False)
    assert total["energy"] == pytest.approx(1.0)
