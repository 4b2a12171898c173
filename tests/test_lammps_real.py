"""An exported model in a real LAMMPS with the pair_nequip_allegro plugin (issue #17).

Marked ``lammps``; every test skips unless ``MLIP_LMP`` names an ``lmp`` executable built with
the plugin (``bash scripts/build_lammps.sh`` prints one), so CI's fast tier never runs them:

    MLIP_LMP=/path/to/lmp .venv/bin/python -m pytest -m lammps tests/test_lammps_real.py

What they check, with a float64 model of two species on small periodic triclinic cells:

* ``pair_style nequip``, ``run 0``: total energy, per-atom energies (``compute pe/atom``),
  forces and the virial (``compute pressure NULL virial``) agree with
  :class:`mlip.MLIPCalculator` on the same structure to ~1e-10 relative; LAMMPS' box is the
  structure rotated into its lower-triangular frame, so forces and stress are rotated back;
* ``fix nve``: total energy is conserved over a short run with neighbour-list rebuilds, and the
  last step's energy and forces agree with the calculator on the positions LAMMPS dumped;
* ``pair_style allegro`` (newton on, domain decomposition) on 1, 2 and 4 MPI ranks, NequIP and
  MACE models of two layers, 4096 atoms: the same energy, per-atom energies, forces and virial
  as the calculator on the whole cell; NVE conserves energy, and 4 ranks follow 1 rank's
  trajectory; newton off is refused by the plugin, a file exported with ``--single-rank`` by
  the model;
* ``mpirun -np 2`` with ``pair_style nequip`` stops with the plugin's single-rank message;
* AOT packages (``mlip export -o NAME.nequip.pt2``, with and without the fused kernel) under
  ``pair_style nequip`` give the calculator's answers (skipped unless ``lmp`` was built with
  ``--aot``, which also links ``libmlip_ops.so``).
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

from test_deploy_common import TINY_MACE_CONFIG, make_checkpoint, triclinic

pytestmark = pytest.mark.lammps

LMP = os.environ.get("MLIP_LMP", "")
if not (LMP and os.path.isfile(LMP) and os.access(LMP, os.X_OK)):
    pytest.skip("MLIP_LMP does not name an lmp executable built with pair_nequip_allegro "
                "(bash scripts/build_lammps.sh)", allow_module_level=True)

SPECORDER = ["C", "Si"]            # LAMMPS type 1 = C, type 2 = Si (model type_names: Si, C)
NKTV2P_METAL = 1.6021765e6         # LAMMPS' bar per eV/A^3 (force->nktv2p for units metal)
RTOL = 1e-10


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    # Open MPI refuses to start as root without these (containers, CI)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _run_lmp(workdir, script, prefix=(), timeout=600):
    path = os.path.join(workdir, "in.lammps")
    with open(path, "w") as f:
        f.write(script)
    cmd = [*prefix, LMP, "-in", "in.lammps", "-log", "log.lammps", "-screen", "screen.txt"]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=timeout)
    screen = ""
    if os.path.exists(os.path.join(workdir, "screen.txt")):
        with open(os.path.join(workdir, "screen.txt")) as f:
            screen = f.read()
    return proc.returncode, proc.stdout + proc.stderr + screen


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    from mlip.cli import main

    d = tmp_path_factory.mktemp("lmpmodel")
    ckpt = make_checkpoint(d / "model.pth", dtype="float64", seed=1)
    out = str(d / "model64.nequip.pth")
    assert main(["export", ckpt, "-o", out, "--dtype", "float64"]) == 0
    return out


def _structure(kind):
    if kind == "small-triclinic":           # widths below 2 r_max: atoms see images of themselves
        return triclinic(seed=4, a=3.4)
    return triclinic(seed=4, a=5.0).repeat((2, 1, 1))


def _write_data(atoms, path):
    from ase.io import write

    write(path, atoms, format="lammps-data", specorder=SPECORDER, masses=True, force_skew=True,
          atom_style="atomic", units="metal")


def _read_box(path):
    """The lower-triangular cell of a LAMMPS data file (a along x, b in the xy plane)."""
    lo, hi, tilt = {}, {}, (0.0, 0.0, 0.0)
    with open(path) as f:
        for line in f:
            words = line.split()
            if len(words) >= 4 and words[2].endswith("lo") and words[3].endswith("hi"):
                lo[words[2][0]], hi[words[2][0]] = float(words[0]), float(words[1])
            elif len(words) >= 6 and words[3:6] == ["xy", "xz", "yz"]:
                tilt = tuple(map(float, words[:3]))
    xy, xz, yz = tilt
    return np.array([[hi["x"] - lo["x"], 0, 0], [xy, hi["y"] - lo["y"], 0], [xz, yz, hi["z"] - lo["z"]]])


def _read_dump(path):
    """Last frame of a `dump custom` file: box (lower triangular) and the per-atom columns by id."""
    with open(path) as f:
        lines = f.read().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("ITEM: TIMESTEP"))
    frame = lines[start:]
    n = int(frame[3])
    bounds = np.array([list(map(float, frame[5 + k].split())) for k in range(3)])
    if bounds.shape[1] == 3:                 # triclinic: xlo_bound xhi_bound xy, ...
        xy, xz, yz = bounds[:, 2]
        xlo = bounds[0, 0] - min(0.0, xy, xz, xy + xz)
        xhi = bounds[0, 1] - max(0.0, xy, xz, xy + xz)
        ylo = bounds[1, 0] - min(0.0, yz)
        yhi = bounds[1, 1] - max(0.0, yz)
        cell = np.array([[xhi - xlo, 0, 0], [xy, yhi - ylo, 0], [xz, yz, bounds[2, 1] - bounds[2, 0]]])
    else:
        cell = np.diag(bounds[:, 1] - bounds[:, 0])
    columns = frame[8].split()[2:]
    data = np.array([list(map(float, line.split())) for line in frame[9:9 + n]])
    data = data[np.argsort(data[:, 0])]
    return cell, {name: data[:, k] for k, name in enumerate(columns)}


def _results(log):
    """`print "RESULT name value ..."` lines of the log, as floats."""
    out = {}
    for line in log.splitlines():
        if line.startswith("RESULT "):
            words = line.split()[1:]
            out.update({words[k]: float(words[k + 1]) for k in range(0, len(words), 2)})
    return out


def _header(newton):
    # newton must precede the box (read_data)
    return f"""units           metal
atom_style      atomic
boundary        p p p
newton          {newton}
atom_modify     map array
read_data       structure.data
"""


def _script(model, run, pair_style="nequip"):
    """pair_style nequip (newton off) or allegro (newton on), per-atom energies, the virial
    pressure, thermo at full precision, then ``run``."""
    return _header("off" if pair_style == "nequip" else "on") + f"""pair_style      {pair_style}
pair_coeff      * * {model} {' '.join(SPECORDER)}
neighbor        0.5 bin
neigh_modify    every 1 delay 0 check yes
compute         pe all pe/atom
compute         pvir all pressure NULL virial
thermo_style    custom step pe ke etotal c_pvir[1] c_pvir[2] c_pvir[3] c_pvir[4] c_pvir[5] c_pvir[6] vol
thermo_modify   format float %.17g
{run}
"""


def _nequip_script(model, run):
    return _script(model, run, "nequip")


def _allegro_script(model, run):
    return _script(model, run, "allegro")


def _result_line(tag):
    quantities = ["pe", "ke", "etotal", "vol"] + [f"c_pvir[{k}]" for k in range(1, 7)]
    names = ["pe", "ke", "etotal", "vol", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]
    return "print \"RESULT " + " ".join(f"{tag}{n} $({q}:%.17g)" for n, q in zip(names, quantities)) + "\"\n"


def _rotation(atoms, lower):
    """Q with lower = cell @ Q (positions in LAMMPS' frame = positions @ Q)."""
    q = np.linalg.solve(atoms.cell.array, lower)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    return q


@pytest.mark.parametrize("kind", ["triclinic", "small-triclinic"])
def test_nequip_run0_matches_calculator(model64, tmp_path, kind):
    from mlip import MLIPCalculator

    atoms = _structure(kind)
    _write_data(atoms, tmp_path / "structure.data")
    script = _nequip_script(model64, "dump            d all custom 1 forces.dump id type x y z fx fy fz c_pe\n"
                                     "dump_modify     d format float %.17g sort id\n"
                                     "run             0\n" + _result_line(""))
    rc, out = _run_lmp(str(tmp_path), script)
    assert rc == 0, out[-3000:]
    res = _results(out)
    cell_lmp, dump = _read_dump(tmp_path / "forces.dump")
    lower = _read_box(tmp_path / "structure.data")
    np.testing.assert_allclose(cell_lmp, lower, atol=1e-12)
    q = _rotation(atoms, lower)
    assert np.array_equal(dump["id"], np.arange(1, len(atoms) + 1))   # ASE writes ids in order

    atoms.calc = MLIPCalculator(model64)
    e_ref = atoms.get_potential_energy()
    f_ref = atoms.get_forces()
    eatom_ref = atoms.get_potential_energies()
    s_ref = atoms.get_stress(voigt=False)
    # tolerances relative to the largest magnitude of each quantity (all non-zero here)
    scale_e = abs(e_ref)
    scale_f = np.abs(f_ref).max()
    scale_s = np.abs(s_ref).max()
    assert scale_f > 1e-3 and scale_s > 1e-5

    assert abs(res["pe"] - e_ref) <= RTOL * scale_e, (res["pe"], e_ref)
    np.testing.assert_allclose(dump["c_pe"], eatom_ref, rtol=0, atol=RTOL * scale_e)
    assert abs(dump["c_pe"].sum() - res["pe"]) <= RTOL * scale_e
    f_lmp = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    np.testing.assert_allclose(f_lmp @ q.T, f_ref, rtol=0, atol=RTOL * scale_f)
    # positions: LAMMPS' wrapped copy of the rotated structure
    x_lmp = np.stack([dump["x"], dump["y"], dump["z"]], axis=1)
    frac = np.linalg.solve(lower.T, (x_lmp - atoms.positions @ q).T).T
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-9)
    # virial-only pressure (bar) -> stress (eV/A^3, ASE sign) in the ASE frame
    assert res["ke"] == 0.0
    p = np.array([[res["pxx"], res["pxy"], res["pxz"]], [res["pxy"], res["pyy"], res["pyz"]],
                  [res["pxz"], res["pyz"], res["pzz"]]]) / NKTV2P_METAL
    assert abs(res["vol"] - atoms.get_volume()) <= 1e-12 * atoms.get_volume()
    np.testing.assert_allclose(q @ (-p) @ q.T, s_ref, rtol=0, atol=RTOL * scale_s)
    # rotation-invariant checks, independent of Q
    np.testing.assert_allclose(np.linalg.norm(f_lmp, axis=1), np.linalg.norm(f_ref, axis=1), rtol=0,
                               atol=RTOL * scale_f)
    np.testing.assert_allclose(np.trace(-p), np.trace(s_ref), rtol=0, atol=3 * RTOL * scale_s)


def test_nequip_nve_conserves_energy(model64, tmp_path):
    from mlip import MLIPCalculator

    atoms = _structure("triclinic")
    _write_data(atoms, tmp_path / "structure.data")
    steps = 200
    script = _nequip_script(model64, f"""velocity        all create 600.0 4928459 mom yes rot no dist gaussian
timestep        0.0005
fix             nve all nve
thermo          1
run             0
{_result_line("start_")}
run             {steps}
{_result_line("end_")}
dump            d all custom 1 last.dump id type x y z fx fy fz c_pe
dump_modify     d format float %.17g sort id
run             0
""")
    rc, out = _run_lmp(str(tmp_path), script)
    assert rc == 0, out[-3000:]
    res = _results(out)
    # thermo lines of the nve run: step pe ke etotal ...
    etot = []
    for line in out.splitlines():
        words = line.split()
        if len(words) == 11 and words[0].isdigit():
            etot.append(float(words[3]))
    assert len(etot) >= steps + 1
    # one line per run (run 0, the nve run, run 0): the atoms moved far enough for rebuilds
    rebuilds = [int(line.split("=")[1]) for line in out.splitlines() if "Neighbor list builds" in line]
    assert len(rebuilds) == 3 and rebuilds[1] > 0, rebuilds
    assert res["start_ke"] > 0.01
    drift = max(abs(e - res["start_etotal"]) for e in etot)
    # velocity Verlet at 0.5 fs (measured 2026-12-05: |etotal - etotal(0)| <= 3e-6 eV with
    # ke ~ 0.7 eV over 200 steps and 5 neighbour-list builds)
    assert drift < 1e-4 * res["start_ke"], (drift, res["start_ke"])
    assert abs(res["end_etotal"] - res["start_etotal"]) < 1e-4 * res["start_ke"]

    # the last step: LAMMPS' positions (moved, re-wrapped, neighbour lists rebuilt) -> calculator
    from ase import Atoms

    cell_lmp, dump = _read_dump(tmp_path / "last.dump")
    symbols = [SPECORDER[int(t) - 1] for t in dump["type"]]
    moved = Atoms(symbols, positions=np.stack([dump["x"], dump["y"], dump["z"]], axis=1), cell=cell_lmp, pbc=True)
    assert np.abs(moved.positions - atoms.positions @ _rotation(atoms, cell_lmp)).max() > 1e-3
    moved.calc = MLIPCalculator(model64)
    e_ref = moved.get_potential_energy()
    assert abs(res["end_pe"] - e_ref) <= RTOL * abs(e_ref)
    eatom_ref = moved.get_potential_energies()
    np.testing.assert_allclose(dump["c_pe"], eatom_ref, rtol=0, atol=RTOL * abs(e_ref))
    f_ref = moved.get_forces()
    np.testing.assert_allclose(np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1), f_ref, rtol=0,
                               atol=RTOL * np.abs(f_ref).max())


@pytest.fixture(scope="module")
def mace64(tmp_path_factory):
    from mlip.cli import main

    d = tmp_path_factory.mktemp("lmpmace")
    ckpt = make_checkpoint(d / "mace.pth", dtype="float64", seed=2, config=TINY_MACE_CONFIG)
    out = str(d / "mace64.nequip.pth")
    assert main(["export", ckpt, "-o", out, "--dtype", "float64"]) == 0
    return out


def _mpirun():
    mpirun = os.environ.get("MLIP_MPIRUN") or shutil.which("mpirun")
    if not mpirun:
        pytest.skip("no mpirun (set MLIP_MPIRUN)")
    return mpirun


def _big_crystal(seed=0, repeat=8):
    """A few thousand atoms: rattled Si/C diamond, 8x8x8 cubic cells (4096 atoms)."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    atoms = bulk("Si", "diamond", a=4.9, cubic=True).repeat((repeat,) * 3)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.permutation(len(atoms))[: len(atoms) // 3]] = "C"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def allegro_reference(tmp_path_factory, model64, mace64):
    """The 4096-atom crystal and the calculator's answers for both models."""
    from mlip import MLIPCalculator

    atoms = _big_crystal()
    refs = {}
    for name, model in (("nequip", model64), ("mace", mace64)):
        a = atoms.copy()
        a.calc = MLIPCalculator(model)
        refs[name] = {"energy": a.get_potential_energy(), "forces": a.get_forces(),
                      "energies": a.get_potential_energies(), "stress": a.get_stress(voigt=False)}
    return atoms, refs


@pytest.mark.parametrize("ranks", [1, 2, 4])
@pytest.mark.parametrize("kind", ["nequip", "mace"])
def test_allegro_ranks_match_calculator(model64, mace64, allegro_reference, tmp_path, kind, ranks):
    """pair_style allegro on 1, 2 and 4 MPI ranks: energy, per-atom energies, forces and virial of
    4096 atoms equal the calculator's (one whole cell) to ~1e-10 relative."""
    atoms, refs = allegro_reference
    ref = refs[kind]
    model = model64 if kind == "nequip" else mace64
    _write_data(atoms, tmp_path / "structure.data")
    script = _allegro_script(model, "dump            d all custom 1 forces.dump id type x y z fx fy fz c_pe\n"
                                    "dump_modify     d format float %.17g sort id\n"
                                    "run             0\n" + _result_line(""))
    rc, out = _run_lmp(str(tmp_path), script, prefix=(_mpirun(), "-np", str(ranks), "--oversubscribe"))
    assert rc == 0, out[-3000:]
    assert f"on {ranks} procs" in out, out[-3000:]
    res = _results(out)
    lower = _read_box(tmp_path / "structure.data")
    q = _rotation(atoms, lower)
    _, dump = _read_dump(tmp_path / "forces.dump")
    scale_e, scale_f, scale_s = abs(ref["energy"]), np.abs(ref["forces"]).max(), np.abs(ref["stress"]).max()
    assert scale_f > 1e-3 and scale_s > 1e-6
    assert abs(res["pe"] - ref["energy"]) <= RTOL * scale_e, (res["pe"], ref["energy"])
    np.testing.assert_allclose(dump["c_pe"], ref["energies"], rtol=0, atol=RTOL * scale_e)
    f_lmp = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    np.testing.assert_allclose(f_lmp @ q.T, ref["forces"], rtol=0, atol=RTOL * scale_f)
    p = np.array([[res["pxx"], res["pxy"], res["pxz"]], [res["pxy"], res["pyy"], res["pyz"]],
                  [res["pxz"], res["pyz"], res["pzz"]]]) / NKTV2P_METAL
    np.testing.assert_allclose(q @ (-p) @ q.T, ref["stress"], rtol=0, atol=RTOL * scale_s)


def test_allegro_nve_is_the_same_on_one_and_four_ranks(model64, tmp_path):
    """NVE under pair_style allegro: energy is conserved, and 4 ranks follow 1 rank's trajectory
    (same thermo to ~1e-9 relative after 100 steps with neighbour-list rebuilds)."""
    atoms = _big_crystal(seed=1, repeat=6)
    steps = 100
    runs = {}
    for ranks in (1, 4):
        work = tmp_path / f"np{ranks}"
        work.mkdir()
        _write_data(atoms, work / "structure.data")
        script = _allegro_script(model64, f"""velocity        all create 900.0 4928459 mom yes rot no dist gaussian loop geom
timestep        0.001
fix             nve all nve
thermo          1
run             {steps}
""")
        rc, out = _run_lmp(str(work), script, prefix=(_mpirun(), "-np", str(ranks), "--oversubscribe"))
        assert rc == 0, out[-3000:]
        rows = [list(map(float, line.split())) for line in out.splitlines()
                if len(line.split()) == 11 and line.split()[0].isdigit()]
        assert len(rows) >= steps + 1
        rebuilds = [int(line.split("=")[1]) for line in out.splitlines() if "Neighbor list builds" in line]
        assert rebuilds and rebuilds[-1] > 0, rebuilds
        runs[ranks] = np.array(rows[-(steps + 1):])
    one, four = runs[1], runs[4]
    ke0 = one[0, 2]
    assert ke0 > 1.0
    # total energy conserved (velocity Verlet, 1 fs)
    assert np.abs(one[:, 3] - one[0, 3]).max() < 1e-3 * ke0
    # the same trajectory on 4 ranks: pe, ke, etotal, virial
    np.testing.assert_allclose(four[:, 1:4], one[:, 1:4], rtol=1e-9, atol=0)


@pytest.fixture(scope="module")
def aot64(tmp_path_factory):
    """The NequIP float64 model as an AOT package with the fused kernel, and one without."""
    from mlip.cli import main

    d = tmp_path_factory.mktemp("lmpaot")
    ckpt = make_checkpoint(d / "model.pth", dtype="float64", seed=1)
    paths = {"fused": str(d / "fused.nequip.pt2"), "plain": str(d / "plain.nequip.pt2")}
    assert main(["export", ckpt, "-o", paths["fused"]]) == 0
    assert main(["export", ckpt, "-o", paths["plain"], "--no-kernels"]) == 0
    return paths


@pytest.mark.parametrize("kind", ["fused", "plain"])
def test_aot_package_matches_calculator(model64, aot64, tmp_path, kind):
    """A .nequip.pt2 package (LAMMPS built with --aot, libmlip_ops.so linked) gives the
    calculator's energy, forces and virial under pair_style nequip."""
    from mlip import MLIPCalculator

    atoms = _structure("triclinic")
    _write_data(atoms, tmp_path / "structure.data")
    script = _nequip_script(aot64[kind], "dump            d all custom 1 forces.dump id type x y z fx fy fz\n"
                                         "dump_modify     d format float %.17g sort id\n"
                                         "run             0\n" + _result_line(""))
    rc, out = _run_lmp(str(tmp_path), script)
    if "not compiled with `NEQUIP_AOT_COMPILE`" in out:
        pytest.skip("this lmp is built without NEQUIP_AOT_COMPILE (bash scripts/build_lammps.sh --aot)")
    assert rc == 0, out[-3000:]
    res = _results(out)
    lower = _read_box(tmp_path / "structure.data")
    q = _rotation(atoms, lower)
    _, dump = _read_dump(tmp_path / "forces.dump")
    atoms.calc = MLIPCalculator(model64)
    e_ref, f_ref, s_ref = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    assert abs(res["pe"] - e_ref) <= RTOL * abs(e_ref)
    f_lmp = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    np.testing.assert_allclose(f_lmp @ q.T, f_ref, rtol=0, atol=RTOL * np.abs(f_ref).max())
    p = np.array([[res["pxx"], res["pxy"], res["pxz"]], [res["pxy"], res["pyy"], res["pyz"]],
                  [res["pxz"], res["pyz"], res["pzz"]]]) / NKTV2P_METAL
    np.testing.assert_allclose(q @ (-p) @ q.T, s_ref, rtol=0, atol=RTOL * np.abs(s_ref).max())


def test_single_rank_file_is_refused_by_allegro(tmp_path):
    """A file exported with --single-rank stops pair_style allegro with the model's message."""
    from mlip.cli import main

    ckpt = make_checkpoint(tmp_path / "model.pth", dtype="float64", seed=1)
    model = str(tmp_path / "one.nequip.pth")
    assert main(["export", ckpt, "-o", model, "--single-rank"]) == 0
    _write_data(_structure("triclinic"), tmp_path / "structure.data")
    script = _allegro_script(model, "run             0\nprint           \"RESULT reached 1\"\n")
    rc, out = _run_lmp(str(tmp_path), script)
    assert rc != 0 and "RESULT reached" not in out
    assert "exported with --single-rank" in out, out[-3000:]


def test_allegro_pair_style_needs_newton_on(model64, tmp_path):
    atoms = _structure("triclinic")
    _write_data(atoms, tmp_path / "structure.data")
    script = _header("off") + f"""pair_style      allegro
pair_coeff      * * {model64} {' '.join(SPECORDER)}
run             0
print           "RESULT reached 1"
"""
    rc, out = _run_lmp(str(tmp_path), script)
    assert rc != 0 and "RESULT reached" not in out
    assert "Pair style allegro requires newton pair on" in out, out[-3000:]


def test_nequip_refuses_two_mpi_ranks(model64, tmp_path):
    mpirun = _mpirun()
    atoms = _structure("triclinic")
    _write_data(atoms, tmp_path / "structure.data")
    script = _nequip_script(model64, "run             0\nprint           \"RESULT reached 1\"\n")
    rc, out = _run_lmp(str(tmp_path), script, prefix=(mpirun, "-np", "2", "--oversubscribe"))
    assert rc != 0, out[-3000:]
    assert "RESULT reached" not in out
    assert "pair_nequip only works with a single MPI rank" in out, out[-3000:]
