"""Reading labels from extxyz (info keys and calculator-held), rMD17 npz with units, and bad input."""
import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip.data import GraphDataset, LabelKeys, NpzKeys, Units, collate, read_frames
from mlip.data import keys as K
from mlip.data.frames import KCAL_PER_MOL_IN_EV
from mlip.errors import InputError

from conftest import EXAMPLE_DATA, shared_path


def _water(energy=-1.5, seed=0):
    rng = np.random.default_rng(seed)
    a = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    a.positions += rng.normal(0, 0.02, (3, 3))
    return a, energy, rng.normal(size=(3, 3))


def test_info_keys_custom_names(tmp_path):
    a, e, f = _water()
    a.info["REF_energy"] = e
    a.arrays["REF_forces"] = f
    path = str(tmp_path / "w.extxyz")
    write(path, a, format="extxyz")
    frames = read_frames(path, keys=LabelKeys(energy="REF_energy", forces="REF_forces"))
    assert frames[0].energy == pytest.approx(e)
    np.testing.assert_allclose(frames[0].forces, f, atol=1e-8)


def test_calculator_held_labels_with_stress(tmp_path):
    a, e, f = _water()
    a.cell = np.diag([5.0, 6.0, 7.0])
    a.pbc = True
    stress = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])
    a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=stress)
    path = str(tmp_path / "w.extxyz")
    write(path, a, format="extxyz")
    fr = read_frames(path)[0]
    assert fr.energy == pytest.approx(e)
    np.testing.assert_allclose(fr.forces, f, atol=1e-8)
    xx, yy, zz, yz, xz, xy = stress
    np.testing.assert_allclose(fr.stress, [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_shipped_example_has_all_labels():
    frames = read_frames(os.path.join(EXAMPLE_DATA, "si_train.extxyz"), required=("energy", "forces", "stress"))
    assert len(frames) > 50 and all(f.pbc.all() for f in frames)


def test_rmd17_npz_units():
    path = shared_path("rmd17", "rmd17_ethanol_train_01.npz")
    raw = np.load(path)
    frames = read_frames(path, index="0:3")
    assert len(frames) == 3
    assert frames[1].energy == pytest.approx(float(raw["energies"][1]) * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(frames[1].forces, raw["forces"][1] * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(frames[1].positions, raw["coords"][1])
    assert list(frames[0].numbers) == list(raw["nuclear_charges"])


def test_npz_custom_keys_and_eV(tmp_path):
    path = str(tmp_path / "m.npz")
    np.savez(path, R=np.random.rand(2, 3, 3), E=np.array([1.0, 2.0]), F=np.zeros((2, 3, 3)), z=np.array([8, 1, 1]))
    frames = read_frames(path, npz_keys=NpzKeys(positions="R", energy="E", forces="F", numbers="z"),
                         units=Units(energy="eV"))
    assert [f.energy for f in frames] == [1.0, 2.0]


def test_batch_offsets_edges():
    frames = read_frames(os.path.join(EXAMPLE_DATA, "si_test.extxyz"), index="0:3")
    ds = GraphDataset(frames, ["Si"], 4.0)
    b = collate([ds[0], ds[1], ds[2]])
    n0, n1 = len(frames[0]), len(frames[1])
    e0, e1 = ds[0][K.EDGE_INDEX].shape[1], ds[1][K.EDGE_INDEX].shape[1]
    assert torch.equal(b[K.EDGE_INDEX][:, e0:e0 + e1], ds[1][K.EDGE_INDEX] + n0)
    assert b[K.BATCH].tolist() == [0] * n0 + [1] * n1 + [2] * len(frames[2])
    assert b[K.CELL].shape == (3, 3, 3)


# ---- bad input: one clear error naming file, frame, key ---------------------------------

def test_missing_file():
    with pytest.raises(InputError, match="nope.xyz: file not found"):
        read_frames("nope.xyz")


def test_unparsable_frame(tmp_path):
    path = tmp_path / "bad.extxyz"
    path.write_text("2\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\nH 0 0 garbage\n")
    with pytest.raises(InputError, match="bad.extxyz, frame 0: cannot parse"):
        read_frames(str(path))


def test_missing_required_label_names_frame_and_key(tmp_path):
    a1, e, f = _water()
    a1.info["energy"] = e
    a2, _, _ = _water(seed=1)
    path = str(tmp_path / "w.extxyz")
    write(path, [a1, a2], format="extxyz")
    with pytest.raises(InputError, match=r"w.extxyz, frame 1, key 'energy': energy label missing"):
        read_frames(path, required=("energy",))


def test_nan_positions(tmp_path):
    a, _, _ = _water()
    a.positions[1, 0] = np.nan
    path = str(tmp_path / "w.extxyz")
    write(path, [_water()[0], a], format="extxyz")
    with pytest.raises(InputError, match=r"frame 1, key 'positions': positions contain NaN"):
        read_frames(path)


def test_species_not_in_type_names():
    frames = read_frames(os.path.join(EXAMPLE_DATA, "si_test.extxyz"), index="0:1")
    with pytest.raises(InputError, match=r"si_test.extxyz, frame 0, key 'numbers': species \['Si'\] not in type_names"):
        GraphDataset(frames, ["H", "O"], 4.0)


def test_zero_volume_cell(tmp_path):
    a, _, _ = _water()
    a.cell = [[3, 0, 0], [0, 3, 0], [3, 3, 0]]
    a.pbc = True
    path = str(tmp_path / "flat.extxyz")
    write(path, a, format="extxyz")
    with pytest.raises(InputError, match=r"frame 0, key 'cell': cell has zero volume"):
        read_frames(path)


def test_unknown_unit():
    with pytest.raises(InputError, match="unknown energy unit 'kcal'"):
        Units(energy="kcal").factors()


def test_collate_driven_by_the_field_registry_equals_the_former_collate(rng):
    """Batching reads mlip.data.keys.FIELDS (what each field is attached to and indexes); the
    batches are exactly those of the collate that named its fields one by one (commit 7312a02)."""
    import importlib.util

    import ase
    import torch

    from mlip.data import keys as K
    from mlip.data.frames import frames_from_atoms_list
    from mlip.data.graph import TypeMapper, collate, frame_to_graph

    spec = importlib.util.spec_from_file_location(
        "former_graph", os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "former_collate.py"))
    former = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(former)
    atoms = []
    for n in (3, 5, 4):
        a = ase.Atoms("H" * n, positions=rng.uniform(0, 3, (n, 3)), cell=np.eye(3) * 3.5, pbc=n != 4)
        a.info["energy"] = float(rng.normal())
        atoms.append(a)
    graphs = [frame_to_graph(f, TypeMapper(["H"]), 2.5) for f in frames_from_atoms_list(atoms)]
    for subset in (graphs, graphs[1:], graphs[:1]):
        new, old = collate(subset), former.collate(subset)
        assert new.keys() == old.keys()
        for k in new:
            assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k
    # an optional field missing from one graph is left out of the batch, as before
    partial = [dict(g) for g in graphs]
    del partial[1][K.EDGE_PAIR], partial[1][K.PAIR_EDGE]
    assert K.EDGE_PAIR not in collate(partial) and K.PAIR_EDGE not in collate(partial)
    assert collate(partial).keys() == former.collate(partial).keys()
    # a required field missing from one graph is an error, not a silent drop
    broken = [dict(g) for g in graphs]
    del broken[2][K.REF_FORCES]
    with pytest.raises(KeyError):
        collate(broken)
