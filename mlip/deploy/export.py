"""TorchScript export that follows the LAMMPS ``pair_style nequip`` contract.

The contract is the one of the maintained LAMMPS plugin ``pair_nequip_allegro``
(github.com/mir-group/pair_nequip_allegro, files ``pair_nequip_allegro.cpp`` and
``pair_nequip_allegro.h``; ``pair_style nequip`` is ``PairNequIPAllegro<true>``). What the
plugin does, read from its source:

Loading (``coeff``)
    * ``pair_coeff * * MODEL.nequip.pth SYM1 SYM2 ...``: exactly one symbol per LAMMPS atom
      type; the file name must end in ``.nequip.pth`` (TorchScript) or ``.nequip.pt2`` (AOT),
      anything else is a runtime error.
    * ``torch::jit::load(path, device, metadata)`` with the ``_extra_files`` keys ``r_max``,
      ``per_edge_type_cutoff``, ``type_names``, ``num_types`` and ``allow_tf32``. A key that is
      absent reads as an empty string. ``allow_tf32`` goes through ``std::stoi`` (an empty
      string aborts), ``r_max`` through ``std::stod``, ``num_types`` through ``std::stod``;
      ``type_names`` is split on whitespace and matched against the pair_coeff symbols to
      build the LAMMPS-type -> model-type map. An empty ``per_edge_type_cutoff`` means one
      cutoff ``r_max`` for all pairs (we do not write it).
    * the module is put in ``eval()`` and, when it still has a ``training`` attribute,
      ``torch::jit::freeze`` is applied; so the exported module must survive freezing.

Neighbour list (``init_style``)
    * a full list with ghosts (``REQ_FULL | REQ_GHOST``); ``newton_pair`` must be off
      ("Pair style nequip requires newton pair off"); only one MPI rank is allowed in nequip
      mode.

Inputs (``preprocess``), one ``Dict[str, Tensor]``; ``inputtype`` is ``double``
    * ``pos`` float64 [nlocal, 3]: local atoms only, stored at their LAMMPS index ``i``;
    * ``atom_types`` int64 [nlocal]: model type index of each local atom;
    * ``edge_index`` int64 [2, E]: for each local atom ``i`` and each neighbour ``j`` (local
      or ghost) with ``r_ij^2 <= r_max^2`` (note ``<=``), row 0 is ``i`` and row 1 is
      ``tag2i[tag[j]]``, the local index of the atom that owns ``j``. Both directions are
      present (full list); an atom may be its own neighbour through a periodic image;
    * ``edge_cell_shift`` float64 [E, 3]: ``round(inv(cell)^T (x[j] - x[owner(j)]))``, i.e. the
      integer S with ``x[j] = pos[owner] + S @ cell``; so the edge vector is
      ``pos[j] - pos[i] + edge_cell_shift @ cell``;
    * ``cell`` float64 [1, 3, 3]: rows a = (lx, 0, 0), b = (xy, ly, 0), c = (xz, yz, lz)
      (LAMMPS' lower-triangular box; positions are in that rotated frame);
    * no ``batch``, no ``pbc``, no ``num_atoms``: the model must add what it needs.

Outputs (``compute``), read with ``accessor<double, N>`` so they must be float64
    * ``forces`` [nlocal, 3], added to ``f[i]`` for the local atoms;
    * ``atomic_energy`` [nlocal, 1]: LAMMPS' energy ``eng_vdwl`` is their sum, and ``eatom``
      (``compute pe/atom``) takes them per atom; ``total_energy`` is not read;
    * ``virial`` [1, 3, 3] when LAMMPS asks for the virial: xx, yy, zz, xy, xz, yz are copied
      into LAMMPS' ``virial[6]`` without a sign change, so it must be -dE/d(strain)
      = sum_i r_i (x) f_i (LAMMPS' convention: pressure = virial / (3V) + kinetic part). Per-atom
      virials are not supported by the plugin.

We also write ``total_energy`` [1, 1] and our own metadata: ``mlip_version``, ``model_dtype``,
``config`` (the architecture config as JSON), ``units`` ("metal": eV, Angstrom, eV/Angstrom)
and ``format``. A model with output heads (``dipole``, ``polarizability``, generic outputs in
its config) also returns their fields (see :class:`LammpsModel`), which LAMMPS ignores and the
ASE calculator reads; it takes an optional ``total_charge`` input (e, default 0).

The wrapper, :class:`LammpsModel`, has no forward pass of its own: energy, forces and virial
come from :meth:`mlip.nn.Potential.energy_and_derivatives`, the code path of training.

Precision: edge vectors and the strain are built in float64 and the network's input is then
cast to the model's dtype, so a float32 model loses nothing to large coordinates; atomic
energies, forces and virial come back float64 (``atomic_energy`` is float64 already: the E0
shifts are kept in float64).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from mlip.checkpoint import is_torchscript_file  # noqa: F401  (re-exported for the calculator)
from mlip.data import keys as K
from mlip.deploy.domain import domain_graph
from mlip.nn.potential import Potential

EXTENSION = ".nequip.pth"
EXPORT_FORMAT = "mlip-lammps-1"
# the keys the plugin reads; a missing key reads as ""
PLUGIN_METADATA_KEYS = ("r_max", "per_edge_type_cutoff", "type_names", "num_types", "allow_tf32")
MLIP_METADATA_KEYS = ("mlip_version", "model_dtype", "config", "units", "format", "model_r_max",
                      "num_message_layers")
METADATA_KEYS = PLUGIN_METADATA_KEYS + MLIP_METADATA_KEYS


class LammpsModel(nn.Module):
    """A :class:`~mlip.nn.Potential` that takes and returns exactly the plugin's dictionaries.

    It only translates: the plugin's inputs (named as the field registry
    :mod:`mlip.data.keys` names them) become a one-structure graph in float64, and
    :meth:`Potential.energy_and_derivatives <mlip.nn.Potential.energy_and_derivatives>`, the
    code path of training, computes energy, forces and virial, with the geometry in float64
    and the network in ``model_dtype``. Back come ``atomic_energy`` [N, 1] and
    ``total_energy`` [1, 1] (eV), ``forces`` [N, 3] (eV/A) and ``virial`` [1, 3, 3]
    (-dE/d(strain), eV), all float64 and detached; a model with output heads
    (:mod:`mlip.nn.heads`) adds theirs: ``charges`` [N] (e), ``dipole`` [1, 3] (e*A),
    ``polarizability`` [1, 3, 3] (A^3), ``structure_output`` [1, D], ``atom_output`` [N, D].
    The optional input ``total_charge`` [1] (e; default 0) is the charge the dipole head's
    charges sum to.
    """

    def __init__(self, potential: Potential, model_dtype: torch.dtype, trusted_inputs: bool = False):
        super().__init__()
        # True only where mlip builds the inputs itself (the ASE calculator: cutoff-exact edges,
        # positions checked): no input checks and no cutoff filter, so that the call traces into
        # one graph of fixed control flow (compile=True). Exported files always check
        self.trusted_inputs = trusted_inputs
        self.potential = potential
        # the dtype the network computes in, as a buffer so TorchScript (and freezing) see it
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=model_dtype))
        # inputs the registry declares optional, passed on when given: the opposite-edge pairing
        # (edge_pair, pair_edge) comes from the ASE calculator, never from LAMMPS
        self.optional_fields: List[str] = [name for name, field in K.FIELDS.items() if field.optional]
        self.type_names: List[str] = list(potential.type_names)
        self.r_max = float(potential.r_max)
        self.num_message_layers = int(potential.num_message_layers)
        # the energy of an atom without neighbours, per type (eV): what a rank reports for the
        # atoms it holds but need not compute (mlip.deploy.domain)
        self.register_buffer("isolated_energy", isolated_atom_energies(potential, model_dtype))
        # whether the exported metadata r_max covers the interaction range (LAMMPS' ghost shell
        # then holds every atom a local atom's energy depends on); False: a file for one rank
        self.ghost_shell = True

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The plugin's inputs (Angstrom, float64) -> its outputs (eV, eV/A; see the module docstring)."""
        f64 = torch.float64
        if not self.trusted_inputs:
            check_inputs(data, self.type_names)
        # detached: only these positions and the strain are differentiated, whatever the caller holds
        pos = data[K.POSITIONS].to(f64).detach()
        n = pos.shape[0]
        device = pos.device
        edge_index = data[K.EDGE_INDEX].to(torch.long)
        if K.CELL not in data:
            # pair_style allegro: one MPI rank's local and ghost atoms (mlip.deploy.domain)
            return self.rank_share(pos, data[K.ATOM_TYPES].to(torch.long).view(-1), edge_index)
        # pair_style nequip or the ASE calculator: one whole structure, images by cell shifts.
        # The plugin's edges reach the interaction range (the metadata r_max): keep the model's
        cell = data[K.CELL].to(f64).view(1, 3, 3)
        shifts = data[K.EDGE_CELL_SHIFT].to(f64)
        if not self.trusted_inputs:
            edge_index, shifts = edges_within(pos, cell[0], edge_index, shifts, self.r_max)
        pbc = torch.ones(1, 3, dtype=torch.bool, device=device)
        # the plugin gives no batch or num_atoms: one structure; no model reads pbc (the shifts
        # and the cell carry the periodicity)
        graph: Dict[str, torch.Tensor] = {
            K.POSITIONS: pos,
            K.ATOM_TYPES: data[K.ATOM_TYPES].to(torch.long).view(-1),
            K.EDGE_INDEX: edge_index,
            K.EDGE_CELL_SHIFT: shifts,
            K.CELL: cell,
            K.BATCH: torch.zeros(n, dtype=torch.long, device=device),
            K.NUM_ATOMS: torch.full([1], n, dtype=torch.long, device=device),
            K.PBC: pbc,
        }
        for name in self.optional_fields:
            if name in data:
                value = data[name]
                # as the declared inputs: floating values in float64 (the geometry's precision),
                # integer values (indices) as int64
                graph[name] = value.to(f64) if value.is_floating_point() else value.to(torch.long)
        out = self.potential.energy_and_derivatives(graph, compute_forces=True, compute_virial=True,
                                                    create_graph=False, network_dtype=self.dtype_probe.dtype)
        result = {
            K.ATOMIC_ENERGY: out[K.ATOMIC_ENERGY].to(f64).view(n, 1).detach(),
            K.TOTAL_ENERGY: out[K.TOTAL_ENERGY].to(f64).view(1, 1).detach(),
            K.FORCES: out[K.FORCES].detach(),
            K.VIRIAL: out[K.VIRIAL].detach(),
        }
        # extra outputs of a model with output heads (charges, dipole, polarizability, generic
        # outputs), float64; the LAMMPS plugin reads none of them
        for name in self.potential.output_fields:
            result[name] = out[name].to(f64).detach()
        return result

    def rank_share(self, pos: torch.Tensor, atom_types: torch.Tensor,
                   plugin_edges: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One MPI rank under pair_style allegro (:mod:`mlip.deploy.domain`): the energy of its
        local atoms, and its derivatives with respect to every atom it holds. A rank holds only
        part of a structure: no output heads here."""
        f64 = torch.float64
        n = pos.shape[0]
        device = pos.device
        if not self.ghost_shell and self.num_message_layers > 1:
            raise RuntimeError("mlip model: this file was exported with --single-rank (LAMMPS' ghost shell "
                               "is one cutoff, too thin for " + str(self.num_message_layers) + " message-passing "
                               "layers): run it under pair_style nequip, or export it again without "
                               "--single-rank for pair_style allegro")
        nodes, edge_index, counted = domain_graph(pos, plugin_edges, self.r_max, self.num_message_layers)
        m = nodes.shape[0]
        graph: Dict[str, torch.Tensor] = {
            K.POSITIONS: pos.index_select(0, nodes),
            K.ATOM_TYPES: atom_types.index_select(0, nodes),
            K.EDGE_INDEX: edge_index,
            K.EDGE_CELL_SHIFT: torch.zeros(edge_index.shape[1], 3, dtype=f64, device=device),
            K.CELL: torch.zeros(1, 3, 3, dtype=f64, device=device),
            K.BATCH: torch.zeros(m, dtype=torch.long, device=device),
            K.NUM_ATOMS: torch.full([1], m, dtype=torch.long, device=device),
            K.PBC: torch.zeros(1, 3, dtype=torch.bool, device=device),
            # edges into the counted atoms come first: the last layer needs no other
            K.LAST_LAYER_EDGES: (counted.index_select(0, edge_index[0]).sum()).view(1),
        }
        out = self.potential.energy_and_derivatives(graph, compute_forces=True, compute_virial=True,
                                                    create_graph=False, network_dtype=self.dtype_probe.dtype,
                                                    counted_atoms=counted)
        atomic_energy = self.isolated_energy.index_select(0, atom_types).to(f64)
        atomic_energy = atomic_energy.index_copy(0, nodes, out[K.ATOMIC_ENERGY].to(f64).view(-1).detach())
        forces = torch.zeros(n, 3, dtype=f64, device=device)
        forces = forces.index_copy(0, nodes, out[K.FORCES].to(f64).detach())
        return {
            K.ATOMIC_ENERGY: atomic_energy.view(n, 1),
            K.TOTAL_ENERGY: out[K.TOTAL_ENERGY].to(f64).view(1, 1).detach(),
            K.FORCES: forces,
            K.VIRIAL: out[K.VIRIAL].to(f64).detach(),
        }


def isolated_atom_energies(potential: Potential, model_dtype: torch.dtype) -> torch.Tensor:
    """The energy (eV, float64) the model gives an atom of each type with no neighbour, [T]."""
    f64 = torch.float64
    device = next((p.device for p in potential.parameters()), torch.device("cpu"))
    t = len(potential.type_names)
    graph: Dict[str, torch.Tensor] = {
        K.POSITIONS: torch.zeros(t, 3, dtype=f64, device=device),
        K.ATOM_TYPES: torch.arange(t, device=device),
        K.EDGE_INDEX: torch.zeros(2, 0, dtype=torch.long, device=device),
        K.EDGE_CELL_SHIFT: torch.zeros(0, 3, dtype=f64, device=device),
        K.CELL: torch.zeros(1, 3, 3, dtype=f64, device=device),
        K.BATCH: torch.zeros(t, dtype=torch.long, device=device),
        K.NUM_ATOMS: torch.full([1], t, dtype=torch.long, device=device),
        K.PBC: torch.zeros(1, 3, dtype=torch.bool, device=device),
    }
    with torch.no_grad():
        out = potential.energy_and_derivatives(graph, compute_forces=False, compute_virial=False,
                                               network_dtype=model_dtype)
    return out[K.ATOMIC_ENERGY].to(f64).view(-1).detach().clone()


def edges_within(pos: torch.Tensor, cell: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor,
                 r_max: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The edges (and their cell shifts) of length <= ``r_max`` (Angstrom), in their order.

    The plugin's neighbour list reaches the metadata ``r_max``, the interaction range
    ``num_layers * r_max`` of a message-passing model (so that ``pair_style allegro`` gets its
    ghost shell); the network's own graph is the part within its cutoff. A no-op for the ASE
    calculator's inputs, which are built with the cutoff.
    """
    vectors = pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0]) + shifts @ cell
    keep = (vectors * vectors).sum(-1) <= r_max * r_max
    if bool(keep.all()):
        return edge_index, shifts
    return edge_index[:, keep], shifts[keep]


def check_inputs(data: Dict[str, torch.Tensor], type_names: List[str]) -> None:
    """Raise a one-line RuntimeError (LAMMPS stops with it) unless ``data`` is an input this
    model computes exactly: positions [N, 3] finite, atom types [N] in the model's range, edge
    indices [2, E] of existing atoms, and ``cell`` [1, 3, 3] with ``edge_cell_shift`` [E, 3]
    together (pair_style nequip, the ASE calculator) or neither (pair_style allegro)."""
    prefix = "mlip model: "
    for key in [K.POSITIONS, K.ATOM_TYPES, K.EDGE_INDEX]:
        if key not in data:
            raise RuntimeError(prefix + "the input has no '" + key + "' (inputs of LAMMPS pair_style nequip or "
                               "allegro, or of mlip's ASE calculator, expected)")
    pos = data[K.POSITIONS]
    if pos.dim() != 2 or pos.shape[1] != 3 or not pos.is_floating_point():
        raise RuntimeError(prefix + "'pos' must be a floating [N, 3] tensor (Angstrom), got shape "
                           + str(pos.shape) + " " + str(pos.dtype))
    n = pos.shape[0]
    finite = torch.isfinite(pos).all(-1)
    if not bool(finite.all()):
        atom = int(torch.nonzero(~finite)[0, 0])
        raise RuntimeError(prefix + "the position of atom " + str(atom) + " (counted from 0) is NaN or inf; "
                           "the simulation has blown up or the input is broken")
    types = data[K.ATOM_TYPES]
    if types.is_floating_point() or types.numel() != n:
        raise RuntimeError(prefix + "'atom_types' must hold one integer per atom (" + str(n) + "), got shape "
                           + str(types.shape) + " " + str(types.dtype))
    if n > 0:
        low, high = int(types.min()), int(types.max())
        if low < 0 or high >= len(type_names):
            bad = low if low < 0 else high
            raise RuntimeError(prefix + "atom type " + str(bad) + " is not one of the model's types 0.."
                               + str(len(type_names) - 1) + " (" + " ".join(type_names) + "); in LAMMPS, "
                               "pair_coeff * * MODEL must name one of these elements for every atom type")
    edges = data[K.EDGE_INDEX]
    if edges.dim() != 2 or edges.shape[0] != 2 or edges.is_floating_point():
        raise RuntimeError(prefix + "'edge_index' must be an integer [2, E] tensor, got shape " + str(edges.shape)
                           + " " + str(edges.dtype))
    if edges.shape[1] > 0 and (int(edges.min()) < 0 or int(edges.max()) >= n):
        raise RuntimeError(prefix + "'edge_index' names atoms outside 0.." + str(n - 1))
    has_cell, has_shifts = K.CELL in data, K.EDGE_CELL_SHIFT in data
    if has_cell != has_shifts:
        raise RuntimeError(prefix + "'cell' and 'edge_cell_shift' come together (pair_style nequip, the ASE "
                           "calculator) or not at all (pair_style allegro); got only one of them")
    if has_cell:
        if data[K.CELL].numel() != 9:
            raise RuntimeError(prefix + "'cell' must be [1, 3, 3] (Angstrom), got shape " + str(data[K.CELL].shape))
        shifts = data[K.EDGE_CELL_SHIFT]
        if shifts.dim() != 2 or shifts.shape[0] != edges.shape[1] or shifts.shape[1] != 3:
            raise RuntimeError(prefix + "'edge_cell_shift' must be [E, 3] with E = " + str(edges.shape[1])
                               + " edges, got shape " + str(shifts.shape))


def make_metadata(record: Mapping[str, Any], dtype: str, allow_tf32: bool = False,
                  num_message_layers: int = 1, ghost_shell: bool = True) -> Dict[str, str]:
    """The ``_extra_files`` strings of an exported model (see the module docstring).

    ``r_max``, the plugin's neighbour-list and ghost cutoff, is the interaction range
    ``num_message_layers * model r_max`` (what pair_style allegro's ghost shell must cover,
    :mod:`mlip.deploy.domain`); the network's own cutoff is ``model_r_max``. Without
    ``ghost_shell`` (a file for one rank), ``r_max`` is the network's cutoff.
    """
    from mlip import __version__

    config = dict(record["config"])
    type_names = [str(t) for t in record["type_names"]]
    for name in type_names:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"type name {name!r} cannot be written space-separated")
    r_max = float(config.get("r_max", 5.0))
    return {
        "r_max": repr((num_message_layers if ghost_shell else 1) * r_max),
        "model_r_max": repr(r_max),
        "num_message_layers": str(int(num_message_layers)),
        "type_names": " ".join(type_names),
        "num_types": str(len(type_names)),
        "allow_tf32": "1" if allow_tf32 else "0",
        "mlip_version": __version__,
        "model_dtype": dtype,
        "config": json.dumps(config, sort_keys=True, default=_json_default),
        "units": "metal",
        "format": EXPORT_FORMAT,
    }


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def script_model(potential: Potential, ghost_shell: bool = True) -> torch.jit.ScriptModule:
    """Script the contract wrapper around a built :class:`~mlip.nn.Potential` (eval mode,
    parameters frozen: only positions and strain are differentiated). ``ghost_shell`` False:
    the file is for one MPI rank (see :func:`export_model`)."""
    dtype = next((p.dtype for p in potential.parameters() if p.is_floating_point()), torch.float32)
    wrapper = LammpsModel(potential, dtype).eval()
    wrapper.ghost_shell = ghost_shell
    for p in wrapper.parameters():
        p.requires_grad_(False)
    return torch.jit.script(wrapper)


def export_model(checkpoint: str, output: str, dtype: Optional[str] = None, use_ema: bool = True,
                 allow_tf32: bool = False, single_rank: bool = False) -> Dict[str, str]:
    """Export the model of an mlip checkpoint or model file as ``output`` (``*.nequip.pth``).

    By default the file runs under both pair styles, on any number of MPI ranks: its metadata
    ``r_max`` (LAMMPS' neighbour and ghost cutoff) is the interaction range ``num_layers x
    r_max``. ``single_rank`` writes the network's cutoff instead: ``pair_style nequip`` (one rank)
    builds a smaller neighbour list (measured 15 % more steps/s on 4096 Si atoms, see
    docs/deploy.md), and the model refuses ``pair_style allegro``, whose ghost shell would be too
    thin for more than one message-passing layer.

    ``dtype`` ("float32" or "float64") rebuilds the network in that precision; the default is the
    dtype it was trained in. EMA weights are used when present unless ``use_ema`` is False.
    Returns the metadata written.
    """
    from mlip.checkpoint import build_from_record, load_record
    from mlip.errors import InputError

    if not output.endswith(EXTENSION):
        raise InputError(f"the output file name must end in '{EXTENSION}' (LAMMPS pair_style nequip "
                         "refuses other names)", output)
    if dtype is not None and dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got '{dtype}'")
    if os.path.exists(checkpoint) and is_torchscript_file(checkpoint):
        raise InputError("this is an exported TorchScript model, not a checkpoint; export from the "
                         "checkpoint or model file written by training", checkpoint)
    record = load_record(checkpoint, use_ema)
    dtype = dtype or str(record.get("dtype", "float32"))
    try:
        potential = build_from_record(record, dtype=dtype, device="cpu", message_backend="torch")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot rebuild the model from its record ({type(exc).__name__}: {exc})",
                         checkpoint) from None
    potential.eval()
    scripted = script_model(potential, ghost_shell=not single_rank)
    metadata = make_metadata(record, dtype, allow_tf32, potential.num_message_layers, ghost_shell=not single_rank)
    save_scripted(scripted, output, metadata)
    return metadata


def save_scripted(module: torch.jit.ScriptModule, path: str, metadata: Mapping[str, str]) -> None:
    """``torch.jit.save`` with metadata, atomically (temporary file in the folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=EXTENSION, dir=folder)
    os.close(fd)
    try:
        torch.jit.save(module, tmp, _extra_files={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_exported(path: str, device: str = "cpu") -> tuple:
    """Load an exported model: ``(module, metadata)``. Raises InputError for unusable files."""
    from mlip.errors import InputError

    if not os.path.exists(path):
        raise InputError("file not found", path)
    if not is_torchscript_file(path):
        raise InputError("not a TorchScript model (expected a file written by `mlip export`)", path)
    extra = {k: "" for k in METADATA_KEYS}
    try:
        module = torch.jit.load(path, map_location=device, _extra_files=extra)
    except Exception as exc:
        raise InputError(f"cannot load TorchScript model ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})", path) from None
    # torch returns the contents as bytes
    extra = {k: (v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)) for k, v in extra.items()}
    missing = [k for k in ("r_max", "type_names") if not extra.get(k)]
    if missing:
        raise InputError(f"TorchScript file lacks the metadata {missing} of the pair_style nequip contract", path)
    module.eval()
    return module, extra


def parse_metadata(extra: Mapping[str, str]) -> Dict[str, Any]:
    """Typed view of the metadata strings."""
    config: Dict[str, Any] = {}
    if extra.get("config"):
        try:
            config = json.loads(extra["config"])
        except json.JSONDecodeError:
            config = {}
    type_names: List[str] = extra.get("type_names", "").split()
    return {
        # the network's cutoff (files exported before model_r_max existed have only the plugin's r_max, which was it)
        "r_max": float(extra.get("model_r_max") or extra["r_max"]),
        "lammps_cutoff": float(extra["r_max"]),
        "num_message_layers": int(extra.get("num_message_layers") or 1),
        "type_names": type_names,
        "num_types": int(float(extra["num_types"])) if extra.get("num_types") else len(type_names),
        "allow_tf32": extra.get("allow_tf32", "") == "1",
        "model_dtype": extra.get("model_dtype") or "float64",
        "config": config,
        "mlip_version": extra.get("mlip_version", ""),
    }
