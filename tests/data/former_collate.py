"""The collate of commit 7312a02, which named its fields one by one: kept as the reference that
tests/test_data.py compares the registry-driven collate with (bit for bit)."""
from typing import Sequence

import numpy as np
import torch

from mlip.data import keys as K

Graph = dict


def collate(graphs: Sequence[Graph]) -> Graph:
    """Concatenate graphs into one batch (nodes concatenated, edge indices offset)."""
    if len(graphs) == 1:
        return dict(graphs[0])
    counts = torch.cat([g[K.NUM_ATOMS] for g in graphs])
    offsets = torch.cumsum(counts, 0) - counts
    out: Graph = {}
    if all(K.EDGE_PAIR in g and K.PAIR_EDGE in g for g in graphs):
        n_edges = [int(g[K.EDGE_INDEX].shape[1]) for g in graphs]
        n_pairs = [int(g[K.PAIR_EDGE].shape[0]) for g in graphs]
        edge_off = np.cumsum([0] + n_edges[:-1]).tolist()
        pair_off = np.cumsum([0] + n_pairs[:-1]).tolist()
        out[K.EDGE_PAIR] = torch.cat([g[K.EDGE_PAIR] + off for g, off in zip(graphs, pair_off)])
        out[K.PAIR_EDGE] = torch.cat([g[K.PAIR_EDGE] + off for g, off in zip(graphs, edge_off)])
    for key in graphs[0]:
        if key in (K.EDGE_PAIR, K.PAIR_EDGE):
            continue  # offset above, or dropped when some graph lacks them
        if key == K.EDGE_INDEX:
            out[key] = torch.cat([g[key] + off for g, off in zip(graphs, offsets.tolist())], dim=1)
        elif key == K.BATCH:
            out[key] = torch.repeat_interleave(torch.arange(len(graphs)), counts)
        else:
            out[key] = torch.cat([g[key] for g in graphs], dim=0)
    return out
