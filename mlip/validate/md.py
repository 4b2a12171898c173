"""MD stability: NVT (Langevin) runs that stop at the first sign of an exploding or collapsing
simulation, and keep the frames around it.

After every step (time step ``timestep_fs``, 1 fs by default) the run is checked for, in order:

* ``nonfinite``: a NaN or inf in the energy, forces or positions;
* ``min_distance``: two atoms closer than ``min_distance`` A, or, by default, closer than
  ``distance_factor`` (0.5) times the sum of their covalent radii (1.11 A for Si-Si, 0.31 A for
  H-H): atoms falling into each other, the "collapse" of a model with no repulsion at short range;
* ``energy_jump``: the potential energy changing by more than ``energy_jump`` eV/atom (0.1) in
  one step. In a healthy run at 1000 K it changes by about 0.01 eV/atom per fs; a jump is a
  discontinuity of the model (a hole in its training data that atoms fall into);
* ``temperature``: the temperature averaged over the last ``temperature_window_fs`` (100 fs;
  from a fifth of it on) above ``temperature_factor`` (2) times the target, or, over a full
  window, below the target divided by that factor, once the thermostat has had three of its
  relaxation times (3 / friction) to act: a model whose forces are not the gradient of its
  energy, or that has a hole its atoms fall into, heats up (or drains) faster than the
  thermostat corrects. Before that time only a mean above ``startup_temperature_factor`` (5)
  times the target counts: a structure that starts away from a minimum (a snapshot of a hotter
  MD run, as test sets usually are) releases its excess potential energy as heat, which the
  thermostat needs those relaxation times to remove;
* ``calculator_error``: the calculator raised (an MLIPCalculator refuses atoms closer than
  0.1 A, for instance).

The first failure is reported with its step, time and a one-line detail, and an extended XYZ
excerpt is written with the ``excerpt_before`` frames before it, the failing frame and up to
``excerpt_after`` frames after it (each frame's ``info`` has ``step``, ``time_fs``,
``temperature_K``, ``epot_eV``; the failing one also ``failure``). Units: K, fs, eV, Angstrom.
"""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from mlip.validate.common import progress


@dataclass
class MDFailure:
    step: int
    time_fs: float
    kind: str          # nonfinite | min_distance | energy_jump | temperature | calculator_error
    detail: str


@dataclass
class MDStabilityResult:
    """One NVT run: the traces (one value per step, step 0 included) and the first failure."""

    temperature: float                # target, K
    steps: int                        # requested
    timestep_fs: float
    natoms: int
    failure: Optional[MDFailure] = None
    excerpt: Optional[str] = None     # path of the extxyz excerpt written around the failure
    time_fs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    temperatures: np.ndarray = field(default_factory=lambda: np.zeros(0))   # K
    epot: np.ndarray = field(default_factory=lambda: np.zeros(0))           # eV/atom
    min_distances: np.ndarray = field(default_factory=lambda: np.zeros(0))  # A

    @property
    def stable(self) -> bool:
        return self.failure is None

    @property
    def steps_done(self) -> int:
        return max(0, len(self.time_fs) - 1)


def distance_thresholds(numbers: np.ndarray, factor: float = 0.5, absolute: Optional[float] = None) -> np.ndarray:
    """Matrix (by atomic number, 0..118) of the closest allowed approach of two atoms, in A."""
    from ase.data import covalent_radii

    if absolute is not None:
        return np.full((len(covalent_radii), len(covalent_radii)), float(absolute))
    r = np.asarray(covalent_radii)
    return factor * (r[:, None] + r[None, :])


def closest_pair(atoms, thresholds: np.ndarray, reach: float = 3.0):
    """``(distance, i, j, ratio)`` of the pair with the smallest distance / threshold ratio, among
    pairs closer than max(``reach``, twice the largest threshold) A (distance inf when none is);
    periodic images count."""
    from ase.neighborlist import neighbor_list

    numbers = atoms.numbers
    zs = np.unique(numbers)
    cutoff = max(float(reach), 2.0 * float(thresholds[np.ix_(zs, zs)].max()))
    if atoms.pbc.any():
        i, j, d = neighbor_list("ijd", atoms, cutoff)
    else:
        # a molecule or cluster: all pairs (ASE's neighbour list wants a cell)
        dist = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=2)
        i, j = np.triu_indices(len(atoms), 1)
        d = dist[i, j]
    if len(d) == 0:
        return float("inf"), -1, -1, float("inf")
    ratio = d / thresholds[numbers[i], numbers[j]]
    k = int(np.argmin(ratio))
    return float(d[k]), int(i[k]), int(j[k]), float(ratio[k])


class _Stop(Exception):
    pass


def md_stability(atoms, calc, temperature_K: float, time_ps: float, timestep_fs: float = 1.0,
                 friction_per_fs: float = 0.01, seed: int = 0, min_distance: Optional[float] = None,
                 distance_factor: float = 0.5, energy_jump: float = 0.1, temperature_factor: float = 2.0,
                 startup_temperature_factor: float = 5.0, temperature_window_fs: float = 100.0,
                 excerpt_path: Optional[str] = None,
                 excerpt_before: int = 20, excerpt_after: int = 10, log=None,
                 log_every: int = 0) -> MDStabilityResult:
    """Langevin NVT of a copy of ``atoms`` at ``temperature_K`` for ``time_ps``; stops at the first
    failure (see the module doc). ``friction_per_fs``: Langevin friction (1/fs). ``log_every``:
    a progress line every that many steps (0: none)."""
    import ase.io
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    work = atoms.copy()
    work.set_constraint()
    work.calc = calc
    n = len(work)
    steps = max(1, int(round(time_ps * 1000.0 / timestep_fs)))
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(work, temperature_K=temperature_K, rng=rng, force_temp=True)
    Stationary(work)
    # the centre of mass stays at rest: Langevin noise would otherwise make it drift (ASE's way,
    # as mlip.deploy.md); with FixCom, get_temperature counts 3N - 3 degrees of freedom
    work.set_constraint(FixCom())
    dyn = Langevin(work, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    thresholds = distance_thresholds(work.numbers, distance_factor, min_distance)
    window = max(1, int(round(temperature_window_fs / timestep_fs)))
    # overheating is judged from a fifth of the window on, so a runaway is caught early; the
    # average over 20 fs of a healthy run stays far below twice the target
    min_window = max(1, window // 5)
    equilibrated = max(window, int(round(3.0 / friction_per_fs / timestep_fs)))
    startup_factor = max(temperature_factor, startup_temperature_factor)  # the bound before then
    result = MDStabilityResult(float(temperature_K), steps, timestep_fs, n)
    times: List[float] = []
    temps: List[float] = []
    epots: List[float] = []
    mins: List[float] = []
    before = collections.deque(maxlen=excerpt_before + 1)

    def frame(step: int, epot: float, temp: float, failure: str = ""):
        a = work.copy()
        a.set_constraint()
        a.info.update(step=step, time_fs=step * timestep_fs, temperature_K=temp, epot_eV=epot)
        if failure:
            a.info["failure"] = failure
        return a

    def check() -> None:
        step = dyn.nsteps
        try:
            epot = float(work.get_potential_energy())
            forces = work.get_forces()
        except Exception as exc:  # noqa: BLE001 -- any error of the model is a failure of the run
            result.failure = MDFailure(step, step * timestep_fs, "calculator_error",
                                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise _Stop from None
        temp = float(work.get_temperature())
        dmin, i, j, ratio = closest_pair(work, thresholds) if np.all(np.isfinite(work.positions)) else (
            float("nan"), -1, -1, float("nan"))
        times.append(step * timestep_fs)
        temps.append(temp)
        epots.append(epot / n)
        mins.append(dmin)
        before.append(frame(step, epot, temp))
        failure = None
        if not (np.isfinite(epot) and np.all(np.isfinite(forces)) and np.all(np.isfinite(work.positions))):
            failure = ("nonfinite", "energy, forces or positions are NaN or inf")
        elif ratio < 1.0:
            failure = ("min_distance", f"atoms {i} and {j} ({work.get_chemical_symbols()[i]}-"
                                       f"{work.get_chemical_symbols()[j]}) are {dmin:.3f} A apart, below "
                                       f"{thresholds[work.numbers[i], work.numbers[j]]:.3f} A")
        elif len(epots) > 1 and abs(epots[-1] - epots[-2]) > energy_jump:
            failure = ("energy_jump", f"potential energy changed by {epots[-1] - epots[-2]:+.3f} eV/atom in one "
                                      f"step (threshold {energy_jump} eV/atom)")
        elif len(temps) >= min_window:
            avg = float(np.mean(temps[-window:]))
            factor = temperature_factor if step >= equilibrated else startup_factor
            if avg > factor * temperature_K:
                failure = ("temperature", f"mean temperature of the last {min(window, len(temps)) * timestep_fs:.0f} "
                                          f"fs is {avg:.0f} K, above {factor:g} x {temperature_K:g} K")
            elif len(temps) >= window and step >= equilibrated and avg < temperature_K / temperature_factor:
                failure = ("temperature", f"mean temperature of the last {window * timestep_fs:.0f} fs is "
                                          f"{avg:.0f} K, below {temperature_K:g} K / {temperature_factor:g}")
        if failure is not None:
            result.failure = MDFailure(step, step * timestep_fs, *failure)
            before[-1].info["failure"] = failure[0]
            raise _Stop
        if log_every and step and step % log_every == 0:
            progress(log, f"    MD {temperature_K:g} K: step {step}/{steps}, T = {temp:.0f} K, "
                          f"Epot = {epot / n:.4f} eV/atom, closest pair {dmin:.2f} A")

    dyn.attach(check, interval=1)  # ASE calls observers at step 0 too
    try:
        dyn.run(steps)
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 -- the model raised inside a step: that step failed
        step = dyn.nsteps + 1
        result.failure = MDFailure(step, step * timestep_fs, "calculator_error",
                                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if before:
            before[-1].info.update(failure="calculator_error", failure_step=step)
    result.time_fs, result.temperatures = np.array(times), np.array(temps)
    result.epot, result.min_distances = np.array(epots), np.array(mins)
    if result.failure is not None and excerpt_path is not None:
        frames = list(before)
        # a few steps past the failure show where the run was heading; the model may refuse them
        dyn.observers.clear()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for _ in range(excerpt_after if result.failure.kind != "calculator_error" else 0):
                try:
                    dyn.run(1)
                    epot = float(work.get_potential_energy())
                except Exception:  # noqa: BLE001 -- past the failure, any error just ends the excerpt
                    break
                if not np.all(np.isfinite(work.positions)):
                    break
                frames.append(frame(dyn.nsteps, epot, float(work.get_temperature())))
        ase.io.write(excerpt_path, frames, format="extxyz")
        result.excerpt = excerpt_path
    return result


def plot_md(results: List[MDStabilityResult], path: str, title: str = "") -> str:
    """PNG of temperature and potential energy per atom against time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    for k, r in enumerate(results):
        color = f"C{k % 10}"
        t = r.time_fs / 1000.0
        ax1.plot(t, r.temperatures, color=color, lw=0.8, label=f"{r.temperature:g} K")
        ax1.axhline(r.temperature, color=color, lw=0.5, ls=":")
        ax2.plot(t, r.epot, color=color, lw=0.8)
        if r.failure is not None:
            for ax in (ax1, ax2):
                ax.axvline(r.failure.time_fs / 1000.0, color=color, ls="--", lw=0.8)
            ax1.annotate(r.failure.kind, (r.failure.time_fs / 1000.0, ax1.get_ylim()[1]), color=color,
                         fontsize=7, va="top")
    ax1.set_ylabel("temperature (K)")
    ax2.set_ylabel("Epot (eV/atom)")
    ax2.set_xlabel("time (ps)")
    ax1.legend(fontsize=7)
    ax1.set_title(title or "NVT stability")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
