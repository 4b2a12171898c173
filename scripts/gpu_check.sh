#!/usr/bin/env bash
# The project's GPU check: one device command of at most ~8 minutes that
#   1. runs the GPU kernel tier (pytest -m gpu: the compiled Triton kernels against torch),
#   2. trains the shipped example on cuda through `mlip train` (EMA, checkpoints), once straight
#      and once killed with SIGKILL after its second epoch and resumed, and compares the two,
#   3. times mlip against NequIP 0.19 and mace-torch 0.3.16 (scripts/gpu_bench.py), sizes S and L,
# and writes gpu_check.json (the summary), gpu_bench.json, gpu_tests.xml and gpu_check.log to $OUT.
#
# Prepare here (network), once per change of scripts/gpu_bundle.sh:
#     bash scripts/gpu_bundle.sh                  # .gpu/: site folders for the image, workloads
#     bash scripts/gpu_check.sh --dry-run         # the same steps on CPU (interpreter, tiny sizes)
# Then one device call (the device tool), from the repository root:
#     run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# Options: --only tests,train,bench (a subset), --budget-s N (default 470: the whole script).
# Without CUDA and without --dry-run it stops: no figure here may be mistaken for a GPU's.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
ONLY=tests,train,bench
BUDGET=470
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --only) ONLY=$2; shift ;;
        --budget-s) BUDGET=$2; shift ;;
        *) echo "usage: bash scripts/gpu_check.sh [--dry-run] [--only tests,train,bench] [--budget-s N]" >&2; exit 2 ;;
    esac
    shift
done
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
OUT=${OUT:-$REPO/out/gpu_check$([ $DRY = 1 ] && echo -dry-run)}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
WORK=$(mktemp -d /tmp/mlip-gpu-check.XXXX)
echo "[gpu_check] $(date -u '+%F %T UTC') commit $(git rev-parse --short HEAD 2>/dev/null || cat .git/HEAD 2>/dev/null) dry_run=$DRY budget ${BUDGET}s out $OUT"

BENCH_ARGS=()
if [ $DRY = 1 ]; then
    # rehearsal on this machine: mlip from .venv, the peers from ../shared/bench/setup_peers.sh
    bash scripts/setup.sh
    PY=$REPO/.venv/bin/python
    DEVICE=cpu
    export MLIP_GPU_TESTS_ON_CPU=1
    PEERS=${MLIP_PEERS:-$HOME/.cache/mlip-peers}
    for fam in mace nequip; do
        [ -x "$PEERS/$fam/bin/python" ] && BENCH_ARGS+=(--python "$fam=$PEERS/$fam/bin/python")
    done
    BENCH_ARGS+=(--sizes tiny --workloads 3bpa-train,cu256-infer --repeats 2 --dry-run
                 --bench-dir "${MLIP_SHARED:-$REPO/../shared}/bench")
    EPOCH_WAIT=2
else
    PY=${PYTHON:-python3}
    DEVICE=cuda
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "[gpu_check] no CUDA device: run it on the GPU machine, or --dry-run here" >&2
        exit 2
    fi
    [ -f .gpu/site-mlip.tar.xz ] || { echo "[gpu_check] .gpu/ missing: bash scripts/gpu_bundle.sh here, then carry .gpu" >&2; exit 2; }
    SITES=/tmp/mlip-sites
    mkdir -p $SITES
    for f in .gpu/site-*.tar.xz; do tar -C $SITES -xJf "$f" & done
    wait
    export PYTHONPATH=$SITES/site-mlip:$REPO${PYTHONPATH:+:$PYTHONPATH}
    for fam in mlip mace nequip cueq; do BENCH_ARGS+=(--site "$fam=$SITES/site-$fam"); done
    BENCH_ARGS+=(--bench-dir "$REPO/.gpu/bench")
    EPOCH_WAIT=2
fi
export PYTHONUNBUFFERED=1
echo "[gpu_check] set-up done after $(( $(date +%s) - T0 )) s"
"$PY" - > "$OUT/env.json" <<'EOF'
import json, platform, subprocess
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                capability=f"{p.major}.{p.minor}")
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
import e3nn, ase
info.update(e3nn=e3nn.__version__, ase=ase.__version__)
print(json.dumps(info))
EOF
cat "$OUT/env.json"

# ---- 1. the kernel tier -------------------------------------------------------------------------
if [[ ,$ONLY, == *,tests,* ]]; then
    XDIST=()
    "$PY" -c "import xdist" 2>/dev/null && [ $DRY = 0 ] && XDIST=(-n 8)  # Triton compiles in parallel
    echo "[gpu_check] 1. pytest -m gpu ${XDIST[*]}"
    timeout $(( $(left) * 45 / 100 )) "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider \
        "${XDIST[@]}" --junitxml="$OUT/gpu_tests.xml" -rfE 2>&1 | tail -40
    echo "[gpu_check] tests rc=${PIPESTATUS[0]} after $(( $(date +%s) - T0 )) s"
fi

# ---- 2. training through mlip train, with a SIGKILL and a resume --------------------------------
if [[ ,$ONLY, == *,train,* ]]; then
    echo "[gpu_check] 2. mlip train configs/example.yaml on $DEVICE: straight, then killed and resumed"
    TRAIN=(-m mlip train configs/example.yaml --set device=$DEVICE optim.max_epochs=6 stage_two.start_epoch=4
           logging.progress_bar=false)
    t=$(date +%s)
    timeout $(( $(left) / 4 )) "$PY" "${TRAIN[@]}" output_dir=$WORK/straight > "$WORK/straight.log" 2>&1
    echo "[gpu_check] straight run rc=$? in $(( $(date +%s) - t )) s"; tail -4 "$WORK/straight.log"
    "$PY" "${TRAIN[@]}" output_dir=$WORK/resumed > "$WORK/killed.log" 2>&1 &
    pid=$!
    killed=0
    for _ in $(seq 600); do  # SIGKILL once the checkpoint of epoch $EPOCH_WAIT is on disk
        if ls $WORK/resumed/checkpoints/ckpt-*-e0000$EPOCH_WAIT.pt >/dev/null 2>&1; then
            kill -9 $pid 2>/dev/null && killed=1
            break
        fi
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    wait $pid 2>/dev/null
    echo "[gpu_check] killed after epoch $EPOCH_WAIT: $killed"
    timeout $(( $(left) / 4 )) "$PY" "${TRAIN[@]}" output_dir=$WORK/resumed --resume > "$WORK/resumed.log" 2>&1
    echo "[gpu_check] resumed run rc=$?"; tail -4 "$WORK/resumed.log"
    cp "$WORK/straight.log" "$OUT/train_straight.log"; cat "$WORK/killed.log" "$WORK/resumed.log" > "$OUT/train_resumed.log"
    "$PY" - "$WORK" "$killed" > "$OUT/train.json" <<'EOF'
import csv, json, os, sys
work, killed = sys.argv[1], sys.argv[2] == "1"
def rows(run):
    path = os.path.join(work, run, "metrics.csv")
    return list(csv.DictReader(open(path))) if os.path.exists(path) else []
a, b = rows("straight"), rows("resumed")
out = {"killed_and_resumed": killed, "epochs_straight": len(a), "epochs_resumed": len(b),
       "best_model": os.path.exists(os.path.join(work, "resumed", "best_model.pt"))}
if a and b and len(a) == len(b):
    diffs = [abs(float(x[k]) - float(y[k])) for x, y in zip(a, b) for k in x
             if k in y and k not in ("time_s", "epoch_seconds", "seconds") and x[k] not in ("", None)
             and "time" not in k and y[k] not in ("", None)]
    out["max_metric_difference"] = max(diffs) if diffs else None
    out["identical"] = bool(diffs) and max(diffs) == 0.0
    out["last_epoch"] = {k: v for k, v in a[-1].items()}
print(json.dumps(out))
EOF
    cat "$OUT/train.json"; echo
fi

# ---- 3. speed against the peers -----------------------------------------------------------------
if [[ ,$ONLY, == *,bench,* ]]; then
    budget=$(( $(left) - 25 ))
    echo "[gpu_check] 3. scripts/gpu_bench.py (${budget} s)"
    "$PY" scripts/gpu_bench.py --out "$OUT/gpu_bench.json" --device $DEVICE --budget-s $budget "${BENCH_ARGS[@]}"
fi

# ---- summary ------------------------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
summary = {}
for name in ("env", "train"):
    path = os.path.join(out, name + ".json")
    if os.path.exists(path):
        summary[name] = json.load(open(path))
xml = os.path.join(out, "gpu_tests.xml")
if os.path.exists(xml):
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    summary["tests"] = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["tests"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in s.iter("testcase")
                                  if c.find("failure") is not None or c.find("error") is not None]
bench = os.path.join(out, "gpu_bench.json")
if os.path.exists(bench):
    b = json.load(open(bench))["results"]
    summary["bench"] = {"figures": sum("seconds" in r for r in b), "errors": sum("error" in r for r in b)}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print("[gpu_check] summary:", json.dumps({k: v for k, v in summary.items() if k != "env"}))
EOF
echo "[gpu_check] done in $(( $(date +%s) - T0 )) s"
rm -rf "$WORK"
