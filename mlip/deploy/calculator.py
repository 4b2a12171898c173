"""ASE calculator for mlip models: a checkpoint, an exported ``.nequip.pth``, or a committee.

    from mlip import MLIPCalculator
    atoms.calc = MLIPCalculator("model.nequip.pth")          # or a checkpoint, device="cuda"
    atoms.calc = MLIPCalculator(["m1.pth", "m2.pth", "m3.pth"])  # committee: mean, and std

Every model is loaded (and, for checkpoints, wrapped) once, in ``__init__``; a call builds the
neighbour list with :func:`mlip.data.neighbors.neighbor_list` and runs the model on exactly
the inputs LAMMPS' ``pair_style nequip`` gives it (see :mod:`mlip.deploy.export`), so ASE and
LAMMPS see the same numbers. Checkpoints and model objects run in the same wrapper as exported
files (:class:`mlip.deploy.export.LammpsModel`), whose energy, forces and virial are those of
:meth:`mlip.nn.Potential.energy_and_derivatives`, the code path of training.

Properties: ``energy`` and ``free_energy`` (eV), ``energies`` (per atom, eV), ``forces``
(eV/A) and, for periodic cells, ``stress`` (eV/A^3, Voigt xx yy zz yz xz xy, ASE sign:
positive = tensile, ``stress = -virial / V``). A model with a dipole head (:mod:`mlip.nn.heads`)
adds ``dipole`` (e*A, ``atoms.get_dipole_moment()``) and ``charges`` (e, per atom, summing to
the total charge: ``atoms.info["charge"]``, else the sum of ``atoms.get_initial_charges()``,
else 0); with a polarizability head ``calc.results["polarizability"]`` holds the 3x3 tensor
(A^3), with generic heads ``results["structure_output"]`` / ``results["atom_output"]``. For a
periodic cell the dipole uses the positions as given (see :mod:`mlip.nn.heads`).

A committee reports the mean of its members and, in ``calc.results``, ``energy_std``,
``energies_std``, ``forces_std`` and ``stress_std`` (population standard deviation over the
members; ``dipole_std`` etc. for the heads), plus each member's ``committee_energies``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mlip.data import keys as K
from mlip.data.neighbors import MIN_DISTANCE
from mlip.errors import InputError, NonFiniteError

ModelSpec = Union[str, os.PathLike, torch.nn.Module]


class LoadedModel:
    """One model in contract form: ``module(dict) -> dict`` plus r_max, type names and dtype."""

    def __init__(self, module, r_max: float, type_names: List[str], dtype: str, source: str,
                 metadata: Optional[Dict[str, Any]] = None, outputs: Sequence[str] = ()):
        from mlip.data.graph import TypeMapper

        self.module = module
        self.r_max = float(r_max)
        self.type_names = list(type_names)
        self.dtype = dtype
        self.source = source
        self.metadata = metadata or {}
        self.type_mapper = TypeMapper(self.type_names)
        # the output heads' fields the module returns besides energy, forces and virial
        self.outputs = list(outputs)


def load_any(spec: ModelSpec, device: str = "cpu", dtype: Optional[str] = None, use_ema: bool = True,
             script: bool = False) -> LoadedModel:
    """Load a checkpoint / model file / exported TorchScript file / in-memory Potential."""
    from mlip.deploy.export import LammpsModel, is_torchscript_file, load_exported, parse_metadata
    from mlip.nn.potential import Potential

    if dtype is not None and dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float32' or 'float64', got '{dtype}'")
    if isinstance(spec, torch.nn.Module):
        potential = spec
        if not isinstance(potential, Potential):
            raise InputError("a model object must be an mlip Potential (mlip.nn.Potential, as build_model and "
                             f"load_model return), not {type(potential).__name__}")
        model_dtype = _param_dtype(potential)
        if dtype is not None and dtype != model_dtype:
            raise InputError(f"the model object is {model_dtype}; rebuild it to use {dtype}")
        wrapper = LammpsModel(potential, getattr(torch, model_dtype), trusted_inputs=True).to(device).eval()
        return LoadedModel(torch.jit.script(wrapper) if script else wrapper, potential.r_max,
                           potential.type_names, model_dtype, "<model object>", outputs=potential.output_fields)
    path = os.fspath(spec)
    if not os.path.exists(path):
        raise InputError("file not found", path)
    if is_torchscript_file(path):
        module, extra = load_exported(path, device)
        meta = parse_metadata(extra)
        if dtype is not None and dtype != meta["model_dtype"]:
            raise InputError(f"exported model is {meta['model_dtype']}; export again with "
                             f"`mlip export --dtype {dtype}` to run it in {dtype}", path)
        from mlip.nn.heads import head_output_fields

        return LoadedModel(module, meta["r_max"], meta["type_names"], meta["model_dtype"], path, meta,
                           outputs=head_output_fields(meta["config"]))
    # a checkpoint or model file (raises InputError if it is neither)
    from mlip.checkpoint import build_from_record, load_record

    record = load_record(path, use_ema)
    model_dtype = dtype or str(record.get("dtype", "float32"))
    try:
        # message backend "auto": fused kernels for the device (C++ on CPU, Triton on GPU)
        potential = build_from_record(record, dtype=model_dtype, device=device, message_backend="auto")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot rebuild the model ({type(exc).__name__}: {exc})", path) from None
    potential.eval()
    for p in potential.parameters():
        p.requires_grad_(False)
    wrapper = LammpsModel(potential, getattr(torch, model_dtype), trusted_inputs=True).to(device).eval()
    module = torch.jit.script(wrapper) if script else wrapper
    meta = {"config": dict(record["config"]), "model_dtype": model_dtype, "r_max": potential.r_max,
            "type_names": list(record["type_names"])}
    return LoadedModel(module, potential.r_max, record["type_names"], model_dtype, path, meta,
                       outputs=potential.output_fields)


def _param_dtype(module: torch.nn.Module) -> str:
    for p in module.parameters():
        if p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return "float64"


def total_charge(atoms) -> float:
    """The total charge (e) of ``atoms``: ``info["charge"]``, else the sum of the initial charges."""
    if "charge" in atoms.info:
        return float(atoms.info["charge"])
    return float(np.sum(atoms.get_initial_charges()))


class MLIPCalculator(Calculator):
    """ASE calculator for one mlip model or a committee of them.

    Parameters
    ----------
    model:
        path to an exported ``.nequip.pth``, an mlip checkpoint / model file, an mlip
        ``Potential`` object, or a list of these (a committee).
    device:
        torch device, e.g. "cpu" or "cuda".
    dtype:
        "float32" or "float64" to rebuild checkpoints in that precision (default: the dtype
        the model was trained in). Exported models have a fixed dtype; asking for another is
        an error.
    use_ema:
        use the EMA weights of a checkpoint when present (default True).
    script:
        TorchScript-compile checkpoint models once at load (exported files are already).
    min_distance:
        two atoms closer than this (Angstrom; default 0.1) raise :class:`~mlip.errors.InputError`
        naming them, instead of returning the NaN energy and forces a zero distance gives (an
        exploded MD run, a duplicated atom). 0 turns the check off.
    compile:
        trace each checkpoint / model object (energy, forces and virial together) into one graph
        and compile it with inductor (:class:`mlip.nn.compiled.CompiledModule`). The first call
        for a new system size pattern takes seconds (tens for big systems); later calls reuse
        it. Pays on small systems, where the eager model is bound by per-operation overhead
        (a 27-atom molecule: 1.9 vs 3.1 ms per call on 2 CPU cores, docs/performance.md); on
        hundreds of atoms the eager model's fused CPU kernels are faster. Not for exported
        TorchScript files, and not with ``script``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: Union[ModelSpec, Sequence[ModelSpec]], device: str = "cpu",
                 dtype: Optional[str] = None, use_ema: bool = True, script: bool = False, compile: bool = False,
                 min_distance: float = MIN_DISTANCE, **kwargs):
        super().__init__(**kwargs)
        self.min_distance = float(min_distance)
        from mlip.perf import tune_malloc
        tune_malloc()  # CPU speed of the MD loop (MLIP_MALLOC_TUNING=0: off)
        specs = list(model) if isinstance(model, (list, tuple)) else [model]
        if not specs:
            raise InputError("no model given")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            from mlip.ops.cpu_message import load_cpu_kernel
            load_cpu_kernel()  # first use on this machine builds the fused kernels (~10 s): at load, not mid-MD
        if compile and script:
            raise InputError("choose one of compile and script")
        self.models = [load_any(s, str(self.device), dtype, use_ema, script) for s in specs]
        if compile:
            from mlip.nn.compiled import CompiledModule

            for m in self.models:
                if isinstance(m.module, torch.jit.ScriptModule):
                    raise InputError("compile applies to checkpoints and model objects, not exported TorchScript "
                                     "files", m.source)
                m.module = CompiledModule(m.module)
        names = self.models[0].type_names
        for m in self.models[1:]:
            if m.type_names != names:
                raise InputError(f"committee members disagree on type_names: {names} vs {m.type_names}", m.source)
        self.type_names = names
        self.r_max = max(m.r_max for m in self.models)
        # the heads every member has; dipole and charges become ASE properties
        self.outputs = [f for f in self.models[0].outputs if all(f in m.outputs for m in self.models)]
        if K.DIPOLE in self.outputs:
            self.implemented_properties = list(type(self).implemented_properties) + ["dipole", "charges"]

    @property
    def committee_size(self) -> int:
        return len(self.models)

    def inputs(self, atoms, model: LoadedModel) -> Dict[str, torch.Tensor]:
        """The contract inputs (float64 pos/cell/shifts, int64 types/edges) for ``atoms``, plus
        the optional pairing of opposite edges (``edge_pair``, ``pair_edge``; LAMMPS has none)."""
        from mlip.data.neighbors import edge_pairs, neighbor_list

        positions = np.asarray(atoms.positions, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell.array, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        if len(positions) == 0:
            raise InputError("the structure has no atoms")
        edge_index, shifts = neighbor_list(positions, cell, pbc, model.r_max, "", self.min_distance)
        edge_pair, pair_edge = edge_pairs(edge_index, shifts)
        types = model.type_mapper(atoms.numbers)
        dev = self.device
        extra: Dict[str, torch.Tensor] = {}
        if model.outputs:  # what the dipole head's charges sum to
            extra[K.TOTAL_CHARGE] = torch.tensor([total_charge(atoms)], dtype=torch.float64, device=dev)
        return {
            **extra,
            K.EDGE_PAIR: torch.as_tensor(edge_pair, dtype=torch.long, device=dev),
            K.PAIR_EDGE: torch.as_tensor(pair_edge, dtype=torch.long, device=dev),
            K.POSITIONS: torch.as_tensor(positions, dtype=torch.float64, device=dev),
            K.EDGE_INDEX: torch.as_tensor(edge_index, dtype=torch.long, device=dev),
            K.ATOM_TYPES: torch.as_tensor(types, dtype=torch.long, device=dev),
            K.EDGE_CELL_SHIFT: torch.as_tensor(shifts, dtype=torch.float64, device=dev),
            K.CELL: torch.as_tensor(cell, dtype=torch.float64, device=dev).view(1, 3, 3),
        }

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus a changed ``atoms.info["charge"]`` for a model with output heads
        (ASE does not compare ``info``)."""
        changes = super().check_state(atoms, tol)
        if self.outputs and self.atoms is not None and "initial_charges" not in changes \
                and total_charge(atoms) != total_charge(self.atoms):
            changes.append("initial_charges")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        periodic = bool(np.asarray(atoms.pbc).any())
        volume = abs(float(np.linalg.det(atoms.cell.array))) if periodic else 0.0
        if want_stress and volume <= 0.0:
            raise PropertyNotImplementedError("stress needs a periodic cell with non-zero volume")
        cache: Dict[float, Dict[str, torch.Tensor]] = {}
        energies, atomic, forces, stresses = [], [], [], []
        heads: Dict[str, List[np.ndarray]] = {name: [] for name in self.outputs}
        for model in self.models:
            data = cache.get(model.r_max)
            if data is None or (model.outputs and K.TOTAL_CHARGE not in data):
                data = cache[model.r_max] = self.inputs(atoms, model)
            out = model.module(data)
            for name in heads:
                heads[name].append(out[name].detach().cpu().numpy().astype(np.float64))
            atomic.append(out[K.ATOMIC_ENERGY].detach().view(-1).cpu().numpy().astype(np.float64))
            energies.append(float(atomic[-1].sum()))
            forces.append(out[K.FORCES].detach().cpu().numpy().astype(np.float64))
            if volume > 0.0:
                virial = out[K.VIRIAL].detach().view(3, 3).cpu().numpy().astype(np.float64)
                s = -virial / volume
                stresses.append(np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]))
        for model, energy, f in zip(self.models, energies, forces):
            if not (np.isfinite(energy) and np.all(np.isfinite(f))):
                raise NonFiniteError(f"{model.source}: the model returned a non-finite energy or forces for "
                                         f"this structure ({len(atoms)} atoms); check the positions and cell")
        results: Dict[str, Any] = {
            "energy": float(np.mean(energies)),
            "energies": np.mean(atomic, axis=0),
            "forces": np.mean(forces, axis=0),
        }
        results["free_energy"] = results["energy"]
        if stresses:
            results["stress"] = np.mean(stresses, axis=0)
        for name, values in heads.items():
            # per structure ([1, ...] from the model) or per atom; the committee mean
            value = np.mean(values, axis=0)
            results[name] = value[0] if name in (K.DIPOLE, K.POLARIZABILITY, K.STRUCTURE_OUTPUT) else value
            if len(self.models) > 1:
                std = np.std(values, axis=0)
                results[f"{name}_std"] = std[0] if name in (K.DIPOLE, K.POLARIZABILITY, K.STRUCTURE_OUTPUT) else std
        if len(self.models) > 1:
            results["energy_std"] = float(np.std(energies))
            results["energies_std"] = np.std(atomic, axis=0)
            results["forces_std"] = np.std(forces, axis=0)
            results["committee_energies"] = np.asarray(energies)
            if stresses:
                results["stress_std"] = np.std(stresses, axis=0)
        self.results = results
