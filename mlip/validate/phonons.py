"""Harmonic phonons by finite displacements: band structure, density of states, imaginary modes.

Two back ends compute the force constants of a supercell of the given (primitive) cell:

* ``phonopy`` (optional dependency, ``pip install phonopy``): displacements reduced by the
  crystal's symmetry, so a diamond crystal needs one or two calculator calls instead of twelve;
* ``numpy`` (always available): every atom of the primitive cell displaced by +/- ``delta``
  along x, y and z (6 N calls), force constants by central differences, the acoustic sum rule
  imposed on the self term, and Fourier interpolation over the shortest supercell images (pairs
  with several equally short images share the weight, as in phonopy), so frequencies at q-points
  that are not commensurate with the supercell are those of the force constants' range.

``backend="auto"`` uses phonopy when it can be imported. Frequencies are in THz (nu = omega / 2
pi; 1 THz = 33.356 cm^-1 = 4.1357 meV); imaginary frequencies are returned as negative numbers
(-sqrt(|omega^2|)). q-points are fractional coordinates of the reciprocal lattice of the
primitive cell (without the 2 pi).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from mlip.validate.common import Supercell, auto_repeat, progress, supercell as make_super, with_calc
from mlip.validate.units import SQRT_EV_A2_AMU_IN_THZ


def eigenvalues_to_thz(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of the dynamical matrix (eV / (A^2 amu)) as signed frequencies in THz."""
    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * SQRT_EV_A2_AMU_IN_THZ


def _supercell_matrix(repeat: Supercell) -> np.ndarray:
    p = np.asarray(repeat, dtype=int)
    return np.diag(p) if p.ndim == 1 else p


def _forces(atoms, calc) -> np.ndarray:
    work = with_calc(atoms, calc)
    return np.asarray(work.get_forces(), dtype=float)


class NumpyForceConstants:
    """Force constants of ``prim`` in the supercell ``prim * P`` by +/- displacements.

    ``frequencies(q)`` gives signed THz frequencies at fractional q-points of the primitive
    reciprocal lattice, shape (nq, 3 N)."""

    name = "numpy"

    def __init__(self, prim, calc, repeat: Supercell, delta: float = 0.01, log=None):
        self.prim = prim.copy()
        p = _supercell_matrix(repeat)
        sc = make_super(self.prim, p)
        n, ns = len(self.prim), len(sc)
        # fractional offsets (primitive basis) of every supercell atom from every primitive atom
        diff = sc.positions[:, None, :] - self.prim.positions[None, :, :]         # (ns, n, 3)
        frac = diff @ np.linalg.inv(self.prim.cell.array)
        # each supercell atom is an image of the primitive atom it is a lattice translation away from
        dev = np.abs(frac - np.round(frac)).max(axis=2)
        owner = dev.argmin(axis=1)
        if not np.allclose(dev[np.arange(ns), owner], 0.0, atol=1e-5):
            raise ValueError("the supercell is not made of translated copies of the primitive cell")
        shift = np.abs(np.round(frac[np.arange(ns), owner])).sum(axis=1)
        # the image of primitive atom i that is displaced: the untranslated one where possible
        home = np.array([np.flatnonzero(owner == i)[np.argmin(shift[owner == i])] for i in range(n)])
        fc = np.zeros((n, ns, 3, 3))
        for i in range(n):
            for a in range(3):
                f = []
                for sign in (1.0, -1.0):
                    disp = sc.copy()
                    disp.positions[home[i], a] += sign * delta
                    f.append(_forces(disp, calc))
                # Phi(i a, J b) = d2E / du_ia du_Jb = -dF_Jb / du_ia
                fc[i, :, a, :] = -(f[0] - f[1]) / (2.0 * delta)
            progress(log, f"    phonons: displaced atom {i + 1}/{n} (6 calls of {ns} atoms each)")
        # acoustic sum rule: a rigid translation costs no force; put the residual on the self term
        for i in range(n):
            fc[i, home[i]] -= fc[i].sum(axis=0)
        self.fc, self.owner, self.home = fc, owner, home
        self.masses = self.prim.get_masses()
        # shortest images of each pair (i, J) across the supercell's periodic boundary
        sc_cell = sc.cell.array
        shifts = np.array([[a, b, c] for a in range(-2, 3) for b in range(-2, 3) for c in range(-2, 3)]) @ sc_cell
        d0 = sc.positions[None, :, :] - sc.positions[home][:, None, :]          # (n, ns, 3)
        cand = d0[:, :, None, :] + shifts[None, None]                             # (n, ns, 125, 3)
        length = np.linalg.norm(cand, axis=3)
        shortest = length.min(axis=2, keepdims=True)
        mask = length < shortest + 1e-4
        self.weights = mask / mask.sum(axis=2, keepdims=True)                     # (n, ns, 125)
        self.vectors = cand

    def dynamical_matrix(self, q: np.ndarray) -> np.ndarray:
        """Mass-weighted dynamical matrices, shape (nq, 3N, 3N), in eV / (A^2 amu)."""
        q = np.atleast_2d(np.asarray(q, dtype=float))
        k = q @ self.prim.cell.reciprocal()                                      # 1/A, no 2 pi
        phase = np.einsum("ijm,qijm->qij", self.weights,
                          np.exp(2j * np.pi * np.einsum("qx,ijmx->qijm", k, self.vectors)))
        n = len(self.prim)
        onehot = np.zeros((self.fc.shape[1], n))
        onehot[np.arange(self.fc.shape[1]), self.owner] = 1.0
        d = np.einsum("qiJ,iJab,Jj->qiajb", phase, self.fc, onehot).reshape(len(q), 3 * n, 3 * n)
        m = np.repeat(self.masses, 3)
        d = d / np.sqrt(np.outer(m, m))[None]
        return 0.5 * (d + np.conj(np.transpose(d, (0, 2, 1))))

    def frequencies(self, q) -> np.ndarray:
        return eigenvalues_to_thz(np.linalg.eigvalsh(self.dynamical_matrix(q)))


class PhonopyForceConstants:
    """The same interface, with phonopy computing the displacements and force constants."""

    name = "phonopy"

    def __init__(self, prim, calc, repeat: Supercell, delta: float = 0.01, log=None):
        from ase import Atoms
        from phonopy import Phonopy
        from phonopy.structure.atoms import PhonopyAtoms

        unit = PhonopyAtoms(symbols=prim.get_chemical_symbols(), cell=prim.cell.array,
                            scaled_positions=prim.get_scaled_positions(), masses=prim.get_masses())
        # primitive_matrix = identity: the given cell is the one whose q-points we report
        self.ph = Phonopy(unit, supercell_matrix=_supercell_matrix(repeat), primitive_matrix=np.eye(3))
        self.ph.generate_displacements(distance=delta)
        cells = self.ph.supercells_with_displacements
        forces = []
        for k, sc in enumerate(cells):
            atoms = Atoms(symbols=sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
            f = _forces(atoms, calc)
            forces.append(f - f.mean(axis=0))  # drift removal, as phonopy's own calculators do
            progress(log, f"    phonons (phonopy): displacement {k + 1}/{len(cells)} ({len(atoms)} atoms)")
        self.ph.forces = np.array(forces)
        self.ph.produce_force_constants()
        self.prim = prim.copy()

    def frequencies(self, q) -> np.ndarray:
        self.ph.run_qpoints(np.atleast_2d(np.asarray(q, dtype=float)))
        return np.asarray(self.ph.get_qpoints_dict()["frequencies"])


def phonopy_available() -> bool:
    """Whether the optional phonopy back end can be imported."""
    import importlib.util

    return importlib.util.find_spec("phonopy") is not None


def force_constants(atoms, calc, repeat: Supercell, delta: float = 0.01, backend: str = "auto", log=None):
    """Force constants of ``atoms`` (a relaxed primitive cell) in the supercell ``repeat``."""
    if backend == "auto":
        backend = "phonopy" if phonopy_available() else "numpy"
    if backend == "phonopy":
        return PhonopyForceConstants(atoms, calc, repeat, delta, log)
    if backend == "numpy":
        return NumpyForceConstants(atoms, calc, repeat, delta, log)
    raise ValueError(f"backend must be 'auto', 'phonopy' or 'numpy', got {backend!r}")


def monkhorst_pack(n: int) -> np.ndarray:
    """A Gamma-centred n x n x n grid of fractional q-points (including Gamma)."""
    g = np.arange(n) / n
    return np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T


def band_path(atoms, npoints: int = 200) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[str]]:
    """q-points along ASE's standard path for the cell's Bravais lattice: ``(q, x, x_special,
    labels)``; a simple Gamma-X-M-R-Gamma path in the cell's own basis if ASE finds none."""
    try:
        bp = atoms.cell.bandpath(npoints=npoints)
        x, xs, labels = bp.get_linear_kpoint_axis()
        # a break in the path (",") puts two labels at one x: show them as "K|U"
        merged_x, merged = [], []
        for xv, lab in zip(xs, labels):
            lab = "Γ" if lab == "G" else lab
            if merged_x and abs(xv - merged_x[-1]) < 1e-9:
                merged[-1] = merged[-1] if merged[-1] == lab else f"{merged[-1]}|{lab}"
            else:
                merged_x.append(xv)
                merged.append(lab)
        return np.asarray(bp.kpts), np.asarray(x), np.asarray(merged_x), merged
    except Exception:  # noqa: BLE001 -- unrecognised cells: fall back to a generic path
        corners = np.array([[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.5], [0, 0, 0]], dtype=float)
        labels = ["Γ", "X", "M", "R", "Γ"]
        rec = atoms.cell.reciprocal()
        qs, xs, xspec, x0 = [], [], [0.0], 0.0
        per = max(2, npoints // 4)
        for a, b in zip(corners[:-1], corners[1:]):
            seg = a + np.linspace(0, 1, per, endpoint=False)[:, None] * (b - a)
            step = np.linalg.norm((b - a) @ rec)
            qs.append(seg)
            xs.append(x0 + np.linspace(0, 1, per, endpoint=False) * step)
            x0 += step
            xspec.append(x0)
        qs.append(corners[-1:])
        xs.append(np.array([x0]))
        return np.vstack(qs), np.concatenate(xs), np.array(xspec), labels


@dataclass
class PhononResult:
    """Band structure, DOS and the imaginary-mode verdict. Frequencies in THz."""

    backend: str
    supercell: List
    band_q: np.ndarray
    band_x: np.ndarray
    band_special_x: np.ndarray
    band_labels: List[str]
    band_frequencies: np.ndarray      # (nq, 3N)
    dos_frequencies: np.ndarray       # grid, THz
    dos: np.ndarray                   # states / THz, integrates to 3N
    mesh_frequencies: np.ndarray      # (nmesh, 3N)
    min_frequency: float              # most negative (imaginary) or lowest frequency, THz
    min_q: np.ndarray                 # where it occurs (fractional)
    imaginary_tolerance: float        # THz
    n_imaginary_q: int = 0            # q-points (path + mesh) with a mode below -tolerance
    model: Optional[object] = field(default=None, repr=False)

    @property
    def has_imaginary(self) -> bool:
        return self.n_imaginary_q > 0

    @property
    def max_frequency(self) -> float:
        return float(max(self.band_frequencies.max(), self.mesh_frequencies.max()))


def imaginary_modes(frequencies: np.ndarray, tolerance: float) -> np.ndarray:
    """Per q-point: True where a mode is below ``-tolerance`` (THz)."""
    return np.asarray(frequencies).min(axis=1) < -abs(tolerance)


def compute_phonons(atoms, calc, repeat: Optional[Supercell] = None, delta: float = 0.01, mesh: int = 16,
                    backend: str = "auto", imaginary_tolerance: float = 0.1, npoints: int = 200,
                    min_width: float = 10.0, log=None) -> PhononResult:
    """Phonons of the relaxed cell ``atoms``: band structure, DOS on a ``mesh``^3 grid, imaginary modes.

    ``repeat``: supercell (3 repeats or a 3x3 matrix; default: every face-to-face width of the
    supercell >= ``min_width`` A, which should exceed the model's interaction range).
    ``delta``: displacement in A. ``imaginary_tolerance`` (THz): frequencies above -tolerance
    count as real, since finite differences leave small negative values near Gamma."""
    repeat = list(repeat) if repeat is not None else auto_repeat(atoms, min_width)
    model = force_constants(atoms, calc, repeat, delta, backend, log)
    q, x, xs, labels = band_path(atoms, npoints)
    band = model.frequencies(q)
    grid = monkhorst_pack(mesh)
    mfreq = model.frequencies(grid)
    everything = np.vstack([band, mfreq])
    allq = np.vstack([q, grid])
    k = int(np.argmin(everything.min(axis=1)))
    fmax = float(everything.max())
    width = max(0.02 * fmax, 0.05)
    fgrid = np.linspace(min(everything.min(), 0.0) - 3 * width, fmax + 3 * width, 400)
    # Gaussian-broadened DOS, normalised so that it integrates to 3N modes
    gauss = np.exp(-0.5 * ((fgrid[:, None] - mfreq.ravel()[None]) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    dos = gauss.sum(axis=1) / len(grid)
    n_imag = int(imaginary_modes(everything, imaginary_tolerance).sum())
    return PhononResult(model.name, repeat, q, x, xs, labels, band, fgrid, dos, mfreq,
                        float(everything[k].min()), allq[k], imaginary_tolerance, n_imag, model)


def plot_phonons(result: PhononResult, path: str, title: str = "") -> str:
    """PNG of the band structure (left) and DOS (right), THz; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 4), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    ax.plot(result.band_x, result.band_frequencies, "-", color="C0", lw=1)
    for xv in result.band_special_x:
        ax.axvline(xv, color="0.7", lw=0.5)
    ax.axhline(0.0, color="0.3", lw=0.5)
    ax.set_xticks(result.band_special_x)
    ax.set_xticklabels(result.band_labels)
    ax.set_xlim(result.band_x.min(), result.band_x.max())
    ax.set_ylabel("frequency (THz)")
    verdict = (f"{result.n_imaginary_q} q-points with imaginary modes (min {result.min_frequency:.2f} THz)"
               if result.has_imaginary else "no imaginary modes")
    ax.set_title((title + ": " if title else "") + verdict, fontsize=9)
    ax2.plot(result.dos, result.dos_frequencies, color="C1")
    ax2.set_xlabel("DOS (1/THz)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
