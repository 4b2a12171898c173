"""Output heads in data, loss, metrics, evaluation and deployment (issue 19): labels read like
energies (extxyz info/arrays, units, HDF5 with old folders), the loss with per-term weights,
masks and automatic balancing, metrics only where a head is labelled, the calculator and the
exported model, and joint training that lowers every term's validation error."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from ase import Atoms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train_helpers import tiny_config  # noqa: E402

from mlip.data import keys as K  # noqa: E402

TYPES = ["H", "C", "O"]
HEAD_MODEL = dict(architecture="nequip", r_max=3.0, num_layers=2, channels=4, l_max=2, num_bessel=4,
                  radial_hidden=8, readout_hidden=4, avg_num_neighbors=3.0, dipole=True, polarizability=True)


def _molecules(n, seed, teacher=None, charge=0.0):
    """Small H/C/O molecules; with ``teacher`` (a model, or "analytic"), labelled: energy,
    forces, dipole, polarizability (and ``charge`` in info)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        pos = rng.normal(size=(5, 3)) * 0.9
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(5) * 9
        if d.min() < 0.9:
            continue
        atoms = Atoms(numbers=rng.choice([1, 6, 8], size=5), positions=pos)
        atoms.info["charge"] = charge
        out.append(atoms)
    if teacher == "analytic":
        for atoms in out:
            _analytic_labels(atoms)
    elif teacher is not None:
        from mlip.data import TypeMapper, frame_to_graph, frames_from_atoms_list

        tm = TypeMapper(TYPES)
        for atoms in out:
            g = frame_to_graph(frames_from_atoms_list([atoms])[0], tm, teacher.r_max, torch.float64)
            o = teacher(g, compute_forces=True)
            atoms.info["energy"] = float(o[K.TOTAL_ENERGY].detach())
            atoms.arrays["forces"] = o[K.FORCES].detach().numpy()
            atoms.info["dipole"] = o[K.DIPOLE][0].detach().numpy()
            atoms.info["polarizability"] = o[K.POLARIZABILITY][0].detach().numpy().ravel()
    return out


def _analytic_labels(atoms):
    """Smooth model labels: Lennard-Jones energy and forces, a dipole from fixed species charges
    (made neutral), a bond-polarizability model (isotropic atoms plus anisotropic bonds)."""
    from ase.calculators.lj import LennardJones

    atoms.calc = LennardJones(sigma=0.9, epsilon=0.1, rc=3.0, smooth=True)
    atoms.info["energy"] = atoms.get_potential_energy()
    atoms.arrays["forces"] = atoms.get_forces()
    atoms.calc = None
    z, r = atoms.numbers, atoms.positions
    q = np.array([{1: 0.3, 6: -0.1, 8: -0.4}[int(x)] for x in z])
    q = q - q.mean() + atoms.info.get("charge", 0.0) / len(q)
    atoms.info["dipole"] = (q[:, None] * r).sum(0)
    alpha = np.eye(3) * sum({1: 0.7, 6: 1.8, 8: 0.9}[int(x)] for x in z)
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            v = r[j] - r[i]
            d = np.linalg.norm(v)
            if d < 2.5:
                f = 0.5 * (1 + np.cos(np.pi * d / 2.5))
                alpha += f * (0.4 * np.eye(3) + 0.8 * (np.outer(v, v) / d ** 2 - np.eye(3) / 3))
    atoms.info["polarizability"] = alpha.ravel()


def _teacher(seed=11):
    from mlip.nn import build_model

    torch.manual_seed(seed)
    return build_model(dict(HEAD_MODEL, atomic_energy_scales=3.0), TYPES, torch.float64)


# --- data -----------------------------------------------------------------------------------------

def test_labels_read_from_extxyz_with_units(tmp_path):
    import ase.io

    from mlip.data.frames import Units, read_frames

    a = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    a.info.update(energy=-1.0, charge=-1, dipole=np.array([0.1, 0.2, 0.3]),
                  polarizability=np.array([1.0, 2.0, 3.0, 0.5, 0.0, 0.1]))  # Voigt xx yy zz yz xz xy
    b = Atoms("H2O", positions=a.positions)
    b.info.update(energy=-2.0, structure_output=np.array([0.5, 1.0]))
    b.arrays["atom_output"] = np.arange(3.0)
    path = str(tmp_path / "x.extxyz")
    ase.io.write(path, [a, b])
    fa, fb = read_frames(path)
    assert fa.total_charge == -1.0 and fb.total_charge is None
    np.testing.assert_allclose(fa.dipole, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(fa.polarizability, [[1, 0.1, 0], [0.1, 2, 0.5], [0, 0.5, 3]])
    assert fb.dipole is None and fb.polarizability is None
    np.testing.assert_allclose(fb.structure_output, [0.5, 1.0])
    assert fb.atom_output.shape == (3, 1)
    # Bohr: positions, dipole (e*Bohr) and polarizability (Bohr^3) converted to A
    bohr = 0.529177210903
    fa2 = read_frames(path, units=Units(length="Bohr"))[0]
    np.testing.assert_allclose(fa2.dipole, np.array([0.1, 0.2, 0.3]) * bohr)
    np.testing.assert_allclose(fa2.polarizability, fa.polarizability * bohr ** 3)


def test_bad_polarizability_is_an_input_error(tmp_path):
    import ase.io

    from mlip.data.frames import read_frames
    from mlip.errors import InputError

    a = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]])
    a.info["polarizability"] = np.arange(9.0)
    path = str(tmp_path / "bad.extxyz")
    ase.io.write(path, a)
    with pytest.raises(InputError, match="not symmetric"):
        read_frames(path)
    a.info["polarizability"] = np.arange(4.0)
    ase.io.write(path, a)
    with pytest.raises(InputError, match="6 .Voigt. or 9"):
        read_frames(path)


def test_graphs_batch_head_labels_with_masks():
    from mlip.data import TypeMapper, collate, frame_to_graph, frames_from_atoms_list

    a = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]])
    a.info.update(dipole=[1.0, 2.0, 3.0], charge=1.0)
    b = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]])
    b.info["structure_output"] = np.array([4.0, 5.0])
    tm = TypeMapper(["H"])
    g = collate([frame_to_graph(f, tm, 2.0) for f in frames_from_atoms_list([a, b, a])])
    assert g[K.TOTAL_CHARGE].tolist() == [1.0, 0.0, 1.0]
    assert g[K.DIPOLE_WEIGHT].tolist() == [1.0, 0.0, 1.0]
    assert g[K.REF_DIPOLE].tolist() == [[1, 2, 3], [0, 0, 0], [1, 2, 3]]
    assert g[K.POLARIZABILITY_WEIGHT].tolist() == [0.0, 0.0, 0.0]
    # a generic label that only some structures have: zeros of its width elsewhere, weight 0
    assert g[K.REF_STRUCTURE_OUTPUT].tolist() == [[0, 0], [4, 5], [0, 0]]
    assert g[K.STRUCTURE_OUTPUT_WEIGHT].tolist() == [0.0, 1.0, 0.0]
    assert K.REF_STRUCTURE_OUTPUT not in collate([frame_to_graph(f, tm, 2.0) for f in frames_from_atoms_list([a])])


def test_hdf5_round_trip_and_old_folders_read_as_absent(tmp_path):
    import h5py

    from mlip.data.hdf5 import HDF5Dataset, write_shards
    from mlip.data.frames import frames_from_atoms_list

    labelled = _molecules(3, 0, _teacher(), charge=1.0)
    frames = frames_from_atoms_list(labelled + _molecules(2, 1))
    write_shards(frames, str(tmp_path / "h5"), frames_per_shard=3)
    shutil.copytree(str(tmp_path / "h5"), str(tmp_path / "old"))
    ds = HDF5Dataset(str(tmp_path / "h5"), TYPES, 3.0)
    info = ds.frame_info()
    assert info["has_dipole"].tolist() == [True, True, True, False, False]
    assert info["has_polarizability"].tolist() == [True, True, True, False, False]
    for i, f in enumerate(frames):
        back = ds.read_frame(i)
        for name in ("dipole", "polarizability"):
            if getattr(f, name) is None:
                assert getattr(back, name) is None
            else:
                np.testing.assert_array_equal(getattr(back, name), getattr(f, name))
        assert back.total_charge == f.total_charge
    # the second shard has no such frame: the datasets are left out (as in folders written before)
    with h5py.File(str(tmp_path / "h5" / "shard_00001.h5"), "r") as h5:
        assert "dipole" not in h5 and "polarizability" not in h5
    # an old shard: drop the datasets of the first one too
    with h5py.File(str(tmp_path / "old" / "shard_00000.h5"), "a") as h5:
        for name in ("dipole", "polarizability", "total_charge"):
            del h5[name]
    old = HDF5Dataset(str(tmp_path / "old"), TYPES, 3.0)
    assert not old.frame_info()["has_dipole"].any()
    f = old.read_frame(0)
    assert f.dipole is None and f.polarizability is None and f.total_charge is None
    g = old[0]
    assert float(g[K.DIPOLE_WEIGHT]) == 0.0 and float(g[K.TOTAL_CHARGE]) == 0.0


# --- loss and metrics -----------------------------------------------------------------------------

def _batch_and_output(seed=0):
    from mlip.data import TypeMapper, collate, frame_to_graph, frames_from_atoms_list
    from mlip.nn import build_model

    teacher = _teacher()
    atoms = _molecules(4, seed, teacher)
    del atoms[1].info["dipole"]  # one structure without a dipole label
    tm = TypeMapper(TYPES)
    batch = collate([frame_to_graph(f, tm, 3.0) for f in frames_from_atoms_list(atoms)])
    torch.manual_seed(5)
    model = build_model(HEAD_MODEL, TYPES, torch.float64)
    return model, batch, model(batch, compute_forces=True, training=True)


def test_loss_terms_weights_and_masks():
    from mlip.train.loss import LossWeights, compute_loss, label_counts

    model, batch, out = _batch_and_output()
    w = LossWeights(1.0, 10.0, 0.0, dipole=2.0, polarizability=0.5)
    loss, terms = compute_loss(out, batch, w)
    mask = batch[K.DIPOLE_WEIGHT] > 0
    assert mask.tolist() == [True, False, True, True]
    d = (out[K.DIPOLE] - batch[K.REF_DIPOLE])[mask]
    assert torch.allclose(terms["dipole"], d.square().mean())
    p = out[K.POLARIZABILITY] - batch[K.REF_POLARIZABILITY]
    assert torch.allclose(terms["polarizability"], p.square().mean())
    expected = terms["energy"] + 10 * terms["forces"] + 2 * terms["dipole"] + 0.5 * terms["polarizability"]
    assert torch.allclose(loss, expected)
    assert label_counts(batch, w) == {"energy": 4.0, "forces": 60.0, "dipole": 9.0, "polarizability": 36.0}
    # a model without the head cannot train the term
    from mlip.nn import build_model

    plain = build_model(dict(HEAD_MODEL, dipole=False, polarizability=False), TYPES, torch.float64)
    from mlip.errors import InputError
    from mlip.train.loss import check_head_weights

    with pytest.raises(InputError, match="no dipole output"):
        compute_loss(plain(batch, compute_forces=True), batch, w)
    with pytest.raises(InputError, match="loss.polarizability_weight.*model.polarizability: true"):
        check_head_weights({"dipole_weight": 1.0, "polarizability_weight": 2.0}, {"dipole": True})
    check_head_weights({"dipole_weight": 1.0}, {"dipole": True})


def test_uncertainty_balance_follows_the_gradient_of_the_log_terms():
    from mlip.train.loss import LossWeights, compute_loss

    model, batch, out = _batch_and_output()
    params = [p for p in model.parameters() if p.requires_grad]
    plain_w = LossWeights(1.0, 10.0, 0.0, dipole=2.0, polarizability=0.5)
    bal_w = LossWeights(1.0, 10.0, 0.0, dipole=2.0, polarizability=0.5, balance="uncertainty")
    plain, terms = compute_loss(out, batch, plain_w)
    balanced, _ = compute_loss(out, batch, bal_w)
    assert torch.allclose(balanced, plain, rtol=1e-14, atol=0)  # the reported value is the plain sum
    g_bal = torch.autograd.grad(balanced, params, retain_graph=True)
    _, live = compute_loss_terms(out, batch, plain_w)
    log_sum = sum(getattr(plain_w, k) * torch.log(v) for k, v in live.items())
    g_log = torch.autograd.grad(log_sum, params, allow_unused=True, retain_graph=True)
    for a, b in zip(g_bal, g_log):
        torch.testing.assert_close(a, b if b is not None else torch.zeros_like(a), rtol=1e-9, atol=1e-12)
    # unit-free: dipole labels and predictions in Debye instead of e*A give the same gradient
    debye = 4.80320471
    out2 = dict(out, **{K.DIPOLE: out[K.DIPOLE] * debye})
    batch2 = dict(batch, **{K.REF_DIPOLE: batch[K.REF_DIPOLE] * debye})
    g2 = torch.autograd.grad(compute_loss(out2, batch2, bal_w)[0], params, retain_graph=True)
    for a, b in zip(g_bal, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def compute_loss_terms(out, batch, weights):
    """The terms of the loss with their graph (for the reference gradient)."""
    from mlip.train.loss import loss_sums

    sums = loss_sums(out, batch, weights)
    return None, {k: num / den for k, (num, den) in sums.items()}


def test_loss_config_keys_and_stage_weights():
    from mlip.train.config import validate
    from mlip.train.loss import stage_loss_weights

    raw = tiny_config("/tmp", "x.extxyz", loss={"dipole_weight": 3.0, "balance": "uncertainty"})
    raw["model"]["dipole"] = True
    cfg = validate(raw, check_files=False)
    w1 = stage_loss_weights(cfg["loss"], cfg["stage_two"], 1)
    w2 = stage_loss_weights(cfg["loss"], dict(cfg["stage_two"], stress_weight=None), 2)
    assert (w1.dipole, w1.polarizability, w1.balance) == (3.0, 0.0, "uncertainty")
    assert (w2.dipole, w2.balance) == (3.0, "uncertainty")
    assert w1.terms() == ("energy", "forces", "stress", "dipole")
    from mlip.errors import InputError

    with pytest.raises(InputError, match="balance"):
        validate(tiny_config("/tmp", "x.extxyz", loss={"balance": "gradnorm"}), check_files=False)


def test_metrics_report_heads_only_where_labelled():
    from mlip.train.metrics import QUANTITIES, ErrorAccumulator, format_errors, format_table

    model, batch, out = _batch_and_output()
    acc = ErrorAccumulator()
    acc.update(out, batch)
    m = acc.result()
    mask = batch[K.DIPOLE_WEIGHT] > 0
    d = (out[K.DIPOLE] - batch[K.REF_DIPOLE]).detach()[mask]
    assert m["dipole_rmse"] == pytest.approx(float(d.square().mean().sqrt()), rel=1e-12)
    assert "polarizability_mae" in m and "structure_output_mae" not in m
    assert "mu " in format_errors(m) and "alpha " in format_errors(m)
    assert "dipole MAE [me*A]" in format_table({"valid": m})
    # an energy-only model: exactly the old quantities
    plain = {k: v for k, v in out.items() if k not in (K.DIPOLE, K.POLARIZABILITY, K.CHARGES)}
    acc2 = ErrorAccumulator()
    acc2.update(plain, batch)
    assert sorted(acc2.result()) == sorted([f"{q}_{k}" for q in QUANTITIES for k in ("mae", "rmse")] + ["loss"])
    # checkpoints written before the head quantities existed resume
    state = acc2.state_dict()
    state["sums"] = {q: v for q, v in state["sums"].items() if q in QUANTITIES}
    acc3 = ErrorAccumulator()
    acc3.load_state_dict(state)
    acc3.update(out, batch)
    assert acc3.result()["dipole_rmse"] == pytest.approx(m["dipole_rmse"])


def test_predict_and_write_outputs_cover_the_heads(tmp_path):
    from mlip.data import TypeMapper, frame_to_graph, frames_from_atoms_list
    from mlip.train.evaluation import predict, write_outputs

    teacher = _teacher()
    atoms = _molecules(5, 2, teacher)
    del atoms[0].info["polarizability"]
    frames = frames_from_atoms_list(atoms)
    graphs = [frame_to_graph(f, TypeMapper(TYPES), 3.0) for f in frames]
    torch.manual_seed(1)
    from mlip.nn import build_model

    model = build_model(HEAD_MODEL, TYPES, torch.float64)
    pred = predict(model, graphs, 2, torch.device("cpu"), False, sources=[f.source for f in frames], keep=True)
    assert pred.heads["dipole"][0].shape == (15,) and pred.heads["polarizability"][0].shape == (36,)
    assert np.isnan(pred.rows[0]["polarizability_rmse_A3"]) and pred.rows[1]["polarizability_rmse_A3"] > 0
    assert pred.rows[2]["dipole_x_ref_eA"] == pytest.approx(float(atoms[2].info["dipole"][0]))
    written = write_outputs(pred, str(tmp_path), "mols")
    metrics = json.load(open(written["metrics"]))
    assert metrics["dipole_rmse"] > 0 and metrics["polarizability_rmse"] > 0
    header = open(written["csv"]).readline()
    assert "dipole_x_pred_eA" in header and "polarizability_iso_pred_A3" in header
    # the teacher itself: no error
    exact = predict(teacher, graphs, 2, torch.device("cpu"), False)
    assert exact.metrics["dipole_rmse"] < 1e-12 and exact.metrics["polarizability_rmse"] < 1e-12


# --- deployment -----------------------------------------------------------------------------------

def test_calculator_and_exported_model_give_dipole_charges_polarizability(tmp_path):
    from ase.calculators.calculator import PropertyNotImplementedError

    from mlip import MLIPCalculator
    from mlip.checkpoint import model_record, save_model_file
    from mlip.data import TypeMapper, frame_to_graph, frames_from_atoms_list
    from mlip.deploy.export import export_model

    teacher = _teacher()
    atoms = _molecules(1, 3, charge=1.0)[0]
    g = frame_to_graph(frames_from_atoms_list([atoms])[0], TypeMapper(TYPES), 3.0)
    ref = teacher(g, compute_forces=True)
    ck = str(tmp_path / "m.pt")
    save_model_file(ck, model_record(dict(HEAD_MODEL, atomic_energy_scales=3.0), TYPES, "float64",
                                     teacher.state_dict()))
    exported = str(tmp_path / "m.nequip.pth")
    export_model(ck, exported)
    for spec in (teacher, ck, exported):
        calc = MLIPCalculator(spec)
        assert "dipole" in calc.implemented_properties
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_dipole_moment(), ref[K.DIPOLE][0].detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(atoms.get_charges(), ref[K.CHARGES].detach().numpy(), atol=1e-10)
        assert abs(atoms.get_charges().sum() - 1.0) < 1e-12
        np.testing.assert_allclose(calc.results["polarizability"], ref[K.POLARIZABILITY][0].detach().numpy(),
                                   atol=1e-10)
        np.testing.assert_allclose(atoms.get_potential_energy(), float(ref[K.TOTAL_ENERGY].detach()), atol=1e-10)
        # a new total charge is a new calculation (ASE does not compare atoms.info)
        atoms.info["charge"] = 0.0
        assert abs(atoms.get_charges().sum()) < 1e-12
        atoms.info["charge"] = 1.0
    # a committee: mean and spread
    calc = MLIPCalculator([ck, exported])
    atoms.calc = calc
    atoms.get_dipole_moment()
    assert np.abs(calc.results["dipole_std"]).max() < 1e-10
    # an energy-only model has no dipole
    from mlip.nn import build_model

    atoms.calc = MLIPCalculator(build_model(dict(HEAD_MODEL, dipole=False, polarizability=False), TYPES,
                                            torch.float64))
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_dipole_moment()


# --- joint training -------------------------------------------------------------------------------

def test_joint_training_lowers_every_validation_error(tmp_path):
    """Energy, forces, dipole and polarizability labels from a teacher network; a student trained
    jointly (balanced) for 8 epochs has lower validation errors in every term than after 1."""
    import ase.io

    path = str(tmp_path / "mols.extxyz")
    ase.io.write(path, _molecules(32, 4, "analytic"))
    _assert_joint_training_lowers_every_error(path, tmp_path, {})


def _assert_joint_training_lowers_every_error(path, tmp_path, data):
    """Energy, forces, dipole and polarizability trained jointly (balanced) on ``path``: every
    validation error after 8 epochs is below its value after 1."""
    from mlip.train.config import validate
    from mlip.train.trainer import train

    results = {}
    for epochs in (1, 8):
        raw = tiny_config(tmp_path / f"e{epochs}", path,
                          model=dict(HEAD_MODEL, num_layers=2, channels=4),
                          data=dict({"valid_fraction": 0.25, "batch_size": 4}, **data),
                          loss={"energy_weight": 1.0, "forces_weight": 1.0, "stress_weight": 0.0,
                                "dipole_weight": 1.0, "polarizability_weight": 1.0, "balance": "uncertainty"},
                          optim={"lr": 0.02, "max_epochs": epochs}, ema={"enabled": False})
        results[epochs] = train(validate(raw), echo=False)["results"]["valid"]
    for q in ("energy", "forces", "dipole", "polarizability"):
        assert results[8][f"{q}_rmse"] < results[1][f"{q}_rmse"], (q, results[1][f"{q}_rmse"], results[8][f"{q}_rmse"])


def test_joint_training_on_the_shipped_pyscf_water_lowers_every_validation_error(tmp_path):
    """The generated reference data (data/molecules/water_pyscf.extxyz, PySCF labels), 48
    structures: every validation error falls with joint training."""
    from conftest import EXAMPLE_DATA

    path = os.path.join(EXAMPLE_DATA, "molecules", "water_pyscf.extxyz")
    _assert_joint_training_lowers_every_error(path, tmp_path, {"train_index": "0:48"})
