"""The reference-file format of ``mlip validate``: the shipped Si reference, unit conversion, and
one-line errors that name the file and the key."""
import os

import numpy as np
import pytest

from conftest import shared_path
from mlip.errors import InputError
from mlip.validate.reference import load_reference, property_kind, shipped_reference
from mlip.validate.units import EV_PER_A3_IN_GPA, THZ_IN_CM1

GOOD = """
source: "test values"
systems:
  cu:
    structure: {bulk: {symbol: Cu, crystalstructure: fcc, a: 3.6}}
    phonons: {supercell: [3, 3, 3], mesh: 8}
    md: {temperatures: [300, 600], time_ps: 0.5}
    properties:
      lattice_constant: {value: 3.63, unit: Angstrom, tolerance: 0.02, source: "some paper"}
      bulk_modulus: {value: 0.85, unit: eV/A^3}
      C11: {value: 1760, unit: kbar}
      vacancy_formation_energy: {value: 1200, unit: meV, supercell: [[-2, 2, 2], [2, -2, 2], [2, 2, -2]]}
      surface_energy_111: {value: 1.3, unit: J/m^2, miller: [1, 1, 1], layers: 6}
  water:
    structure: {molecule: H2O}
    properties:
      bond_OH: {value: 0.97, unit: A, atoms: [0, 1]}
      angle_HOH: {value: 104.0, unit: deg, atoms: [1, 0, 2]}
      frequencies: {value: [3756, 1595, 3657], unit: cm^-1}
"""


def write(tmp_path, text, name="ref.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_parse_and_convert_units(tmp_path):
    ref = load_reference(write(tmp_path, GOOD))
    assert ref.source == "test values"
    cu, water = ref.systems
    assert (cu.kind, water.kind) == ("crystal", "molecule")
    assert cu.species == ["Cu"] and len(cu.build()) == 1
    p = cu.properties
    assert p["lattice_constant"].value == 3.63 and p["lattice_constant"].tolerance == 0.02
    assert p["lattice_constant"].source == "some paper"
    assert p["bulk_modulus"].value == pytest.approx(0.85 * EV_PER_A3_IN_GPA) and p["bulk_modulus"].unit == "GPa"
    # the report shows values in the unit the file used
    assert p["bulk_modulus"].shown(p["bulk_modulus"].value) == pytest.approx(0.85)
    assert p["C11"].value == pytest.approx(176.0) and p["C11"].tolerance == 0.15  # default for Cij
    assert p["vacancy_formation_energy"].value == pytest.approx(1.2)
    assert p["vacancy_formation_energy"].params["supercell"] == [[-2, 2, 2], [2, -2, 2], [2, 2, -2]]
    assert p["surface_energy_111"].params == {"miller": [1, 1, 1], "layers": 6, "vacuum": 10.0, "relax": True}
    assert cu.phonons == {"supercell": [3, 3, 3], "mesh": 8} and cu.stable
    assert cu.md == {"temperatures": [300.0, 600.0], "time_ps": 0.5}
    # the conventional cell of a primitive fcc spec: the cube of 4 atoms
    np.testing.assert_array_equal(cu.conventional_matrix(), [[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
    w = water.properties
    assert w["bond_OH"].params["atoms"] == [0, 1] and w["angle_HOH"].value == 104.0
    assert w["frequencies"].value == pytest.approx(sorted(np.array([3756, 1595, 3657]) / THZ_IN_CM1))
    assert water.phonons is None


def test_shipped_si_reference():
    path = shipped_reference(["Si"])
    assert path is not None and os.path.exists(path)
    assert shipped_reference(["Si", "C"]) is None and shipped_reference(["Ge"]) is None
    ref = load_reference(path)
    assert "Zuo" in ref.source and "731" in ref.source
    (si,) = ref.systems
    assert si.species == ["Si"] and si.kind == "crystal" and si.stable
    names = set(si.properties)
    assert {"lattice_constant", "bulk_modulus", "C11", "C12", "C44", "vacancy_formation_energy"} <= names
    p = si.properties
    assert 5.4 < p["lattice_constant"].value < 5.5 and p["lattice_constant"].unit == "Angstrom"
    # internal consistency of a cubic crystal's constants: B = (C11 + 2 C12) / 3
    assert p["bulk_modulus"].value == pytest.approx((p["C11"].value + 2 * p["C12"].value) / 3, abs=1.0)
    # the vacancy cell is the 2x2x2 conventional one (64 sites), as in the mlearn vacancy frames
    from mlip.validate.common import supercell

    conv = supercell(si.build(), si.conventional_matrix())
    assert len(supercell(conv, p["vacancy_formation_energy"].params["supercell"])) == 64
    assert len(supercell(si.build(), si.md["supercell"])) == 64


def test_shipped_si_values_agree_with_the_mlearn_data():
    """The lattice constant, C11 and C12 of the shipped reference against the DFT frames of the
    mlearn Si set they were computed with: the zero-strain cell, and stress against strain of
    the uniaxially strained cells (within 2 % strain)."""
    import ase.io

    frames = [a for f in ("train.extxyz", "test.extxyz") for a in ase.io.read(shared_path("mlearn_si", f), ":")]
    elastic = [a for a in frames if a.info.get("config_type") == "Elastic" and np.allclose(a.cell.angles(), 90)]
    lengths = np.array([a.cell.lengths() for a in elastic])
    a0 = np.median(lengths)  # most lengths are unstrained
    p = load_reference(shipped_reference(["Si"])).systems[0].properties
    assert a0 / 2 == pytest.approx(p["lattice_constant"].value, abs=5e-4)
    strain, sxx, syy = [], [], []
    for a, ls in zip(elastic, lengths):
        e = ls / a0 - 1
        if abs(e[0]) < 0.025 and np.allclose(e[1:], 0):
            s = a.get_stress() * EV_PER_A3_IN_GPA
            strain.append(e[0])
            sxx.append(s[0])
            syy.append(s[1])
    assert len(strain) >= 3
    c11, c12 = np.polyfit(strain, sxx, 1)[0], np.polyfit(strain, syy, 1)[0]
    assert c11 == pytest.approx(p["C11"].value, rel=0.01)
    assert c12 == pytest.approx(p["C12"].value, rel=0.02)
    assert (c11 + 2 * c12) / 3 == pytest.approx(p["bulk_modulus"].value, rel=0.01)


def test_property_names():
    assert property_kind("C23") == "elastic" and property_kind("C77") is None
    assert property_kind("surface_energy_110") == "surface" and property_kind("bond_CH") == "bond"
    assert property_kind("lattice_constant") == "lattice" and property_kind("band_gap") is None


BAD = [
    # (yaml, fragments the one-line message must contain)
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, "
     "properties: {C11: {value: 150, unit: eV}}}}", ["systems.si.properties.C11.unit", "not a pressure unit"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, "
     "properties: {C11: {unit: GPa}}}}", ["systems.si.properties.C11.value", "missing"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, "
     "properties: {band_gap: {value: 1.1, unit: eV}}}}", ["systems.si.properties.band_gap", "unknown property"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstrucure: diamond}}}}",
     ["systems.si.structure.bulk.crystalstrucure", "unknown key"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, "
     "properties: {C11: {value: fast, unit: GPa}}}}", ["systems.si.properties.C11.value", "expected a number"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, "
     "properties: {surface_energy: {value: 1.0, unit: J/m^2}}}}", ["systems.si.properties.surface_energy.miller"]),
    ("systems: {h2o: {structure: {molecule: H2O}, properties: {bond_OH: {value: 1, atoms: [0, 7]}}}}",
     ["systems.h2o.properties.bond_OH.atoms", "out of range"]),
    ("systems: {h2o: {structure: {molecule: H2O}, properties: {C11: {value: 1}}}}",
     ["systems.h2o.properties.C11", "not a property of a molecule"]),
    ("systems: {x: {structure: {molecule: Unobtainium}}}", ["systems.x.structure.molecule", "Unobtainium"]),
    ("systems: {x: {structure: {file: missing.xyz}}}", ["systems.x.structure.file", "missing.xyz"]),
    ("systems: {x: {properties: {}}}", ["systems.x.structure", "missing"]),
    ("systems: {x: {structure: {molecule: H2O, bulk: {name: Si}}}}", ["systems.x.structure", "exactly one"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, stable: maybe}}",
     ["systems.si.stable"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, md: {temps: [1]}}}",
     ["systems.si.md.temps", "unknown key"]),
    ("systems: {si: {structure: {bulk: {name: Si, crystalstructure: diamond, a: 5.4}}, "
     "phonons: {supercell: [2, 2]}}}", ["systems.si.phonons.supercell", "3 integers"]),
    ("sytems: {}", ["key 'sytems'", "unknown key"]),
    ("format: 2\nsystems: {}", ["key 'format'", "unsupported"]),
    ("systems: [1, 2]", ["key 'systems'", "mapping"]),
    ("systems: {a: {structure: {molecule: H2O}\n  b: [", ["not valid YAML", "line"]),
    ("- just a list", ["expected a YAML mapping"]),
]


@pytest.mark.parametrize("text,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_errors_name_the_file_and_the_key(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_reference(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(path)
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.exit_code == 2


def test_missing_reference_file(tmp_path):
    with pytest.raises(InputError, match="reference file not found"):
        load_reference(str(tmp_path / "nope.yaml"))


def test_structure_file_relative_to_the_reference(tmp_path):
    import ase.io
    from ase.build import bulk

    (tmp_path / "sub").mkdir()
    ase.io.write(str(tmp_path / "sub" / "cu.extxyz"), bulk("Cu", "fcc", a=3.6, cubic=True))
    ref = load_reference(write(tmp_path / "sub", "systems: {cu: {structure: {file: cu.extxyz}}}"))
    atoms = ref.systems[0].build()
    assert len(atoms) == 4 and ref.systems[0].kind == "crystal"
    np.testing.assert_array_equal(ref.systems[0].conventional_matrix(), np.eye(3))
