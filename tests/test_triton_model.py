"""End-to-end: a NequIP model running its message steps through the fused Triton kernels (under
the Triton interpreter) matches the torch reference path in energy, forces, and parameter
gradients of a force loss (which go through the kernels' double backward), and trains the same.

``TRITON_INTERPRET=1`` is set by a module-scoped fixture only; see tests/test_triton_message.py.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from mlip.data import keys as K  # noqa: E402
from mlip.ops.message import MessagePassing  # noqa: E402
from triton_helpers import force_loss, pair_of_models, small_batch  # noqa: E402


pytestmark = pytest.mark.usefixtures("triton_interpreter")


def count_fused_modules(model):
    return sum(isinstance(m, MessagePassing) and m.backend == "triton" for m in model.modules())


CONFIGS = {
    "l1": dict(r_max=4.0, num_layers=2, channels=4, l_max=1, parity=True, num_bessel=4, radial_hidden=8,
               readout_hidden=4, avg_num_neighbors=4.0),
    "l2": dict(r_max=4.0, num_layers=2, channels=3, l_max=2, parity=True, num_bessel=4, radial_hidden=8,
               readout_hidden=4, avg_num_neighbors=4.0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_energy_forces_and_force_loss_gradients_match_reference(name, monkeypatch):
    from mlip.ops import triton_message as tm
    launches = []
    real = tm._launch
    monkeypatch.setattr(tm, "_launch", lambda free, *a: launches.append(free) or real(free, *a))
    ref, fused = pair_of_models(CONFIGS[name])
    assert count_fused_modules(fused) == CONFIGS[name]["num_layers"]
    batch = small_batch(CONFIGS[name]["r_max"])
    out_r, loss_r = force_loss(ref, batch)
    out_f, loss_f = force_loss(fused, batch)
    assert set(launches) == {"x", "y", "w", "z"}  # forward and the force backward ran fused
    receiver, sender = batch[K.EDGE_INDEX]
    assert bool((receiver == sender).any())     # periodic self-images are among the edges
    torch.testing.assert_close(out_f[K.TOTAL_ENERGY], out_r[K.TOTAL_ENERGY], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_f[K.FORCES], out_r[K.FORCES], rtol=1e-10, atol=1e-10)
    params_r = [p for p in ref.parameters() if p.requires_grad]
    params_f = [p for p in fused.parameters() if p.requires_grad]
    launches.clear()
    grads_r = torch.autograd.grad(loss_r, params_r, allow_unused=True)
    grads_f = torch.autograd.grad(loss_f, params_f, allow_unused=True)
    # the parameter gradients of a force loss run the kernels' backward of the backward
    assert {"x", "y", "w", "z"} <= set(launches)
    checked = 0
    for (pname, _), gr, gf in zip(ref.named_parameters(), grads_r, grads_f):
        if gr is None:
            assert gf is None, pname
            continue
        torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-11, msg=lambda m: f"{pname}: {m}")
        checked += 1
    assert checked > 5


def test_model_trains_through_fused_op():
    """A few optimiser steps on a force loss follow the same trajectory on both paths."""
    ref, fused = pair_of_models(CONFIGS["l1"])
    batch = small_batch(CONFIGS["l1"]["r_max"])
    opt_r = torch.optim.Adam(ref.parameters(), lr=1e-2)
    opt_f = torch.optim.Adam(fused.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        for model, opt in ((ref, opt_r), (fused, opt_f)):
            opt.zero_grad()
            _, loss = force_loss(model, batch)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    lr, lf = losses[0::2], losses[1::2]
    np.testing.assert_allclose(lf, lr, rtol=1e-9)
    assert lf[-1] < lf[0]
    for (n, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf, pr, rtol=1e-8, atol=1e-10, msg=lambda m: f"{n}: {m}")
