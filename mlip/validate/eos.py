"""Equation of state: energy against volume, fitted with the third-order Birch-Murnaghan form.

    E(V) = E0 + 9 V0 B0 / 16 * [ (eta - 1)^3 B0' + (eta - 1)^2 (6 - 4 eta) ],  eta = (V0 / V)^(2/3)

Units: energies in eV, volumes in Angstrom^3, B0 in eV/Angstrom^3 inside the fit (``b0``) and
in GPa for reports (``b0_gpa``); B0' is dimensionless.

The fit is linear: with x = V^(-2/3), eta is proportional to x, so E is a cubic polynomial in x.
A least-squares cubic in x therefore recovers E0, V0, B0 and B0' of Birch-Murnaghan data exactly
(no starting guess, no iterative optimiser that could stop early), and B0, B0' follow from the
derivatives of the polynomial at its minimum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from mlip.validate.common import relax, with_calc
from mlip.validate.units import EV_PER_A3_IN_GPA


def birch_murnaghan_energy(volume, e0: float, v0: float, b0: float, b0_prime: float):
    """Third-order Birch-Murnaghan energy (eV) at ``volume`` (A^3); ``b0`` in eV/A^3."""
    eta = (v0 / np.asarray(volume, dtype=float)) ** (2.0 / 3.0)
    return e0 + 9.0 * v0 * b0 / 16.0 * ((eta - 1.0) ** 3 * b0_prime + (eta - 1.0) ** 2 * (6.0 - 4.0 * eta))


@dataclass
class BirchMurnaghan:
    """A fitted equation of state: E0 (eV), V0 (A^3), B0 (eV/A^3), B0' and the rms residual (eV)."""

    e0: float
    v0: float
    b0: float
    b0_prime: float
    rms: float = 0.0

    @property
    def b0_gpa(self) -> float:
        """Bulk modulus in GPa."""
        return self.b0 * EV_PER_A3_IN_GPA

    def energy(self, volume):
        return birch_murnaghan_energy(volume, self.e0, self.v0, self.b0, self.b0_prime)


def fit_birch_murnaghan(volumes, energies) -> BirchMurnaghan:
    """Least-squares Birch-Murnaghan fit of ``energies`` (eV) at ``volumes`` (A^3).

    Raises ``ValueError`` when fewer than 5 points are given (a cubic through 4 points has no
    residual to judge the fit by) or when the energies have no minimum inside the scanned
    volumes (a scan that misses the equilibrium, or a model with no stable volume there)."""
    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if v.shape != e.shape or v.ndim != 1 or len(v) < 5:
        raise ValueError("the fit needs at least 5 (volume, energy) points")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(e))):
        raise ValueError("non-finite volumes or energies")
    x = v ** (-2.0 / 3.0)
    # centre and scale x so that the 4x4 normal equations stay well conditioned
    xm, xs = x.mean(), x.std()
    p = np.polynomial.Polynomial.fit(x, e, 3, domain=[xm - xs, xm + xs], window=[-1, 1]).convert()
    dp, d2p, d3p = p.deriv(1), p.deriv(2), p.deriv(3)
    roots = [r.real for r in dp.roots() if abs(r.imag) < 1e-12 * max(1.0, abs(r.real))]
    # a minimum (p'' > 0) inside the scanned range, allowing half a step beyond its ends
    margin = 0.5 * (x.max() - x.min()) / max(1, len(x) - 1)
    minima = [r for r in roots if d2p(r) > 0 and x.min() - margin <= r <= x.max() + margin]
    if not minima:
        raise ValueError("the energy has no minimum inside the scanned volumes "
                         f"({v.min():.3f} to {v.max():.3f} A^3)")
    x0 = min(minima, key=lambda r: p(r))
    v0 = x0 ** (-1.5)
    # chain rule for E(V) = p(x(V)), x = V^(-2/3); p'(x0) = 0 at the minimum
    x1 = -2.0 / 3.0 * v0 ** (-5.0 / 3.0)
    x2 = 10.0 / 9.0 * v0 ** (-8.0 / 3.0)
    e2 = d2p(x0) * x1 ** 2
    e3 = d3p(x0) * x1 ** 3 + 3.0 * d2p(x0) * x1 * x2
    b0 = v0 * e2
    b0_prime = -1.0 - v0 ** 2 * e3 / b0  # B' = dB/dP = -(V/B) d(V E'')/dV
    rms = float(np.sqrt(np.mean((p(x) - e) ** 2)))
    return BirchMurnaghan(float(p(x0)), float(v0), float(b0), float(b0_prime), rms)


def lattice_parameters(atoms) -> Dict[str, float]:
    """Conventional lattice constants (A) of the cell: ``a`` (and ``b``, ``c`` where they differ
    by symmetry) of ASE's Bravais lattice (FCC(a) for a primitive fcc cell gives the cubic a);
    empty when the cell is not one of the lattices ASE recognises (a triclinic snapshot)."""
    try:
        lat = atoms.cell.get_bravais_lattice(eps=2e-4)
    except Exception:  # noqa: BLE001 -- ASE raises several types for unrecognised cells
        return {}
    if lat.name == "TRI":
        return {}
    return {k: float(v) for k, v in lat.vars().items() if k in ("a", "b", "c")}


@dataclass
class EOSResult:
    """Energies at uniformly scaled volumes and their fit; lattice constants at V0."""

    volumes: np.ndarray        # A^3, of the whole cell
    energies: np.ndarray       # eV, of the whole cell
    natoms: int
    fit: Optional[BirchMurnaghan]
    lattice: Dict[str, float]  # conventional a (b, c) at V0, Angstrom; empty for unrecognised cells
    error: str = ""            # why there is no fit

    @property
    def volume_per_atom(self) -> float:
        return self.fit.v0 / self.natoms if self.fit else float("nan")


def equation_of_state(atoms, calc, volume_range: float = 0.06, points: int = 9, relax_ions: bool = True,
                      fmax: float = 1e-3, max_extend: int = 8) -> EOSResult:
    """E(V) of ``atoms`` scaled uniformly (cell shape kept) over V_ref * (1 -/+ ``volume_range``).

    ``atoms`` should be relaxed (cell and positions) by the model first, so the scan is centred
    on its equilibrium and the shape is the model's. With ``relax_ions`` the positions are
    relaxed at each volume (to ``fmax`` eV/A); for crystals whose positions are fixed by
    symmetry (fcc, bcc, diamond) this costs one call. When the lowest energy lies at an end of
    the scan (a structure far from the model's equilibrium) the scan is extended beyond that end,
    one step at a time, up to ``max_extend`` points, and the fit uses the ``points`` volumes
    around the lowest energy. The lattice constants are those of the cell scaled to the fitted V0."""
    ref = with_calc(atoms, calc)
    v_ref = ref.get_volume()
    step = 2.0 * volume_range / max(1, points - 1)
    computed: Dict[float, float] = {}

    def energy(f: float) -> float:
        if f not in computed:
            work = ref.copy()
            work.set_cell(ref.cell.array * f ** (1.0 / 3.0), scale_atoms=True)
            if relax_ions:
                work, _ = relax(work, calc, fmax=fmax)
            work.calc = calc
            computed[f] = float(work.get_potential_energy())
        return computed[f]

    factors = list(1.0 + step * (np.arange(points) - (points - 1) / 2.0))
    for f in factors:
        energy(f)
    for _ in range(max_extend):
        es = [computed[f] for f in factors]
        k = int(np.argmin(es))
        if 0 < k < len(factors) - 1:
            break
        new = factors[0] - step if k == 0 else factors[-1] + step
        if not 0.3 < new < 3.0:
            break
        energy(new)
        factors = sorted(set(factors) | {new})
    es = np.array([computed[f] for f in factors])
    k = int(np.argmin(es))
    lo = int(np.clip(k - (points - 1) // 2, 0, max(0, len(factors) - points)))
    chosen = np.array(factors[lo:lo + points])
    v, e = chosen * v_ref, np.array([computed[f] for f in chosen])
    try:
        fit = fit_birch_murnaghan(v, e)
    except ValueError as exc:
        return EOSResult(v, e, len(ref), None, {}, str(exc))
    at_v0 = ref.copy()
    at_v0.set_cell(ref.cell.array * (fit.v0 / v_ref) ** (1.0 / 3.0), scale_atoms=True)
    return EOSResult(v, e, len(ref), fit, lattice_parameters(at_v0))


def plot_eos(result: EOSResult, path: str, title: str = "") -> str:
    """PNG of E/atom against V/atom with the fit; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result.natoms
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(result.volumes / n, result.energies / n, "o", label="model")
    if result.fit is not None:
        vv = np.linspace(result.volumes.min(), result.volumes.max(), 200)
        f = result.fit
        ax.plot(vv / n, f.energy(vv) / n, "-",
                label=f"Birch-Murnaghan: V0={f.v0 / n:.3f} A^3/atom, B0={f.b0_gpa:.1f} GPa, B0'={f.b0_prime:.2f}")
    ax.set_xlabel("volume per atom (A^3)")
    ax.set_ylabel("energy per atom (eV)")
    ax.set_title(title or "equation of state")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
