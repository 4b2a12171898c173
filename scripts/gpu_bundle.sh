#!/usr/bin/env bash
# Build .gpu/, the folder that scripts/gpu_check.sh needs on a lent GPU machine, where nothing can
# be downloaded and each call carries at most 64 MiB. Run it here (network), then call the device
# with carry [".gpu"] (see scripts/gpu_check.sh).
#
# The device image has Python 3.12, CUDA torch, Triton, e3nn, numpy, scipy, h5py, matplotlib,
# lightning, pandas, ... (scripts/gpu_image_packages.txt). What it lacks is installed here with
# pip for CPython 3.12 / manylinux x86-64 into one site folder per program, and each folder is
# packed as .tar.xz (xz shrinks the cuEquivariance kernels from 73 MB of wheels to about 27 MB):
#   site-mlip    ase, vesin, e3nn 0.6 (mlip's own code travels with the repository)
#   site-mace    mace-torch 0.3.16, e3nn 0.4.4 (mace pins it) and mace's missing dependencies
#   site-nequip  nequip 0.19, e3nn 0.6 and nequip's missing dependencies
#   site-cueq    cuEquivariance (cuequivariance-torch and its CUDA 13 ops) for mace-torch
# plus the benchmark workloads: ../shared/bench/workloads.py and the first 64 structures of
# 3BPA train_300K (the ../shared folder does not travel to the device).
#
#   bash scripts/gpu_bundle.sh             # builds .gpu/ (about 40 MB), skips it when up to date
#   bash scripts/gpu_bundle.sh --check     # only checks an existing .gpu/ against the image list
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DEST=${MLIP_GPU_BUNDLE:-$REPO/.gpu}
SHARED=${MLIP_SHARED:-$REPO/../shared}
PY=${PYTHON:-python3}

# name==version of every package, per site; sdist-only packages are built into wheels here
MLIP_PKGS="ase==3.29.0 vesin==0.6.2 e3nn==0.6.0"
MACE_PKGS="mace-torch==0.3.16 e3nn==0.4.4 torch-ema==0.3 prettytable==3.19.0 wcwidth==0.9.4 matscipy==1.3.1
           python-hostlist==2.3.0 configargparse==1.9.0 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 lmdb==3.0.0
           orjson==3.13.0"
NEQUIP_PKGS="nequip==0.19.0 e3nn==0.6.0 matscipy==1.3.1 lmdb==3.0.0 hydra-core==1.3.8 omegaconf==2.3.1
             antlr4-python3-runtime==4.9.3"
CUEQ_PKGS="cuequivariance==0.13.0 cuequivariance-torch==0.13.0 cuequivariance-ops-cu13==0.13.0
           cuequivariance-ops-torch-cu13==0.13.0 platformdirs==4.14.9"
TARGET=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

stamp_want=$( (cat "$0"; cat "$SHARED/bench/workloads.py" 2>/dev/null) | sha256sum | cut -c1-16)
if [ $check_only = 0 ] && [ -f "$DEST/STAMP" ] && [ "$(cat "$DEST/STAMP")" = "$stamp_want" ]; then
    echo "[gpu_bundle] $DEST is up to date"
    check_only=1
fi

if [ $check_only = 0 ]; then
    [ -f "$SHARED/bench/workloads.py" ] || { echo "[gpu_bundle] $SHARED/bench/workloads.py not found" >&2; exit 1; }
    rm -rf "$DEST"
    mkdir -p "$DEST/wheels" "$DEST/bench" "$DEST/data/3bpa"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    all=$(echo $MLIP_PKGS $MACE_PKGS $NEQUIP_PKGS $CUEQ_PKGS | tr ' ' '\n' | sort -u)
    for req in $all; do
        if ! "$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$work/wheels" "$req" 2>/dev/null; then
            # no binary for it (python-hostlist, antlr4): build a pure-Python wheel from its source
            "$PY" -m pip wheel -q --no-deps -w "$work/wheels" "$req" 2>/dev/null \
                || { echo "[gpu_bundle] cannot get $req" >&2; exit 1; }
        fi
    done
    wheel_of() {  # the downloaded wheel file of one name==version
        local name=${1%%==*} version=${1##*==}
        local norm
        norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
        ls "$work/wheels" | awk -v n="$norm" -v v="$version" 'tolower($0) ~ "^"n"-"v"-" {print; exit}'
    }
    for site in mlip mace nequip cueq; do
        case $site in
            mlip) pkgs=$MLIP_PKGS ;; mace) pkgs=$MACE_PKGS ;; nequip) pkgs=$NEQUIP_PKGS ;; cueq) pkgs=$CUEQ_PKGS ;;
        esac
        files=()
        for req in $pkgs; do
            f=$(wheel_of "$req")
            [ -n "$f" ] || { echo "[gpu_bundle] no wheel found for $req in $work/wheels" >&2; exit 1; }
            files+=("$work/wheels/$f")
            cp "$work/wheels/$f" "$DEST/wheels/" 2>/dev/null || true
        done
        "$PY" -m pip install -q --no-deps --no-compile --target "$work/site-$site" "${TARGET[@]}" \
            --only-binary=:all: "${files[@]}" 2> >(grep -v "^WARNING" >&2)
        tar -C "$work" -cf - "site-$site" | xz -9 -T2 > "$DEST/site-$site.tar.xz"
    done
    # the wheels themselves only serve the dependency check below; they do not travel
    mv "$DEST/wheels" "$work/checked-wheels"
    cp "$SHARED/bench/workloads.py" "$DEST/bench/"
    # workloads.py reads <bench>/../data/3bpa/train_300K.xyz; its workloads use the first 32
    "$PY" - "$SHARED/data/3bpa/train_300K.xyz" "$DEST/data/3bpa/train_300K.xyz" <<'EOF'
import sys
lines, out, i = open(sys.argv[1]).read().splitlines(True), [], 0
for _ in range(64):
    n = int(lines[i]); out += lines[i:i + n + 2]; i += n + 2
open(sys.argv[2], "w").writelines(out)
EOF
    echo "$stamp_want" > "$DEST/STAMP"
    {
        echo "built $(date -u +%F) by scripts/gpu_bundle.sh from commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
        for site in mlip mace nequip cueq; do eval "echo site-$site: \$$(echo $site | tr a-z A-Z)_PKGS"; done | tr -s ' \n' ' \n'
    } > "$DEST/MANIFEST"
    WHEELS="$work/checked-wheels"
else
    WHEELS=""
fi

# every dependency of every bundled package is in the same site or on the device image
if [ -n "$WHEELS" ]; then
    "$PY" - "$WHEELS" "$REPO/scripts/gpu_image_packages.txt" "$MLIP_PKGS" "$MACE_PKGS" "$NEQUIP_PKGS" "$CUEQ_PKGS" <<'EOF'
import re, sys, zipfile, glob, os
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
TARGET_ENV = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
                  platform_system="Linux", platform_machine="x86_64", os_name="posix",
                  implementation_name="cpython", platform_python_implementation="CPython")
wheels, image_file, *sites = sys.argv[1:]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
image = {norm(l.split()[0]) for l in open(image_file) if l.strip() and not l.startswith("#")}
meta = {}
for path in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(path) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    name = norm(re.search(r"^Name: (.+)$", text, re.M).group(1))
    reqs = [Requirement(r) for r in re.findall(r"^Requires-Dist: (.+)$", text, re.M)]
    # the device's Python is 3.12 on Linux; extras are not installed
    meta[name] = [norm(r.name) for r in reqs
                  if r.marker is None or r.marker.evaluate(dict(TARGET_ENV, extra=""))]
bad = []
for label, site in zip(("mlip", "mace", "nequip", "cueq"), sites):
    have = {norm(p.split("==")[0]) for p in site.split()}
    # mace and nequip also see site-mlip (ase) and site-cueq (mace only)
    extra = {"mlip": set(), "mace": {"ase", "vesin"} | {norm(p.split("==")[0]) for p in sites[3].split()},
             "nequip": {"ase", "vesin"}, "cueq": set()}[label]
    for pkg in have:
        for dep in meta.get(pkg, []):
            if dep not in have | extra | image:
                bad.append(f"site-{label}: {pkg} needs {dep}, which is neither bundled nor on the image")
print("\n".join(bad) if bad else "[gpu_bundle] every dependency is bundled or on the device image")
sys.exit(1 if bad else 0)
EOF
fi
du -sh "$DEST"/* | sed 's/^/[gpu_bundle] /'
total=$(du -sb "$DEST" | cut -f1)
echo "[gpu_bundle] $DEST: $((total / 1048576)) MiB (the device carries at most 64 MiB with the repository)"
[ "$total" -lt $((56 * 1048576)) ] || { echo "[gpu_bundle] too large for one device call" >&2; exit 1; }
