"""``mlip check MODEL [STRUCTURES]``: certify an exported model (symmetries, derivatives, NVE drift,
smoothness at r_max). Prints a pass/fail table; exit status 1 when any check fails."""
import argparse
import json
import sys

from mlip.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="exported .nequip.pth (a checkpoint also works)")
    p.add_argument("structures", nargs="?", default=None,
                   help="ASE-readable file of structures to check (default: a built-in molecule and a "
                        "small triclinic cell made of the model's species)")
    p.add_argument("--index", default=":3", help="which frames of STRUCTURES (ASE index, default ':3')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md-steps", type=int, default=100, help="NVE steps for the drift check")
    p.add_argument("--timestep", type=float, default=0.5, help="NVE time step in fs")
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature in K")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def run(args) -> int:
    from mlip.deploy.check import all_passed, format_table, run_checks

    structures = None
    if args.structures is not None:
        import ase.io
        import os

        if not os.path.exists(args.structures):
            raise InputError("file not found", args.structures)
        try:
            structures = ase.io.read(args.structures, index=args.index)
        except Exception as exc:
            raise InputError(f"cannot read structures ({type(exc).__name__}: {exc})", args.structures) from None
        if not isinstance(structures, list):
            structures = [structures]
        if not structures:
            raise InputError("no structures selected", args.structures)
        for k, a in enumerate(structures):
            a.info.setdefault("name", f"{os.path.basename(args.structures)}:{k}")
    rows = run_checks(args.model, structures, device=args.device, seed=args.seed, md_steps=args.md_steps,
                      timestep_fs=args.timestep, temperature_K=args.temperature)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dict(check=r.check, structure=r.structure, error=r.error, tolerance=r.tolerance,
                            status=r.status, note=r.note) for r in rows], fh, indent=1)
    ok = all_passed(rows)
    if not ok:
        print("mlip check: FAILED", file=sys.stderr)
    return 0 if ok else 1
