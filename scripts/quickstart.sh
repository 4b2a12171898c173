#!/usr/bin/env bash
# The main job, end to end on the shipped Si example: set up .venv, train (about 1.5 minutes on
# 2 CPU cores, or set device=cuda), score the test set, export for LAMMPS/ASE, certify the export,
# then check the physics against PBE with `mlip validate` (lattice constant, bulk modulus, elastic
# constants, phonons, vacancy, MD stability; about a minute here, 1 ps of MD per temperature where
# docs/validation.md runs 10 ps).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
run=runs/example
mlip train configs/example.yaml "$@"
mlip evaluate "$run/best_model.pt" data/si_test.extxyz --output "$run/evaluate"
mlip export "$run/best_model.pt" -o "$run/si.nequip.pth"
mlip check "$run/si.nequip.pth"
# exit status 1 means a row is outside its tolerance: reported, not a failure of this script
# (docs/validation.md: what the quickstart model passes and what it does not); 2 and up are errors
validate_status=0
mlip validate "$run/best_model.pt" --dtype float64 --md-temperatures 300 1200 --md-time-ps 1 \
    --structures data/si_test.extxyz --index 0 --out "$run/validate" || validate_status=$?
if [ "$validate_status" -gt 1 ]; then exit "$validate_status"; fi
echo
echo "Done. In $run: best_model.pt, si.nequip.pth (LAMMPS pair_style nequip / mlip.MLIPCalculator),"
echo "learning_curve.png, metrics.csv, evaluate/ (parity plots, per-structure errors),"
echo "validate/ (equation of state, phonons, MD stability as PNGs; results.json)."
