"""Changing a hyperparameter's default must not change what an existing model file means.

Records carry the defaults version they were written under (mlip.nn.build.MODEL_DEFAULTS_VERSION);
a record from before a change gets the key's former default (Architecture.former_defaults).
tests/data/legacy/legacy_mace_model.pt was written by mlip d1326de, before defaults version 2
made mace-torch's product-basis path set MACE's default
(tests/data/legacy/make_legacy_mace_model.py, with the energy and forces that code computed)."""
import os

import numpy as np
import pytest
import torch

from mlip.checkpoint import build_from_record, current_record, load_file, load_model, model_record
from mlip.nn import build_model
from mlip.nn.build import MODEL_DEFAULTS_VERSION

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy")


def _graph(numbers, positions, types, r_max):
    from ase import Atoms

    from mlip.data import TypeMapper, collate, frame_to_graph, frames_from_atoms_list

    atoms = Atoms(numbers=numbers, positions=positions)
    return collate([frame_to_graph(f, TypeMapper(types), r_max, torch.float64) for f in frames_from_atoms_list([atoms])])


def test_a_model_file_from_before_the_change_computes_what_it_computed():
    from mlip.data import keys as K

    obj = load_file(os.path.join(LEGACY, "legacy_mace_model.pt"))
    assert obj["model"]["config"]["product_paths"] == "independent"  # the former default, written out
    pot = load_model(os.path.join(LEGACY, "legacy_mace_model.pt"))
    ref = np.load(os.path.join(LEGACY, "legacy_mace_model_reference.npz"))
    out = pot(_graph(ref["numbers"], ref["positions"], ["H", "C", "O"], 3.0), compute_forces=True)
    np.testing.assert_allclose(out[K.TOTAL_ENERGY].detach().numpy(), ref["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out[K.FORCES].detach().numpy(), ref["forces"], rtol=0, atol=1e-12)


def test_the_default_changed_for_new_models():
    """What the legacy test guards against: today's default builds another network."""
    cfg = dict(architecture="mace", r_max=3.0, channels=4, max_L=1, l_max=2)
    new = build_model(cfg, ["H", "C"], torch.float64)
    old = build_model(dict(cfg, product_paths="independent"), ["H", "C"], torch.float64)
    assert new.energy_model.layers[0].product.path_set == "mace"
    assert new.energy_model.layers[0].product.weight.shape != old.energy_model.layers[0].product.weight.shape


@pytest.mark.parametrize("compat", [False, True])
def test_records_round_trip_under_todays_defaults(compat):
    """A new record names its defaults version and rebuilds the same network; an unversioned
    record (version 1) of a mace_compat model keeps mace-torch's paths, of a default one the
    independent basis."""
    cfg = dict(architecture="mace", r_max=3.0, channels=4, max_L=1, l_max=2, mace_compat=compat)
    pot = build_model(cfg, ["H", "C"], torch.float64)
    rec = model_record(cfg, ["H", "C"], "float64", pot.state_dict())
    assert rec["defaults_version"] == MODEL_DEFAULTS_VERSION
    assert current_record(rec)["config"] == rec["config"]  # nothing to fill in today's record
    rebuilt = build_from_record(rec)
    for a, b in zip(pot.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
    old = dict(rec)
    del old["defaults_version"]
    assert current_record(old)["config"]["product_paths"] == ("mace" if compat else "independent")
    assert current_record(old)["defaults_version"] == MODEL_DEFAULTS_VERSION


def test_a_key_the_old_config_names_is_kept():
    cfg = dict(architecture="mace", r_max=3.0, channels=4, product_paths="mace")
    old = {"config": cfg, "type_names": ["H"], "dtype": "float64", "state_dict": {}}
    assert current_record(old)["config"]["product_paths"] == "mace"
