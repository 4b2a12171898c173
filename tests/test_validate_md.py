"""The MD-stability detector of ``mlip validate``: quiet on a stable harmonic crystal, and for each
deliberately broken model the right kind of failure at the right step, with a trajectory excerpt
around it."""
import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip.validate.md import closest_pair, distance_thresholds, md_stability, plot_md
from test_validate_helpers import (HeatingCalculator, JumpCalculator, NaNCalculator, RaisingCalculator,
                                   SpringCalculator)

A = 4.0
SPRINGS = dict(k=2.0, r0=A / np.sqrt(2.0), rc=3.4, eps=0.5)


@pytest.fixture(scope="module")
def crystal():
    return bulk("Cu", "fcc", a=A, cubic=True).repeat((2, 2, 2))  # 32 atoms


def test_a_stable_harmonic_crystal_is_not_flagged(crystal, tmp_path):
    # 0.4 ps: past the 300 fs after which a too cold run would count as a failure too
    excerpt = str(tmp_path / "x.extxyz")
    res = md_stability(crystal, SpringCalculator(**SPRINGS), 300.0, 0.4, excerpt_path=excerpt)
    assert res.stable and res.failure is None and res.excerpt is None
    assert res.steps_done == 400 and len(res.temperatures) == 401
    # the thermostat holds the temperature near its target
    assert 200 < np.mean(res.temperatures[200:]) < 400
    assert np.min(res.min_distances) > 2.2  # nearest neighbours at 2.83 A
    assert not (tmp_path / "x.extxyz").exists()
    plot_md([res], str(tmp_path / "md.png"))
    assert (tmp_path / "md.png").stat().st_size > 0


def test_collapsing_model_is_caught_by_the_distance_check(crystal, tmp_path):
    # springs of negative stiffness: the energy keeps falling as atoms approach (no repulsion)
    calc = SpringCalculator(k=-2.0, r0=A / np.sqrt(2.0), rc=3.4, eps=0.0)
    excerpt = str(tmp_path / "collapse.extxyz")
    # the released energy also heats the crystal; switch that detector off to test this one
    res = md_stability(crystal, calc, 300.0, 0.5, temperature_factor=1e9, excerpt_path=excerpt)
    assert res.failure is not None and res.failure.kind == "min_distance", res.failure
    threshold = 0.5 * 2 * 1.32  # half the Cu-Cu covalent radii sum
    assert "below 1.320 A" in res.failure.detail
    assert res.min_distances[-1] < threshold <= res.min_distances[-2]  # the first step that crossed
    frames = ase.io.read(excerpt, ":")
    failing = [f for f in frames if f.info.get("failure") == "min_distance"]
    assert len(failing) == 1 and failing[0].info["step"] == res.failure.step
    steps = [f.info["step"] for f in frames]
    assert steps == list(range(steps[0], steps[-1] + 1))  # consecutive frames around the failure
    assert steps[0] == res.failure.step - 20 and steps[-1] > res.failure.step
    d, i, j, _ = closest_pair(failing[0], distance_thresholds(failing[0].numbers))
    assert d == pytest.approx(res.min_distances[-1], abs=1e-6)


def test_with_all_detectors_on_the_collapse_is_reported_at_its_first_symptom(crystal):
    calc = SpringCalculator(k=-2.0, r0=A / np.sqrt(2.0), rc=3.4, eps=0.0)
    res = md_stability(crystal, calc, 300.0, 0.5)
    assert res.failure is not None and res.failure.kind in ("temperature", "min_distance")
    assert res.failure.step < 150


def test_energy_jump_is_reported_at_the_step_it_happens(crystal, tmp_path):
    # call 1 is the initial state (step 0), call n is step n - 1
    res = md_stability(crystal, JumpCalculator(after=61, jump=0.5, **SPRINGS), 300.0, 0.2,
                       excerpt_path=str(tmp_path / "jump.extxyz"))
    assert res.failure.kind == "energy_jump" and res.failure.step == 60
    assert res.epot[-1] - res.epot[-2] == pytest.approx(0.5, abs=0.02)
    assert "+0.5" in res.failure.detail
    frames = ase.io.read(res.excerpt, ":")
    assert len(frames) == 21 + 10  # 20 before, the failing one, 10 after


def test_a_smaller_jump_than_the_threshold_is_not_a_failure(crystal):
    res = md_stability(crystal, JumpCalculator(after=61, jump=0.05, **SPRINGS), 300.0, 0.1)
    assert res.stable


def test_a_model_that_heats_up_is_caught_by_the_temperature_check(crystal):
    res = md_stability(crystal, HeatingCalculator(gamma_per_fs=0.05, **SPRINGS), 300.0, 0.5)
    assert res.failure.kind == "temperature", res.failure
    # a fast runaway passes the start-up bound (5 x the target) well before the thermostat time
    assert "above 5 x 300 K" in res.failure.detail
    assert res.failure.step < 100


def test_non_finite_predictions_and_model_errors(crystal, tmp_path):
    res = md_stability(crystal, NaNCalculator(after=41, **SPRINGS), 300.0, 0.2, excerpt_path=str(tmp_path / "n.extxyz"))
    assert res.failure.kind == "nonfinite" and res.failure.step == 40
    res = md_stability(crystal, RaisingCalculator(after=31, **SPRINGS), 300.0, 0.2,
                       excerpt_path=str(tmp_path / "r.extxyz"))
    assert res.failure.kind == "calculator_error" and res.failure.step == 30
    assert "0.05 A apart" in res.failure.detail
    frames = ase.io.read(res.excerpt, ":")
    assert frames[-1].info["step"] == 29 and frames[-1].info["failure_step"] == 30


def test_absolute_distance_threshold(crystal):
    # 2.9 A is beyond the nearest-neighbour distance: flagged at step 0
    res = md_stability(crystal, SpringCalculator(**SPRINGS), 300.0, 0.05, min_distance=2.9)
    assert res.failure.kind == "min_distance" and res.failure.step == 0


def test_a_hot_snapshot_cooling_under_the_thermostat_is_not_a_runaway(crystal):
    # A frame taken from a 1500 K run holds about 1500 K worth of potential energy above the
    # minimum; started at 300 K it first heats itself (past 600 K) while the thermostat drains
    # the excess. That is not an unstable model: only a temperature still too high once the
    # thermostat has had its three relaxation times counts (hot starts are the norm for test sets
    # made of MD snapshots).
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    springs = SpringCalculator(**SPRINGS)
    snapshot = crystal.copy()
    snapshot.calc = springs
    MaxwellBoltzmannDistribution(snapshot, temperature_K=1500.0, rng=np.random.default_rng(3))
    Langevin(snapshot, units.fs, temperature_K=1500.0, friction=0.01 / units.fs, fixcm=False,
             rng=np.random.default_rng(4)).run(300)
    snapshot.set_velocities(np.zeros_like(snapshot.positions))
    res = md_stability(snapshot, springs, 300.0, 0.6)
    assert res.stable, res.failure
    assert np.max(res.temperatures[:100]) > 2 * 300.0  # it did heat itself past the steady-state bound
    assert 150 < np.mean(res.temperatures[-200:]) < 450  # and the thermostat brought it back


def test_a_runaway_that_persists_past_the_thermostat_time_is_still_caught(crystal):
    # slow heating (e-folding of the temperature ~100 fs against a thermostat time of 100 fs): it
    # stays below the start-up bound for a while but is caught once the thermostat should have won
    res = md_stability(crystal, HeatingCalculator(gamma_per_fs=0.012, **SPRINGS), 300.0, 1.0)
    assert res.failure is not None and res.failure.kind == "temperature", res.failure
    assert "above 2 x 300 K" in res.failure.detail and res.failure.step >= 300
