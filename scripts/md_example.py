#!/usr/bin/env python
"""Molecular dynamics with an mlip model in ASE (NVT Langevin or NVE velocity Verlet).

    python scripts/md_example.py si.nequip.pth data/si_test.extxyz --ensemble nvt -o md.traj

Same as `python -m mlip.deploy.md`; see `--help` for temperature, time step and steps.
"""
import sys

from mlip.deploy.md import main

if __name__ == "__main__":
    sys.exit(main())
