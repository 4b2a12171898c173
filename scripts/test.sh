#!/usr/bin/env bash
# Set up (if needed) and run the fast test tier. Extra arguments go to pytest;
# `bash scripts/test.sh -m ""` runs the slow tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "not slow" -q --timeout 900 "$@"
