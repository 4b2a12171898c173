"""`mlip train` on folders written by `mlip preprocess`: the lazily read HDF5 path must train
exactly as the in-memory path on the same frames, with DataLoader workers, under DDP, and stop
on unreadable frames (naming shard and frame) unless asked to skip them."""
import glob
import os

import numpy as np
import pytest
from test_ddp import _assert_same_run, _latest, _max_diff, _torchrun
from test_train_helpers import TINY_MODEL, tiny_config, write_config, write_frames

from mlip.data import read_frames
from mlip.data.hdf5 import write_shards
from mlip.errors import InputError

TOL = 1e-8


def _train(raw: dict):
    from mlip.train.config import validate
    from mlip.train.trainer import train

    train(validate(raw), echo=False)
    return _latest(raw["output_dir"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("h5train")
    train_xyz = write_frames(str(tmp / "train.extxyz"), 13, seed=5)
    valid_xyz = write_frames(str(tmp / "valid.extxyz"), 3, seed=6)
    # several shards, graphs stored at the model's cutoff (so the neighbour count is the manifest's)
    write_shards(read_frames(train_xyz), str(tmp / "train_h5"), frames_per_shard=4, graph_r_max=TINY_MODEL["r_max"])
    write_shards(read_frames(valid_xyz), str(tmp / "valid_h5"), frames_per_shard=2)
    return tmp


def _config(tmp, name: str, train_file: str, valid_file=None, **data):
    raw = tiny_config(tmp, train_file, data=dict({"batch_size": 3, "valid_batch_size": 2}, **data),
                      optim={"lr": 0.01, "max_epochs": 2})
    if valid_file is not None:
        raw["data"]["valid_file"] = valid_file
    raw["output_dir"] = str(tmp / name)
    return raw


@pytest.fixture(scope="module")
def in_memory_run(data):
    return _train(_config(data, "xyz", str(data / "train.extxyz"), str(data / "valid.extxyz")))


@pytest.mark.parametrize("workers", [0, 2])
def test_hdf5_folder_trains_like_the_file(data, in_memory_run, workers):
    run = _train(_config(data, f"h5_w{workers}", str(data / "train_h5"), str(data / "valid_h5"),
                         num_workers=workers))
    assert run["global_step"] == in_memory_run["global_step"]
    ref_stats, stats = in_memory_run["statistics"], run["statistics"]
    assert stats["num_train"] == 13 and stats["num_valid"] == 3
    np.testing.assert_allclose(stats["e0s"], ref_stats["e0s"], rtol=1e-9, atol=1e-9)
    assert stats["energy_scale"] == pytest.approx(ref_stats["energy_scale"], rel=1e-12)
    assert stats["avg_num_neighbors"] == pytest.approx(ref_stats["avg_num_neighbors"], rel=1e-12)
    assert _max_diff(run["model"]["state_dict"], in_memory_run["model"]["state_dict"]) < TOL
    for ha, hb in zip(run["history"], in_memory_run["history"]):
        assert ha["valid_forces_rmse"] == pytest.approx(hb["valid_forces_rmse"], rel=1e-6)
    log = open(os.path.join(data, f"h5_w{workers}", "log.txt")).read()
    assert "E0s from the manifest" in log and "neighbour count from the manifest" in log


def test_split_by_index_and_sampled_neighbour_count(data):
    # the validation folder has no stored graphs: training on it (split by index) must take the
    # neighbour count from a sample of its training frames, i.e. all of them here
    raw = _config(data, "h5_split", str(data / "valid_h5"))
    raw["data"]["valid_fraction"] = 0.34
    run = _train(raw)
    assert (run["statistics"]["num_train"], run["statistics"]["num_valid"]) == (2, 1)
    log = open(os.path.join(data, "h5_split", "log.txt")).read()
    assert "neighbour count from 2 sampled training structures" in log
    assert "train 2 structures" in log and "valid 1 structures" in log
    # the validation structure's per-structure output names its shard and frame
    csvs = glob.glob(os.path.join(data, "h5_split", "test", "valid*.csv"))
    assert csvs and "shard_0000" in open(csvs[0]).read()


def test_train_index_is_refused_for_a_folder(data):
    from mlip.train.config import validate
    from mlip.train.trainer import train

    raw = _config(data, "h5_index", str(data / "train_h5"), train_index="0:5")
    with pytest.raises(InputError, match="data.train_index"):
        train(validate(raw), echo=False)


def test_corrupt_frame_stops_training_unless_skipped(data, tmp_path):
    import shutil

    import h5py

    folder = tmp_path / "bad_h5"
    shutil.copytree(data / "train_h5", folder)
    with h5py.File(folder / "shard_00001.h5", "r+") as h5:
        h5["positions"][h5["atom_ptr"][1]] = np.nan
    raw = _config(tmp_path, "bad", str(folder), str(data / "valid_h5"))
    from mlip.train.config import validate
    from mlip.train.trainer import train

    with pytest.raises(InputError, match=r"shard_00001.h5, frame 1, key 'positions'"):
        train(validate(raw), echo=False)
    raw = _config(tmp_path, "skip", str(folder), str(data / "valid_h5"), skip_corrupt=True)
    run = _train(raw)
    assert run["epoch"] >= 1


def test_two_processes_on_hdf5_match_one(data):
    single = _config(data, "h5_single", str(data / "train_h5"), str(data / "valid_h5"))
    single["data"]["batch_size"] = 4  # 13 structures: batches 4,4,4,1 (rank 1 idle in the last)
    single.setdefault("train", {})["checkpoint_every_steps"] = 3
    ref = _train(single)
    ddp = dict(single, output_dir=str(data / "h5_ddp"))
    _torchrun(write_config(str(data / "h5_ddp.yaml"), ddp))
    _assert_same_run(ref, _latest(str(data / "h5_ddp")))


def test_finetune_on_an_hdf5_folder(data, in_memory_run, tmp_path):
    """Fine-tuning reads the new data from a folder: E0s kept, weights start at the foundation's."""
    foundation = os.path.join(data, "xyz", "best_model.pt")
    raw = _config(tmp_path, "ft", str(data / "valid_h5"), valid_fraction=0.34)
    del raw["model"]
    raw["finetune"] = {"from": foundation, "freeze": ["embedding"], "e0s": "keep"}
    raw["optim"]["max_epochs"] = 1
    run = _train(raw)
    assert run["statistics"]["e0s"] == pytest.approx(in_memory_run["statistics"]["e0s"], rel=1e-12)
    assert run["global_step"] == 1
    assert "fine-tuning" in open(os.path.join(tmp_path, "ft", "log.txt")).read()


def test_split_folder_statistics_come_from_the_training_split_only(data):
    """Validation frames split off a folder must not enter E0s or the energy scale (the
    manifest's numbers cover every frame of the folder, the validation ones too)."""
    from mlip.data.hdf5 import HDF5Dataset, read_manifest
    from mlip.train.data import split_indices
    from mlip.train.statistics import compute_statistics

    raw = _config(data, "h5_split_stats", str(data / "train_h5"))
    raw["data"]["valid_fraction"] = 0.3
    run = _train(raw)
    stats = run["statistics"]
    dataset = HDF5Dataset(str(data / "train_h5"), ["C", "Si"], TINY_MODEL["r_max"])
    train_idx, valid_idx = split_indices(len(dataset), 0.3, raw["seed"])
    assert (stats["num_train"], stats["num_valid"]) == (len(train_idx), len(valid_idx))
    frames = [dataset.read_frame(i) for i in train_idx]
    want = compute_statistics(frames, [dataset[i] for i in train_idx], ["C", "Si"], "least_squares")
    np.testing.assert_allclose(stats["e0s"], want.e0s, rtol=1e-9, atol=1e-9)
    assert stats["energy_scale"] == pytest.approx(want.energy_scale, rel=1e-12)
    assert stats["avg_num_neighbors"] == pytest.approx(want.avg_num_neighbors, rel=1e-12)
    # the whole folder's numbers differ: the check above can tell them apart
    manifest = read_manifest(str(data / "train_h5"))["statistics"]
    assert abs(manifest["force_rms"] - want.energy_scale) > 1e-6
    log = open(os.path.join(data, "h5_split_stats", "log.txt")).read()
    assert f"from {len(train_idx)} sampled training structures" in log
