"""Run in mace-torch's environment by tests/test_mace_compat.py: train mace_torch_model.py's
ScaleShiftMACE from its initial weights for a few steps on given batches with mace-torch's own
training machinery, set up from ``mace_run_train`` arguments as mace/cli/run_train.py sets it up:
``get_loss_fn`` (loss), ``get_params_options`` + ``get_optimizer`` (parameter groups, Adam/AMSGrad),
``torch_ema.ExponentialMovingAverage`` (EMA) and ``mace.tools.train.take_step`` (forward, loss,
backward, ``clip_grad_norm_`` at ``--clip_grad``, optimiser step, EMA update).

    python mace_torch_steps.py SPEC.json OUT.npz

SPEC: channels, seed, train (extxyz), held_out (extxyz), batches (lists of indices into train, in
the order of the steps), mace_args (the ``mace_run_train`` argument list; only its training
settings are used: the model is built as in mace_torch_model.py).

OUT: the initial weights in mace_torch_model.py's layout (``state/`` and the path arrays), per step
``loss`` and ``grad_norm`` (before clipping), whole weight snapshots in the ``state/`` layout for
``grad0/`` (step 0's clipped gradients in place of the trained parameters), ``step1/`` (after the
first update), ``final/`` (after the last) and ``ema/`` (the EMA's weights at the end), and the
raw and EMA models' energies and forces on the held-out structures."""
import json
import sys
from typing import Dict, List

import ase.io
import numpy as np
import torch
from mace import data, tools
from mace.tools import torch_geometric
from mace.tools.scripts_utils import get_loss_fn, get_optimizer, get_params_options
from mace.tools.train import take_step
from torch_ema import ExponentialMovingAverage

from mace_torch_model import R_MAX, Z_TABLE, build_mace, model_arrays


def snapshot(model: torch.nn.Module, prefix: str, grads: bool = False) -> Dict[str, np.ndarray]:
    """The whole state dict under ``prefix``; with ``grads`` a parameter's gradient replaces it
    (fixed parameters and buffers stay, so the copy into mlip reads it like weights)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if grads:
        for name, p in model.named_parameters():
            if p.grad is not None:
                state[name] = p.grad.detach().clone()
    return {prefix + k: v.numpy() for k, v in state.items()}


def predict(model: torch.nn.Module, batch: torch_geometric.batch.Batch) -> List[np.ndarray]:
    out = model(batch.to_dict(), training=False, compute_force=True)
    return [out["energy"].detach().numpy(), out["forces"].detach().numpy()]


def main() -> None:
    spec, out_path = json.load(open(sys.argv[1])), sys.argv[2]
    # run_train's own argument handling: the parser, check_args, the key specification
    args, _ = tools.check_args(tools.build_default_arg_parser().parse_args(spec["mace_args"]))
    keyspec = data.update_keyspec_from_kwargs(data.KeySpecification(), vars(args))
    tools.set_default_dtype(args.default_dtype)
    model = build_mace(int(spec["channels"]), int(spec["seed"]))
    arrays = model_arrays(model)

    def graphs(path: str) -> list:
        return [data.AtomicData.from_config(data.config_from_atoms(a, key_specification=keyspec),
                                            z_table=tools.AtomicNumberTable(Z_TABLE), cutoff=R_MAX)
                for a in ase.io.read(path, ":")]

    train, held_out = graphs(spec["train"]), graphs(spec["held_out"])
    loss_fn = get_loss_fn(args, dipole_only=False, compute_dipole=False)
    optimizer = get_optimizer(args, get_params_options(args, model))
    ema = ExponentialMovingAverage(model.parameters(), decay=args.ema_decay)
    # configure_model's output_args for --model MACE (run_train sets compute_energy) and this loss
    output_args = {"energy": True, "forces": args.compute_forces, "virials": False,
                   "stress": False, "dipoles": False, "polarizabilities": False}
    # take_step discards clip_grad_norm_'s return value (the norm before clipping): record it
    norms: List[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*a, **k):
        norm = clip(*a, **k)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip
    losses = []
    model.train()  # as a fresh module is; no block of this model depends on the mode
    for step, idx in enumerate(spec["batches"]):
        batch = torch_geometric.batch.Batch.from_data_list([train[i] for i in idx])
        loss, _ = take_step(model, loss_fn, batch, optimizer, ema, output_args, args.clip_grad,
                            torch.device("cpu"))
        losses.append(float(loss))
        if step == 0:  # take_step leaves the clipped gradients in place
            arrays.update(snapshot(model, "grad0/", grads=True))
            arrays.update(snapshot(model, "step1/"))
    torch.nn.utils.clip_grad_norm_ = clip
    arrays.update(snapshot(model, "final/"))
    test = torch_geometric.batch.Batch.from_data_list(held_out)
    arrays["raw_energy"], arrays["raw_forces"] = predict(model, test)
    with ema.average_parameters():  # how run_train validates and saves: the EMA weights in the model
        arrays.update(snapshot(model, "ema/"))
        arrays["ema_energy"], arrays["ema_forces"] = predict(model, test)
    arrays["loss"], arrays["grad_norm"] = np.array(losses), np.array(norms)
    arrays["lr"] = np.array([g["lr"] for g in optimizer.param_groups])
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main()
