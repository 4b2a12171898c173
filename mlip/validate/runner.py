"""What ``mlip validate`` runs for each system of a reference file and each structure of ``--structures``.

Crystals (reference systems): relaxation of cell and positions; equation of state (lattice
constants, volume, bulk modulus, B0'); elastic constants; phonons (band structure, DOS,
imaginary modes of a stable crystal); vacancy and surface energies when the reference asks for
them; NVT stability at each temperature. Molecules: relaxation, bond lengths and angles,
harmonic frequencies when the reference gives some, imaginary modes, NVT stability. Structures
of ``--structures``: NVT stability, and for 3D-periodic ones the equation of state of the
configuration as given (cell scaled uniformly, ions not relaxed); they have no reference, so their
values are INFO rows.

Every function takes the ASE calculator to validate; a failure inside one property's
computation becomes an ERROR row and the others still run.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from mlip.validate.common import auto_repeat, progress, relax, supercell
from mlip.validate.reference import Property, Reference, System
from mlip.validate.report import Row, compare

DEFAULT_TEMPERATURES = (300.0, 1000.0)


@dataclass
class Settings:
    """How much work each check does. ``None`` fields: the reference file's value, else the default."""

    out_dir: Optional[str] = None          # PNGs, MD excerpts; None: write nothing
    quick: bool = False
    md_temperatures: Optional[Sequence[float]] = None   # K
    md_time_ps: Optional[float] = None
    md_timestep_fs: Optional[float] = None
    md_friction_per_fs: float = 0.01
    md_min_distance: Optional[float] = None             # A; None: half the covalent-radius sum
    md_energy_jump: float = 0.1                          # eV/atom per step
    md_temperature_factor: float = 2.0
    phonon_backend: str = "auto"
    phonons: bool = True
    elastic: bool = True
    seed: int = 0
    fmax: float = 1e-3                                   # eV/A, relaxations
    log: Optional[Callable[[str], None]] = print
    species: Optional[Sequence[str]] = None              # the model's; None: not checked
    files: List[str] = field(default_factory=list)       # what was written


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "structure"


def _path(settings: Settings, name: str, register: bool = True) -> Optional[str]:
    """Where to write ``name`` (None without an output folder); ``register``: list it as written."""
    if settings.out_dir is None:
        return None
    os.makedirs(settings.out_dir, exist_ok=True)
    path = os.path.join(settings.out_dir, name)
    if register:
        settings.files.append(path)
    return path


def _error_row(system: str, what: str, exc: BaseException) -> Row:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return Row(system, what, None, status="ERROR", note=f"{type(exc).__name__}: {text}"[:200])


def _missing_species(symbols: Sequence[str], settings: Settings) -> List[str]:
    if settings.species is None:
        return []
    return sorted(set(symbols) - set(settings.species))


def _ref_row(system: str, prop: Property, model_value: Optional[float], note: str = "") -> Row:
    return compare(system, prop.name, prop.shown(model_value) if model_value is not None else None,
                   prop.shown(prop.value), prop.shown_unit, prop.tolerance, prop.source,
                   "; ".join(x for x in (note, prop.note) if x))


def _md_rows(name: str, atoms, calc, settings: Settings, temperatures: Sequence[float], time_ps: float,
             timestep_fs: float) -> List[Row]:
    from mlip.validate.md import md_stability, plot_md

    rows, results = [], []
    for t in temperatures:
        progress(settings.log, f"[{name}] MD NVT {t:g} K for {time_ps:g} ps ({len(atoms)} atoms)")
        start = time.time()
        try:
            res = md_stability(atoms, calc, t, time_ps, timestep_fs=timestep_fs,
                               friction_per_fs=settings.md_friction_per_fs, seed=settings.seed,
                               min_distance=settings.md_min_distance, energy_jump=settings.md_energy_jump,
                               temperature_factor=settings.md_temperature_factor,
                               excerpt_path=_path(settings, f"{_safe(name)}_md_{t:g}K_failure.extxyz", False),
                               log=settings.log, log_every=max(1, int(round(250 / timestep_fs))))
        except Exception as exc:  # noqa: BLE001 -- report, go on with the other checks
            rows.append(_error_row(name, f"MD NVT {t:g} K", exc))
            continue
        if res.excerpt is not None:
            settings.files.append(res.excerpt)
        results.append(res)
        label = f"MD NVT {t:g} K, {time_ps:g} ps"
        if res.stable:
            rows.append(Row(name, label, f"stable {res.steps_done} steps", "stable", status="PASS",
                            note=f"T mean {np.mean(res.temperatures):.0f} K, closest pair "
                                 f"{np.nanmin(res.min_distances):.2f} A ({time.time() - start:.0f} s)"))
        else:
            f = res.failure
            where = f"; frames in {res.excerpt}" if res.excerpt else ""
            rows.append(Row(name, label, f"{f.kind} @ step {f.step}", "stable", status="FAIL",
                            note=f"{f.time_fs / 1000:.3f} ps: {f.detail}{where}"))
    if results:
        path = _path(settings, f"{_safe(name)}_md.png")
        if path:
            plot_md(results, path, f"{name}: NVT stability")
    return rows


def _eos_rows(name: str, relaxed, calc, settings: Settings, props: dict, relax_ions: bool = True) -> List[Row]:
    from mlip.validate.eos import equation_of_state, plot_eos

    progress(settings.log, f"[{name}] equation of state" + ("" if relax_ions else " (ions scaled with the cell)"))
    eos = equation_of_state(relaxed, calc, volume_range=0.04 if settings.quick else 0.06,
                            points=7 if settings.quick else 9, relax_ions=relax_ions, fmax=settings.fmax)
    path = _path(settings, f"{_safe(name)}_eos.png")
    if path:
        plot_eos(eos, path, f"{name}: equation of state")
    if eos.fit is None:
        # a reference crystal relaxed by the model must have a minimum near its cell; a user's
        # configuration need not (a snapshot under pressure): information only
        return [Row(name, "equation of state", None, status="FAIL" if relax_ions else "INFO", note=eos.error)]
    fit = eos.fit
    lat = eos.lattice
    values = {"lattice_constant": lat.get("a"), "lattice_a": lat.get("a"), "lattice_b": lat.get("b", lat.get("a")),
              "lattice_c": lat.get("c", lat.get("a")), "volume_per_atom": eos.volume_per_atom,
              "bulk_modulus": fit.b0_gpa, "bulk_modulus_derivative": fit.b0_prime}
    units = {"lattice_constant": "Angstrom", "lattice_a": "Angstrom", "lattice_b": "Angstrom",
             "lattice_c": "Angstrom", "volume_per_atom": "Angstrom^3", "bulk_modulus": "GPa",
             "bulk_modulus_derivative": ""}
    rows = []
    for key, prop in props.items():
        if key not in values:
            continue
        if values[key] is None:  # a lattice constant of a cell ASE does not recognise (triclinic)
            rows.append(Row(name, key, None, status="FAIL",
                            note="the relaxed cell is not a recognised Bravais lattice"))
            continue
        note = f"Birch-Murnaghan, rms {fit.rms * 1e3 / eos.natoms:.2g} meV/atom" if key == "bulk_modulus" else ""
        rows.append(_ref_row(name, prop, values[key], note))
    # the model's other values, for information
    info = ["lattice_constant"] if "a" in eos.lattice else []
    info += ["volume_per_atom", "bulk_modulus", "bulk_modulus_derivative"]
    info += [f"lattice_{k}" for k in ("b", "c") if k in eos.lattice]
    note = "" if relax_ions else "the given configuration, scaled; ions not relaxed"
    for key in info:
        same = {"lattice_constant", "lattice_a"} if key == "lattice_constant" else {key}
        if not same & set(props):
            rows.append(Row(name, key, values[key], unit=units[key], note=note))
    return rows


def _crystal(system: System, calc, settings: Settings) -> List[Row]:
    from mlip.validate.defects import surface_energy, vacancy_formation_energy
    from mlip.validate.elastic import elastic_constants
    from mlip.validate.phonons import compute_phonons, plot_phonons

    name, props = system.name, system.properties
    rows: List[Row] = []
    progress(settings.log, f"[{name}] relaxing cell and positions")
    try:
        relaxed, converged = relax(system.build(), calc, fmax=settings.fmax, cell=True, steps=500)
        fmax_now = float(np.abs(relaxed.get_forces()).max())
    except Exception as exc:  # noqa: BLE001 -- nothing else can run without the relaxed crystal
        return [_error_row(name, "relaxation (cell + positions)", exc)]
    rows.append(Row(name, "relaxation (cell + positions)", "converged" if converged else "not converged",
                    status="PASS" if converged else "FAIL",
                    note=f"max force {fmax_now:.1e} eV/A" + ("" if converged else f" (target {settings.fmax} eV/A)")))
    try:
        rows += _eos_rows(name, relaxed, calc, settings, props)
    except Exception as exc:  # noqa: BLE001
        rows.append(_error_row(name, "equation of state", exc))
    elastic_props = [p for p in props.values() if p.kind == "elastic"]
    if settings.elastic:
        progress(settings.log, f"[{name}] elastic constants (12 strained cells, ions relaxed)")
        try:
            el = elastic_constants(relaxed, calc)
            named = el.named()
            for p in elastic_props:
                i, j = sorted((int(p.name[1]), int(p.name[2])))
                rows.append(_ref_row(name, p, named[f"C{i}{j}"]))
            if not elastic_props:
                for k in ("C11", "C12", "C44"):
                    rows.append(Row(name, k, named[k], unit="GPa"))
            if system.stable:
                rows.append(Row(name, "elastic: Born stability", "stable" if el.mechanically_stable else "unstable",
                                "stable", status="PASS" if el.mechanically_stable else "FAIL",
                                note=f"smallest eigenvalue of C {np.linalg.eigvalsh(el.C).min():.1f} GPa; "
                                     f"Voigt B {el.bulk_modulus_voigt:.1f} GPa"))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(name, "elastic constants", exc))
    if system.phonons is not None and settings.phonons:
        cfg = system.phonons
        progress(settings.log, f"[{name}] phonons")
        try:
            ph = compute_phonons(relaxed, calc, repeat=cfg.get("supercell"), delta=cfg.get("delta", 0.01),
                                 mesh=cfg.get("mesh", 8 if settings.quick else 16), backend=settings.phonon_backend,
                                 imaginary_tolerance=cfg.get("imaginary_tolerance", 0.1),
                                 min_width=7.0 if settings.quick else 10.0, log=settings.log)
            path = _path(settings, f"{_safe(name)}_phonons.png")
            if path:
                plot_phonons(ph, path, name)
            note = (f"below -{ph.imaginary_tolerance:g} THz at {ph.n_imaginary_q} q-points; min "
                    f"{ph.min_frequency:.3f} THz at q={np.round(ph.min_q, 3).tolist()}, max "
                    f"{ph.max_frequency:.2f} THz; {ph.backend}, supercell {ph.supercell}")
            verdict = "imaginary" if ph.has_imaginary else "none"
            rows.append(Row(name, "phonons: imaginary modes", verdict, "none" if system.stable else None,
                            status=("FAIL" if ph.has_imaginary else "PASS") if system.stable else "INFO", note=note))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(name, "phonons", exc))
    conv = None
    for p in props.values():
        if p.kind not in ("vacancy", "surface"):
            continue
        if conv is None:
            conv = supercell(relaxed, system.conventional_matrix())
        try:
            if p.kind == "vacancy":
                repeat = p.params.get("supercell") or auto_repeat(conv, 9.0)
                progress(settings.log, f"[{name}] vacancy formation energy ({len(supercell(conv, repeat))} atoms)")
                vac = vacancy_formation_energy(conv, calc, repeat, relax_ions=p.params.get("relax", True))
                note = f"{vac.natoms}-atom cell, relaxation {vac.relaxation:.3f} eV"
                rows.append(_ref_row(name, p, vac.energy, note=note + ("" if vac.converged else ", NOT converged")))
            else:
                progress(settings.log, f"[{name}] surface energy {p.params['miller']}")
                s = surface_energy(conv, calc, p.params["miller"], p.params["layers"], p.params["vacuum"],
                                   relax_ions=p.params.get("relax", True))
                note = f"{s.natoms}-atom slab" + ("" if s.converged else ", NOT converged")
                rows.append(_ref_row(name, p, s.energy, note=note))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(name, p.name, exc))
    md_cell = supercell(relaxed, system.md["supercell"]) if "supercell" in system.md else None
    if md_cell is None:
        conv = conv if conv is not None else supercell(relaxed, system.conventional_matrix())
        md_cell = supercell(conv, auto_repeat(conv, 9.0))
    rows += _md_rows(name, md_cell, calc, settings, *_md_plan(system.md, settings))
    return rows


def _md_plan(md: dict, settings: Settings):
    """Temperatures (K), time (ps) and time step (fs): the command line's, else the reference's,
    else the defaults (300 and 1000 K, 1 ps, 1 fs); ``quick`` keeps only the first temperature and
    at most 0.2 ps of what would run otherwise."""
    temps = list(settings.md_temperatures or md.get("temperatures") or DEFAULT_TEMPERATURES)
    time_ps = settings.md_time_ps or md.get("time_ps") or 1.0
    if settings.quick:
        temps = temps if settings.md_temperatures else temps[:1]
        time_ps = time_ps if settings.md_time_ps else min(time_ps, 0.2)
    return temps, float(time_ps), float(settings.md_timestep_fs or md.get("timestep_fs") or 1.0)


def _molecule(system: System, calc, settings: Settings) -> List[Row]:
    from mlip.validate.molecule import bond_angle, bond_length, harmonic_frequencies, relax_molecule

    name, props = system.name, system.properties
    rows: List[Row] = []
    progress(settings.log, f"[{name}] relaxing the molecule")
    try:
        relaxed, converged = relax_molecule(system.build(), calc, fmax=settings.fmax)
        fmax_now = float(np.abs(relaxed.get_forces()).max())
    except Exception as exc:  # noqa: BLE001 -- nothing else can run without the relaxed molecule
        return [_error_row(name, "relaxation", exc)]
    rows.append(Row(name, "relaxation", "converged" if converged else "not converged",
                    status="PASS" if converged else "FAIL", note=f"max force {fmax_now:.1e} eV/A"))
    for p in props.values():
        if p.kind == "bond":
            rows.append(_ref_row(name, p, bond_length(relaxed, *p.params["atoms"])))
        elif p.kind == "angle":
            rows.append(_ref_row(name, p, bond_angle(relaxed, *p.params["atoms"])))
    if len(relaxed) > 1:
        progress(settings.log, f"[{name}] harmonic frequencies ({6 * len(relaxed)} force calls)")
        try:
            vib = harmonic_frequencies(relaxed, calc)
            ref = props.get("frequencies")
            if ref is not None:
                model = vib.frequencies[-len(ref.value):] if len(vib.frequencies) >= len(ref.value) else None
                if model is None:
                    rows.append(Row(name, "frequencies", None, status="FAIL",
                                    note=f"the reference lists {len(ref.value)} modes, the molecule has "
                                         f"{len(vib.frequencies)}"))
                else:
                    for k, (m, r) in enumerate(zip(model, ref.value)):
                        rows.append(compare(name, f"frequency {k + 1}", ref.shown(m), ref.shown(r), ref.shown_unit,
                                            ref.tolerance, ref.source, ref.note))
            n_imag = vib.n_imaginary()
            rows.append(Row(name, "vibrations: imaginary modes", str(n_imag), "0", status="FAIL" if n_imag else "PASS",
                            note=f"lowest {vib.wavenumbers.min():.1f} cm^-1, "
                                 f"highest {vib.wavenumbers.max():.1f} cm^-1"))
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(name, "harmonic frequencies", exc))
    rows += _md_rows(name, relaxed, calc, settings, *_md_plan(system.md, settings))
    return rows


def validate_system(system: System, calc, settings: Settings) -> List[Row]:
    """All the rows of one reference system."""
    missing = _missing_species(system.species, settings)
    if missing:
        return [Row(system.name, "all checks", None, status="SKIP",
                    note=f"the model has no {', '.join(missing)}")]
    if system.kind == "crystal":
        return _crystal(system, calc, settings)
    return _molecule(system, calc, settings)


def validate_structure(name: str, atoms, calc, settings: Settings) -> List[Row]:
    """Rows of a user's structure: MD stability; equation of state when periodic in 3D."""
    missing = _missing_species(atoms.get_chemical_symbols(), settings)
    if missing:
        return [Row(name, "all checks", None, status="SKIP", note=f"the model has no {', '.join(missing)}")]
    rows: List[Row] = []
    if atoms.pbc.all():
        # E(V) of the configuration as given: a user's structure may be an MD snapshot that has no
        # equilibrium of its own to relax to (and relaxing one costs hundreds of calls)
        try:
            rows += _eos_rows(name, atoms, calc, settings, {}, relax_ions=False)
        except Exception as exc:  # noqa: BLE001
            rows.append(_error_row(name, "equation of state", exc))
    rows += _md_rows(name, atoms, calc, settings, *_md_plan({}, settings))
    return rows


def run_validation(calc, reference: Optional[Reference] = None, structures: Sequence = (),
                   settings: Optional[Settings] = None) -> List[Row]:
    """Every check of ``reference`` and ``structures`` (``ase.Atoms``, named by ``info['name']``)."""
    settings = settings or Settings()
    rows: List[Row] = []
    if reference is not None:
        for system in reference.systems:
            rows += validate_system(system, calc, settings)
    for k, atoms in enumerate(structures):
        rows += validate_structure(str(atoms.info.get("name", f"structure_{k}")), atoms, calc, settings)
    return rows
