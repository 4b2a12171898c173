#!/usr/bin/env bash
# Create .venv and install mlip with its test tools. Safe to run again: it skips what is done.
#
# torch: an existing torch in .venv is kept (GPU users: install your CUDA build of torch into
# .venv first, or set MLIP_TORCH to a pip requirement). Otherwise the CPU build torch==2.13.0 is
# installed before mlip, so pip never resolves the unpinned requirement to multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.mlip-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import mlip, torch, e3nn" 2>/dev/null; then
    exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${MLIP_TORCH:-torch==2.13.0} (CPU build unless you choose otherwise)"
    "${PIP[@]}" install "${MLIP_TORCH:-torch==2.13.0}" 2> >(grep -v "^WARNING: Location" >&2)
fi
echo "[setup] installing mlip and its dependencies into .venv"
"${PIP[@]}" install -e ".[dev,triton]" 2> >(grep -v "^WARNING: Location" >&2)
# build the fused CPU kernels now rather than at the first training step (a C++ compiler is
# needed; without one mlip runs plain torch and says so)
.venv/bin/python -c "from mlip.ops.cpu_message import load_cpu_kernel; r = load_cpu_kernel(); print('[setup] CPU kernels: ' + ('built' if r is None else 'not available: ' + r))" || true
echo "$want" > "$stamp"
