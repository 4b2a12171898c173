"""Restructuring never changes results: weights after a fixed short training are compared with a
reference recorded before the restructuring began (``tests/data/training_reference.pt``).

Each run trains a tiny NequIP- or MACE-style model in float64 on one thread for 14 optimiser
steps (two epochs, EMA, stress in the loss, stage two from the second epoch) and compares the
final raw and EMA weights and the Adam moments. On the machine and torch build that recorded
the reference they must be bit-identical; elsewhere (another CPU's vector units, another
torch) they must agree to 1e-10 relative, which is what float64 reordering can change.

Known exception (2026-12-04): the MACE-style forward pass is bit-reproducible within one
process but not across processes (forces differ by ~1e-16 between two fresh interpreters, with
the plain-torch message step too, one thread, MKL_CBWR=AUTO,STRICT), so the MACE run is
compared to 1e-10 everywhere until that is found. Since 2026-12-05 the NequIP-style run is too:
its fused CPU kernel path flips a last bit across processes on a loaded machine (see
ACROSS_PROCESS_NOISE).

Re-recorded 2026-12-05: least-squares E0s of in-memory files are computed as for HDF5 folders
(normal equations, mlip.data.statistics), a change meant to unify the two; the weights moved by
at most 3.7e-13 (NequIP) and 1.3e-12 (MACE) relative. Every other restructuring commit kept them.

The reference is re-recorded only when a change is meant to change the numbers:

    .venv/bin/python tests/test_training_identity.py --record
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Dict

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train_helpers import tiny_config, write_frames  # noqa: E402

# architectures whose results differ in the last bits between two processes (see above). NequIP
# too, since 2026-12-05: on a loaded machine (other jobs on both cores) its fused CPU kernel path
# gave forces 1 ulp (1.1e-16 eV/A) apart in 1 of 4-8 fresh processes, single-threaded as well
# (OMP_NUM_THREADS=1, MKL_DYNAMIC=FALSE and MKL_CBWR=COMPATIBLE did not remove it; the plain
# torch path, MLIP_CPU_KERNEL=0, stayed bit-stable); the code of c782781 does the same. Results
# within one process stay exact (tests/test_export_identity.py compares with the former code).
ACROSS_PROCESS_NOISE = ("mace", "nequip")
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "training_reference.pt")

MODELS = {
    "nequip": None,  # tiny_config's own model section
    "mace": {"architecture": "mace", "r_max": 3.5, "num_interactions": 2, "channels": 4, "l_max": 2, "max_L": 1,
             "correlation": 3, "num_bessel": 4, "radial_hidden": 8, "radial_depth": 1,
             "product_paths": "independent"},  # the reference's network (the default before defaults version 2)
}


def environment() -> str:
    """What bit-identity can be expected across: the CPU model and the torch build."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} | torch {torch.__version__}"


def train_and_collect(folder: str, architecture: str) -> Dict[str, torch.Tensor]:
    """Final raw weights, EMA weights and Adam moments of the fixed run, by name."""
    from mlip.train.config import validate
    from mlip.train.trainer import train

    data = write_frames(os.path.join(folder, "train.extxyz"), 16, seed=5)
    sections = dict(optim={"lr": 0.01, "max_epochs": 2}, data={"valid_fraction": 0.125},
                    loss={"energy_weight": 1.0, "forces_weight": 10.0, "stress_weight": 1.0},
                    stage_two={"enabled": True, "start_epoch": 1, "lr": 0.002, "energy_weight": 10.0})
    raw = tiny_config(folder, data, **sections)
    if MODELS[architecture] is not None:
        raw["model"] = dict(MODELS[architecture])
    cfg = validate(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(cfg, echo=False)
    finally:
        torch.set_num_threads(threads)
    obj = torch.load(result["checkpoint"], weights_only=True)
    out = {f"model.{k}": v for k, v in obj["model"]["state_dict"].items()}
    out.update({f"ema.{k}": v for k, v in obj["ema_state_dict"].items()})
    for i, state in obj["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            out[f"adam.{i}.{name}"] = state[name]
    out["global_step"] = torch.tensor(obj["global_step"])
    return out


@pytest.mark.parametrize("architecture", sorted(MODELS))
def test_weights_after_training_match_the_reference(architecture, tmp_path):
    if not os.path.exists(REFERENCE):
        pytest.fail(f"{REFERENCE} is missing; record it with `python {__file__} --record`")
    reference = torch.load(REFERENCE, weights_only=True)
    want = reference["runs"][architecture]
    got = train_and_collect(str(tmp_path), architecture)
    assert sorted(got) == sorted(want)
    exact = reference["environment"] == environment() and architecture not in ACROSS_PROCESS_NOISE
    for name in sorted(want):
        if exact:
            assert torch.equal(got[name], want[name]), f"{name} differs (same machine and torch: must be bit-identical)"
        else:
            torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


def record() -> None:
    import tempfile

    runs = {}
    for architecture in sorted(MODELS):
        with tempfile.TemporaryDirectory() as folder:
            runs[architecture] = train_and_collect(folder, architecture)
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    torch.save({"environment": environment(), "runs": runs}, REFERENCE)
    print(f"recorded {REFERENCE} ({environment()})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(f"usage: python {sys.argv[0]} --record")
    record()
