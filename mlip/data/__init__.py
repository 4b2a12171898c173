"""Reading labelled structures and turning them into batched radius graphs."""
from mlip.data.frames import Frame, LabelKeys, NpzKeys, Units, read_frames, read_npz, frames_from_atoms_list
from mlip.data.graph import Graph, TypeMapper, collate, frame_to_graph, to_device
from mlip.data.dataset import GraphDataset, make_loader

__all__ = ["Frame", "LabelKeys", "NpzKeys", "Units", "read_frames", "read_npz", "frames_from_atoms_list",
           "Graph", "TypeMapper", "collate", "frame_to_graph", "to_device", "GraphDataset", "make_loader"]
