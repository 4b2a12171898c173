"""Sharded HDF5 data: same graphs as the in-memory path, streaming statistics, corrupt shards."""
import os

import numpy as np
import pytest
import torch

from conftest import EXAMPLE_DATA

from mlip.cli import main
from mlip.data import GraphDataset, read_frames
from mlip.data import keys as K
from mlip.data.hdf5 import HDF5Dataset, read_manifest, write_shards
from mlip.errors import InputError

SI = os.path.join(EXAMPLE_DATA, "si_test.extxyz")


@pytest.fixture(scope="module")
def frames():
    return read_frames(SI)


def _same_graph(a, b):
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("graph_r_max", [None, 4.0])
def test_round_trip_equals_in_memory_graphs(tmp_path, frames, graph_r_max):
    write_shards(frames, str(tmp_path), frames_per_shard=5, graph_r_max=graph_r_max)
    assert len(read_manifest(str(tmp_path))["shards"]) == 3  # 12 frames in shards of 5
    ds = HDF5Dataset([str(tmp_path)], ["Si"], 4.0)
    ref = GraphDataset(frames, ["Si"], 4.0)
    assert len(ds) == len(ref)
    for i in (0, 4, 5, 11):
        _same_graph(ds[i], ref[i])


def test_streaming_statistics(tmp_path, frames):
    stats = write_shards(frames, str(tmp_path), graph_r_max=4.0)["statistics"]
    forces = np.concatenate([f.forces for f in frames])
    assert stats["force_rms"] == pytest.approx(np.sqrt(np.mean(forces ** 2)))
    edges = sum(g[K.EDGE_INDEX].shape[1] for g in GraphDataset(frames, ["Si"], 4.0).graphs)
    assert stats["avg_num_neighbors"] == pytest.approx(edges / sum(len(f) for f in frames))
    # one species: the least-squares E0 is sum(n_i E_i) / sum(n_i^2)
    counts = np.array([len(f) for f in frames])
    energies = np.array([f.energy for f in frames])
    assert stats["e0_least_squares"]["Si"] == pytest.approx(counts @ energies / (counts @ counts), rel=1e-9)


def test_missing_labels_round_trip(tmp_path, frames):
    f = frames[0]
    f2 = type(f)(positions=f.positions, numbers=f.numbers, cell=f.cell, pbc=f.pbc, source="x:0")
    write_shards([f2], str(tmp_path))
    g = HDF5Dataset([str(tmp_path)], ["Si"], 4.0)[0]
    assert float(g[K.ENERGY_WEIGHT]) == 0 and float(g[K.FORCES_WEIGHT].sum()) == 0 and float(g[K.STRESS_WEIGHT]) == 0


def test_truncated_shard_is_named(tmp_path, frames):
    write_shards(frames, str(tmp_path), frames_per_shard=6)
    shard = tmp_path / "shard_00001.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    ds = HDF5Dataset([str(tmp_path)], ["Si"], 4.0)
    ds[0]  # the intact shard still reads
    with pytest.raises(InputError, match="shard_00001.h5: cannot open shard"):
        ds[7]


def test_corrupt_frame_named_and_skippable(tmp_path, frames):
    import h5py

    write_shards(frames, str(tmp_path), frames_per_shard=6)
    with h5py.File(tmp_path / "shard_00000.h5", "r+") as h5:
        a, b = h5["atom_ptr"][2], h5["atom_ptr"][3]
        h5["positions"][a] = np.nan
    ds = HDF5Dataset([str(tmp_path)], ["Si"], 4.0)
    with pytest.raises(InputError, match=r"shard_00000.h5, frame 2, key 'positions'"):
        ds[2]
    lenient = HDF5Dataset([str(tmp_path)], ["Si"], 4.0, skip_corrupt=True)
    _same_graph(lenient[2], ds[3])


def test_missing_shard_and_manifest(tmp_path, frames):
    with pytest.raises(InputError, match="no manifest.json"):
        HDF5Dataset([str(tmp_path)], ["Si"], 4.0)
    write_shards(frames, str(tmp_path), frames_per_shard=6)
    os.remove(tmp_path / "shard_00001.h5")
    with pytest.raises(InputError, match="shard_00001.h5: shard listed in the manifest is missing"):
        HDF5Dataset([str(tmp_path)], ["Si"], 4.0)


def test_dataloader_workers_read_their_own_handles(tmp_path, frames):
    from mlip.data import make_loader

    write_shards(frames, str(tmp_path), frames_per_shard=4)
    ds = HDF5Dataset([str(tmp_path)], ["Si"], 4.0)
    ds[0]  # opens a handle in the parent; workers must not reuse it
    batches = list(make_loader(ds, batch_size=3, num_workers=2))
    assert sum(int(b[K.NUM_ATOMS].numel()) for b in batches) == len(frames)


def test_preprocess_cli(tmp_path, capsys):
    assert main(["preprocess", SI, "-o", str(tmp_path / "out"), "--frames-per-shard", "4", "--r-max", "4.0"]) == 0
    assert "wrote 3 shard(s)" in capsys.readouterr().out
    assert read_manifest(str(tmp_path / "out"))["graph_r_max"] == 4.0


def test_shard_layout_is_the_documented_format(tmp_path, frames):
    """Shards written from the field table keep format mlip-hdf5-1 byte layout (names, dtypes,
    shapes), so folders written by earlier versions and this one read the same; frames read
    back equal what was written, a missing label as None, a molecule's cell as zeros."""
    import h5py

    from ase import Atoms

    from mlip.data import frames_from_atoms_list

    mol = frames_from_atoms_list([Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])])[0]
    mol.energy, mol.stress = -14.2, None
    written = [frames[0], mol, frames[1]]
    write_shards(written, str(tmp_path), graph_r_max=3.0)
    with h5py.File(os.path.join(str(tmp_path), "shard_00000.h5"), "r") as h5:
        atoms = sum(len(f) for f in written)
        layout = {name: (h5[name].dtype.str, h5[name].shape) for name in h5}
    assert layout == {
        "positions": ("<f8", (atoms, 3)), "numbers": ("<i2", (atoms,)), "forces": ("<f8", (atoms, 3)),
        "atom_ptr": ("<i8", (4,)), "cell": ("<f8", (3, 3, 3)), "pbc": ("|b1", (3, 3)), "energy": ("<f8", (3,)),
        "stress": ("<f8", (3, 3, 3)), "edge_index": ("<i4", layout["edge_index"][1]),
        "edge_shift": ("|i1", layout["edge_shift"][1]), "edge_ptr": ("<i8", (4,))}
    ds = HDF5Dataset([str(tmp_path)], ["H", "O", "Si"], 3.0)
    for i, ref in enumerate(written):
        got = ds.read_frame(i)
        np.testing.assert_array_equal(got.positions, ref.positions)
        np.testing.assert_array_equal(got.numbers, ref.numbers)
        assert got.energy == ref.energy and got.numbers.dtype == np.int64 and got.pbc.dtype == bool
        for label in ("forces", "stress"):
            if getattr(ref, label) is None:
                assert getattr(got, label) is None
            else:
                np.testing.assert_array_equal(getattr(got, label), getattr(ref, label))
    assert not ds.read_frame(1).cell.any()
