"""Fine-tuning: start from a trained model (a foundation model) instead of random weights.

Config section ``finetune``::

    finetune:
      from: runs/example/best_model.pt   # a model file or training checkpoint (EMA weights preferred)
      freeze: [embedding, 0]             # parameter-name prefixes or interaction-layer indices
      reset_head: false                  # re-initialise the readout parameters (names with 'readout')
      e0s: keep                          # keep | data

What happens:

* the architecture, its hyperparameters and ``r_max`` are the foundation's (the ``model`` section
  must be empty or agree with them);
* species: the new model's ``type_names`` are the foundation's, in its order, followed by any
  species of the new data (or of ``data.type_names``) that it does not know, by atomic number;
* weights: every tensor is copied; tensors with a per-species dimension (the embedding, MACE's
  product weights, ...) get the foundation's rows for the old species, while the rows of new
  species keep their fresh initialisation (from ``seed``);
* statistics: the foundation's ``avg_num_neighbors`` and per-species energy scales are kept (the
  network's weights were trained with them; a new species gets the mean of the old scales). E0s:
  with ``e0s: keep`` the foundation's E0s of its species are kept and only new species get E0s
  from ``data.E0s`` (least squares on the residual energies with the old E0s fixed, isolated
  atoms, or the given mapping); with ``e0s: data`` all E0s are recomputed from the new data with
  ``data.E0s`` (use this when the new labels come from another DFT setting with another energy
  zero);
* ``freeze``: matching parameters get ``requires_grad = False`` and are left out of the
  optimiser; an integer ``i`` means ``energy_model.layers.i.``, and a prefix may leave out the
  ``energy_model.`` in front. Freezing a per-species tensor freezes the rows of new species too.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from mlip.errors import InputError
from mlip.nn.build import DEFAULT_ARCHITECTURE

# model-config keys that only choose how the same function is computed: may differ from the foundation
RUNTIME_MODEL_KEYS = ("message_backend",)
# buffers that hold statistics: they come from the new model config, not from the foundation's tensors
STAT_BUFFERS = ("scale_shift.scales", "scale_shift.shifts")


def load_foundation(path: str) -> Dict[str, Any]:
    """The model record of a model file or checkpoint (EMA weights when present)."""
    from mlip.checkpoint import load_file, record_of

    obj = load_file(path)
    record = record_of(obj, ema=True)
    record["statistics"] = obj.get("statistics")
    return record


def check_model_section(user_model: Mapping[str, Any], foundation_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The foundation's model config, with runtime-only keys of the user's model section applied."""
    conflicts = []
    config = dict(foundation_config)
    for key, value in user_model.items():
        if key in RUNTIME_MODEL_KEYS:
            config[key] = value
        elif key not in foundation_config and key == "architecture" and value == DEFAULT_ARCHITECTURE:
            continue
        elif foundation_config.get(key) != value:
            conflicts.append(f"model.{key}: {value!r} (foundation: {foundation_config.get(key)!r})")
    if conflicts:
        raise InputError("fine-tuning keeps the foundation model's architecture and hyperparameters; remove "
                         "these from the model section: " + "; ".join(conflicts), key="model")
    return config


def union_type_names(old: Sequence[str], new: Sequence[str]) -> List[str]:
    """``old`` in its order, then the symbols of ``new`` it lacks, by atomic number."""
    from ase.data import atomic_numbers

    extra = sorted({s for s in new if s not in old}, key=lambda s: atomic_numbers[s])
    return list(old) + extra


def e0s_for(old_types: Sequence[str], old_e0s: Sequence[float], type_names: Sequence[str], spec,
            mode: str, train_frames, isolated) -> Tuple[List[float], str]:
    """E0s (eV) of ``type_names`` and a label of how they were obtained."""
    from mlip.train import statistics as S

    if mode == "data":
        if isinstance(spec, Mapping):
            return [float(e) for e in S.e0s_given(spec, type_names)], "given"
        if spec == "isolated":
            return [float(e) for e in S.e0s_from_isolated(isolated, type_names)], "isolated"
        return [float(e) for e in S.e0s_least_squares(train_frames, type_names)], "least_squares"
    new = [s for s in type_names if s not in old_types]
    old_map = dict(zip(old_types, old_e0s))
    if not new:
        return [float(old_map[s]) for s in type_names], "foundation"
    if isinstance(spec, Mapping):
        values, method = S.e0s_given(spec, new), "given"
    elif spec == "isolated":
        values, method = S.e0s_from_isolated(isolated, new), "isolated"
    else:
        values, method = e0s_residual_least_squares(train_frames, type_names, old_map, new), "least_squares"
    new_map = dict(zip(new, values))
    return [float(old_map[s]) if s in old_map else float(new_map[s]) for s in type_names], f"foundation+{method}"


def e0s_residual_least_squares(frames, type_names: Sequence[str], old_map: Mapping[str, float],
                               new: Sequence[str]) -> np.ndarray:
    """E0s of the ``new`` species fitted to E - sum_old n_s E0_s, the old E0s held fixed."""
    from mlip.train.statistics import species_counts

    labelled = [f for f in frames if f.energy is not None]
    if not labelled:
        raise InputError("E0s of new species: least_squares needs training structures with energies",
                         key="data.E0s")
    counts = species_counts(labelled, type_names)
    idx_new = [list(type_names).index(s) for s in new]
    old_vec = np.array([old_map.get(s, 0.0) for s in type_names])
    residual = np.array([f.energy for f in labelled]) - counts @ old_vec
    a = counts[:, idx_new]
    missing = [s for s, c in zip(new, a.sum(0)) if c == 0]
    if missing:
        raise InputError(f"E0s: new species {missing} never occur in labelled training structures; give "
                         "their E0s as a mapping {symbol: eV}", key="data.E0s")
    solution, *_ = np.linalg.lstsq(a, residual, rcond=None)
    return solution


def finetune_model_config(foundation: Mapping[str, Any], type_names: Sequence[str],
                          e0s: Sequence[float]) -> Dict[str, Any]:
    """The foundation's model config for the extended species list: E0 shifts replaced, scales
    and average neighbour count kept (new species: the mean of the old scales)."""
    config = dict(foundation["config"])
    old = list(foundation["type_names"])
    scales = config.get("atomic_energy_scales", 1.0)
    if not isinstance(scales, (list, tuple)):
        scales = [float(scales)] * len(old)
    mean_scale = float(np.mean(scales)) if len(scales) else 1.0
    config["atomic_energy_scales"] = [float(scales[old.index(s)]) if s in old else mean_scale for s in type_names]
    config["atomic_energy_shifts"] = [float(e) for e in e0s]
    return config


def transfer_weights(model: torch.nn.Module, old_state: Mapping[str, torch.Tensor], n_old: int,
                     n_new: int) -> Dict[str, List[str]]:
    """Copy the foundation's tensors into ``model`` (built for n_new >= n_old species, old first).

    Equal shapes are copied whole; a tensor whose shape differs in exactly one dimension, of
    size k * n_old in the foundation and k * n_new here, is taken to be species-major along it
    (species s at s*k ... s*k + k - 1: the embedding, the species-dependent self-connection of
    mlip.nn, MACE's product weights) and gets the old species' entries, keeping the fresh values
    of the new species. Statistics buffers (scale_shift) stay as built from the config.
    """
    state = model.state_dict()
    report: Dict[str, List[str]] = {"copied": [], "species_rows": [], "from_config": []}
    missing = [k for k in state if k not in old_state]
    extra = [k for k in old_state if k not in state]
    if missing or extra:
        raise InputError(f"the foundation model's tensors do not match its architecture (missing {missing[:5]}, "
                         f"unexpected {extra[:5]})", key="finetune.from")
    for key, new in state.items():
        old = old_state[key].to(new.device)
        if key.endswith(STAT_BUFFERS):
            report["from_config"].append(key)
            continue
        if old.shape == new.shape:
            new.copy_(old.to(new.dtype))
            report["copied"].append(key)
            continue
        dims = [d for d in range(new.dim()) if old.dim() == new.dim() and old.shape[d] != new.shape[d]]
        if len(dims) == 1:
            d = dims[0]
            a, b = old.shape[d], new.shape[d]
            # a species dimension, or species-major blocks (species s at s*k ... s*k + k - 1)
            if a % n_old == 0 and b % n_new == 0 and a // n_old == b // n_new:
                new.narrow(d, 0, a).copy_(old.to(new.dtype))
                report["species_rows"].append(key)
                continue
        raise InputError(f"cannot transfer {key}: shape {tuple(old.shape)} in the foundation model, "
                         f"{tuple(new.shape)} here", key="finetune.from")
    model.load_state_dict(state)
    return report


def freeze_parameters(model: torch.nn.Module, specs: Sequence[Any]) -> List[str]:
    """Set ``requires_grad = False`` on the parameters ``specs`` select; returns their names."""
    names = [n for n, _ in model.named_parameters()]
    frozen: List[str] = []
    for spec in specs:
        if isinstance(spec, int):
            prefixes = [f"energy_model.layers.{spec}."]
        else:
            s = str(spec)
            prefixes = [s, f"energy_model.{s}"]
        hits = [n for n in names if any(n == p or n.startswith(p if p.endswith(".") else p + ".")
                                        or (not p.endswith(".") and n.startswith(p)) for p in prefixes)]
        if not hits:
            groups = sorted({".".join(n.split(".")[:3]) for n in names})
            raise InputError(f"{spec!r} selects no parameter; parameter groups: {', '.join(groups)}",
                             key="finetune.freeze")
        frozen += [h for h in hits if h not in frozen]
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    return frozen


def reset_head(model: torch.nn.Module, fresh_state: Mapping[str, torch.Tensor]) -> List[str]:
    """Copy freshly initialised readout parameters (names with a 'readout' part) into ``model``."""
    names = [n for n, _ in model.named_parameters() if ".readout." in f".{n}"]
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in names:
            params[n].copy_(fresh_state[n])
    return names
