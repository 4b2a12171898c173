"""``mlip validate MODEL [--reference REF.yaml] [--structures FILE]``: physical properties of a
model next to reference (DFT) values.

Runs, with the ASE calculator of the model, the checks that fit its species and the given
structures (see :mod:`mlip.validate.runner`), prints a table of model value, reference value and
relative error, and writes PNGs (equation of state, phonon bands and DOS, MD traces), extended
XYZ excerpts around MD failures and ``results.json`` into ``--out``.

Without ``--reference``, a model of exactly the species Si is compared with the shipped PBE
reference (``mlip/validate/references/si_pbe.yaml``); ``--reference none`` skips it.

Exit status: 0 when no check failed (INFO and SKIP rows do not count), 1 when a comparison is
outside its tolerance or a check failed (MD instability, imaginary modes of a stable crystal, a
relaxation that did not converge, a computation that raised), 2 for a mistake in the input
(a missing file, a bad reference file). Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("exit status: 0 when no check failed, 1 when a value is outside its tolerance or a check "
                "failed, 2 for a mistake in the input. Units: Angstrom, eV, GPa, THz, K, ps.")
    p.add_argument("model", help="exported .nequip.pth, checkpoint or model file")
    p.add_argument("--reference", default=None,
                   help="YAML file of reference values (format: mlip/validate/reference.py). Default: the "
                        "shipped Si PBE reference for a model of exactly the species Si; 'none': no reference")
    p.add_argument("--structures", default=None,
                   help="ASE-readable file: every structure gets the MD-stability check, 3D-periodic ones also "
                        "the equation of state (model values only)")
    p.add_argument("--index", default=":", help="frames of --structures (ASE index, default ':' = all)")
    p.add_argument("--out", default="validate",
                   help="folder for PNGs, MD excerpts and results.json (default ./validate)")
    p.add_argument("--md-temperatures", type=float, nargs="+", default=None, metavar="K",
                   help="NVT temperatures in K (default: the reference's, else 300 1000; --quick: 300)")
    p.add_argument("--md-time-ps", type=float, default=None,
                   help="NVT time per temperature in ps (default: the reference's, else 1; --quick: 0.2)")
    p.add_argument("--md-timestep-fs", type=float, default=None,
                   help="MD time step in fs (default: the reference's, else 1)")
    p.add_argument("--md-min-distance", type=float, default=None,
                   help="closest allowed approach of two atoms in A (default: half their covalent radii's sum)")
    p.add_argument("--md-energy-jump", type=float, default=0.1,
                   help="largest change of the potential energy in one MD step, eV/atom (default 0.1)")
    p.add_argument("--phonon-backend", choices=("auto", "phonopy", "numpy"), default="auto",
                   help="phonopy (optional dependency) or the built-in finite differences; "
                        "auto: phonopy when installed")
    p.add_argument("--no-phonons", action="store_true", help="skip phonons")
    p.add_argument("--no-elastic", action="store_true", help="skip elastic constants")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 7 EOS points, smaller phonon supercell and mesh, one 0.2 ps MD run at 300 K")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="rebuild a checkpoint in this precision (float64 gives cleaner elastic constants and phonons)")
    p.add_argument("--seed", type=int, default=0, help="seed of the MD velocities and thermostat")


def _read_structures(path: str, index: str):
    import ase.io

    from mlip.errors import InputError

    if not os.path.exists(path):
        raise InputError("file not found", path)
    try:
        structures = ase.io.read(path, index=index)
    except Exception as exc:  # noqa: BLE001 -- ASE raises many types for unreadable files
        raise InputError(f"cannot read structures ({type(exc).__name__}: {exc})", path) from None
    structures = structures if isinstance(structures, list) else [structures]
    if not structures:
        raise InputError("no structures selected", path)
    for k, a in enumerate(structures):
        a.info.setdefault("name", f"{os.path.basename(path)}:{k}")
        a.calc = None
    return structures


def run(args) -> int:
    from mlip.errors import InputError
    from mlip.validate.reference import load_reference, shipped_reference
    from mlip.validate.report import failed, format_table, sources, write_json
    from mlip.validate.runner import Settings, run_validation

    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    # the user's files first: a typo should not wait for the model to load
    reference = None
    if args.reference and args.reference.lower() != "none":
        reference = load_reference(args.reference)
    structures = _read_structures(args.structures, args.index) if args.structures else []
    for name, value in (("--md-time-ps", args.md_time_ps), ("--md-timestep-fs", args.md_timestep_fs)):
        if value is not None and value <= 0:
            raise InputError(f"{name} must be positive, got {value}")
    if args.md_temperatures and min(args.md_temperatures) <= 0:
        raise InputError(f"--md-temperatures must be positive, got {args.md_temperatures}")
    if args.phonon_backend == "phonopy":
        from mlip.validate.phonons import phonopy_available

        if not phonopy_available():
            raise InputError("--phonon-backend phonopy: phonopy is not installed (pip install phonopy; "
                             "--phonon-backend numpy needs nothing more)")

    from mlip.deploy.calculator import MLIPCalculator

    log(f"mlip validate: loading {args.model}")
    calc = MLIPCalculator(args.model, device=args.device, dtype=args.dtype)
    species = list(calc.type_names)
    if args.reference is None:
        default = shipped_reference(species)
        if default is not None:
            reference = load_reference(default)
            log(f"mlip validate: reference {default}")
    if reference is None and not structures:
        raise InputError(f"nothing to validate: the model's species are {', '.join(species)}; give --reference "
                         "FILE (format: mlip/validate/reference.py) or --structures FILE", args.model)
    settings = Settings(out_dir=args.out, quick=args.quick, md_temperatures=args.md_temperatures,
                        md_time_ps=args.md_time_ps, md_timestep_fs=args.md_timestep_fs,
                        md_min_distance=args.md_min_distance, md_energy_jump=args.md_energy_jump,
                        phonon_backend=args.phonon_backend, phonons=not args.no_phonons,
                        elastic=not args.no_elastic, seed=args.seed, log=log, species=species)
    rows = run_validation(calc, reference, structures, settings)
    print(format_table(rows))
    cited = [reference.source] if reference is not None and reference.source else []
    cited += [s for s in sources(rows) if s not in cited]
    for s in cited:
        print(f"reference: {' '.join(s.split())}")
    os.makedirs(args.out, exist_ok=True)
    path = write_json(rows, os.path.join(args.out, "results.json"),
                      {"model": args.model, "reference": reference.path if reference else None,
                       "files": settings.files})
    print(f"written: {', '.join(settings.files + [path])}")
    bad = failed(rows)
    if bad:
        print("mlip validate: FAILED (see the rows marked FAIL or ERROR)", file=sys.stderr)
    return 1 if bad else 0


def main(argv=None) -> int:
    """``python -m mlip.validate.cli``: the same as ``mlip validate``."""
    parser = argparse.ArgumentParser(prog="mlip validate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from mlip.errors import MLIPError

    try:
        return run(args)
    except MLIPError as exc:
        print(f"mlip validate: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
