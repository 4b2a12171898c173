#!/usr/bin/env bash
# The main job, end to end on the shipped Si example: set up .venv, train (about 2 minutes on
# 2 CPU cores, or set device=cuda), score the test set, export for LAMMPS/ASE, certify the export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
run=runs/example
mlip train configs/example.yaml "$@"
mlip evaluate "$run/best_model.pt" data/si_test.extxyz --output "$run/evaluate"
mlip export "$run/best_model.pt" -o "$run/si.nequip.pth"
mlip check "$run/si.nequip.pth"
echo
echo "Done. In $run: best_model.pt, si.nequip.pth (LAMMPS pair_style nequip / mlip.MLIPCalculator),"
echo "learning_curve.png, metrics.csv, evaluate/ (parity plots, per-structure errors)."
