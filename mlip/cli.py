"""The ``mlip`` command. Each subcommand lives in its own module, imported only when used.

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. Errors in the
user's input (:class:`~mlip.errors.InputError`) are printed as one line with exit code 2; a file
that cannot be written (:class:`~mlip.errors.StorageError`, or any other operating-system error
such as a full disk) as one line with exit code 1.
"""
import argparse
import importlib
import importlib.util
import sys
from typing import List, Optional

from mlip.errors import STORAGE_ERRNOS, MLIPError, describe_os_error, os_error_text

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("mlip.demo", "build a model and predict energy, forces and stress for structures"),
    "train": ("mlip.train.cli", "train a potential from a YAML config"),
    "evaluate": ("mlip.train.evaluate_cli", "errors of a model on a data set, with parity plots"),
    "export": ("mlip.deploy.export_cli", "export a checkpoint as a TorchScript .nequip.pth (LAMMPS, ASE)"),
    "check": ("mlip.deploy.check_cli", "certify an exported model: symmetries, derivatives, NVE drift"),
    "validate": ("mlip.validate.cli", "physical properties of a model next to DFT references: EOS, elastic "
                 "constants, phonons, defects, MD stability"),
    "preprocess": ("mlip.data.preprocess_cli", "convert structures into sharded HDF5"),
    "benchmark": ("mlip.benchmark_cli", "train and score on 3BPA / rMD17 next to published errors"),
}


def _available():
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            yield name, module, help_text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mlip", description="E(3)-equivariant interatomic potentials. "
                                     "Units: eV, Angstrom, eV/A, eV/A^3 (ASE stress sign).")
    from mlip import __version__
    parser.add_argument("--version", action="version", version=f"mlip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module, help_text in _available():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except MLIPError as exc:
        print(f"mlip {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, RuntimeError) as exc:
        # a full disk or a read-only folder met where no code expected it: still one line
        os_error = describe_os_error(exc)
        if os_error is None or (not isinstance(exc, OSError) and os_error.errno not in STORAGE_ERRNOS):
            raise
        where = f"{os_error.filename}: " if os_error.filename else ""
        print(f"mlip {args.command}: error: {where}{os_error_text(os_error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mlip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
