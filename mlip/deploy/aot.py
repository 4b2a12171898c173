"""AOTInductor export (``mlip export CKPT -o NAME.nequip.pt2``): compiled speed in LAMMPS.

The plugin ``pair_nequip_allegro`` runs ``*.nequip.pt2`` packages when LAMMPS is built with
``NEQUIP_AOT_COMPILE`` (``bash scripts/build_lammps.sh --aot``): it loads them with
``AOTIModelPackageLoader``, feeds the tensors named by the package metadata
``nequip_aoti_inputs`` in that order and reads back those named by ``nequip_aoti_outputs``.

How the package is made: the contract wrapper :class:`~mlip.deploy.export.LammpsModel`
(``pair_style nequip`` inputs, energy, forces and virial from
:meth:`~mlip.nn.Potential.energy_and_derivatives`) is traced with its first autograd pass into
one flat graph of aten operations (:func:`mlip.nn.compiled.trace_and_compile`, symbolic numbers
of atoms and edges), exported with ``torch.export`` and compiled ahead of time by inductor
into C++ in a ``.pt2`` package. With ``kernels`` (the default) the graph keeps mlip's fused CPU
message kernel as two opaque calls (``mlip_cpu::contract``, ``mlip_cpu::grads``); the LAMMPS
process must then have them registered: ``build_lammps.sh`` links ``libmlip_ops.so`` into
``lmp``. ``kernels=False`` gives a package of plain torch operations that any LAMMPS built with
``NEQUIP_AOT_COMPILE`` runs (slower; see docs/deploy.md).

Limits: one MPI rank (``pair_style nequip``; the graph has no data-dependent shapes, so the
domain decomposition of :mod:`mlip.deploy.domain` is not in it: ``pair_style allegro`` stops
with the plugin's error about a missing input); the architecture must trace into one graph
(the registry's ``supports_compile``: NequIP; MACE groups atoms by species with data-dependent
shapes); CPU packages (the kernels are the CPU ones); the package trusts its inputs (the checks of
the TorchScript export are data-dependent branches a compiled graph cannot hold), and it reads its
inputs as row-major tensors (what the plugin gives; :func:`load_aot` makes them so in Python).
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
import torch

from mlip.errors import InputError

AOT_EXTENSION = ".nequip.pt2"
INPUTS = ["pos", "edge_index", "atom_types", "cell", "edge_cell_shift"]
OUTPUTS = ["atomic_energy", "forces", "virial"]


def example_inputs(type_names: List[str], r_max: float) -> Dict[str, torch.Tensor]:
    """A small periodic structure of every type, as pair_style nequip presents it (float64),
    to trace with: a rattled simple cubic lattice of 4x4x4 atoms at r_max / 2.2 spacing."""
    from mlip.data.neighbors import neighbor_list

    rng = np.random.default_rng(0)
    a = r_max / 2.2
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    pos = grid * a + rng.normal(scale=0.05 * a, size=grid.shape)
    cell = np.eye(3) * 4 * a
    edge_index, shifts = neighbor_list(pos, cell, np.array([True] * 3), r_max)
    types = np.arange(len(pos)) % len(type_names)
    inputs = {"pos": torch.tensor(pos), "edge_index": torch.tensor(edge_index), "atom_types": torch.tensor(types),
              "cell": torch.tensor(cell).view(1, 3, 3), "edge_cell_shift": torch.tensor(shifts, dtype=torch.float64)}
    # row-major, as the plugin builds them: the compiled code assumes the traced strides (a
    # column-major edge_index from numpy gave NaN on every other input)
    return {k: v.contiguous() for k, v in inputs.items()}


def export_aot(checkpoint: str, output: str, dtype: Optional[str] = None, use_ema: bool = True,
               allow_tf32: bool = False, kernels: bool = True) -> Dict[str, str]:
    """Compile the model of an mlip checkpoint or model file into ``output`` (``*.nequip.pt2``).

    ``dtype`` as in :func:`mlip.deploy.export.export_model`; ``kernels`` keeps the fused CPU
    message kernel (see the module docstring). Takes tens of seconds (inductor compiles C++).
    Returns the metadata written.
    """
    from mlip.checkpoint import build_from_record, is_torchscript_file, load_record
    from mlip.deploy.export import LammpsModel, make_metadata
    from mlip.nn.build import get_architecture
    from mlip.nn.compiled import trace_and_compile

    if not output.endswith(AOT_EXTENSION):
        raise InputError(f"an AOT package's name must end in '{AOT_EXTENSION}' (the plugin chooses by the name)",
                         output)
    if os.path.exists(checkpoint) and is_torchscript_file(checkpoint):
        raise InputError("this is an exported TorchScript model, not a checkpoint; export from the checkpoint or "
                         "model file written by training", checkpoint)
    record = load_record(checkpoint, use_ema)
    architecture = str(record["config"].get("architecture", "nequip"))
    if not get_architecture(architecture).supports_compile:
        raise InputError(f"the {architecture} architecture does not trace into one graph, which AOT compilation "
                         "needs; export it as TorchScript (-o NAME.nequip.pth) instead", checkpoint)
    if dtype is not None and dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got '{dtype}'")
    dtype = dtype or str(record.get("dtype", "float32"))
    if kernels:
        from mlip.ops.cpu_message import load_cpu_kernel

        why = load_cpu_kernel()
        if why is not None:
            raise InputError(f"the fused CPU kernel is not available ({why}); export with --no-kernels for a "
                             "package of plain torch operations")
    potential = build_from_record(record, dtype=dtype, device="cpu", message_backend="auto" if kernels else "torch")
    potential.eval()
    for p in potential.parameters():
        p.requires_grad_(False)
    # mlip's own inputs (pair_style nequip's, at the network's cutoff): no checks, no filter
    wrapper = LammpsModel(potential, getattr(torch, dtype), trusted_inputs=True).eval()

    def contract(pos, edge_index, atom_types, cell, edge_cell_shift):
        out = wrapper({"pos": pos, "edge_index": edge_index, "atom_types": atom_types, "cell": cell,
                       "edge_cell_shift": edge_cell_shift})
        return tuple(out[k] for k in OUTPUTS)

    example = example_inputs(list(record["type_names"]), potential.r_max)
    args = tuple(example[k] for k in INPUTS)
    graph = trace_and_compile(contract, list(args), backend=None)
    from torch.export import Dim

    atoms, edges = Dim("num_atoms", min=2), Dim("num_edges", min=2)
    dynamic = ({0: atoms}, {1: edges}, {0: atoms}, None, {0: edges})
    with torch.no_grad():
        exported = torch.export.export(graph, args, dynamic_shapes=dynamic, strict=False)
    metadata = make_metadata(record, dtype, allow_tf32, potential.num_message_layers, ghost_shell=False)
    metadata.update({"nequip_aoti_inputs": " ".join(INPUTS), "nequip_aoti_outputs": " ".join(OUTPUTS),
                     "format": "mlip-lammps-aot-1", "mlip_kernels": "mlip_cpu" if kernels else ""})
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=AOT_EXTENSION, dir=folder)
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(exported, package_path=tmp,
                                                 inductor_configs={"aot_inductor.metadata": metadata})
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return metadata


def load_aot(path: str):
    """Load a package for use in Python (the fused kernel is registered first when it needs it):
    a callable ``(pos, edge_index, atom_types, cell, edge_cell_shift) -> [atomic_energy, forces,
    virial]``, and its metadata."""
    if not os.path.exists(path):
        raise InputError("file not found", path)
    from mlip.ops.cpu_message import load_cpu_kernel

    load_cpu_kernel()
    try:
        package = torch._inductor.aoti_load_package(path)
    except Exception as exc:
        raise InputError(f"cannot load the AOT package ({type(exc).__name__}: {str(exc).strip()[:200]})",
                         path) from None
    def run(*inputs: torch.Tensor) -> List[torch.Tensor]:
        # the compiled code assumes row-major inputs (as the plugin builds them) and does not
        # check: a transposed cell read as it is stored gives wrong answers, not an error
        return package(*[t.contiguous() for t in inputs])

    return run, dict(package.get_metadata())
