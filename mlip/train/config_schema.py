"""The training config's schema: every section, key, kind, default, allowed range and a
one-line doc (``mlip train --show-keys`` prints it). Validation is in :mod:`mlip.train.config`.

The ``model`` section is the architecture's: its keys are the hyperparameters of the
registered architecture (:mod:`mlip.nn.build`), checked there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class Field:
    """One config value: its kind, default, allowed values or range, and a one-line doc."""

    kind: str                      # int, float, bool, str, choice, path, paths, symbols, e0s, mapping
    default: Any = None
    doc: str = ""
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None    # inclusive lower bound unless low_open
    high: Optional[float] = None   # inclusive upper bound
    low_open: bool = False
    nullable: bool = False


# ``model`` is a free-form mapping handed to the architecture; everything else is checked here.
MODEL_SECTION = "model"

SCHEMA: Dict[str, Any] = {
    "seed": Field("int", 1234, "seed of weights init, data split and shuffling"),
    "dtype": Field("choice", "float32", "dtype of weights and features", choices=("float32", "float64")),
    "device": Field("choice", "auto", "auto = cuda when available, else cpu", choices=("auto", "cpu", "cuda")),
    "allow_tf32": Field("bool", False, "TF32 matmuls on Ampere+ GPUs (faster, ~1e-3 relative error)"),
    "output_dir": Field("str", "runs/mlip", "run directory: checkpoints, metrics, model, plots"),
    "data": {
        "root": Field("str", ".", "folder that relative data paths are taken from (relative to the cwd)"),
        "train_file": Field("path", None, "training structures: an extxyz/ASE file, an rMD17 .npz, or a "
                            "folder written by `mlip preprocess` (sharded HDF5, read lazily)"),
        "train_index": Field("str", ":", "ASE index string selecting frames of train_file, e.g. '0:500'"),
        "valid_file": Field("path", None, "validation structures; alternative to valid_fraction", nullable=True),
        "valid_fraction": Field("float", 0.1, "fraction of train_file held out for validation (ignored "
                                "when valid_file is set)", low=0.0, high=1.0, low_open=False),
        "test_files": Field("paths", [], "structures to score the best model on after training"),
        "isolated_atoms_file": Field("path", None, "single-atom structures used only for E0s "
                                     "(with E0s: isolated)", nullable=True),
        "format": Field("str", None, "ASE file format when the extension is ambiguous", nullable=True),
        "keys": {
            "energy": Field("str", "energy", "name of the energy label (atoms.info or calculator)"),
            "forces": Field("str", "forces", "name of the forces label (atoms.arrays or calculator)"),
            "stress": Field("str", "stress", "name of the stress label (atoms.info or calculator)"),
            "total_charge": Field("str", "charge", "name of the total charge (e) in atoms.info; absent: 0 "
                                  "(the dipole head's charges sum to it)"),
            "dipole": Field("str", "dipole", "name of the dipole label (e * length unit; atoms.info or calculator)"),
            "polarizability": Field("str", "polarizability", "name of the polarizability label (length unit^3, "
                                    "9 components or 6 Voigt xx yy zz yz xz xy; atoms.info)"),
            "structure_output": Field("str", "structure_output", "name of the generic per-structure label "
                                      "(atoms.info; components in e3nn order of model.structure_output)"),
            "atom_output": Field("str", "atom_output", "name of the generic per-atom label (atoms.arrays; "
                                 "components in e3nn order of model.atom_output)"),
        },
        "units": {
            "energy": Field("choice", None, "energy unit of the labels in the files (default: eV, "
                            "and kcal/mol for rMD17 .npz files)",
                            choices=("eV", "meV", "kcal/mol", "kJ/mol", "Hartree"), nullable=True),
            "length": Field("choice", "A", "length unit of positions and cells in the files",
                            choices=("A", "Angstrom", "Bohr", "nm")),
        },
        "npz_keys": {
            "positions": Field("str", "coords", "array of positions [frames, atoms, 3] in a .npz"),
            "energy": Field("str", "energies", "array of energies [frames] in a .npz"),
            "forces": Field("str", "forces", "array of forces [frames, atoms, 3] in a .npz"),
            "numbers": Field("str", "nuclear_charges", "array of atomic numbers in a .npz"),
        },
        "type_names": Field("symbols", None, "chemical symbols the model knows, in type order "
                            "(default: those in the training data, by atomic number)", nullable=True),
        "batch_size": Field("int", 4, "structures per training batch", low=1),
        "valid_batch_size": Field("int", 8, "structures per validation/test batch", low=1),
        "num_workers": Field("int", 0, "DataLoader processes that read HDF5 shards and build graphs ahead "
                             "of the training step (HDF5 folders only; 0 = in the training process)", low=0),
        "skip_corrupt": Field("bool", False, "HDF5 folders: replace an unreadable frame by the next readable "
                              "one (reported once) instead of stopping with an error naming shard and frame"),
        "min_distance": Field("float", 0.1, "two atoms closer than this (Angstrom) are an error naming the "
                              "structure (a duplicated atom gives NaN energies); 0 = no check", low=0.0),
        "allow_partial_labels": Field("bool", False, "accept structures that lack a label whose loss weight is "
                                      "positive (they train on their other labels); by default every training "
                                      "and validation structure must carry each weighted label"),
        "E0s": Field("e0s", "least_squares", "per-species reference energies (eV): 'isolated' (from "
                     "single-atom structures), 'least_squares' (fit to training energies) or "
                     "{symbol: eV}"),
    },
    "loss": {
        "energy_weight": Field("float", 1.0, "weight of the energy term", low=0.0),
        "forces_weight": Field("float", 10.0, "weight of the forces term", low=0.0),
        "stress_weight": Field("float", 0.0, "weight of the stress term", low=0.0),
        "dipole_weight": Field("float", 0.0, "weight of the dipole term (e*A, per component; needs "
                               "model.dipole: true; labels atoms.info['dipole'])", low=0.0),
        "polarizability_weight": Field("float", 0.0, "weight of the polarizability term (A^3, per component; "
                                       "needs model.polarizability: true; labels atoms.info['polarizability'])",
                                       low=0.0),
        "structure_output_weight": Field("float", 0.0, "weight of the generic per-structure output term (needs "
                                         "model.structure_output; labels atoms.info['structure_output'])", low=0.0),
        "atom_output_weight": Field("float", 0.0, "weight of the generic per-atom output term (needs "
                                    "model.atom_output; labels atoms.arrays['atom_output'])", low=0.0),
        "balance": Field("choice", "none", "automatic balancing of terms in different units: 'uncertainty' "
                         "follows the gradient of sum_k w_k log L_k (each term divided by its current value; "
                         "Kendall et al.'s uncertainty weighting at its optimum, no extra parameters); the "
                         "reported loss stays sum_k w_k L_k", choices=("none", "uncertainty")),
        "energy_per_atom": Field("bool", True, "energy term on (E_pred - E_ref) / N_atoms"),
        "type": Field("choice", "mse", "per-component error function", choices=("mse", "huber")),
        "huber_delta": Field("float", 0.01, "Huber transition point (label units)", low=0.0, low_open=True),
    },
    "optim": {
        "optimizer": Field("choice", "adam", "optimiser", choices=("adam", "adamw")),
        "lr": Field("float", 0.005, "learning rate", low=0.0, low_open=True),
        "weight_decay": Field("float", 0.0, "weight decay (L2 for adam, decoupled for adamw)", low=0.0),
        "amsgrad": Field("bool", True, "AMSGrad variant"),
        "betas": Field("floats2", [0.9, 0.999], "Adam betas"),
        "clip_grad_norm": Field("float", 10.0, "clip the gradient norm to this (null = off)",
                                low=0.0, low_open=True, nullable=True),
        "max_epochs": Field("int", 100, "number of epochs", low=1),
    },
    "schedule": {
        "type": Field("choice", "plateau", "learning-rate schedule", choices=("constant", "plateau", "cosine")),
        "warmup_epochs": Field("float", 0.0, "linear warm-up from 0 to lr over this many epochs", low=0.0),
        "factor": Field("float", 0.8, "plateau: multiply lr by this on a plateau", low=0.0, high=1.0,
                        low_open=True),
        "patience": Field("int", 10, "plateau: epochs without improvement before reducing", low=0),
        "threshold": Field("float", 1e-4, "plateau: relative improvement that counts", low=0.0),
        "min_lr": Field("float", 0.0, "lower bound of the learning rate", low=0.0),
    },
    "ema": {
        "enabled": Field("bool", True, "validate and save exponential-moving-average weights"),
        "decay": Field("float", 0.99, "EMA decay per step", low=0.0, high=1.0),
    },
    "stage_two": {
        "enabled": Field("bool", False, "switch loss weights and lr from start_epoch on"),
        "start_epoch": Field("int", None, "number of stage-one epochs; stage two starts after them "
                             "(default 75% of max_epochs)",
                             low=0, nullable=True),
        "lr": Field("float", 0.001, "constant learning rate in stage two", low=0.0, low_open=True),
        "energy_weight": Field("float", 1000.0, "energy weight in stage two", low=0.0),
        "forces_weight": Field("float", 10.0, "forces weight in stage two", low=0.0),
        "stress_weight": Field("float", None, "stress weight in stage two (null = keep)", low=0.0,
                               nullable=True),
    },
    "train": {
        "compile": Field("bool", False, "trace energy + forces (+ stress) into one graph and compile it with "
                         "torch.compile/inductor for the training steps (NequIP models; "
                         "the first step of each batch-size pattern compiles, tens of seconds on a CPU). The "
                         "environment variable MLIP_COMPILE_BACKEND picks the torch.compile backend "
                         "(default inductor; 'none' runs the traced graph uncompiled, for debugging)"),
        "valid_every": Field("int", 1, "validate every this many epochs (and at the last one)", low=1),
        "checkpoint_every_steps": Field("int", 0, "also checkpoint every N optimiser steps (0 = per epoch only)",
                                        low=0),
        "keep_checkpoints": Field("int", 2, "number of newest checkpoints kept", low=2),
        "early_stopping_patience": Field("int", None, "stop after this many validations without a new "
                                         "best model (null = never)", low=1, nullable=True),
        "max_time_minutes": Field("float", None, "wall-clock budget of the training loop in minutes (null = "
                                  "none), summed over a run and its resumptions (not data loading): training "
                                  "stops after the batch during which it runs out, then saves a checkpoint, "
                                  "last/best model and runs the final evaluation", low=0.0, low_open=True,
                                  nullable=True),
        "schedule_follows_budget": Field("bool", True, "with max_time_minutes: warm-up, the learning-rate "
                                         "schedule and stage two follow the fraction of the time budget used "
                                         "(or of max_epochs, whichever is further), so a budget run ends "
                                         "annealed; false: they follow epochs and the budget only stops the "
                                         "clock"),
        "best_metric_weights": {
            "energy": Field("float", 1.0, "weight of the energy RMSE (eV/atom) in the selection metric", low=0.0),
            "forces": Field("float", 1.0, "weight of the forces RMSE (eV/A)", low=0.0),
            "stress": Field("float", 0.0, "weight of the stress RMSE (eV/A^3)", low=0.0),
            "dipole": Field("float", 0.0, "weight of the dipole RMSE (e*A)", low=0.0),
            "polarizability": Field("float", 0.0, "weight of the polarizability RMSE (A^3)", low=0.0),
        },
    },
    "finetune": {
        "from": Field("path", None, "model file or training checkpoint to start from (relative to the "
                      "current directory; null = random init); architecture, r_max, avg_num_neighbors and scales come from it", nullable=True),
        "freeze": Field("freeze", [], "parameters not trained: name prefixes (e.g. embedding, "
                        "energy_model.readout) or interaction-layer indices (0 = energy_model.layers.0)"),
        "reset_head": Field("bool", False, "re-initialise the readout parameters (names with 'readout')"),
        "e0s": Field("choice", "keep", "keep: the foundation's E0s for its species, new species from "
                     "data.E0s; data: all E0s from data.E0s", choices=("keep", "data")),
    },
    "logging": {
        "progress_bar": Field("bool", True, "tqdm progress bar over the batches of an epoch"),
        "wandb": Field("bool", False, "log metrics to Weights & Biases"),
        "wandb_project": Field("str", "mlip", "wandb project"),
        "wandb_name": Field("str", None, "wandb run name (default: output_dir's name)", nullable=True),
        "wandb_mode": Field("choice", "offline", "offline unless asked", choices=("offline", "online")),
    },
    MODEL_SECTION: {},
}

# keys users may expect in one place that live in another: a direct hint beats a guess
MOVED_KEYS = {
    ("data", "r_max"): "r_max is set once, in the model section: model.r_max",
    ("optim", "early_stopping_patience"): "use train.early_stopping_patience",
    ("data", "test_file"): "use data.test_files (a path or a list of paths)",
    ("data", "energy_key"): "use data.keys.energy",
    ("data", "forces_key"): "use data.keys.forces",
    ("data", "stress_key"): "use data.keys.stress",
    ("optim", "scheduler"): "use the schedule section: schedule.type",
    ("ema", "ema_decay"): "use ema.decay",
}

# statistics the trainer fills into the model section unless the user gave them
STAT_MODEL_KEYS = ("avg_num_neighbors", "atomic_energy_shifts", "atomic_energy_scales")
