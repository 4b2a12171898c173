"""Statistics stored in the model: E0s (least squares, isolated atoms, given), force-RMS scale,
average neighbour count."""
import math
import warnings

import numpy as np
import pytest

from mlip.data.frames import Frame
from mlip.errors import InputError
from mlip.train.statistics import (average_num_neighbors, compute_statistics, e0s_from_isolated,
                                   e0s_least_squares, force_rms, infer_type_names, split_isolated)


def frame(numbers, energy=None, forces=None, pbc=False, cell=None, positions=None):
    n = len(numbers)
    pos = positions if positions is not None else np.arange(3 * n, dtype=float).reshape(n, 3) * 1.7
    return Frame(positions=pos, numbers=np.array(numbers), cell=np.zeros((3, 3)) if cell is None else cell,
                 pbc=np.array([pbc] * 3), energy=energy, forces=forces)


def test_least_squares_recovers_known_e0s(rng):
    true = {"H": -13.6, "C": -1029.5, "O": -2041.0}
    z = {"H": 1, "C": 6, "O": 8}
    frames = []
    for _ in range(60):
        counts = {s: int(rng.integers(0, 6)) for s in true}
        counts["C"] += 1
        numbers = [z[s] for s, c in counts.items() for _ in range(c)]
        # interaction energy: small and uncorrelated with composition, like a real data set
        energy = sum(true[s] * c for s, c in counts.items()) + rng.normal(0.0, 0.05)
        frames.append(frame(numbers, energy))
    names = infer_type_names(frames)
    assert names == ["H", "C", "O"]  # by atomic number
    e0 = e0s_least_squares(frames, names)
    np.testing.assert_allclose(e0, [true[s] for s in names], atol=0.05)


def test_least_squares_rank_deficient_warns_and_fits_energies():
    # one composition only (as in rMD17): the split between species is not determined
    frames = [frame([6, 1, 1], energy=-1100.0 + 0.01 * i) for i in range(5)]
    with pytest.warns(UserWarning, match="rank"):
        e0 = e0s_least_squares(frames, ["H", "C"])
    assert 2 * e0[0] + e0[1] == pytest.approx(-1099.98, abs=1e-6)  # the mean energy


def test_isolated_atoms_give_e0s_and_are_split_off():
    iso_h = frame([1], energy=-13.6)
    iso_o = frame([8], energy=-2041.0)
    # a one-atom periodic crystal is not an isolated atom: it sees its own images
    crystal = frame([8], energy=-2045.0, pbc=True, cell=np.eye(3) * 2.5, positions=np.zeros((1, 3)))
    molecule = frame([1, 8], energy=-2060.0)
    iso, rest = split_isolated([iso_h, molecule, iso_o, crystal], r_max=4.0)
    assert iso == [iso_h, iso_o] and rest == [molecule, crystal]
    np.testing.assert_allclose(e0s_from_isolated(iso, ["H", "O"]), [-13.6, -2041.0])
    with pytest.raises(InputError, match=r"missing \['C'\]"):
        e0s_from_isolated(iso, ["H", "C", "O"])


def test_given_e0s_must_cover_species_and_scale_is_force_rms():
    forces = np.array([[3.0, 0.0, 0.0], [0.0, -4.0, 0.0]])
    frames = [frame([1, 8], energy=-2060.0, forces=forces)]
    graphs = [{"edge_index": np.zeros((2, 6)), "num_atoms": np.array([2])}]
    stats = compute_statistics(frames, graphs, ["H", "O"], {"H": -13.0, "O": -2000.0})
    assert stats.e0s == [-13.0, -2000.0] and stats.e0_method == "given"
    assert stats.energy_scale == pytest.approx(math.sqrt(25.0 / 6.0)) == force_rms(frames)
    assert stats.avg_num_neighbors == pytest.approx(3.0)
    entries = stats.model_entries()
    assert entries["atomic_energy_shifts"] == [-13.0, -2000.0]
    assert entries["atomic_energy_scales"] == [stats.energy_scale] * 2
    with pytest.raises(InputError, match=r"\['O'\]"):
        compute_statistics(frames, graphs, ["H", "O"], {"H": -13.0})


def test_average_num_neighbors_on_real_graphs():
    import torch

    from mlip.data import TypeMapper, frame_to_graph

    # a dimer and a trimer in a line, 1.5 A apart, cutoff 2 A: 2 + 4 directed edges over 5 atoms
    f1 = frame([1, 1], positions=np.array([[0.0, 0, 0], [1.5, 0, 0]]))
    f2 = frame([1, 1, 1], positions=np.array([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0, 0]]))
    tm = TypeMapper(["H"])
    graphs = [frame_to_graph(f, tm, 2.0, torch.float64) for f in (f1, f2)]
    assert average_num_neighbors(graphs) == pytest.approx(6 / 5)


def test_statistics_in_a_training_run_match_the_synthetic_truth(tmp_path):
    """The E0 fit inside the trainer recovers the per-species offsets of the LJ data set."""
    from test_train_helpers import E0_TRUE, lj_frames

    from mlip.data import frames_from_atoms_list
    from mlip.train.statistics import e0s_least_squares as fit

    frames = frames_from_atoms_list(lj_frames(40, seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two species with varying counts: full rank, no warning
        e0 = fit(frames, ["C", "Si"])
    # the LJ energy per atom (~ -0.3 eV, species-blind) is absorbed equally into both E0s
    offset = e0 - np.array([E0_TRUE["C"], E0_TRUE["Si"]])
    lj_per_atom = np.mean([(f.energy - sum(E0_TRUE["C"] if z == 6 else E0_TRUE["Si"] for z in f.numbers)) / len(f)
                           for f in frames])
    np.testing.assert_allclose(offset, [lj_per_atom, lj_per_atom], atol=0.03)


def test_files_and_hdf5_folders_give_the_same_statistics(tmp_path):
    """One way of computing: E0s and force RMS of frames in memory equal those that
    `mlip preprocess` records for the same frames (the same accumulation, bit for bit)."""
    from test_train_helpers import lj_frames

    from mlip.data import frames_from_atoms_list
    from mlip.data.hdf5 import write_shards
    from mlip.train.statistics import compute_statistics

    frames = frames_from_atoms_list(lj_frames(30, seed=5))
    recorded = write_shards(frames, str(tmp_path / "h5"))["statistics"]
    stats = compute_statistics(frames, [], ["C", "Si"], "least_squares")
    assert stats.e0s == [recorded["e0_least_squares"][s] for s in ("C", "Si")]
    assert stats.energy_scale == recorded["force_rms"]
