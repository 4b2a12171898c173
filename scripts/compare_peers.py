#!/usr/bin/env python
"""Train mlip and a peer program side by side with the same data, E0s, model and training
settings, and print their validation errors per epoch and their test errors (issue 21 item 1;
issue 20 item 3 as ``--equal-time``).

    .venv/bin/python scripts/compare_peers.py --peer mace --dataset 3bpa --epochs 10 --work runs/cmp
    .venv/bin/python scripts/compare_peers.py --smoke --work /tmp/cmp_smoke          # a couple of minutes
    .venv/bin/python scripts/compare_peers.py --equal-time 30 --work runs/cmp_eq     # 30 CPU-minutes each
    .venv/bin/python scripts/compare_peers.py --show-mapping                         # mlip key -> peer flag

What is the same for both programs (by construction, not by default values):

* data: one split of the training file, written once to ``WORK/data/{train,valid}.xyz`` (energy and
  forces under the keys ``REF_energy``/``REF_forces`` in ``atoms.info``/``atoms.arrays``, eV and
  eV/A; rMD17 is converted from kcal/mol); both programs read these files and the same test files
  (``WORK/data/test_*.xyz``), and neither splits anything itself;
* E0s: one {element: eV} mapping given explicitly to both (3BPA: ``iso_atoms.xyz``; rMD17: the
  minimum-norm least-squares fit on the training split, the same computation both programs'
  defaults would do), in ``WORK/data/split.json``;
* model, loss, optimiser, learning-rate schedule, EMA, stage two, gradient clipping, dtype, batch
  size, seed value, validation every epoch: see ``--show-mapping`` (the table is ``MAPPING``);
* test scoring: each final model predicts energies and forces of the test files (mlip through
  its evaluation loop, the peer through its ASE calculator in the peer's own Python), written to
  ``.npz``; one numpy function here (:func:`errors`) turns predictions and the references read
  from the same files into errors for both;
* the model scored is each program's EMA weights after the last epoch (mlip ``last_model.pt``;
  mace-torch's checkpoint of the last epoch, kept by ``--save_all_checkpoints``), so that no
  program-specific best-model rule decides what is compared.

Each program runs as a child process under ``nice`` with ``OMP_NUM_THREADS=--threads`` (default
1), one after the other; its CPU time (user + sys of the child, ``getrusage``) and wall time are
recorded. Outputs in ``WORK/results``: ``epochs.csv``, ``final.csv``, ``valid_forces.png``,
``summary.json``; the runs in ``WORK/<program>_seed<S>``.

The peers' environments come from ``../shared/bench/setup_peers.sh`` (``~/.cache/mlip-peers``
or ``$MLIP_PEERS``).

``--peer nequip`` (NequIP 0.19, ``nequip-train`` with a generated Hydra config
``nequip_config.yaml`` in its run folder) compares mlip's ``architecture: nequip`` with
``NequIPGNNModel`` (:class:`NequIPSettings`, ``--show-mapping --peer nequip``). What differs from
the mace path:

* energy scale and ``avg_num_neighbors`` are computed once here from the training split (the RMS
  of the force components; directed edges per atom within ``r_max`` by mlip's neighbour list)
  and given explicitly to both programs;
* NequIP normalises its loss coefficients to sum to 1, so its loss and gradients are mlip's
  divided by ``S = energy_weight + forces_weight``: its gradient-clip threshold, Adam ``eps`` and
  L2 weight decay are divided by ``S`` as well, which makes its Adam/AMSGrad steps and clipping
  those of mlip's loss (the plateau schedule's relative threshold does not see the factor);
* no stage two: NequIP has no switch of the learning rate to a constant at an epoch (its
  ``LossCoefficientScheduler`` changes only the normalised loss coefficients), so stage two is off
  for both programs and ``--stage-two true`` is refused;
* the model scored is the EMA weights of the last epoch (``checkpoints/last_epoch.ckpt``, loaded with the
  EMA weights by NequIP's own checkpoint loader); per-epoch errors from Lightning's CSV logger.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
PEERS_ROOT = os.environ.get("MLIP_PEERS", os.path.expanduser("~/.cache/mlip-peers"))
ENERGY_KEY, FORCES_KEY = "REF_energy", "REF_forces"  # the label names written into the split files
KCAL_PER_MOL_IN_EV = 0.0433641043  # as mlip.data.frames (rMD17 files are kcal/mol)

DATASETS = {
    "3bpa": {"train": ("3bpa", "train_300K.xyz"), "tests": {"test_300K": ("3bpa", "test_300K.xyz"),
                                                          "test_600K": ("3bpa", "test_600K.xyz")},
             "isolated": ("3bpa", "iso_atoms.xyz")},
    "aspirin": {"train": ("rmd17", "rmd17_aspirin_train_01.npz"),
                "tests": {"test_01": ("rmd17", "rmd17_aspirin_test_01.npz")}, "isolated": None},
}


# --------------------------------------------------------------------------------------------
# settings and their translation
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Settings:
    """Everything the two programs must agree on (model and training), in one place."""

    # model: MACE, hidden irreps num_channels x (0e + 1o ... up to max_L)
    num_channels: int = 64
    max_L: int = 1
    max_ell: int = 3
    correlation: int = 3
    num_interactions: int = 2
    r_max: float = 5.0
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    radial_MLP: Tuple[int, ...] = (64, 64, 64)
    readout_hidden: int = 16            # mace-torch --MLP_irreps 16x0e
    mace_compat: bool = False           # mlip only: model.mace_compat (mace-torch's blocks and parameter count)
    mlip_model: str = ""                # mlip only: more model keys, "key=value,key=value" (YAML values)
    # training
    dtype: str = "float64"
    batch_size: int = 5
    valid_batch_size: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    clip_grad: float = 10.0
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    plateau_factor: float = 0.8
    plateau_patience: int = 50
    ema_decay: float = 0.99
    stage_two: bool = True
    stage_two_lr: float = 1e-3
    stage_two_energy_weight: float = 1000.0
    stage_two_forces_weight: float = 100.0


SMOKE_MODEL = dict(num_channels=8, max_ell=2, correlation=2, radial_MLP=(16, 16, 16), readout_hidden=8)

# (setting, mlip config key, mace-torch flag, note): the translation table; --show-mapping prints it
MAPPING: List[Tuple[str, str, str, str]] = [
    ("split", "data.train_file, data.valid_file", "--train_file, --valid_file", "the same two files; no internal split"),
    ("labels", "data.keys.energy/forces = REF_energy/REF_forces", "--energy_key/--forces_key REF_energy/REF_forces", "written into the split files"),
    ("E0s", "data.E0s: {symbol: eV}", "--E0s \"{Z: eV}\"", "one mapping, from split.json"),
    ("num_channels", "model.num_channels (= channels)", "--num_channels", ""),
    ("max_L", "model.max_L", "--max_L", "hidden irreps 0e+1o for max_L 1"),
    ("max_ell", "model.max_ell (= l_max)", "--max_ell", ""),
    ("correlation", "model.correlation", "--correlation", ""),
    ("num_interactions", "model.num_interactions", "--num_interactions", ""),
    ("r_max", "model.r_max", "--r_max", "Angstrom"),
    ("num_radial_basis", "model.num_radial_basis (= num_bessel)", "--num_radial_basis", "Bessel functions"),
    ("num_cutoff_basis", "model.num_cutoff_basis (= cutoff_p)", "--num_cutoff_basis", "polynomial envelope p"),
    ("radial_MLP", "model.radial_MLP (= radial_hidden, radial_depth)", "--radial_MLP", ""),
    ("readout_hidden", "model.readout_hidden", "--MLP_irreps Nx0e", "last-layer readout MLP"),
    ("mlip_model", "model.<key>: <value> for each key=value", "(none: mlip only)", "for ablations, e.g. product_paths=mace; runs and results are named after the keys"),
    ("mace_compat", "model.mace_compat (off by default)", "(mace-torch's own blocks)", "on: mlip reproduces mace-torch's blocks and parameter count; runs and results are named mlip_compat"),
    ("(fixed)", "architecture: mace (residual from layer 2)", "--model MACE --interaction RealAgnosticResidualInteractionBlock", "mace-torch makes the first layer non-residual itself"),
    ("(fixed)", "energy scale = force RMS (statistics)", "--scaling rms_forces_scaling", "mlip's scale is always the force RMS"),
    ("dtype", "dtype", "--default_dtype", ""),
    ("batch_size", "data.batch_size", "--batch_size", "mace-torch drops a last partial batch"),
    ("valid_batch_size", "data.valid_batch_size", "--valid_batch_size", "no effect on results"),
    ("lr", "optim.lr", "--lr", ""),
    ("(fixed)", "optim.optimizer: adam, optim.amsgrad: true", "--optimizer adam --amsgrad", "betas 0.9, 0.999 both"),
    ("weight_decay", "optim.weight_decay", "--weight_decay", "0 by default: mace-torch decays only some parameter groups"),
    ("clip_grad", "optim.clip_grad_norm", "--clip_grad", ""),
    ("epochs", "optim.max_epochs", "--max_num_epochs", ""),
    ("energy_weight", "loss.energy_weight (energy_per_atom: true, type: mse)", "--loss weighted --energy_weight", "mean over structures of ((E-E_ref)/N)^2"),
    ("forces_weight", "loss.forces_weight", "--forces_weight", "mean over force components of (F-F_ref)^2"),
    ("plateau_factor", "schedule: {type: plateau, factor}", "--scheduler ReduceLROnPlateau --lr_factor", "on the validation loss"),
    ("plateau_patience", "schedule.patience (threshold 1e-4, min_lr 0)", "--scheduler_patience", "torch's defaults threshold 1e-4 rel, min_lr 0"),
    ("ema_decay", "ema: {enabled: true, decay}", "--ema --ema_decay", "warm-up min(d, (1+n)/(10+n)) both"),
    ("stage_two", "stage_two.enabled", "--swa", ""),
    ("stage_two_start", "stage_two.start_epoch", "--start_swa", "number of stage-one epochs; default max(1, E//4*3)"),
    ("stage_two_lr", "stage_two.lr", "--swa_lr", "constant from the first stage-two epoch"),
    ("stage_two_energy_weight", "stage_two.energy_weight", "--swa_energy_weight", ""),
    ("stage_two_forces_weight", "stage_two.forces_weight", "--swa_forces_weight", ""),
    ("seed", "seed", "--seed", "same number; the random streams differ"),
    ("(fixed)", "train.valid_every: 1, no early stopping", "--eval_interval 1 --patience > epochs", ""),
    ("(fixed)", "last_model.pt (EMA, last epoch)", "--save_all_checkpoints: last epoch's checkpoint", "the model scored on the test sets"),
]


@dataclasses.dataclass
class NequIPSettings(Settings):
    """``--peer nequip``: the shared training settings of :class:`Settings` (``r_max``,
    ``readout_hidden`` and the training block) and NequIP's model hyperparameters. The defaults
    are ``NequIPGNNModel``'s own (0.19), except the readout, which mlip's ``architecture: nequip``
    has as one hidden layer of ``readout_hidden`` (NequIP's default is linear), and stage two,
    which NequIP cannot do."""

    num_layers: int = 4                 # NequIPGNNModel default 4
    num_features: int = 32              # default 32 (every irrep)
    l_max: int = 1                      # default 1
    parity: bool = True                 # default True
    num_bessels: int = 8                # default 8
    polynomial_cutoff_p: int = 6        # default 6
    radial_mlp_width: int = 128         # default 128
    radial_mlp_depth: int = 1           # default 1
    self_connection: str = "embedding"  # mlip only: NequIP's bilinear (features x type embedding) self-connection
    stage_two: bool = False             # no NequIP counterpart (refused when asked for)


SMOKE_NEQUIP = dict(num_layers=2, num_features=8, radial_mlp_width=16, readout_hidden=8)
NEQUIP_ONLY = tuple(f.name for f in dataclasses.fields(NequIPSettings)
                    if f.name not in {g.name for g in dataclasses.fields(Settings)})
MACE_MODEL_ONLY = ("num_channels", "max_L", "max_ell", "correlation", "num_interactions", "num_radial_basis",
                   "num_cutoff_basis", "radial_MLP", "mace_compat")
STAGE_TWO_KEYS = ("stage_two_lr", "stage_two_energy_weight", "stage_two_forces_weight")

# (setting, mlip config key, NequIP 0.19 config key, note): --show-mapping --peer nequip
NEQUIP_MAPPING: List[Tuple[str, str, str, str]] = [
    ("mlip_model", "model.<key>: <value> for each key=value", "(none: mlip only)", "for ablations; runs and results are named after the keys"),
    ("split", "data.train_file, data.valid_file", "data: ASEDataModule train_file_path, val_file_path", "the same two files; no internal split"),
    ("labels", "data.keys.energy/forces = REF_energy/REF_forces", "data.key_mapping {REF_energy: total_energy, REF_forces: forces}", "written into the split files"),
    ("E0s", "data.E0s: {symbol: eV} (-> atomic_energy_shifts)", "model.per_type_energy_shifts: {symbol: eV}", "one mapping, from split.json; fixed (not trained) in both"),
    ("(data)", "model.atomic_energy_scales: force RMS (one float)", "model.per_type_energy_scales: force RMS (one float)", "RMS of the training force components, computed here once; fixed in both"),
    ("(data)", "model.avg_num_neighbors", "model.avg_num_neighbors (one float)", "directed edges per atom within r_max in the training split (mlip's neighbour list), computed here once; both divide messages by its square root"),
    ("(fixed)", "type names: species of the training split", "model.type_names, ChemicalSpeciesToAtomTypeMapper", "sorted by Z"),
    ("num_layers", "model.num_layers", "model.num_layers", "NequIP default 4"),
    ("num_features", "model.channels (= num_features)", "model.num_features", "NequIP default 32"),
    ("l_max", "model.l_max", "model.l_max", "features and edge harmonics; NequIP default 1"),
    ("parity", "model.parity", "model.parity", "NequIP default true (0e+0o+1e+1o for l_max 1)"),
    ("r_max", "model.r_max", "model.r_max, NeighborListTransform.r_max", "Angstrom"),
    ("num_bessels", "model.num_bessel (= num_bessels)", "model.num_bessels", "NequIP default 8 (fixed frequencies)"),
    ("polynomial_cutoff_p", "model.cutoff_p (= polynomial_cutoff_p)", "model.polynomial_cutoff_p", "NequIP default 6"),
    ("radial_mlp_width", "model.radial_hidden (= radial_mlp_width)", "model.radial_mlp_width", "NequIP default 128"),
    ("radial_mlp_depth", "model.radial_depth (= radial_mlp_depth)", "model.radial_mlp_depth", "hidden layers; NequIP default 1"),
    ("readout_hidden", "model.readout_hidden", "model.readout_mlp_hidden_layers_depth: 1, _width", "one SiLU hidden layer, no bias, both; NequIP's default is a linear readout (depth 0), which mlip's nequip has not"),
    ("self_connection", "model.self_connection", "(fixed: bilinear features x type embedding, layers 2+)", "'embedding' is NequIP's form; mlip keeps a per-species linear in layer 1, where NequIP has none"),
    ("(fixed)", "architecture: nequip", "model: nequip.model.NequIPGNNModel (compile_mode eager)", ""),
    ("dtype", "dtype", "model.model_dtype (global dtype float64)", ""),
    ("batch_size", "data.batch_size", "train_dataloader.batch_size (shuffle: true)", "both keep a last partial batch"),
    ("valid_batch_size", "data.valid_batch_size", "val_dataloader.batch_size", "no effect on results"),
    ("lr", "optim.lr", "optimizer: torch.optim.Adam lr", ""),
    ("(fixed)", "optim.optimizer: adam, optim.amsgrad: true", "optimizer.amsgrad: true, betas [0.9, 0.999]", ""),
    ("(loss norm)", "loss = wE * L_E + wF * L_F", "weighted_sum = (wE * L_E + wF * L_F) / S, S = wE + wF", "NequIP normalises the coefficients; the three rows below undo the factor 1/S"),
    ("clip_grad", "optim.clip_grad_norm", "trainer.gradient_clip_val = clip_grad / S (norm)", "the same clipped gradient direction and relative size"),
    ("(fixed)", "Adam eps 1e-8", "optimizer.eps = 1e-8 / S", "Adam(g/S, eps/S) steps exactly as Adam(g, eps)"),
    ("weight_decay", "optim.weight_decay (every parameter, L2 in Adam)", "optimizer.weight_decay = weight_decay / S", "L2 added to the 1/S gradient"),
    ("epochs", "optim.max_epochs", "trainer.max_epochs", ""),
    ("energy_weight", "loss.energy_weight (energy_per_atom: true, type: mse)", "loss: EnergyForceLoss per_atom_energy: true, coeffs.total_energy", "mean over structures of ((E-E_ref)/N)^2"),
    ("forces_weight", "loss.forces_weight", "loss coeffs.forces", "mean over force components of (F-F_ref)^2"),
    ("plateau_factor", "schedule: {type: plateau, factor}", "lr_scheduler: ReduceLROnPlateau factor", "on the validation loss (NequIP: val0_epoch/weighted_sum of the same two MSEs and weights, / S)"),
    ("plateau_patience", "schedule.patience (threshold 1e-4, min_lr 0)", "ReduceLROnPlateau patience, threshold 1e-4 rel, min_lr 0", "a relative threshold: the factor 1/S changes no decision"),
    ("ema_decay", "ema: {enabled: true, decay}", "training_module: EMALightningModule ema_decay", "warm-up min(d, (1+n)/(10+n)) both, n = 1 at the first step"),
    ("stage_two", "stage_two.enabled: false", "(none)", "off for both; --stage-two true is refused with --peer nequip"),
    ("seed", "seed", "model.seed, data.seed", "same number; the random streams differ"),
    ("(fixed)", "train.valid_every: 1, no early stopping", "trainer.check_val_every_n_epoch: 1, num_sanity_val_steps: 0", ""),
    ("(fixed)", "last_model.pt (EMA, last epoch)", "ModelCheckpoint checkpoints/last_epoch.ckpt (EMA weights on load)", "the model scored on the test sets"),
    ("(fixed)", "metrics.csv", "CSVLogger val0_epoch/per_atom_energy_rmse, forces_rmse", "EMA weights, eV -> meV"),
]


def stage_two_start(epochs: int) -> int:
    """Stage-one epochs before stage two: mace-torch's default, max(1, epochs // 4 * 3)."""
    return max(1, epochs // 4 * 3)


def hidden_irreps(channels: int, max_L: int) -> str:
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))


def mlip_config(s: Settings, files: Mapping[str, Any], seed: int, epochs: int, run_dir: str,
                stage_two: Optional[bool] = None) -> Dict[str, Any]:
    """The mlip config (a dict for YAML) of one run. ``files``: train, valid (paths) and e0s
    ({symbol: eV})."""
    s2 = s.stage_two if stage_two is None else stage_two
    return {
        "seed": int(seed), "dtype": s.dtype, "device": "cpu", "output_dir": os.path.abspath(run_dir),
        "data": {"root": ".", "train_file": os.path.abspath(files["train"]),
                 "valid_file": os.path.abspath(files["valid"]), "test_files": [],
                 "E0s": {str(k): float(v) for k, v in files["e0s"].items()},
                 "keys": {"energy": ENERGY_KEY, "forces": FORCES_KEY},
                 "batch_size": s.batch_size, "valid_batch_size": s.valid_batch_size},
        "model": {"architecture": "mace", "r_max": s.r_max, "num_interactions": s.num_interactions,
                  "num_channels": s.num_channels, "max_L": s.max_L, "max_ell": s.max_ell,
                  "correlation": s.correlation, "num_radial_basis": s.num_radial_basis,
                  "num_cutoff_basis": s.num_cutoff_basis, "radial_MLP": [int(w) for w in s.radial_MLP],
                  "readout_hidden": s.readout_hidden, **({"mace_compat": True} if s.mace_compat else {}),
                  **mlip_model_extra(s)},
        "loss": {"energy_weight": s.energy_weight, "forces_weight": s.forces_weight, "stress_weight": 0.0,
                 "energy_per_atom": True, "type": "mse"},
        "optim": {"optimizer": "adam", "lr": s.lr, "weight_decay": s.weight_decay, "amsgrad": True,
                  "betas": [0.9, 0.999], "clip_grad_norm": s.clip_grad, "max_epochs": int(epochs)},
        "schedule": {"type": "plateau", "factor": s.plateau_factor, "patience": s.plateau_patience,
                     "threshold": 1e-4, "min_lr": 0.0, "warmup_epochs": 0},
        "ema": {"enabled": True, "decay": s.ema_decay},
        "stage_two": {"enabled": bool(s2), "start_epoch": stage_two_start(epochs), "lr": s.stage_two_lr,
                      "energy_weight": s.stage_two_energy_weight, "forces_weight": s.stage_two_forces_weight},
        "train": {"valid_every": 1, "early_stopping_patience": None},
        "logging": {"progress_bar": False, "wandb": False},
    }


def mace_args(s: Settings, files: Mapping[str, Any], seed: int, epochs: int, run_dir: str,
              stage_two: Optional[bool] = None) -> List[str]:
    """The ``mace_run_train`` arguments of one run (``files['e0s']`` keyed by symbol)."""
    from ase.data import atomic_numbers

    s2 = s.stage_two if stage_two is None else stage_two
    run_dir = os.path.abspath(run_dir)
    e0s = "{" + ", ".join(f"{atomic_numbers[k]}: {float(v)!r}" for k, v in
                          sorted(files["e0s"].items(), key=lambda kv: atomic_numbers[kv[0]])) + "}"
    args = [
        "--name", "mace", "--seed", str(seed), "--work_dir", run_dir, "--model_dir", run_dir,
        "--log_dir", os.path.join(run_dir, "logs"), "--checkpoints_dir", os.path.join(run_dir, "checkpoints"),
        "--results_dir", os.path.join(run_dir, "results"),
        "--train_file", os.path.abspath(files["train"]), "--valid_file", os.path.abspath(files["valid"]),
        "--E0s", e0s, "--energy_key", ENERGY_KEY, "--forces_key", FORCES_KEY,
        "--model", "MACE", "--interaction", "RealAgnosticResidualInteractionBlock",
        "--num_channels", str(s.num_channels), "--max_L", str(s.max_L), "--max_ell", str(s.max_ell),
        "--correlation", str(s.correlation), "--num_interactions", str(s.num_interactions),
        "--r_max", repr(float(s.r_max)), "--num_radial_basis", str(s.num_radial_basis),
        "--num_cutoff_basis", str(s.num_cutoff_basis), "--radial_MLP", str([int(w) for w in s.radial_MLP]),
        "--MLP_irreps", f"{s.readout_hidden}x0e", "--gate", "silu", "--scaling", "rms_forces_scaling",
        "--default_dtype", s.dtype, "--device", "cpu",
        "--batch_size", str(s.batch_size), "--valid_batch_size", str(s.valid_batch_size),
        "--max_num_epochs", str(epochs), "--patience", str(epochs + 10), "--eval_interval", "1",
        "--loss", "weighted", "--energy_weight", repr(float(s.energy_weight)),
        "--forces_weight", repr(float(s.forces_weight)), "--error_table", "PerAtomRMSE",
        "--optimizer", "adam", "--amsgrad", "--lr", repr(float(s.lr)), "--weight_decay", repr(float(s.weight_decay)),
        "--clip_grad", repr(float(s.clip_grad)),
        "--scheduler", "ReduceLROnPlateau", "--lr_factor", repr(float(s.plateau_factor)),
        "--scheduler_patience", str(s.plateau_patience),
        "--ema", "--ema_decay", repr(float(s.ema_decay)),
        "--save_all_checkpoints", "--plot", "False", "--num_workers", "0", "--keep_isolated_atoms", "False",
    ]
    if s2:
        args += ["--swa", "--start_swa", str(stage_two_start(epochs)), "--swa_lr", repr(float(s.stage_two_lr)),
                 "--swa_energy_weight", repr(float(s.stage_two_energy_weight)),
                 "--swa_forces_weight", repr(float(s.stage_two_forces_weight))]
    return args


def loss_norm(s: Settings) -> float:
    """NequIP's loss is mlip's divided by this (its coefficients are normalised to sum to 1)."""
    return float(s.energy_weight) + float(s.forces_weight)


def training_statistics(train_path: str, r_max: float) -> Dict[str, Any]:
    """What both programs get explicitly for ``--peer nequip``: the species of the training split
    (sorted by Z), the RMS of its force components (eV/A; mlip's energy scale) and its directed
    edges per atom within ``r_max`` (mlip's neighbour list and definition of avg_num_neighbors)."""
    import ase.io
    import numpy as np
    from ase.data import atomic_numbers

    from mlip.data.neighbors import neighbor_list

    frames = ase.io.read(train_path, ":")
    forces = np.concatenate([a.arrays[FORCES_KEY] for a in frames]).astype(float)
    edges = atoms = 0
    for a in frames:
        edge_index, _ = neighbor_list(a.positions, np.asarray(a.cell[:]), a.pbc, float(r_max))
        edges += int(edge_index.shape[1])
        atoms += len(a)
    species = sorted({s for a in frames for s in a.get_chemical_symbols()}, key=lambda s: atomic_numbers[s])
    return {"type_names": species, "force_rms": float(np.sqrt(np.mean(forces ** 2))),
            "avg_num_neighbors": edges / atoms, "r_max": float(r_max)}


def _stats_of(files: Mapping[str, Any], s: Settings) -> Dict[str, Any]:
    """``files['stats']`` if given (tests), else computed from the training file."""
    stats = files.get("stats")
    return dict(stats) if stats is not None else training_statistics(files["train"], s.r_max)


def mlip_nequip_config(s: "NequIPSettings", files: Mapping[str, Any], seed: int, epochs: int, run_dir: str,
                       stage_two: Optional[bool] = None) -> Dict[str, Any]:
    """mlip's config for ``--peer nequip``: :func:`mlip_config`'s data and training sections with
    ``architecture: nequip`` and the statistics of :func:`training_statistics` given explicitly."""
    if stage_two:
        raise SystemExit(STAGE_TWO_REFUSAL)
    stats = _stats_of(files, s)
    cfg = mlip_config(s, files, seed, epochs, run_dir, stage_two=False)
    cfg["model"] = {"architecture": "nequip", "r_max": s.r_max, "num_layers": s.num_layers,
                    "channels": s.num_features, "l_max": s.l_max, "parity": bool(s.parity),
                    "num_bessel": s.num_bessels, "cutoff_p": s.polynomial_cutoff_p,
                    "radial_hidden": s.radial_mlp_width, "radial_depth": s.radial_mlp_depth,
                    "readout_hidden": s.readout_hidden, "self_connection": s.self_connection,
                    "avg_num_neighbors": float(stats["avg_num_neighbors"]),
                    "atomic_energy_scales": float(stats["force_rms"]), **mlip_model_extra(s)}
    return cfg


STAGE_TWO_REFUSAL = ("--peer nequip has no stage two: NequIP 0.19 cannot switch the learning rate to a constant at "
                     "an epoch (nequip.train.callbacks.LossCoefficientScheduler changes only the loss coefficients, "
                     "which it normalises to sum to 1), so stage two is off for both programs; leave out "
                     "--stage-two or give --stage-two false")


def nequip_config(s: "NequIPSettings", files: Mapping[str, Any], seed: int, epochs: int, run_dir: str,
                  stage_two: Optional[bool] = None) -> Dict[str, Any]:
    """The ``nequip-train`` config (a dict for YAML, no interpolations) of one run.
    ``files``: train, valid (paths), e0s ({symbol: eV}) and optionally stats
    (:func:`training_statistics`)."""
    if stage_two:
        raise SystemExit(STAGE_TWO_REFUSAL)
    stats = _stats_of(files, s)
    run_dir = os.path.abspath(run_dir)
    types = list(stats["type_names"])
    norm = loss_norm(s)
    missing = [t for t in types if t not in files["e0s"]]
    if missing:
        raise SystemExit(f"no E0 for {missing} in split.json")

    def mse(name, field, coeff):
        return {"name": name, "field": field, "coeff": coeff, "metric": {"_target_": "nequip.train.MeanSquaredError"}}

    def rmse(name, field):
        return {"name": name, "field": field, "metric": {"_target_": "nequip.train.RootMeanSquaredError"}}

    per_atom = {"_target_": "nequip.data.PerAtomModifier", "field": "total_energy"}
    loader = "torch.utils.data.DataLoader"
    return {
        "run": ["train"],
        "seed": int(seed),
        "hydra": {"run": {"dir": run_dir}},
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule", "seed": int(seed),
            "train_file_path": os.path.abspath(files["train"]), "val_file_path": os.path.abspath(files["valid"]),
            "key_mapping": {ENERGY_KEY: "total_energy", FORCES_KEY: "forces"},
            "transforms": [
                {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper", "model_type_names": types,
                 "chemical_species_to_atom_type_map": {t: t for t in types}},
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": float(s.r_max)},
            ],
            "train_dataloader": {"_target_": loader, "batch_size": int(s.batch_size), "shuffle": True},
            "val_dataloader": {"_target_": loader, "batch_size": int(s.valid_batch_size)},
        },
        "trainer": {
            "_target_": "lightning.Trainer", "accelerator": "cpu", "devices": 1, "max_epochs": int(epochs),
            "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "log_every_n_steps": 1,
            "gradient_clip_val": float(s.clip_grad) / norm, "gradient_clip_algorithm": "norm",
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": run_dir, "name": "csv",
                       "version": 0},
            "callbacks": [
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": os.path.join(run_dir, "checkpoints"),
                 "filename": "last_epoch", "save_top_k": 1, "every_n_epochs": 1, "enable_version_counter": False},
                {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor", "logging_interval": "epoch"},
                {"_target_": "compare_peers_timer.EpochTimer"},
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": float(s.ema_decay),
            "loss": {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
                     "coeffs": {"total_energy": float(s.energy_weight), "forces": float(s.forces_weight)}},
            "val_metrics": {"_target_": "nequip.train.MetricsManager", "metrics": [
                mse("per_atom_energy_mse", per_atom, float(s.energy_weight)),
                mse("forces_mse", "forces", float(s.forces_weight)),
                rmse("per_atom_energy_rmse", per_atom), rmse("forces_rmse", "forces"),
                rmse("total_energy_rmse", "total_energy")]},
            "optimizer": {"_target_": "torch.optim.Adam", "lr": float(s.lr), "betas": [0.9, 0.999],
                          "eps": 1e-8 / norm, "amsgrad": True, "weight_decay": float(s.weight_decay) / norm},
            "lr_scheduler": {
                "scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "mode": "min",
                              "factor": float(s.plateau_factor), "patience": int(s.plateau_patience),
                              "threshold": 1e-4, "threshold_mode": "rel", "min_lr": 0.0},
                "monitor": "val0_epoch/weighted_sum", "interval": "epoch", "frequency": 1},
            "model": {
                "_target_": "nequip.model.NequIPGNNModel", "seed": int(seed), "model_dtype": s.dtype,
                "type_names": types, "r_max": float(s.r_max), "num_layers": int(s.num_layers),
                "num_features": int(s.num_features), "l_max": int(s.l_max), "parity": bool(s.parity),
                "num_bessels": int(s.num_bessels), "polynomial_cutoff_p": int(s.polynomial_cutoff_p),
                "radial_mlp_width": int(s.radial_mlp_width), "radial_mlp_depth": int(s.radial_mlp_depth),
                "readout_mlp_hidden_layers_depth": 1, "readout_mlp_hidden_layers_width": int(s.readout_hidden),
                "avg_num_neighbors": float(stats["avg_num_neighbors"]),
                "per_type_energy_scales": float(stats["force_rms"]),
                "per_type_energy_shifts": {t: float(files["e0s"][t]) for t in types},
            },
        },
    }


# logs the training seconds of each epoch (the loop over the training batches: data, forward,
# backward, optimiser and EMA; not the validation) into Lightning's metrics as train_epoch_seconds
NEQUIP_TIMER = r'''
import time
from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.log("train_epoch_seconds", time.perf_counter() - self.t0)
'''


def mlip_model_extra(s: Settings) -> Dict[str, Any]:
    """``--mlip-model "key=value,key=value"`` as a dict (values read as YAML)."""
    import yaml

    extra: Dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in s.mlip_model.split(","))):
        if "=" not in item:
            raise SystemExit(f"--mlip-model: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        extra[key.strip()] = yaml.safe_load(value)
    return extra


def run_label(program: str, s: Settings) -> str:
    """The name of a program's runs and result rows: mlip's ``mace_compat`` runs and runs with
    ``--mlip-model`` keys are kept apart from its default runs, so all can sit next to one peer
    run in one work folder."""
    if program != "mlip":
        return program
    label = "mlip_compat" if s.mace_compat else "mlip"
    for key, value in mlip_model_extra(s).items():
        label += f"_{key}-{str(value).lower()}"
    return label


def results_dir_name(s: Settings) -> str:
    """``results``, or ``results_<what mlip runs differently>``."""
    label = run_label("mlip", s)
    return "results" if label == "mlip" else "results_" + label[len("mlip_"):]


def mapping_table(s: Settings) -> str:
    rows = []
    if isinstance(s, NequIPSettings):
        for name, mlip_key, key, note in NEQUIP_MAPPING:
            value = getattr(s, name, "") if hasattr(s, name) else ""
            rows.append([name, str(value), mlip_key, key, note])
        return format_table(["setting", "value", "mlip", "NequIP 0.19", "note"], rows)
    for name, mlip_key, flag, note in MAPPING:
        value = getattr(s, name, "") if hasattr(s, name) else ""
        if isinstance(value, tuple):
            value = list(value)
        rows.append([name, str(value), mlip_key, flag, note])
    return format_table(["setting", "value", "mlip", "mace-torch", "note"], rows)


# --------------------------------------------------------------------------------------------
# data: one split, one set of E0s, test files, references
# --------------------------------------------------------------------------------------------

def labelled_atoms(atoms_list: Sequence[Any], energy_key: Optional[str] = None,
                   forces_key: Optional[str] = None) -> List[Any]:
    """Copies of ``atoms_list`` with energy and forces in ``info[REF_energy]`` and
    ``arrays[REF_forces]`` (from the given keys, else from the attached calculator, which is
    where ASE >= 3.23 puts extxyz's ``energy``/``forces``) and no calculator."""
    import numpy as np

    out = []
    for i, a in enumerate(atoms_list):
        if energy_key and energy_key in a.info:
            e = float(a.info[energy_key])
        elif a.calc is not None:
            e = float(a.get_potential_energy())
        else:
            raise ValueError(f"structure {i} has no energy")
        if forces_key and forces_key in a.arrays:
            f = a.arrays[forces_key]
        elif a.calc is not None:
            f = a.get_forces()
        else:
            raise ValueError(f"structure {i} has no forces")
        b = a.copy()
        b.calc = None
        for k in list(b.info):
            if k != "config_type":
                del b.info[k]
        b.info[ENERGY_KEY] = e
        b.arrays[FORCES_KEY] = np.asarray(f, dtype=float).reshape(len(a), 3)
        out.append(b)
    return out


def read_structures(path: str) -> List[Any]:
    """Atoms with REF_energy/REF_forces from an extxyz file or an rMD17 .npz (kcal/mol -> eV)."""
    import numpy as np
    from ase import Atoms

    if path.endswith(".npz"):
        d = np.load(path)
        z = d["nuclear_charges"]
        out = []
        for pos, e, f in zip(d["coords"], d["energies"], d["forces"]):
            a = Atoms(numbers=z, positions=pos, pbc=False)
            a.info[ENERGY_KEY] = float(e) * KCAL_PER_MOL_IN_EV
            a.arrays[FORCES_KEY] = np.asarray(f, dtype=float) * KCAL_PER_MOL_IN_EV
            out.append(a)
        return out
    import ase.io

    return labelled_atoms(ase.io.read(path, ":"), ENERGY_KEY, FORCES_KEY)


def split_indices(n: int, n_train: int, n_valid: int, seed: int) -> Tuple[List[int], List[int]]:
    """A seeded random choice of ``n_train`` + ``n_valid`` distinct structures out of ``n``."""
    import numpy as np

    if n_train + n_valid > n:
        raise SystemExit(f"--n-train {n_train} + --n-valid {n_valid} > {n} structures in the training file")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[:n_train]), sorted(int(i) for i in perm[n_train:n_train + n_valid])


def e0s_least_squares(structures: Sequence[Any]) -> Dict[str, float]:
    """Minimum-norm least-squares E0s {symbol: eV} from total energies and compositions (a single
    molecule's compositions are collinear: then the energy is spread over the species in
    proportion to their counts)."""
    import numpy as np

    symbols = sorted({s for a in structures for s in a.get_chemical_symbols()})
    counts = np.array([[a.get_chemical_symbols().count(s) for s in symbols] for a in structures], dtype=float)
    energies = np.array([a.info[ENERGY_KEY] for a in structures])
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {s: float(v) for s, v in zip(symbols, e0)}


def e0s_isolated(path: str) -> Dict[str, float]:
    """{symbol: eV} of the single-atom structures of an extxyz file (energy in ``info`` or, as
    ASE >= 3.23 reads ``energy``, in the attached calculator)."""
    import ase.io

    out = {}
    for a in ase.io.read(path, ":"):
        if len(a) == 1:
            e = a.info.get("energy", a.info.get(ENERGY_KEY))
            out[a.get_chemical_symbols()[0]] = float(e if e is not None else a.get_potential_energy())
    return out


def prepare_data(dataset: str, work: str, n_train: int, n_valid: int, split_seed: int,
                 n_test: Optional[int] = None, data_root: str = SHARED_DATA) -> Dict[str, Any]:
    """Write WORK/data/{train,valid,test_*}.xyz and split.json once; later calls (other seeds,
    a rerun) read split.json and must ask for the same split."""
    import ase.io

    spec = DATASETS[dataset]
    ddir = os.path.join(work, "data")
    os.makedirs(ddir, exist_ok=True)
    meta_path = os.path.join(ddir, "split.json")
    request = {"dataset": dataset, "n_train": n_train, "n_valid": n_valid, "split_seed": split_seed, "n_test": n_test}
    if os.path.exists(meta_path):
        with open(meta_path) as fh:
            meta = json.load(fh)
        if {k: meta.get(k) for k in request} != request:
            raise SystemExit(f"{meta_path} holds a different split ({ {k: meta.get(k) for k in request} }); "
                             "use another --work folder")
        return meta
    src = os.path.join(data_root, *spec["train"])
    if not os.path.exists(src):
        raise SystemExit(f"data not found: {src}")
    structures = read_structures(src)
    train_idx, valid_idx = split_indices(len(structures), n_train, n_valid, split_seed)
    train = [structures[i] for i in train_idx]
    valid = [structures[i] for i in valid_idx]
    if spec["isolated"]:
        e0s = e0s_isolated(os.path.join(data_root, *spec["isolated"]))
        e0_method = f"isolated atoms ({spec['isolated'][1]})"
    else:
        e0s = e0s_least_squares(train)
        e0_method = "minimum-norm least squares on the training split"
    files = {"train": os.path.join(ddir, "train.xyz"), "valid": os.path.join(ddir, "valid.xyz")}
    ase.io.write(files["train"], train, format="extxyz")
    ase.io.write(files["valid"], valid, format="extxyz")
    tests = {}
    for name, parts in spec["tests"].items():
        test = read_structures(os.path.join(data_root, *parts))
        if n_test is not None:
            test = test[:n_test]
        tests[name] = os.path.join(ddir, f"{name}.xyz")
        ase.io.write(tests[name], test, format="extxyz")
    meta = dict(request, train=files["train"], valid=files["valid"], tests=tests, e0s=e0s, e0_method=e0_method,
                source=os.path.abspath(src), train_indices=train_idx, valid_indices=valid_idx)
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=1)
    return meta


def read_references(path: str) -> Dict[str, Any]:
    """energy [n] (eV), forces [atoms, 3] (eV/A), natoms [n] of a split/test file."""
    import ase.io
    import numpy as np

    frames = ase.io.read(path, ":")
    return {"energy": np.array([a.info[ENERGY_KEY] for a in frames], dtype=float),
            "forces": np.concatenate([a.arrays[FORCES_KEY] for a in frames]).astype(float),
            "natoms": np.array([len(a) for a in frames])}


# --------------------------------------------------------------------------------------------
# the one metric code
# --------------------------------------------------------------------------------------------

def errors(ref: Mapping[str, Any], pred: Mapping[str, Any]) -> Dict[str, float]:
    """Energy RMSE (meV/atom), energy MAE (meV, total), force RMSE and MAE (meV/A, over
    components) of predictions against references (same structures, same order)."""
    import numpy as np

    n = np.asarray(ref["natoms"], dtype=float)
    e_ref, e_pred = np.asarray(ref["energy"], float), np.asarray(pred["energy"], float)
    f_ref, f_pred = np.asarray(ref["forces"], float), np.asarray(pred["forces"], float)
    if e_ref.shape != e_pred.shape or f_ref.shape != f_pred.shape:
        raise ValueError(f"predictions {e_pred.shape}/{f_pred.shape} do not match references "
                         f"{e_ref.shape}/{f_ref.shape}")
    de, df = e_pred - e_ref, f_pred - f_ref
    return {"energy_rmse_meV_atom": 1e3 * float(np.sqrt(np.mean((de / n) ** 2))),
            "energy_mae_meV": 1e3 * float(np.mean(np.abs(de))),
            "forces_rmse_meV_A": 1e3 * float(np.sqrt(np.mean(df ** 2))),
            "forces_mae_meV_A": 1e3 * float(np.mean(np.abs(df)))}


# --------------------------------------------------------------------------------------------
# logs
# --------------------------------------------------------------------------------------------

def parse_mlip_metrics(path: str) -> List[Dict[str, float]]:
    """Per epoch (1-based): valid E RMSE (meV/atom), F RMSE (meV/A), training seconds, lr, stage."""
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append({"epoch": int(float(r["epoch"])), "valid_E": 1e3 * _num(r.get("valid_energy_rmse")),
                         "valid_F": 1e3 * _num(r.get("valid_forces_rmse")), "seconds": _num(r.get("time_s")),
                         "lr": _num(r.get("lr")), "stage": int(float(r["stage"])) if r.get("stage") else 1})
    return rows


def parse_mace_results(path: str) -> List[Dict[str, float]]:
    """mace-torch's ``results/<tag>_train.txt`` (one JSON object a line: ``mode: opt`` per step
    with its ``time``, ``mode: eval`` per validation; its epochs count from 0 and the validation
    before training has ``epoch: null``), as rows per epoch counted from 1 like mlip's.
    ``seconds``: the sum of the step times (forward, backward, optimiser, EMA; the data loader's
    collation is not inside mace-torch's step timer)."""
    step_time: Dict[int, float] = {}
    evals: Dict[int, Dict[str, Any]] = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            if d.get("epoch") is None:
                continue
            e = int(d["epoch"])
            if d.get("mode") == "opt":
                step_time[e] = step_time.get(e, 0.0) + float(d.get("time", 0.0))
            elif d.get("mode") == "eval":
                evals[e] = d  # one head; the last line of an epoch wins
    rows = []
    for e in sorted(evals):
        d = evals[e]
        rows.append({"epoch": e + 1, "valid_E": 1e3 * _num(d.get("rmse_e_per_atom")),
                     "valid_F": 1e3 * _num(d.get("rmse_f")), "seconds": step_time.get(e, math.nan),
                     "lr": math.nan, "stage": math.nan})
    return rows


def parse_nequip_metrics(path: str) -> List[Dict[str, float]]:
    """Lightning's ``CSVLogger`` ``metrics.csv`` of a ``nequip-train`` run (:func:`nequip_config`:
    validation ``val0_epoch/per_atom_energy_rmse`` and ``val0_epoch/forces_rmse`` of the EMA
    weights in eV/atom and eV/A, ``train_epoch_seconds``, ``lr-Adam``; Lightning's epochs count
    from 0, and one epoch's values may sit on several rows), as rows per epoch counted from 1."""
    with open(path, newline="") as fh:
        records = [{k: v for k, v in r.items() if v not in (None, "")} for r in csv.DictReader(fh)]
    # the learning rate is logged at the start of an epoch, on a row without the epoch: its step's
    epoch_of_step: Dict[int, int] = {}
    for r in records:
        if "epoch" in r and "step" in r:
            s, e = int(float(r["step"])), int(float(r["epoch"]))
            epoch_of_step[s] = min(e, epoch_of_step.get(s, e))
    epochs: Dict[int, Dict[str, str]] = {}
    for r in records:
        if "epoch" in r:
            e = int(float(r["epoch"]))
        elif "step" in r and int(float(r["step"])) in epoch_of_step:
            e = epoch_of_step[int(float(r["step"]))]
        else:
            continue
        epochs.setdefault(e, {}).update(r)
    rows = []
    for e in sorted(epochs):
        d = epochs[e]
        if "val0_epoch/forces_rmse" not in d:
            continue
        rows.append({"epoch": e + 1, "valid_E": 1e3 * _num(d.get("val0_epoch/per_atom_energy_rmse")),
                     "valid_F": 1e3 * _num(d.get("val0_epoch/forces_rmse")),
                     "seconds": _num(d.get("train_epoch_seconds")), "lr": _num(d.get("lr-Adam")), "stage": 1})
    return rows


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------------
# tables and plot
# --------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.1f}" if abs(v) >= 100 else (f"{v:.2f}" if abs(v) >= 0.995 else f"{v:.3g}")
    return str(v)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(header))]
    lines = ["  ".join((c.rjust(w) if num else c.ljust(w)) for c, w, num in zip(r, widths, numeric)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


EPOCH_HEADER = ["seed", "epoch", "mlip valid E", "mlip valid F", "{peer} valid E", "{peer} valid F",
                "mlip s", "{peer} s"]


def epoch_rows(seed: int, mlip_rows: Sequence[Mapping[str, float]],
               peer_rows: Sequence[Mapping[str, float]]) -> List[List[Any]]:
    """One row per epoch that either program reached (missing values NaN)."""
    a = {r["epoch"]: r for r in mlip_rows}
    b = {r["epoch"]: r for r in peer_rows}
    nan = math.nan
    out = []
    for e in sorted(set(a) | set(b)):
        ra, rb = a.get(e, {}), b.get(e, {})
        out.append([seed, e, ra.get("valid_E", nan), ra.get("valid_F", nan), rb.get("valid_E", nan),
                    rb.get("valid_F", nan), ra.get("seconds", nan), rb.get("seconds", nan)])
    return out


FINAL_HEADER = ["program", "seed", "epochs", "params", "s/epoch", "train CPU s", "wall s"]


def final_rows(results: Sequence[Mapping[str, Any]], test_names: Sequence[str]) -> Tuple[List[str], List[List[Any]]]:
    header = list(FINAL_HEADER)
    for t in test_names:
        header += [f"{t} E", f"{t} F"]
    rows = []
    for r in results:
        row = [r["program"], r["seed"], r["epochs"], r.get("params", math.nan), r.get("s_per_epoch", math.nan),
               r.get("cpu_s", math.nan), r.get("wall_s", math.nan)]
        for t in test_names:
            m = r.get("tests", {}).get(t, {})
            row += [m.get("energy_rmse_meV_atom", math.nan), m.get("forces_rmse_meV_A", math.nan)]
        rows.append(row)
    return header, rows


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def plot_valid_forces(path: str, peer: str, rows: Sequence[Sequence[Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = sorted({r[0] for r in rows})
    for k, seed in enumerate(seeds):
        mine = [r for r in rows if r[0] == seed]
        ep = [r[1] for r in mine]
        ax.plot(ep, [r[3] for r in mine], "-o", ms=3, color=f"C0", alpha=1 - 0.3 * k, label=f"mlip seed {seed}")
        ax.plot(ep, [r[5] for r in mine], "-s", ms=3, color=f"C1", alpha=1 - 0.3 * k, label=f"{peer} seed {seed}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation force RMSE (meV/A)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# running the programs
# --------------------------------------------------------------------------------------------

def peer_python(peer: str) -> str:
    py = os.path.join(PEERS_ROOT, peer, "bin", "python")
    if not os.path.exists(py):
        raise SystemExit(f"no {peer} environment at {py}: run `bash ../shared/bench/setup_peers.sh` first")
    return py


def child_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",  # e3nn 0.4.4 and mace-torch model files are pickles
               PYTHONUNBUFFERED="1")
    env.pop("MPLBACKEND", None)
    return env


def run_logged(cmd: List[str], log_path: str, env: Mapping[str, str], nice: int, cwd: str) -> Dict[str, float]:
    """Run ``cmd`` to completion (stdout+stderr to ``log_path``); its wall and CPU seconds."""
    full = (["nice", "-n", str(nice)] if nice else []) + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(_quote(c) for c in full) + "\n")
        fh.flush()
        rc = subprocess.call(full, stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc != 0:
        with open(log_path) as fh:
            tail = fh.read()[-3000:]
        raise SystemExit(f"command failed (exit {rc}); log {log_path}:\n{tail}")
    return {"wall_s": wall, "cpu_s": cpu}


def _quote(c: str) -> str:
    return c if c and all(ch.isalnum() or ch in "-_./=:,+" for ch in c) else "'" + c.replace("'", "'\\''") + "'"


def new_run_dir(run_dir: str) -> None:
    """Create ``run_dir``; an existing one is an error (mlip would resume it and mace-torch append
    to its results file, so neither would be a fresh run)."""
    if os.path.exists(run_dir):
        raise SystemExit(f"{run_dir} exists: remove it, use another --work, or leave this program out with "
                         "--programs to reuse its finished run")
    os.makedirs(run_dir)


def train_mlip(s: Settings, meta: Mapping[str, Any], seed: int, epochs: int, run_dir: str, threads: int,
               nice: int, stage_two: Optional[bool] = None) -> Dict[str, Any]:
    import yaml

    new_run_dir(run_dir)
    cfg = (mlip_nequip_config if isinstance(s, NequIPSettings) else mlip_config)(s, meta, seed, epochs, run_dir,
                                                                                 stage_two)
    cfg_path = os.path.join(run_dir, "compare_config.yaml")
    with open(cfg_path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    times = run_logged([sys.executable, "-m", "mlip", "train", cfg_path], os.path.join(run_dir, "compare_stdout.log"),
                       child_env(threads), nice, REPO)
    return dict(times, rows=parse_mlip_metrics(os.path.join(run_dir, "metrics.csv")),
                model=os.path.join(run_dir, "last_model.pt"))


def train_mace(s: Settings, meta: Mapping[str, Any], seed: int, epochs: int, run_dir: str, threads: int,
               nice: int, stage_two: Optional[bool] = None) -> Dict[str, Any]:
    import glob

    new_run_dir(run_dir)
    cmd = [peer_python("mace"), "-m", "mace.cli.run_train"] + mace_args(s, meta, seed, epochs, run_dir, stage_two)
    times = run_logged(cmd, os.path.join(run_dir, "compare_stdout.log"), child_env(threads), nice, run_dir)
    results = glob.glob(os.path.join(run_dir, "results", "*_train.txt"))
    if len(results) != 1:
        raise SystemExit(f"expected one results/*_train.txt in {run_dir}, found {results}")
    model = next((p for p in (os.path.join(run_dir, "mace_stagetwo.model"), os.path.join(run_dir, "mace.model"))
                  if os.path.exists(p)), None)
    if model is None:
        raise SystemExit(f"no mace.model / mace_stagetwo.model in {run_dir}")
    # the per-epoch checkpoints (--save_all_checkpoints) have served: the model file holds the last one
    for p in glob.glob(os.path.join(run_dir, "checkpoints", "*_epoch-*.pt")):
        os.remove(p)
    return dict(times, rows=parse_mace_results(results[0]), model=model)


def train_nequip(s: "NequIPSettings", meta: Mapping[str, Any], seed: int, epochs: int, run_dir: str, threads: int,
                 nice: int, stage_two: Optional[bool] = None) -> Dict[str, Any]:
    """``nequip-train`` with :func:`nequip_config` written to ``RUN/nequip_config.yaml``."""
    import glob

    import yaml

    cfg = nequip_config(s, meta, seed, epochs, run_dir, stage_two)  # refuses stage two before creating anything
    new_run_dir(run_dir)
    with open(os.path.join(run_dir, "nequip_config.yaml"), "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    with open(os.path.join(run_dir, "compare_peers_timer.py"), "w") as fh:
        fh.write(NEQUIP_TIMER)
    env = child_env(threads)
    env["PYTHONPATH"] = run_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [peer_python("nequip"), "-m", "nequip.scripts.train", "-cp", os.path.abspath(run_dir),
           "-cn", "nequip_config"]
    times = run_logged(cmd, os.path.join(run_dir, "compare_stdout.log"), env, nice, run_dir)
    metrics = glob.glob(os.path.join(run_dir, "csv", "*", "metrics.csv"))
    if len(metrics) != 1:
        raise SystemExit(f"expected one csv/*/metrics.csv in {run_dir}, found {metrics}")
    model = os.path.join(run_dir, "checkpoints", "last_epoch.ckpt")
    if not os.path.exists(model):
        raise SystemExit(f"no checkpoints/last_epoch.ckpt in {run_dir}")
    return dict(times, rows=parse_nequip_metrics(metrics[0]), model=model)


TRAINERS = {"mace": train_mace, "nequip": train_nequip}

# Run by the peer's own Python: ``PREDICT_HEAD`` + the peer's calculator lines + ``PREDICT_LOOP``
PREDICT_HEAD = r'''
import sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch, ase.io
model, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
'''

PREDICT_LOOP = r'''
arrays = {}
for spec in sys.argv[4:]:
    name, path = spec.split("=", 1)
    energies, forces = [], []
    for atoms in ase.io.read(path, ":"):
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    arrays[name + "/energy"] = np.array(energies)
    arrays[name + "/forces"] = np.concatenate(forces)
arrays["params"] = np.array(sum(p.numel() for p in net.parameters()))
np.savez(out, **arrays)
'''

MACE_PREDICT = PREDICT_HEAD + r'''
from mace.calculators import MACECalculator
calc = MACECalculator(model_paths=model, device="cpu", default_dtype="float64")
net = calc.models[0]
''' + PREDICT_LOOP

# NequIP's own loader of a training checkpoint (nequip.model.saved_models.load_utils.load_saved_model,
# through the ASE calculator): it builds the model of the checkpoint with the EMA weights, eager mode
NEQUIP_PREDICT = PREDICT_HEAD + r'''
from nequip.integrations.ase import NequIPCalculator
calc = NequIPCalculator._from_saved_model(model, device="cpu")
net = calc.model
''' + PREDICT_LOOP


def predict_peer(peer: str, model: str, tests: Mapping[str, str], out: str, threads: int) -> Dict[str, Any]:
    script = {"mace": MACE_PREDICT, "nequip": NEQUIP_PREDICT}[peer]
    cmd = [peer_python(peer), "-c", script, model, out, str(threads)] + [f"{k}={v}" for k, v in tests.items()]
    run_logged(cmd, out + ".log", child_env(threads), 0, os.path.dirname(out))
    return _load_predictions(out, tests)


def predict_mlip(model: str, tests: Mapping[str, str], out: str, threads: int, batch_size: int = 16) -> Dict[str, Any]:
    """Predictions of an mlip model file through mlip's evaluation loop (``mlip evaluate``'s),
    in file order, saved to ``out`` like the peer's."""
    import numpy as np
    import torch

    from mlip.checkpoint import build_from_record, load_record
    from mlip.data.frames import LabelKeys, read_frames
    from mlip.train.data import GraphSet
    from mlip.train.evaluation import evaluated_batches
    from mlip.data import keys as K

    torch.set_num_threads(threads)
    record = load_record(model, ema=True)
    net = build_from_record(record, device="cpu")
    net.eval()
    arrays = {}
    for name, path in tests.items():
        gs = GraphSet(name, read_frames(path, keys=LabelKeys(energy=ENERGY_KEY, forces=FORCES_KEY)))
        gs.build(list(record["type_names"]), float(net.r_max), 0.1)
        energy = np.zeros(len(gs.graphs))
        forces: List[Any] = [None] * len(gs.graphs)
        for idx, batch, res in evaluated_batches(net, gs.graphs, batch_size, torch.device("cpu"), False):
            e = res[K.TOTAL_ENERGY].to(torch.float64).cpu().numpy().reshape(-1)
            f = res[K.FORCES].to(torch.float64).cpu().numpy()
            owner = batch[K.BATCH].cpu().numpy()
            for b, i in enumerate(idx):
                energy[i] = e[b]
                forces[i] = f[owner == b]
        arrays[name + "/energy"] = energy
        arrays[name + "/forces"] = np.concatenate(forces)
    arrays["params"] = np.array(sum(p.numel() for p in net.parameters()))
    np.savez(out, **arrays)
    return _load_predictions(out, tests)


def _load_predictions(path: str, tests: Mapping[str, str]) -> Dict[str, Any]:
    import numpy as np

    d = np.load(path if path.endswith(".npz") else path + ".npz")
    return {"params": int(d["params"]),
            "tests": {t: {"energy": d[t + "/energy"], "forces": d[t + "/forces"]} for t in tests}}


# --------------------------------------------------------------------------------------------
# equal CPU time
# --------------------------------------------------------------------------------------------

def epochs_for_budget(budget_s: float, cpu_short: float, cpu_long: float, epochs_short: int, epochs_long: int
                      ) -> Tuple[int, float, float]:
    """(epochs that fit, CPU s per epoch, fixed CPU s) from two calibration runs: the per-epoch
    cost is the slope, so start-up, data loading and the final evaluation (the intercept) are
    not charged to the budget. At least one epoch."""
    per_epoch = (cpu_long - cpu_short) / float(epochs_long - epochs_short)
    if not per_epoch > 0:
        raise SystemExit(f"calibration failed: {epochs_long} epochs took {cpu_long:.1f} CPU s, "
                         f"{epochs_short} took {cpu_short:.1f}; widen --calibrate-epochs")
    fixed = cpu_short - epochs_short * per_epoch
    return max(1, int(budget_s // per_epoch)), per_epoch, fixed


# --------------------------------------------------------------------------------------------

def settings_from_args(args: argparse.Namespace) -> Settings:
    if getattr(args, "peer", "mace") == "nequip":
        return nequip_settings_from_args(args)
    given = [n for n in NEQUIP_ONLY if getattr(args, n, None) is not None]
    if given:
        raise SystemExit(f"{', '.join('--' + n.replace('_', '-') for n in given)}: NequIP model settings, "
                         "for --peer nequip")
    s = Settings()
    if args.smoke:
        s = dataclasses.replace(s, **SMOKE_MODEL)
    for f in dataclasses.fields(Settings):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(s, f.name, tuple(v) if f.name == "radial_MLP" else v)
    return s


def nequip_settings_from_args(args: argparse.Namespace) -> "NequIPSettings":
    """:class:`NequIPSettings` of ``--peer nequip``; MACE's model flags, ``--mace-compat`` and stage
    two are refused (they would not reach NequIP)."""
    given = [n for n in MACE_MODEL_ONLY + STAGE_TWO_KEYS if getattr(args, n, None) is not None]
    if given:
        raise SystemExit(f"{', '.join('--' + n.replace('_', '-') for n in given)}: not settings of --peer nequip "
                         "(see --show-mapping --peer nequip)")
    if getattr(args, "stage_two", None):
        raise SystemExit(STAGE_TWO_REFUSAL)
    s = NequIPSettings()
    if args.smoke:
        s = dataclasses.replace(s, **SMOKE_NEQUIP)
    for f in dataclasses.fields(NequIPSettings):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(s, f.name, v)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", choices=["mace", "nequip"], default="mace")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="3bpa")
    p.add_argument("--epochs", type=int, default=None, help="epochs per program (default 10; smoke 2)")
    p.add_argument("--equal-time", type=float, default=None, metavar="MIN",
                   help="instead of --epochs: calibrate each program's CPU time per epoch with two short runs "
                        "(--calibrate-epochs) and give each the epochs that fit MIN CPU-minutes")
    p.add_argument("--calibrate-epochs", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="epochs of the two calibration runs (default 1 3; smoke 1 6: its epochs are too short "
                        "for 1 3 to rise above the noise of the start-up)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--split-seed", type=int, default=1234, help="seed of the train/valid choice (one split for all)")
    p.add_argument("--n-train", type=int, default=None, help="default 450 (smoke 20)")
    p.add_argument("--n-valid", type=int, default=None, help="default 50 (smoke 10)")
    p.add_argument("--n-test", type=int, default=None, help="first N structures of each test file (default all; smoke 20)")
    p.add_argument("--work", default="runs/compare_peers", help="work folder (data, runs, results)")
    p.add_argument("--data-root", default=SHARED_DATA)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each program (default 1)")
    p.add_argument("--nice", type=int, default=10, help="nice level of the training processes (0: none)")
    p.add_argument("--smoke", action="store_true", help="tiny: 20/10 structures, 2 epochs, small model")
    p.add_argument("--programs", nargs="+", choices=["mlip", "peer"], default=["mlip", "peer"],
                   help="train only these (the other's run folder is reused if it exists)")
    p.add_argument("--show-mapping", action="store_true", help="print the settings table and exit")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: print and write the tables of the finished runs of --seeds in --work")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "radial_MLP":
            p.add_argument(flag, type=int, nargs="+", default=None)
        elif f.type in ("bool", bool):
            p.add_argument(flag, type=lambda x: x.lower() in ("1", "true", "yes"), default=None)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=None, help=f"(default {f.default})")
    for f in dataclasses.fields(NequIPSettings):
        if f.name not in NEQUIP_ONLY:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda x: x.lower() in ("1", "true", "yes"), default=None,
                           help=f"--peer nequip (default {f.default})")
        elif f.name == "self_connection":
            p.add_argument(flag, choices=["species", "embedding"], default=None,
                           help=f"--peer nequip, mlip's side (default {f.default})")
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=None, help=f"--peer nequip (default {f.default})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    s = settings_from_args(args)
    if args.show_mapping:
        print(mapping_table(s))
        return 0
    peer = args.peer
    n_train = args.n_train or (20 if args.smoke else 450)
    n_valid = args.n_valid or (10 if args.smoke else 50)
    n_test = args.n_test if args.n_test is not None else (20 if args.smoke else None)
    epochs = args.epochs or (2 if args.smoke else 10)
    if n_train % s.batch_size and peer == "mace":
        print(f"note: {n_train} training structures are not a multiple of batch size {s.batch_size}: mace-torch "
              "drops the last partial batch of each epoch, mlip does not")
    if s.weight_decay and peer == "mace":
        print("note: mace-torch applies weight decay only to its interaction linears and products, mlip to "
              "every parameter")
    work = os.path.abspath(args.work)
    meta = prepare_data(args.dataset, work, n_train, n_valid, args.split_seed, n_test, args.data_root)
    test_names = list(meta["tests"])
    print(f"data: {len(meta['train_indices'])} train / {len(meta['valid_indices'])} valid from {meta['source']} "
          f"(split seed {args.split_seed}); tests {', '.join(test_names)}; E0s {meta['e0_method']}")
    if peer == "nequip":
        meta = dict(meta, stats=training_statistics(meta["train"], s.r_max))
        print(f"statistics of the training split, given to both: force RMS {meta['stats']['force_rms']:.6g} eV/A "
              f"(energy scale), avg_num_neighbors {meta['stats']['avg_num_neighbors']:.6g} (r_max {s.r_max:g}), "
              f"types {' '.join(meta['stats']['type_names'])}")
    trainers = {"mlip": train_mlip, peer: TRAINERS[peer]}
    names = [] if args.report_only else [("mlip" if p == "mlip" else peer) for p in args.programs]
    budget = None
    epochs_of = {name: epochs for name in ("mlip", peer)}
    calibration = {}
    if args.equal_time is not None:
        budget = 60.0 * args.equal_time
        a, b = args.calibrate_epochs or ((1, 6) if args.smoke else (1, 3))
        for name in names:  # a program reused through --programs keeps the epochs it ran
            cpu = []
            for n in (a, b):
                r = trainers[name](s, meta, args.seeds[0], n, os.path.join(work, f"calibrate_{run_label(name, s)}_{n}"), args.threads,
                                   args.nice, stage_two=False)
                cpu.append(r["cpu_s"])
            epochs_of[name], per_epoch, fixed = epochs_for_budget(budget, cpu[0], cpu[1], a, b)
            calibration[name] = {"cpu_per_epoch_s": per_epoch, "fixed_cpu_s": fixed, "epochs": epochs_of[name]}
            print(f"calibration {name}: {per_epoch:.1f} CPU s per epoch (+{fixed:.1f} s fixed): "
                  f"{epochs_of[name]} epochs in {args.equal_time:g} CPU-min")
    all_epoch_rows: List[List[Any]] = []
    results: List[Dict[str, Any]] = []
    refs = {t: read_references(p) for t, p in meta["tests"].items()}
    for seed in args.seeds:
        per_program = {}
        for name in ("mlip", peer):
            run_dir = os.path.join(work, f"{run_label(name, s)}_seed{seed}")
            info_path = os.path.join(run_dir, "compare_run.json")
            if name in names:
                t0 = time.time()
                r = trainers[name](s, meta, seed, epochs_of[name], run_dir, args.threads, args.nice)
                print(f"{name} seed {seed}: {epochs_of[name]} epochs, {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU")
                out = os.path.join(run_dir, "test_predictions.npz")
                pred = (predict_mlip(r["model"], meta["tests"], out, args.threads) if name == "mlip"
                        else predict_peer(peer, r["model"], meta["tests"], out, args.threads))
                info = {k: r[k] for k in ("wall_s", "cpu_s", "rows", "model")}
                info.update(params=pred["params"], tests={t: errors(refs[t], pred["tests"][t]) for t in test_names},
                            epochs=epochs_of[name], started=t0)
                with open(info_path, "w") as fh:
                    json.dump(info, fh, indent=1)
            elif os.path.exists(info_path):
                with open(info_path) as fh:
                    info = json.load(fh)
            elif names:  # the other program's run of this seed is not there (yet): report this one alone
                print(f"note: no finished {run_label(name, s)} run of seed {seed} in {work} ({info_path} is "
                      "missing): its columns stay empty")
                per_program[name] = {"rows": []}
                continue
            else:
                raise SystemExit(f"no finished {run_label(name, s)} run of seed {seed} in {work} ({info_path} is missing): "
                                 "train it, or leave it out with --programs")
            per_program[name] = info
            secs = [row["seconds"] for row in info["rows"] if not math.isnan(row["seconds"])]
            results.append({"program": run_label(name, s), "seed": seed, "epochs": info["epochs"], "params": info["params"],
                            "s_per_epoch": sum(secs) / len(secs) if secs else math.nan, "cpu_s": info["cpu_s"],
                            "wall_s": info["wall_s"], "tests": info["tests"]})
        all_epoch_rows += epoch_rows(seed, per_program["mlip"]["rows"], per_program[peer]["rows"])
    res_dir = os.path.join(work, results_dir_name(s))
    os.makedirs(res_dir, exist_ok=True)
    header = [h.format(peer=peer) for h in EPOCH_HEADER]
    print("\nvalidation RMSE per epoch (E meV/atom, F meV/A; EMA weights; s = training seconds of the epoch)")
    print(format_table(header, all_epoch_rows))
    write_csv(os.path.join(res_dir, "epochs.csv"), header, all_epoch_rows)
    fh_, frows = final_rows(results, test_names)
    print(f"\ntest RMSE of the last-epoch EMA models (E meV/atom, F meV/A), scored by one code"
          + (f"; equal CPU budget {args.equal_time:g} min of training epochs each" if budget else ""))
    print(format_table(fh_, frows))
    print("train CPU s / wall s: the whole training process (start-up, data, epochs, its own final evaluation); "
          "s/epoch: mean of the logged training-loop time per epoch")
    write_csv(os.path.join(res_dir, "final.csv"), fh_, frows)
    plot_valid_forces(os.path.join(res_dir, "valid_forces.png"), peer, all_epoch_rows)
    with open(os.path.join(res_dir, "summary.json"), "w") as fh:
        json.dump({"settings": dataclasses.asdict(s), "dataset": args.dataset, "peer": peer, "seeds": args.seeds,
                   "epochs": epochs_of, "equal_time_min": args.equal_time, "calibration": calibration,
                   "split": {k: meta[k] for k in ("n_train", "n_valid", "split_seed", "n_test", "e0s", "e0_method")},
                   "threads": args.threads, "results": results,
                   **({"statistics": meta["stats"]} if "stats" in meta else {})}, fh, indent=1)
    print(f"\nwritten to {res_dir}: epochs.csv, final.csv, valid_forces.png, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
