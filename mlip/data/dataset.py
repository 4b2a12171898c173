"""A map-style dataset of precomputed graphs, usable with ``torch.utils.data.DataLoader``."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mlip.data.frames import Frame
from mlip.data.graph import Graph, TypeMapper, collate, frame_to_graph


class GraphDataset(Dataset):
    """Graphs built once from frames (neighbour lists are the costly part, so they are cached)."""

    def __init__(self, frames: Sequence[Frame], type_names: Sequence[str], r_max: float,
                 dtype: torch.dtype = torch.float64):
        self.frames = list(frames)
        self.type_mapper = TypeMapper(type_names)
        self.r_max = float(r_max)
        self.graphs: List[Graph] = [frame_to_graph(f, self.type_mapper, self.r_max, dtype) for f in self.frames]

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, idx: int) -> Graph:
        return self.graphs[idx]


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None, **kwargs) -> DataLoader:
    """A DataLoader that yields batched graphs."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=generator, **kwargs)
