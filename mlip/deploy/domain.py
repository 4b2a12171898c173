"""One MPI rank's share of a message-passing model under LAMMPS ``pair_style allegro``.

What the plugin's allegro mode (``PairNequIPAllegro<false>``, newton on) gives a model, read
from ``pair_nequip_allegro.cpp``: the nodes are all atoms the rank holds, its local atoms
(indices ``0 .. nlocal-1``) and then its ghost atoms, at their explicit positions (images
included, no ``cell``, no ``edge_cell_shift``); ``edge_index`` holds only edges *from* local
atoms, to every atom within the metadata ``r_max``. LAMMPS then sums ``atomic_energy`` over the
local atoms only, adds the ``forces`` returned for every node and reverse-communicates the
ghosts' forces to the ranks that own them, and sums the ``virial`` over ranks.

That contract is exact for a strictly local model (one layer). A model of L message-passing
layers with cutoff r needs more: the energy of atom i depends on every atom within L*r of it.
So we give LAMMPS the interaction range L*r as the model's ``r_max`` (LAMMPS's ghost shell and
neighbour list then cover it; the user sets nothing) and the model does the rest itself:

1. the local atoms are the sources of the plugin's edges (a local atom with no neighbour
   within L*r has no edge either, and then its energy does not depend on any position);
2. its own radius graph with cutoff r among the atoms within L*r of a local atom
   (:func:`radius_graph`, an O(N) cell list in plain torch ops, so it is scripted with the
   model);
3. only the edges whose receiver lies within (L-1)*r of a local atom: nothing farther can reach
   a local atom's energy in L layers (a node at distance k*r needs correct features of layer
   L-k, which need incoming edges only when k < L);
4. the model runs on the atoms that are an end of one of these edges (and the local atoms);
   every other atom has no neighbour the model sees, and its energy (read by LAMMPS for local
   atoms only) is the isolated atom's, a per-type constant computed once;
5. the last layer takes only the edges into local atoms (the leading ones: local atoms have the
   lowest indices and edges are ordered by receiver), as nothing else reaches their energies;
6. the energy that is differentiated is the sum over local atoms (``counted``), so the forces
   on ghost atoms are exactly the share LAMMPS sends back to their owners, and the rank's
   virial is its share of the total.

The sum over ranks then equals the energy, forces and virial of the whole system to rounding.
The price is the ghost shell: every rank computes the features of all atoms within (L-1)*r of
its domain and embeds those within L*r (``docs/deploy.md`` has measured figures).
"""
from typing import List, Optional, Tuple

import torch


def radius_graph(pos: torch.Tensor, r_max: float, centres: Optional[torch.Tensor] = None,
                 chunk: int = 16384) -> torch.Tensor:
    """Directed edges ``[2, E]`` (row 0 the centre, row 1 the neighbour; no self-pairs) between
    points of ``pos`` [N, 3] (Angstrom, no periodicity) at distance <= ``r_max``, ordered by
    centre: every centre's edges to all points, for the points ``centres`` (indices, ascending;
    None: all points, so both directions of every pair are present).

    A cell list: points are binned into cubes of side ``r_max``, and each point is compared
    with the points of its own and the 26 adjacent cubes, found by binary search in the sorted
    cube keys. Work and memory are O(N) for a bounded density; ``chunk`` centres at a time.
    """
    n = pos.shape[0]
    device = pos.device
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    p = pos.detach()
    lo = p.min(0).values
    cube = torch.floor((p - lo) / r_max).to(torch.long)
    dims = cube.max(0).values + 1
    key = (cube[:, 0] * dims[1] + cube[:, 1]) * dims[2] + cube[:, 2]
    sorted_key, order = torch.sort(key)
    k = torch.arange(27, dtype=torch.long, device=device)
    offsets = torch.stack([k // 9, (k // 3) % 3, k % 3], 1) - 1  # the 27 cubes around, [27, 3]
    r2 = r_max * r_max
    if centres is None:
        centres = torch.arange(n, dtype=torch.long, device=device)
    rows: List[torch.Tensor] = []
    neighbours: List[torch.Tensor] = []
    for begin in range(0, centres.shape[0], chunk):
        these = centres[begin:begin + chunk]
        around = cube.index_select(0, these).unsqueeze(1) + offsets.unsqueeze(0)  # [C, 27, 3]
        inside = ((around >= 0) & (around < dims)).all(-1).view(-1)
        around_key = ((around[..., 0] * dims[1] + around[..., 1]) * dims[2] + around[..., 2]).view(-1)
        first = torch.searchsorted(sorted_key, around_key)
        last = torch.searchsorted(sorted_key, around_key, right=True)
        count = torch.where(inside, last - first, torch.zeros_like(first))
        total = int(count.sum())
        centre = these.repeat_interleave(27).repeat_interleave(count, output_size=total)
        segment = torch.cumsum(count, 0) - count
        within = torch.arange(total, dtype=torch.long, device=device) - segment.repeat_interleave(count, output_size=total)
        other = order[first.repeat_interleave(count, output_size=total) + within]
        d = p.index_select(0, other) - p.index_select(0, centre)
        keep = ((d * d).sum(-1) <= r2) & (centre != other)
        rows.append(centre[keep])
        neighbours.append(other[keep])
    if len(rows) == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    return torch.stack([torch.cat(rows), torch.cat(neighbours)])


def domain_graph(pos: torch.Tensor, plugin_edges: torch.Tensor, r_max: float,
                 num_layers: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graph a rank evaluates under ``pair_style allegro``, on the atoms it needs.

    ``pos`` [N, 3]: local and ghost atoms (Angstrom); ``plugin_edges`` [2, E]: the plugin's
    edges, from local atoms to all atoms within ``num_layers * r_max``. Returns ``nodes`` [M]
    (ascending indices into ``pos``: the atoms that are an end of an edge, or local), the
    model's edges ``[2, E']`` among them (numbered 0..M-1; cutoff ``r_max``; receivers within
    ``(num_layers - 1) * r_max`` of a local atom; see the module docstring) and ``counted`` [M]
    (bool), the local atoms whose energies the rank sums. An atom outside ``nodes`` has no
    neighbour the model sees: its energy is the isolated atom's.
    """
    n = pos.shape[0]
    device = pos.device
    p = pos.detach()
    source, target = plugin_edges[0], plugin_edges[1]
    counted = torch.zeros(n, dtype=torch.bool, device=device)
    counted[source] = True
    d = p.index_select(0, target) - p.index_select(0, source)
    length2 = (d * d).sum(-1)
    if num_layers == 1:
        # strictly local: the plugin's edges within r_max are the whole graph
        edges = plugin_edges[:, length2 <= r_max * r_max]
    else:
        needed = counted.clone()
        needed[target] = True
        reach = (num_layers - 1) * r_max
        receiver = counted.clone()
        receiver[target[length2 <= reach * reach]] = True
        subset = torch.nonzero(needed).view(-1)
        # the cell list holds every atom within reach; edges are searched for receivers only
        centres = torch.nonzero(receiver.index_select(0, subset)).view(-1)
        edges = subset[radius_graph(p.index_select(0, subset), r_max, centres)]
    used = counted.clone()
    used[edges.view(-1)] = True
    nodes = torch.nonzero(used).view(-1)
    renumber = torch.full([n], -1, dtype=torch.long, device=device)
    renumber[nodes] = torch.arange(nodes.shape[0], dtype=torch.long, device=device)
    # local atoms have the lowest indices and edges come ordered by receiver: the edges into
    # counted atoms, all the last layer needs, are the leading ones (keys.LAST_LAYER_EDGES)
    return nodes, renumber[edges], counted.index_select(0, nodes)
