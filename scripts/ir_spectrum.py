#!/usr/bin/env python
"""IR and Raman spectra of a molecule from MD with a model that predicts dipoles and polarizabilities.

    mlip train configs/water_dipole.yaml                       # energy, forces, dipole, polarizability
    .venv/bin/python scripts/ir_spectrum.py runs/water_dipole/best_model.pt \\
        --structure data/molecules/water_pyscf.extxyz \\
        --reference data/molecules/water_pyscf.frequencies.json --out runs/water_spectrum

What it does (ASE, the model through ``MLIPCalculator``):

1. equilibrates the molecule (first frame of ``--structure``) with a Langevin thermostat at
   ``--temperature`` for ``--equilibration`` steps, then runs ``--steps`` of NVE (velocity
   Verlet, ``--timestep`` fs), recording the dipole (e*A) and the polarizability (A^3) the
   model predicts at every step;
2. IR: the power spectrum of the dipole's time derivative, |FT[d mu / dt]|^2 summed over x, y,
   z (by Wiener-Khinchin the Fourier transform of the autocorrelation <mu'(0) . mu'(t)>), with a
   Hann window; intensities in arbitrary units, normalised to the highest peak. Raman: the same
   for the polarizability, isotropic part (trace / 3) plus 7/45 of the anisotropic part (the
   traceless tensor), the usual unpolarised combination;
   Before the NVE run the overall rotation is removed, and every frame's dipole and
   polarizability are turned into the orientation of the first frame (mass-weighted Kabsch
   alignment), so that the rotation of a permanent dipole does not add a rotational band;
3. writes ``spectrum.png`` (both spectra, 0-4500 cm^-1, with the reference method's harmonic
   frequencies as vertical lines when ``--reference`` names the ``.frequencies.json`` written by
   ``scripts/label_pyscf.py``), ``spectrum.csv`` and ``peaks.json`` (the strongest peaks next to
   the nearest reference frequency).

Classical MD at 300 K samples the anharmonic surface, so peaks sit a little below harmonic
frequencies (tens of cm^-1 for O-H stretches); what a user looks for is peaks next to the lines.
The resolution is 1 / (steps x timestep): 10,000 steps of 0.5 fs give 6.7 cm^-1.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

C_CM_PER_S = 2.99792458e10  # speed of light, cm/s


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="mlip checkpoint / model file with dipole (and polarizability) heads")
    p.add_argument("--structure", required=True, help="extxyz file; FILE@INDEX picks a frame (default 0)")
    p.add_argument("--reference", default=None, help=".frequencies.json of scripts/label_pyscf.py (harmonic, cm^-1)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--equilibration", type=int, default=2000, help="Langevin steps before recording")
    p.add_argument("--steps", type=int, default=10000, help="NVE steps recorded")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--out", default="runs/spectrum")
    return p


def power_spectrum(signal, timestep_fs):
    """Wavenumbers (cm^-1) and the power spectrum of d(signal)/dt, summed over columns.

    ``signal`` [T, K] sampled every ``timestep_fs``; the derivative by central differences, a
    Hann window against leakage, zero padding to twice the length."""
    signal = np.asarray(signal, dtype=float).reshape(len(signal), -1)
    rate = np.gradient(signal, timestep_fs * 1e-15, axis=0)
    rate = rate - rate.mean(axis=0)
    window = np.hanning(len(rate))[:, None]
    spectrum = (np.abs(np.fft.rfft(rate * window, n=2 * len(rate), axis=0)) ** 2).sum(axis=1)
    freq_hz = np.fft.rfftfreq(2 * len(rate), d=timestep_fs * 1e-15)
    return freq_hz / C_CM_PER_S, spectrum


def raman_parts(alpha):
    """Isotropic (trace / 3) and anisotropic (traceless, 6 independent components) parts of
    polarizabilities [T, 3, 3]."""
    alpha = np.asarray(alpha, dtype=float)
    iso = np.trace(alpha, axis1=1, axis2=2) / 3.0
    traceless = alpha - iso[:, None, None] * np.eye(3)
    # off-diagonal components count twice in beta^2 = 3/2 tr(traceless^2)
    i, j = np.triu_indices(3)
    weights = np.where(i == j, 1.0, np.sqrt(2.0))
    return iso[:, None], traceless[:, i, j] * weights * np.sqrt(1.5)


def peaks(wavenumbers, intensity, count=8, low=300.0, separation=60.0):
    """The ``count`` strongest local maxima above ``low`` cm^-1, at least ``separation`` apart."""
    keep = wavenumbers > low
    w, s = wavenumbers[keep], intensity[keep]
    local = np.flatnonzero((s[1:-1] > s[:-2]) & (s[1:-1] >= s[2:])) + 1
    chosen = []
    for k in local[np.argsort(-s[local])]:
        if all(abs(w[k] - w[c]) >= separation for c in chosen):
            chosen.append(k)
        if len(chosen) == count:
            break
    return [(float(w[k]), float(s[k] / s.max())) for k in sorted(chosen)]


def centred(atoms):
    """Positions relative to the centre of mass (Angstrom)."""
    return atoms.positions - atoms.get_center_of_mass()


def kabsch(positions, reference, masses):
    """The rotation R that best maps ``positions`` onto ``reference`` (mass-weighted least
    squares, both centred): R @ x_i ~ ref_i. A vector v of the current frame is R @ v there."""
    h = (positions * masses[:, None]).T @ reference
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def run_md(args):
    from ase import units
    from ase.io import read
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    from mlip import MLIPCalculator

    file, _, index = args.structure.partition("@")
    atoms = read(file, index=int(index or 0))
    atoms.calc = None
    atoms.pbc = False
    atoms.info.pop("charge", None)
    calc = MLIPCalculator(args.model, dtype=args.dtype)
    if "dipole" not in calc.implemented_properties:
        sys.exit(f"ir_spectrum: {args.model} has no dipole head (train with model.dipole: true)")
    atoms.calc = calc
    rng = np.random.default_rng(args.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    t0 = time.time()
    thermostat = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                          friction=args.friction / units.fs, rng=rng)
    for block in range(0, args.equilibration, 500):
        thermostat.run(min(500, args.equilibration - block))
        print(f"equilibration {min(block + 500, args.equilibration)}/{args.equilibration} steps, "
              f"T = {atoms.get_temperature():.0f} K, {time.time() - t0:.0f} s", flush=True)
    # no overall rotation in the recorded run (the thermostat gives the molecule some), and each
    # frame's dipole and polarizability turned into the frame of the starting geometry (Eckart-like
    # alignment): a rotating permanent dipole would otherwise show up as a rotational band
    Stationary(atoms)
    ZeroRotation(atoms)
    reference = centred(atoms)
    dyn = VelocityVerlet(atoms, args.timestep * units.fs)
    dipoles, alphas, energies = [], [], []

    def record():
        rot = kabsch(centred(atoms), reference, atoms.get_masses())
        dipoles.append(rot @ atoms.get_dipole_moment())
        alpha = calc.results.get("polarizability")
        alphas.append(rot @ np.asarray(alpha).reshape(3, 3) @ rot.T if alpha is not None
                      else np.full((3, 3), np.nan))
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    record()
    every = max(1, args.steps // 10)
    for block in range(0, args.steps, every):
        dyn.run(min(every, args.steps - block))
        print(f"NVE {min(block + every, args.steps)}/{args.steps} steps, T = {atoms.get_temperature():.0f} K, "
              f"E_total drift {energies[-1] - energies[0]:+.2e} eV, {time.time() - t0:.0f} s", flush=True)
    return np.array(dipoles[: args.steps + 1]), np.array(alphas[: args.steps + 1]), np.array(energies)


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    dipoles, alphas, energies = run_md(args)
    w, ir = power_spectrum(dipoles, args.timestep)
    has_raman = not np.isnan(alphas).any()
    raman = None
    if has_raman:
        iso, aniso = raman_parts(alphas)
        _, r_iso = power_spectrum(iso, args.timestep)
        _, r_aniso = power_spectrum(aniso, args.timestep)
        raman = r_iso + 7.0 / 45.0 * r_aniso
    band = w <= 4500
    reference = None
    if args.reference:
        with open(args.reference) as f:
            reference = json.load(f)
    ref_freqs = [float(x) for x in (reference or {}).get("frequencies_cm-1", []) if float(x) > 100]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("IR", ir)] + ([("Raman", raman)] if has_raman else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 3.2 * len(rows)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (name, spectrum) in zip(axes, rows):
        ax.plot(w[band], spectrum[band] / spectrum[band].max(), lw=1.0, label=f"{name}, MD with the model")
        for k, nu in enumerate(ref_freqs):
            ax.axvline(nu, color="tab:red", ls="--", lw=0.8,
                       label="harmonic, reference method" if k == 0 else None)
        ax.set_ylabel(f"{name} intensity (normalised)")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("wavenumber (cm$^{-1}$)")
    title = (reference or {}).get("level_of_theory", "")
    fig.suptitle(f"{os.path.basename(args.structure.split('@')[0])}: {args.steps} NVE steps of {args.timestep} fs "
                 f"at {args.temperature:.0f} K" + (f"; reference {title}" if title else ""), fontsize=9)
    fig.tight_layout()
    png = os.path.join(args.out, "spectrum.png")
    fig.savefig(png, dpi=120)
    header = "wavenumber_cm-1,ir" + (",raman" if has_raman else "")
    table = np.column_stack([w[band], ir[band]] + ([raman[band]] if has_raman else []))
    np.savetxt(os.path.join(args.out, "spectrum.csv"), table, delimiter=",", header=header, comments="")
    summary = {"model": args.model, "structure": args.structure, "temperature_K": args.temperature,
               "timestep_fs": args.timestep, "steps": args.steps, "resolution_cm-1": float(w[1] - w[0]),
               "total_energy_drift_eV": float(energies[-1] - energies[0]), "reference_cm-1": ref_freqs}
    for name, spectrum in rows:
        found = peaks(w[band], spectrum[band])
        summary[f"{name}_peaks"] = [
            {"cm-1": nu, "relative_intensity": h,
             "nearest_reference_cm-1": min(ref_freqs, key=lambda r: abs(r - nu)) if ref_freqs else None}
            for nu, h in found]
    with open(os.path.join(args.out, "peaks.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {png}, spectrum.csv, peaks.json in {args.out}")
    for name, _ in rows:
        print(f"{name} peaks (cm^-1):", ", ".join(f"{p['cm-1']:.0f}" for p in summary[f"{name}_peaks"]))
    if ref_freqs:
        print("reference harmonic (cm^-1):", ", ".join(f"{r:.0f}" for r in ref_freqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
