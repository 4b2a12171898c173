"""Which structures carry which labels, checked before any graph is built or step is taken.

A label whose loss weight is positive must be there: a term with a positive weight and no
labels at all is an error (it names the key that was looked for), and so is a structure that
lacks it while others have it, unless ``data.allow_partial_labels`` says such structures
should train on their other labels. Stress is only expected of periodic structures. The output
heads' labels (dipole, polarizability, generic outputs) are checked the same way when their
weight is positive, and only mentioned in the coverage line when some structure has them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlip.errors import InputError

LABELS = ("energy", "forces", "stress", "dipole", "polarizability", "structure_output", "atom_output")
HEAD_LABELS = LABELS[3:]  # reported only where present


@dataclass
class Coverage:
    """How many structures of a set carry one label, out of those that can (stress: periodic)."""

    labelled: int
    eligible: int
    total: int
    first_missing: Optional[str] = None  # "file:frame" of the first eligible structure without it


def coverage_from_flags(has: Mapping[str, np.ndarray], periodic: np.ndarray,
                        sources: Sequence[str]) -> Dict[str, Coverage]:
    """Coverage of each label from per-structure flags (``has[label]`` [N] bool)."""
    periodic = np.asarray(periodic, dtype=bool)
    out = {}
    for name in LABELS:
        flags = np.asarray(has[name], dtype=bool) if name in has else np.zeros(len(periodic), dtype=bool)
        eligible = periodic if name == "stress" else np.ones_like(flags)
        missing = np.flatnonzero(eligible & ~flags)
        out[name] = Coverage(int((flags & eligible).sum()), int(eligible.sum()), len(flags),
                             sources[int(missing[0])] if len(missing) else None)
    return out


def coverage_of_frames(frames: Sequence) -> Dict[str, Coverage]:
    """Coverage of each label in :class:`~mlip.data.frames.Frame` objects."""
    has = {name: np.array([getattr(f, name) is not None for f in frames], dtype=bool) for name in LABELS}
    periodic = np.array([bool(np.any(f.pbc)) for f in frames], dtype=bool)
    return coverage_from_flags(has, periodic, [f.source for f in frames])


def format_coverage(coverage: Mapping[str, Coverage]) -> str:
    """``energy 450/450, forces 450/450, stress 0/450`` (stress out of the periodic structures)."""
    parts = []
    for name, c in coverage.items():
        if name in HEAD_LABELS and not c.labelled:
            continue
        part = f"{name} {c.labelled}/{c.eligible}"
        if c.eligible == 0:
            part = f"{name} - (no periodic structures)"
        elif c.eligible != c.total:
            part += " periodic"
        parts.append(part)
    return ", ".join(parts)


def check_coverage(split: str, coverage: Mapping[str, Coverage], weights: Mapping[str, Tuple[float, str]],
                   keys: Mapping[str, str], path: Optional[str], allow_partial: bool) -> None:
    """Raise :class:`InputError` for a weighted label that ``split`` lacks.

    ``weights``: label -> (largest weight over the run's stages, the config key that sets it);
    ``keys``: label -> the name looked for in the files; ``path``: the file, for messages.
    """
    for name, (weight, weight_key) in weights.items():
        c = coverage[name]
        if weight <= 0 or c.total == 0:
            continue
        if c.eligible == 0:  # stress with no periodic structure
            raise InputError(f"{weight_key} is {weight:g} but none of the {c.total} {split} structures is periodic, "
                             f"so none can have a stress; set {weight_key}: 0", path)
        if c.labelled == 0:
            raise InputError(f"{weight_key} is {weight:g} but none of the {c.eligible} {split} structures has "
                             f"{_a(name)} label (looked for '{keys[name]}' in atoms.info/atoms.arrays and the "
                             f"attached calculator); set data.keys.{name} to the name your file uses, or "
                             f"{weight_key}: 0", path, key=keys[name])
        if c.labelled < c.eligible and not allow_partial:
            lacking = c.eligible - c.labelled
            raise InputError.at(c.first_missing or "", f"no {name} label, while {c.labelled} of {c.eligible} {split} "
                                f"structures have one and {weight_key} is {weight:g}; add the label, remove the "
                                f"{lacking} structure{'s' if lacking > 1 else ''} without it, or set "
                                "data.allow_partial_labels: true to train them on their other labels", key=keys[name])


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def weighted_labels(loss_cfg: Mapping[str, float], stage_two_cfg: Mapping[str, object]) -> Dict[str, Tuple[float, str]]:
    """label -> (its largest loss weight over the run's stages, the config key that sets it)."""
    out = {}
    for name in LABELS:
        weight, where = float(loss_cfg.get(f"{name}_weight", 0.0)), f"loss.{name}_weight"
        later = stage_two_cfg.get(f"{name}_weight") if stage_two_cfg.get("enabled") else None
        if later is not None and float(later) > weight:
            weight, where = float(later), f"stage_two.{name}_weight"
        out[name] = (weight, where)
    return out
