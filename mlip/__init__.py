"""mlip: E(3)-equivariant machine-learned interatomic potentials (NequIP and MACE families).

The public Python API (everything else is reachable but may change)::

    import mlip

    result = mlip.train("run.yaml")              # or a config dict; as `mlip train run.yaml`
    model = mlip.load_model(result["best_model"])          # a torch module (mlip.nn.Potential)
    mlip.export(result["best_model"], "si.nequip.pth")     # TorchScript for LAMMPS and ASE
    atoms.calc = mlip.MLIPCalculator("si.nequip.pth")      # ASE calculator

Units everywhere: eV, Angstrom, eV/A, eV/A^3 (ASE stress sign).

``import mlip`` is light (no torch): the names above load their modules when first used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Optional

__version__ = "0.1.0"

__all__ = ["MLIPCalculator", "export", "load_model", "train"]

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time it loads lazily (__getattr__)
    from mlip.deploy.calculator import MLIPCalculator


def load_model(path: str, device: str = "cpu", dtype: Optional[str] = None, use_ema: bool = True):
    """The model of a checkpoint or model file written by training (``best_model.pt``, a file in
    ``checkpoints/``), as a torch module in eval mode: ``model(batch)`` gives energies in eV,
    forces in eV/A and stress in eV/A^3.

    ``device``: torch device ("cpu", "cuda"). ``dtype``: "float32" or "float64" to rebuild in
    that precision (default: the trained one). ``use_ema``: the EMA weights when the file has
    them. A missing or foreign file (an exported ``.nequip.pth`` included: use
    :class:`MLIPCalculator` for those) is an :class:`~mlip.errors.InputError` naming it.
    """
    from mlip.checkpoint import load_model as _load_model

    return _load_model(str(path), device=device, dtype=dtype, use_ema=use_ema).eval()


def export(checkpoint: str, output: str, dtype: Optional[str] = None, use_ema: bool = True,
           allow_tf32: bool = False) -> Dict[str, str]:
    """Export the model of a checkpoint or model file as a TorchScript ``output`` (its name must
    end in ``.nequip.pth``) for LAMMPS ``pair_style nequip`` and :class:`MLIPCalculator`, as
    ``mlip export`` does. ``dtype``: "float32"/"float64" (default: the trained one). Returns the
    metadata written into the file (species, cutoff in Angstrom, ...)."""
    from mlip.deploy.export import export_model

    return export_model(str(checkpoint), str(output), dtype=dtype, use_ema=use_ema, allow_tf32=allow_tf32)


def __getattr__(name: str) -> Any:
    # imported lazily so `import mlip` stays light and works before the heavy dependencies load
    if name == "MLIPCalculator":
        from mlip.deploy.calculator import MLIPCalculator
        return MLIPCalculator
    if name == "train":
        # the training package, callable (see mlip/train/__init__.py); importing it sets the
        # attribute, so this runs once
        return importlib.import_module("mlip.train")
    raise AttributeError(f"module 'mlip' has no attribute '{name}'")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
