"""scripts/compare_peers.py without the peers: the settings translation (mlip config and
mace-torch arguments from one Settings), the data split and E0s, the log parsers (fixtures in
tests/data/compare_peers/: mlip's metrics.csv and mace-torch 0.3.16's results file of a 2-epoch
smoke run), the one metric code, the tables and the equal-time arithmetic."""
import dataclasses
import importlib.util
import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "data", "compare_peers")

_spec = importlib.util.spec_from_file_location("compare_peers", os.path.join(REPO, "scripts", "compare_peers.py"))
cp = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("compare_peers", cp)  # dataclasses look their module up there
_spec.loader.exec_module(cp)

FILES = {"train": "/w/data/train.xyz", "valid": "/w/data/valid.xyz",
         "e0s": {"H": -13.5, "C": -1029.4, "N": -1484.9, "O": -2041.9}}


def flag_values(args):
    """{flag: value or True} of a mace-torch argument list."""
    out, i = {}, 0
    while i < len(args):
        assert args[i].startswith("--"), args[i]
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[args[i]] = args[i + 1]
            i += 2
        else:
            out[args[i]] = True
            i += 1
    return out


def test_mlip_config_is_valid_and_reads_maces_names():
    from mlip.nn.build import canonical_model_config
    from mlip.train.config import validate

    s = cp.Settings()
    cfg = validate(cp.mlip_config(s, FILES, seed=3, epochs=12, run_dir="/w/mlip"), check_files=False)
    model, _ = canonical_model_config(cfg["model"])
    assert model == {"architecture": "mace", "r_max": 5.0, "num_interactions": 2, "channels": 64, "max_L": 1,
                     "l_max": 3, "correlation": 3, "num_bessel": 8, "cutoff_p": 5, "radial_hidden": 64,
                     "radial_depth": 3, "readout_hidden": 16}
    assert cfg["dtype"] == "float64" and cfg["seed"] == 3
    assert cfg["data"]["E0s"] == FILES["e0s"] and cfg["data"]["keys"]["energy"] == "REF_energy"
    assert cfg["optim"]["weight_decay"] == 0.0 and cfg["optim"]["amsgrad"] is True
    assert cfg["schedule"]["type"] == "plateau" and cfg["schedule"]["min_lr"] == 0.0
    assert cfg["stage_two"]["enabled"] and cfg["stage_two"]["start_epoch"] == 9  # 12 // 4 * 3
    assert cfg["loss"]["energy_per_atom"] and cfg["loss"]["type"] == "mse"


def test_mace_compat_reaches_mlip_and_names_its_runs_apart():
    from mlip.train.config import validate

    s = cp.Settings(mace_compat=True)
    cfg = validate(cp.mlip_config(s, FILES, seed=3, epochs=12, run_dir="/w/mlip"), check_files=False)
    assert cfg["model"]["mace_compat"] is True
    assert "mace_compat" not in cp.mlip_config(cp.Settings(), FILES, seed=3, epochs=12, run_dir="/w/mlip")["model"]
    assert cp.run_label("mlip", s) == "mlip_compat" and cp.run_label("mace", s) == "mace"
    assert cp.run_label("mlip", cp.Settings()) == "mlip"
    assert cp.settings_from_args(cp.build_parser().parse_args(["--mace-compat", "true"])).mace_compat is True
    s = cp.Settings(mlip_model="product_paths=mace, first_layer_species_map=true")
    model = cp.mlip_config(s, FILES, seed=3, epochs=12, run_dir="/w/mlip")["model"]
    assert model["product_paths"] == "mace" and model["first_layer_species_map"] is True
    assert cp.run_label("mlip", s) == "mlip_product_paths-mace_first_layer_species_map-true"
    assert cp.results_dir_name(s) == "results_product_paths-mace_first_layer_species_map-true"
    assert cp.results_dir_name(cp.Settings(mace_compat=True)) == "results_compat"
    assert cp.results_dir_name(cp.Settings()) == "results"
    with pytest.raises(SystemExit, match="key=value"):
        cp.mlip_model_extra(cp.Settings(mlip_model="product_paths"))


def test_every_setting_reaches_both_programs():
    s = cp.Settings(num_channels=24, max_ell=2, correlation=2, radial_MLP=(32, 32), readout_hidden=8,
                    batch_size=7, lr=0.003, weight_decay=1e-6, clip_grad=5.0, energy_weight=2.0, forces_weight=50.0,
                    plateau_factor=0.5, plateau_patience=7, ema_decay=0.95, stage_two_lr=2e-4,
                    stage_two_energy_weight=300.0, stage_two_forces_weight=20.0, dtype="float32")
    cfg = cp.mlip_config(s, FILES, seed=5, epochs=8, run_dir="/w/mlip")
    a = flag_values(cp.mace_args(s, FILES, seed=5, epochs=8, run_dir="/w/mace"))
    pairs = [  # (mlip value, mace-torch value)
        (cfg["model"]["num_channels"], int(a["--num_channels"])), (cfg["model"]["max_ell"], int(a["--max_ell"])),
        (cfg["model"]["correlation"], int(a["--correlation"])), (cfg["model"]["radial_MLP"], eval(a["--radial_MLP"])),
        (f"{cfg['model']['readout_hidden']}x0e", a["--MLP_irreps"]), (cfg["dtype"], a["--default_dtype"]),
        (cfg["data"]["batch_size"], int(a["--batch_size"])), (cfg["optim"]["lr"], float(a["--lr"])),
        (cfg["optim"]["weight_decay"], float(a["--weight_decay"])),
        (cfg["optim"]["clip_grad_norm"], float(a["--clip_grad"])),
        (cfg["optim"]["max_epochs"], int(a["--max_num_epochs"])),
        (cfg["loss"]["energy_weight"], float(a["--energy_weight"])),
        (cfg["loss"]["forces_weight"], float(a["--forces_weight"])),
        (cfg["schedule"]["factor"], float(a["--lr_factor"])), (cfg["schedule"]["patience"], int(a["--scheduler_patience"])),
        (cfg["ema"]["decay"], float(a["--ema_decay"])), (cfg["stage_two"]["start_epoch"], int(a["--start_swa"])),
        (cfg["stage_two"]["lr"], float(a["--swa_lr"])),
        (cfg["stage_two"]["energy_weight"], float(a["--swa_energy_weight"])),
        (cfg["stage_two"]["forces_weight"], float(a["--swa_forces_weight"])), (cfg["seed"], int(a["--seed"])),
        (cfg["data"]["train_file"], a["--train_file"]), (cfg["data"]["valid_file"], a["--valid_file"]),
        (cfg["data"]["keys"]["energy"], a["--energy_key"]), (cfg["data"]["keys"]["forces"], a["--forces_key"]),
    ]
    for mine, theirs in pairs:
        assert mine == theirs
    assert cfg["model"]["radial_MLP"] == [32, 32] and cfg["dtype"] == "float32"
    assert eval(a["--E0s"]) == {1: -13.5, 6: -1029.4, 7: -1484.9, 8: -2041.9}  # keyed by Z for mace-torch
    for flag in ("--ema", "--amsgrad", "--swa", "--save_all_checkpoints"):
        assert a[flag] is True
    assert a["--scheduler"] == "ReduceLROnPlateau" and a["--loss"] == "weighted" and a["--eval_interval"] == "1"
    assert int(a["--patience"]) > 8  # no early stopping within the run
    # every Settings field is used by both translations
    assert {f.name for f in dataclasses.fields(cp.Settings)} <= {m[0] for m in cp.MAPPING} | {"stage_two"}


def test_stage_two_off_and_start():
    s = cp.Settings(stage_two=False)
    assert "--swa" not in cp.mace_args(s, FILES, 1, 10, "/w")
    assert cp.mlip_config(s, FILES, 1, 10, "/w")["stage_two"]["enabled"] is False
    assert [cp.stage_two_start(e) for e in (1, 2, 4, 10, 100)] == [1, 1, 3, 6, 75]  # mace-torch's default
    assert "--swa" not in cp.mace_args(cp.Settings(), FILES, 1, 10, "/w", stage_two=False)


def test_mapping_table_names_every_flag():
    text = cp.mapping_table(cp.Settings())
    for flag in ("--num_channels", "--radial_MLP", "--swa_lr", "--scheduler_patience", "--E0s"):
        assert flag in text
    assert "model.radial_MLP" in text and "[64, 64, 64]" in text


# --- --peer nequip: translation, refusals, statistics ----------------------------------------

NQ_FILES = dict(FILES, e0s=dict(FILES["e0s"], F=-2713.0),  # an E0 of a species the training split lacks
                stats={"type_names": ["H", "C", "N", "O"], "force_rms": 1.25, "avg_num_neighbors": 17.5})


def test_every_nequip_setting_reaches_both_programs():
    from mlip.nn.build import canonical_model_config
    from mlip.train.config import validate

    s = cp.NequIPSettings(num_layers=3, num_features=12, l_max=2, parity=False, num_bessels=6, polynomial_cutoff_p=5,
                          radial_mlp_width=24, radial_mlp_depth=2, readout_hidden=7, self_connection="species",
                          r_max=4.5, batch_size=7, valid_batch_size=9, lr=0.003, weight_decay=1e-6, clip_grad=5.0,
                          energy_weight=2.0, forces_weight=48.0, plateau_factor=0.5, plateau_patience=7,
                          ema_decay=0.95, dtype="float32")
    cfg = validate(cp.mlip_nequip_config(s, NQ_FILES, seed=5, epochs=8, run_dir="/w/mlip"), check_files=False)
    model, _ = canonical_model_config(cfg["model"])
    n = cp.nequip_config(s, NQ_FILES, seed=5, epochs=8, run_dir="/w/nequip")
    tm = n["training_module"]
    m = tm["model"]
    opt = tm["optimizer"]
    sched = tm["lr_scheduler"]["scheduler"]
    norm = 2.0 + 48.0  # NequIP normalises its loss coefficients to sum to 1
    pairs = [  # (mlip value, NequIP value)
        (model["num_layers"], m["num_layers"]), (model["channels"], m["num_features"]), (model["l_max"], m["l_max"]),
        (model["parity"], m["parity"]), (model["num_bessel"], m["num_bessels"]),
        (model["cutoff_p"], m["polynomial_cutoff_p"]), (model["radial_hidden"], m["radial_mlp_width"]),
        (model["radial_depth"], m["radial_mlp_depth"]), (model["readout_hidden"], m["readout_mlp_hidden_layers_width"]),
        (model["r_max"], m["r_max"]), (model["r_max"], n["data"]["transforms"][1]["r_max"]),
        (model["avg_num_neighbors"], m["avg_num_neighbors"]), (model["atomic_energy_scales"], m["per_type_energy_scales"]),
        (cfg["dtype"], m["model_dtype"]), (cfg["seed"], m["seed"]), (cfg["seed"], n["data"]["seed"]),
        (cfg["data"]["batch_size"], n["data"]["train_dataloader"]["batch_size"]),
        (cfg["data"]["valid_batch_size"], n["data"]["val_dataloader"]["batch_size"]),
        (cfg["optim"]["lr"], opt["lr"]), (cfg["optim"]["amsgrad"], opt["amsgrad"]),
        (cfg["optim"]["betas"], opt["betas"]),
        (cfg["optim"]["weight_decay"], opt["weight_decay"] * norm),
        (cfg["optim"]["clip_grad_norm"], n["trainer"]["gradient_clip_val"] * norm),
        (1e-8, opt["eps"] * norm),  # torch's default eps, which mlip's Adam keeps
        (cfg["optim"]["max_epochs"], n["trainer"]["max_epochs"]),
        (cfg["loss"]["energy_weight"], tm["loss"]["coeffs"]["total_energy"]),
        (cfg["loss"]["forces_weight"], tm["loss"]["coeffs"]["forces"]),
        (cfg["loss"]["energy_per_atom"], tm["loss"]["per_atom_energy"]),
        (cfg["schedule"]["factor"], sched["factor"]), (cfg["schedule"]["patience"], sched["patience"]),
        (cfg["schedule"]["threshold"], sched["threshold"]), (cfg["schedule"]["min_lr"], sched["min_lr"]),
        (cfg["ema"]["decay"], tm["ema_decay"]),
        (cfg["data"]["train_file"], n["data"]["train_file_path"]), (cfg["data"]["valid_file"], n["data"]["val_file_path"]),
    ]
    for mine, theirs in pairs:
        assert mine == pytest.approx(theirs)
    assert model["architecture"] == "nequip" and model["self_connection"] == "species" and model["parity"] is False
    assert model["avg_num_neighbors"] == 17.5 and model["atomic_energy_scales"] == 1.25
    assert cfg["stage_two"]["enabled"] is False and cfg["data"]["E0s"]["H"] == -13.5
    # E0s: the same numbers, for the species of the training split (NequIP wants exactly its type names)
    assert m["per_type_energy_shifts"] == {"H": -13.5, "C": -1029.4, "N": -1484.9, "O": -2041.9}
    assert m["type_names"] == ["H", "C", "N", "O"] == n["data"]["transforms"][0]["model_type_names"]
    assert n["data"]["key_mapping"] == {"REF_energy": "total_energy", "REF_forces": "forces"}
    assert n["data"]["train_dataloader"]["shuffle"] is True
    assert m["readout_mlp_hidden_layers_depth"] == 1 and m["_target_"] == "nequip.model.NequIPGNNModel"
    assert n["trainer"]["gradient_clip_algorithm"] == "norm" and n["trainer"]["check_val_every_n_epoch"] == 1
    assert tm["_target_"] == "nequip.train.EMALightningModule" and opt["_target_"] == "torch.optim.Adam"
    # the plateau watches the validation loss: the same two MSEs with the loss weights
    assert tm["lr_scheduler"]["monitor"] == "val0_epoch/weighted_sum"
    coeffs = {e["name"]: e.get("coeff") for e in tm["val_metrics"]["metrics"]}
    assert coeffs == {"per_atom_energy_mse": 2.0, "forces_mse": 48.0, "per_atom_energy_rmse": None,
                      "forces_rmse": None, "total_energy_rmse": None}
    # every NequIP setting is in the table, and the table has no setting that does not exist
    names = {row[0] for row in cp.NEQUIP_MAPPING}
    shared = {f.name for f in dataclasses.fields(cp.Settings)} - set(cp.MACE_MODEL_ONLY) - set(cp.STAGE_TWO_KEYS)
    assert set(cp.NEQUIP_ONLY) | shared <= names
    assert {n for n in names if not n.startswith("(")} <= {f.name for f in dataclasses.fields(cp.NequIPSettings)} | {
        "split", "labels", "E0s", "epochs", "seed"}


def test_nequip_defaults_are_nequips_own():
    s = cp.NequIPSettings()
    assert (s.num_layers, s.num_features, s.l_max, s.parity, s.num_bessels, s.polynomial_cutoff_p,
            s.radial_mlp_width, s.radial_mlp_depth) == (4, 32, 1, True, 8, 6, 128, 1)  # NequIPGNNModel 0.19
    assert s.stage_two is False and s.self_connection == "embedding" and s.dtype == "float64"


def test_nequip_config_is_a_plain_hydra_config():
    """What can be checked without NequIP: the sections nequip-train asserts, no interpolation
    (everything is resolved here), YAML round trip, importable-looking targets, and, where
    omegaconf is installed, OmegaConf's own parse and resolve."""
    import yaml

    n = cp.nequip_config(cp.NequIPSettings(), NQ_FILES, seed=1, epochs=3, run_dir="/w/nequip")
    for section in ("run", "data", "trainer", "training_module"):  # nequip.scripts.train's required sections
        assert section in n
    assert n["run"] == ["train"] and n["hydra"]["run"]["dir"] == "/w/nequip"
    for key in ("model", "loss", "val_metrics", "optimizer"):
        assert key in n["training_module"]
    text = yaml.safe_dump(n, sort_keys=False)
    assert yaml.safe_load(text) == n and "${" not in text

    def targets(x):
        if isinstance(x, dict):
            if "_target_" in x:
                yield x["_target_"]
            for v in x.values():
                yield from targets(v)
        elif isinstance(x, list):
            for v in x:
                yield from targets(v)

    found = set(targets(n))
    assert all(t.count(".") >= 1 and all(p.isidentifier() for p in t.split(".")) for t in found)
    assert "compare_peers_timer.EpochTimer" in found and "nequip.data.datamodule.ASEDataModule" in found
    assert "class EpochTimer" in cp.NEQUIP_TIMER
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return
    assert OmegaConf.to_container(OmegaConf.create(text), resolve=True) == n


def test_nequip_model_section_builds_in_mlip():
    import torch

    from mlip.nn import build_model
    from mlip.train.config import validate

    s = cp.NequIPSettings(**cp.SMOKE_NEQUIP)
    cfg = validate(cp.mlip_nequip_config(s, NQ_FILES, seed=1, epochs=2, run_dir="/w/mlip"), check_files=False)
    net = build_model(cfg["model"], ["H", "C", "N", "O"], torch.float64)
    assert sum(p.numel() for p in net.parameters()) > 0 and float(net.r_max) == 5.0


def test_nequip_stage_two_is_refused_and_off_by_default():
    parse = cp.build_parser().parse_args
    s = cp.settings_from_args(parse(["--peer", "nequip"]))
    assert isinstance(s, cp.NequIPSettings) and s.stage_two is False
    assert cp.settings_from_args(parse(["--peer", "nequip", "--stage-two", "false"])).stage_two is False
    with pytest.raises(SystemExit, match="no stage two"):
        cp.settings_from_args(parse(["--peer", "nequip", "--stage-two", "true"]))
    with pytest.raises(SystemExit, match="no stage two"):
        cp.main(["--peer", "nequip", "--stage-two", "true", "--work", "/nonexistent"])
    with pytest.raises(SystemExit, match="no stage two"):
        cp.nequip_config(s, NQ_FILES, 1, 10, "/w", stage_two=True)
    with pytest.raises(SystemExit, match="no stage two"):
        cp.mlip_nequip_config(s, NQ_FILES, 1, 10, "/w", stage_two=True)
    assert cp.mlip_nequip_config(s, NQ_FILES, 1, 10, "/w")["stage_two"]["enabled"] is False
    # settings that would not reach the other program are refused, not ignored
    with pytest.raises(SystemExit, match="--stage-two-lr"):
        cp.settings_from_args(parse(["--peer", "nequip", "--stage-two-lr", "0.001"]))
    with pytest.raises(SystemExit, match="--num-channels, --mace-compat"):
        cp.settings_from_args(parse(["--peer", "nequip", "--num-channels", "8", "--mace-compat", "true"]))
    with pytest.raises(SystemExit, match="--num-features: NequIP model settings"):
        cp.settings_from_args(parse(["--num-features", "8"]))
    s = cp.settings_from_args(parse(["--peer", "nequip", "--smoke", "--num-layers", "3", "--parity", "false",
                                     "--self-connection", "species", "--lr", "0.02"]))
    assert (s.num_layers, s.parity, s.self_connection, s.lr, s.num_features) == (3, False, "species", 0.02, 8)


def test_show_mapping_nequip(capsys):
    assert cp.main(["--show-mapping", "--peer", "nequip"]) == 0
    out = capsys.readouterr().out
    for key in ("NequIP 0.19", "model.num_features", "gradient_clip_val = clip_grad / S", "per_type_energy_shifts",
                "(1+n)/(10+n)", "readout_mlp_hidden_layers_depth", "avg_num_neighbors"):
        assert key in out
    assert "--num_channels" not in out


def test_training_statistics(tmp_path, rng):
    import ase.io

    mols = cp.labelled_atoms(_molecules(4, rng))
    ase.io.write(tmp_path / "train.xyz", mols)
    st = cp.training_statistics(str(tmp_path / "train.xyz"), r_max=2.0)
    forces = np.concatenate([a.arrays["REF_forces"] for a in mols])
    assert st["force_rms"] == pytest.approx(np.sqrt(np.mean(forces ** 2)))
    pairs = sum(int(np.sum((np.linalg.norm(a.positions[:, None] - a.positions[None], axis=-1) < 2.0))) - len(a)
                for a in mols)
    assert st["avg_num_neighbors"] == pytest.approx(pairs / 16)  # directed edges per atom
    assert st["type_names"] == ["H", "C", "O"]  # by Z


# --- data -------------------------------------------------------------------------------------

def _molecules(n, rng, energy_in_calc=True):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for i in range(n):
        a = Atoms("CH2O", positions=rng.normal(size=(4, 3)) + np.arange(4)[:, None] * 1.5)
        e, f = -100.0 - i, rng.normal(size=(4, 3))
        if energy_in_calc:
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
        else:
            a.info["energy"], a.arrays["forces"] = e, f
        out.append(a)
    return out


def _fake_3bpa(tmp_path, rng, n_train, n_test, e0s=(("H", -1.0), ("C", -1.0), ("O", -1.0))):
    """A stand-in for ../shared/data/3bpa under tmp_path/data: train, two test files and the
    isolated atoms; returns the data root."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    root = tmp_path / "data"
    (root / "3bpa").mkdir(parents=True)
    ase.io.write(root / "3bpa" / "train_300K.xyz", _molecules(n_train, rng))
    for name in ("test_300K.xyz", "test_600K.xyz"):
        ase.io.write(root / "3bpa" / name, _molecules(n_test, rng))
    iso = []
    for sym, e in e0s:
        a = Atoms(sym)
        a.calc = SinglePointCalculator(a, energy=e)
        iso.append(a)
    ase.io.write(root / "3bpa" / "iso_atoms.xyz", iso)
    return root


def test_prepare_data_writes_one_split_with_isolated_e0s(tmp_path, rng):
    import ase.io

    root = _fake_3bpa(tmp_path, rng, 12, 5, e0s=(("H", -13.6), ("C", -1029.5), ("O", -2042.0)))
    train = ase.io.read(root / "3bpa" / "train_300K.xyz", ":")
    work = tmp_path / "work"
    meta = cp.prepare_data("3bpa", str(work), 6, 3, split_seed=7, n_test=4, data_root=str(root))
    assert meta["e0s"] == {"H": -13.6, "C": -1029.5, "O": -2042.0}
    assert len(meta["train_indices"]) == 6 and not set(meta["train_indices"]) & set(meta["valid_indices"])
    written = ase.io.read(meta["train"], ":")
    for a, i in zip(written, meta["train_indices"]):
        assert a.info["REF_energy"] == pytest.approx(train[i].get_potential_energy())
        assert np.allclose(a.arrays["REF_forces"], train[i].get_forces())
        assert a.calc is None or "energy" not in getattr(a.calc, "results", {})  # labels only under REF_*
    ref = cp.read_references(meta["tests"]["test_600K"])
    assert ref["energy"].shape == (4,) and ref["forces"].shape == (16, 3) and list(ref["natoms"]) == [4] * 4
    # a second call reuses the split; a different request is refused
    assert cp.prepare_data("3bpa", str(work), 6, 3, 7, 4, str(root))["train_indices"] == meta["train_indices"]
    with pytest.raises(SystemExit, match="different split"):
        cp.prepare_data("3bpa", str(work), 5, 3, 7, 4, str(root))


def test_rmd17_npz_is_converted_and_e0s_fitted(tmp_path, rng):
    path = tmp_path / "x.npz"
    np.savez(path, nuclear_charges=np.array([6, 1, 1, 8]), coords=rng.normal(size=(3, 4, 3)),
             energies=np.array([-1000.0, -1001.0, -1002.0]), forces=np.ones((3, 4, 3)))
    atoms = cp.read_structures(str(path))
    assert atoms[1].info["REF_energy"] == pytest.approx(-1001.0 * 0.0433641043)
    assert np.allclose(atoms[0].arrays["REF_forces"], 0.0433641043)
    e0 = cp.e0s_least_squares(atoms)
    # one composition (C1 H2 O1): minimum norm spreads the mean energy in proportion to the counts
    mean = np.mean([a.info["REF_energy"] for a in atoms])
    assert e0["C"] == pytest.approx(mean / 6) and e0["H"] == pytest.approx(2 * mean / 6)  # c / |c|^2, |c|^2 = 6
    assert e0["C"] + 2 * e0["H"] + e0["O"] == pytest.approx(mean)


def test_split_is_seeded_and_disjoint():
    a = cp.split_indices(500, 450, 50, 1234)
    assert a == cp.split_indices(500, 450, 50, 1234) and a != cp.split_indices(500, 450, 50, 1)
    assert sorted(a[0] + a[1]) == list(range(500))
    with pytest.raises(SystemExit):
        cp.split_indices(10, 8, 5, 0)


# --- logs, metrics, tables --------------------------------------------------------------------

def test_parse_mace_results_fixture():
    rows = cp.parse_mace_results(os.path.join(FIXTURES, "mace_train.txt"))
    assert [r["epoch"] for r in rows] == [1, 2]  # mace-torch's epochs 0 and 1; the initial validation dropped
    assert rows[1]["valid_F"] == pytest.approx(927.9231489401808)
    assert rows[1]["valid_E"] == pytest.approx(4869.408258980801)
    assert rows[0]["seconds"] == pytest.approx(0.6512150764465332 + 0.2403697967529297 + 0.23752188682556152
                                               + 0.17520761489868164)


def test_parse_nequip_metrics_fixture():
    """Lightning's CSVLogger file of a real 2-epoch ``--smoke --peer nequip`` run (NequIP 0.19.1):
    values in eV, epochs from 0, the learning rate on a row of its own."""
    rows = cp.parse_nequip_metrics(os.path.join(FIXTURES, "nequip_metrics.csv"))
    assert [r["epoch"] for r in rows] == [1, 2] and [r["stage"] for r in rows] == [1, 1]
    assert rows[1]["valid_F"] == pytest.approx(928.2620456410458)
    assert rows[1]["valid_E"] == pytest.approx(4859.237520393533)
    assert rows[0]["seconds"] == pytest.approx(0.23870345699833706) and rows[1]["lr"] == pytest.approx(0.01)
    # RMSE, per atom: the per-atom MSE is its square; 3BPA has 27 atoms
    import csv

    with open(os.path.join(FIXTURES, "nequip_metrics.csv")) as fh:
        last = [r for r in csv.DictReader(fh) if r["val0_epoch/forces_rmse"]][-1]
    assert float(last["val0_epoch/per_atom_energy_mse"]) == pytest.approx((rows[1]["valid_E"] / 1e3) ** 2)
    assert float(last["val0_epoch/total_energy_rmse"]) / 27 == pytest.approx(rows[1]["valid_E"] / 1e3)


def test_parse_mlip_metrics_fixture():
    rows = cp.parse_mlip_metrics(os.path.join(FIXTURES, "mlip_metrics.csv"))
    assert [r["epoch"] for r in rows] == [1, 2] and [r["stage"] for r in rows] == [1, 2]
    assert rows[1]["valid_F"] == pytest.approx(923.34778) and rows[1]["valid_E"] == pytest.approx(4815.4311)
    assert rows[0]["seconds"] == pytest.approx(0.285)


def test_errors_one_metric_code():
    ref = {"energy": np.array([-10.0, -20.0]), "forces": np.zeros((5, 3)), "natoms": np.array([2, 3])}
    pred = {"energy": np.array([-9.998, -20.006]), "forces": np.full((5, 3), 0.01)}
    m = cp.errors(ref, pred)
    assert m["energy_rmse_meV_atom"] == pytest.approx(math.sqrt((1.0 ** 2 + 2.0 ** 2) / 2))  # 2/2 and 6/3 meV/atom
    assert m["energy_mae_meV"] == pytest.approx(4.0)
    assert m["forces_rmse_meV_A"] == pytest.approx(10.0) and m["forces_mae_meV_A"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="do not match"):
        cp.errors(ref, {"energy": pred["energy"], "forces": pred["forces"][:4]})


def test_tables():
    mlip = [{"epoch": 1, "valid_E": 5.0, "valid_F": 100.0, "seconds": 2.0},
            {"epoch": 2, "valid_E": 4.0, "valid_F": 90.0, "seconds": 2.0}]
    peer = [{"epoch": 1, "valid_E": 6.0, "valid_F": 110.0, "seconds": 3.0}]
    rows = cp.epoch_rows(1, mlip, peer)
    assert rows[0] == [1, 1, 5.0, 100.0, 6.0, 110.0, 2.0, 3.0]
    assert rows[1][:4] == [1, 2, 4.0, 90.0] and math.isnan(rows[1][4])
    text = cp.format_table([h.format(peer="mace") for h in cp.EPOCH_HEADER], rows)
    assert "mace valid F" in text and text.splitlines()[3].split()[4] == "-"
    header, frows = cp.final_rows([{"program": "mlip", "seed": 1, "epochs": 2, "params": 10, "s_per_epoch": 2.0,
                                    "cpu_s": 9.0, "wall_s": 10.0,
                                    "tests": {"test_300K": {"energy_rmse_meV_atom": 1.5, "forces_rmse_meV_A": 50.0}}}],
                                  ["test_300K", "test_600K"])
    assert header[-4:] == ["test_300K E", "test_300K F", "test_600K E", "test_600K F"]
    assert frows[0][-4:-2] == [1.5, 50.0] and math.isnan(frows[0][-1])


def test_plot_and_csv(tmp_path):
    rows = cp.epoch_rows(1, [{"epoch": 1, "valid_E": 5.0, "valid_F": 100.0, "seconds": 2.0}],
                         [{"epoch": 1, "valid_E": 6.0, "valid_F": 110.0, "seconds": 3.0}])
    cp.plot_valid_forces(str(tmp_path / "f.png"), "mace", rows)
    cp.write_csv(str(tmp_path / "e.csv"), cp.EPOCH_HEADER, rows)
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert (tmp_path / "e.csv").read_text().splitlines()[1].startswith("1,1,5.0,100.0")


def test_epochs_for_budget():
    epochs, per_epoch, fixed = cp.epochs_for_budget(600.0, cpu_short=30.0, cpu_long=70.0, epochs_short=1, epochs_long=3)
    assert per_epoch == pytest.approx(20.0) and fixed == pytest.approx(10.0) and epochs == 30
    assert cp.epochs_for_budget(5.0, 30.0, 70.0, 1, 3)[0] == 1  # at least one epoch
    with pytest.raises(SystemExit, match="calibration failed"):
        cp.epochs_for_budget(600.0, 30.0, 29.0, 1, 3)


def test_smoke_settings_and_overrides():
    args = cp.build_parser().parse_args(["--smoke", "--lr", "0.02", "--radial-MLP", "8", "8"])
    s = cp.settings_from_args(args)
    assert s.num_channels == cp.SMOKE_MODEL["num_channels"] and s.lr == 0.02 and s.radial_MLP == (8, 8)
    assert cp.settings_from_args(cp.build_parser().parse_args([])) == cp.Settings()


def test_main_end_to_end_with_stand_in_programs(tmp_path, rng, monkeypatch, capsys):
    """main() with stand-ins for the two trainings and predictions: data, equal-time calibration,
    per-epoch and test tables, CSV, PNG and summary (the real programs: --smoke, by hand)."""
    import json

    root = _fake_3bpa(tmp_path, rng, 12, 3)
    cost = {"mlip": (2.0, 3.0), "mace": (5.0, 6.0)}  # fixed and per-epoch CPU seconds
    calls = []

    def fake_trainer(name):
        def train(s, meta, seed, epochs, run_dir, threads, nice, stage_two=None):
            cp.new_run_dir(run_dir)
            calls.append((name, epochs, stage_two))
            rows = [{"epoch": e, "valid_E": 10.0 / e, "valid_F": 100.0 / e, "seconds": cost[name][1], "lr": 0.01,
                     "stage": 1} for e in range(1, epochs + 1)]
            return {"wall_s": 1.0, "cpu_s": cost[name][0] + cost[name][1] * epochs, "rows": rows, "model": name}
        return train

    def fake_predict(name, tests):
        shift = {"mlip": 0.001, "mace": 0.002}[name]  # eV per atom and eV/A
        preds = {}
        for t, path in tests.items():
            ref = cp.read_references(path)
            preds[t] = {"energy": ref["energy"] + shift * ref["natoms"], "forces": ref["forces"] + shift}
        return {"params": 7, "tests": preds}

    monkeypatch.setattr(cp, "train_mlip", fake_trainer("mlip"))
    monkeypatch.setitem(cp.TRAINERS, "mace", fake_trainer("mace"))
    monkeypatch.setattr(cp, "predict_mlip", lambda model, tests, out, threads: fake_predict("mlip", tests))
    monkeypatch.setattr(cp, "predict_peer", lambda peer, model, tests, out, threads: fake_predict("mace", tests))
    work = tmp_path / "work"
    assert cp.main(["--equal-time", "0.5", "--n-train", "6", "--n-valid", "3", "--work", str(work),
                    "--data-root", str(root), "--batch-size", "3"]) == 0
    # calibration runs of 1 and 3 epochs without stage two, then 30 s / 3 s and 30 s / 6 s epochs
    assert calls[:4] == [("mlip", 1, False), ("mlip", 3, False), ("mace", 1, False), ("mace", 3, False)]
    assert calls[4:] == [("mlip", 10, None), ("mace", 5, None)]
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert summary["epochs"] == {"mlip": 10, "mace": 5}
    assert summary["calibration"]["mace"]["cpu_per_epoch_s"] == pytest.approx(6.0)
    final = {r["program"]: r for r in summary["results"]}
    assert final["mlip"]["tests"]["test_300K"]["energy_rmse_meV_atom"] == pytest.approx(1.0)
    assert final["mace"]["tests"]["test_600K"]["forces_rmse_meV_A"] == pytest.approx(2.0)
    lines = (work / "results" / "epochs.csv").read_text().splitlines()
    assert len(lines) == 1 + 10 and lines[-1].split(",")[4] == "nan"  # mace stopped at epoch 5
    assert (work / "results" / "valid_forces.png").exists()
    out = capsys.readouterr().out
    assert "equal CPU budget 0.5 min" in out and "mace valid F" in out
    # a rerun may reuse one program's finished run; training again into an existing folder is refused
    again = ["--epochs", "2", "--n-train", "6", "--n-valid", "3", "--work", str(work), "--data-root", str(root),
             "--batch-size", "3", "--programs", "peer"]
    with pytest.raises(SystemExit, match="exists"):
        cp.main(again)
    import shutil

    shutil.rmtree(work / "mace_seed1")
    calls.clear()
    assert cp.main(again) == 0 and calls == [("mace", 2, None)]
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert [r["epochs"] for r in summary["results"]] == [10, 2]  # mlip's run reused as it was
    # --report-only trains nothing and rewrites the tables of the finished runs
    calls.clear()
    (work / "results" / "summary.json").unlink()
    assert cp.main(["--report-only", "--work", str(work), "--n-train", "6", "--n-valid", "3", "--data-root", str(root),
                    "--batch-size", "3"]) == 0 and calls == []
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert [r["epochs"] for r in summary["results"]] == [10, 2]
    # one program trained alone for a seed the other has not run: reported alone, not refused
    calls.clear()
    assert cp.main(again[:-2] + ["--seeds", "7", "--programs", "peer"]) == 0 and calls == [("mace", 2, None)]
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert [(r["program"], r["seed"]) for r in summary["results"]] == [("mace", 7)]
    assert "no finished mlip run of seed 7" in capsys.readouterr().out
    # a compat report needs compat runs
    with pytest.raises(SystemExit, match="no finished mlip_compat run of seed 1"):
        cp.main(["--report-only", "--mace-compat", "true", "--work", str(work), "--n-train", "6", "--n-valid", "3",
                 "--data-root", str(root), "--batch-size", "3"])


def test_main_nequip_with_stand_in_programs(tmp_path, rng, monkeypatch, capsys):
    """main() --peer nequip with stand-ins: the statistics computed once and given to both
    trainers, NequIPSettings without stage two, the tables and the summary."""
    import json

    root = _fake_3bpa(tmp_path, rng, 9, 2)
    seen = []

    def fake_trainer(name):
        def train(s, meta, seed, epochs, run_dir, threads, nice, stage_two=None):
            cp.new_run_dir(run_dir)
            seen.append((name, type(s).__name__, s.stage_two, meta["stats"]))
            rows = [{"epoch": e, "valid_E": 1.0, "valid_F": 10.0, "seconds": 1.0, "lr": 0.01, "stage": 1}
                    for e in range(1, epochs + 1)]
            return {"wall_s": 1.0, "cpu_s": 2.0, "rows": rows, "model": name}
        return train

    def fake_predict(tests):
        return {"params": 5, "tests": {t: {k: cp.read_references(p)[k] for k in ("energy", "forces")}
                                       for t, p in tests.items()}}

    monkeypatch.setattr(cp, "train_mlip", fake_trainer("mlip"))
    monkeypatch.setitem(cp.TRAINERS, "nequip", fake_trainer("nequip"))
    monkeypatch.setattr(cp, "predict_mlip", lambda model, tests, out, threads: fake_predict(tests))
    monkeypatch.setattr(cp, "predict_peer", lambda peer, model, tests, out, threads: fake_predict(tests))
    work = tmp_path / "work"
    assert cp.main(["--peer", "nequip", "--epochs", "2", "--n-train", "6", "--n-valid", "3", "--work", str(work),
                    "--data-root", str(root), "--r-max", "3.0"]) == 0
    assert [x[:3] for x in seen] == [("mlip", "NequIPSettings", False), ("nequip", "NequIPSettings", False)]
    assert seen[0][3] == seen[1][3] and seen[0][3]["r_max"] == 3.0
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert summary["peer"] == "nequip" and summary["statistics"] == seen[0][3]
    assert summary["settings"]["num_layers"] == 4 and summary["settings"]["stage_two"] is False
    out = capsys.readouterr().out
    assert "nequip valid F" in out and "avg_num_neighbors" in out and "mace-torch drops" not in out


@pytest.mark.slow
def test_nequip_smoke_real(tmp_path):
    """The real thing: ``--smoke --peer nequip`` (about half a minute on two cores)."""
    import json

    if not os.path.exists(os.path.join(cp.PEERS_ROOT, "nequip", "bin", "python")):
        pytest.skip("no NequIP environment (../shared/bench/setup_peers.sh)")
    if not os.path.exists(os.path.join(cp.SHARED_DATA, "3bpa", "train_300K.xyz")):
        pytest.skip("no 3BPA data")
    work = tmp_path / "work"
    assert cp.main(["--smoke", "--peer", "nequip", "--work", str(work)]) == 0
    summary = json.loads((work / "results" / "summary.json").read_text())
    final = {r["program"]: r for r in summary["results"]}
    assert set(final) == {"mlip", "nequip"} and final["nequip"]["params"] > 0
    info = json.loads((work / "nequip_seed1" / "compare_run.json").read_text())
    assert [r["epoch"] for r in info["rows"]] == [1, 2] and all(math.isfinite(r["valid_F"]) for r in info["rows"])
    for t in ("test_300K", "test_600K"):
        assert math.isfinite(final["nequip"]["tests"][t]["forces_rmse_meV_A"])
