"""Statistics of a set of frames, computed one way for every data source: least-squares E0s
(eV per species) from the normal equations of energies on species counts, the force RMS (eV/A),
the mean number of neighbours within r_max.

:class:`StreamingStatistics` accumulates them frame by frame in O(species^2) memory: ``mlip
preprocess`` runs it over a whole data set (the manifest records the result) and the trainer
over the training split of files held in memory (:mod:`mlip.train.statistics`), so both give
the same numbers for the same frames.
"""
from typing import Dict, Optional, Tuple

import numpy as np

from mlip.data.frames import Frame


def solve_e0s(ata: np.ndarray, atb: np.ndarray) -> Tuple[np.ndarray, int]:
    """The E0s minimising sum over frames of (E - sum_s n_s E0_s)^2, from the normal equations
    (``ata`` = C^T C, ``atb`` = C^T E for species counts C), and the rank of C^T C. Where
    compositions are collinear (one molecule, fixed ratios) the system is rank deficient and the
    minimum-norm solution is returned: energies are fitted, the split between species is not
    determined by the data."""
    solution, _, rank, _ = np.linalg.lstsq(ata, atb, rcond=None)
    return solution, int(rank)


class StreamingStatistics:
    """Statistics from one pass over the frames, in O(species^2) memory.

    E0 per species by least squares (normal equations accumulated frame by frame), force RMS
    (eV/A), mean number of neighbours within ``r_max`` (when graphs are built), counts.
    """

    def __init__(self, max_z: int = 119):
        self.ata = np.zeros((max_z, max_z))
        self.atb = np.zeros(max_z)
        self.energy_frames = 0
        self.force_sq_sum = 0.0
        self.force_components = 0
        self.edges = 0
        self.atoms = 0
        self.frames = 0
        self.species = np.zeros(max_z, dtype=np.int64)

    def add(self, frame: Frame, num_edges: Optional[int] = None) -> None:
        counts = np.bincount(frame.numbers, minlength=self.ata.shape[0]).astype(np.float64)
        self.species += counts.astype(np.int64)
        self.frames += 1
        self.atoms += len(frame)
        if frame.energy is not None:
            self.ata += np.outer(counts, counts)
            self.atb += counts * frame.energy
            self.energy_frames += 1
        if frame.forces is not None:
            self.force_sq_sum += float(np.sum(frame.forces ** 2))
            self.force_components += frame.forces.size
        if num_edges is not None:
            self.edges += num_edges

    def merge(self, other: "StreamingStatistics") -> None:
        for name in ("ata", "atb", "species"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("energy_frames", "force_sq_sum", "force_components", "edges", "atoms", "frames"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def result(self) -> Dict[str, object]:
        from ase.data import chemical_symbols

        present = np.nonzero(self.species)[0]
        e0: Dict[str, float] = {}
        if self.energy_frames:
            sol, _ = solve_e0s(self.ata[np.ix_(present, present)], self.atb[present])
            e0 = {chemical_symbols[z]: float(v) for z, v in zip(present, sol)}
        return {
            "frames": self.frames,
            "atoms": self.atoms,
            "species": {chemical_symbols[z]: int(self.species[z]) for z in present},
            "e0_least_squares": e0,
            "force_rms": float(np.sqrt(self.force_sq_sum / self.force_components)) if self.force_components else None,
            "avg_num_neighbors": self.edges / self.atoms if self.edges and self.atoms else None,
        }
