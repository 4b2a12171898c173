#!/usr/bin/env bash
# Build a minimal LAMMPS (MPI, no GPU, no optional packages) with the pair_nequip_allegro plugin
# (pair_style nequip / allegro) against the torch in .venv, and print where `lmp` is.
#
#   bash scripts/build_lammps.sh          # TorchScript models (.nequip.pth)
#   bash scripts/build_lammps.sh --aot    # also AOTInductor models (-DNEQUIP_AOT_COMPILE=ON)
#
# `lmp` is linked with libmlip_ops.so (mlip's fused CPU message kernel, mlip/ops/csrc, built here
# against the same torch): the operators mlip_cpu::contract / mlip_cpu::grads that packages from
# `mlip export -o NAME.nequip.pt2` call are then registered in every LAMMPS process.
#
# Environment:
#   MLIP_LAMMPS_BUILD   build folder (default $HOME/.cache/mlip-lammps; never inside the repo)
#   MLIP_LAMMPS_SUITE   Debian suite whose `lammps` source package is used (default forky; the
#                       plugin needs LAMMPS >= 10 Sep 2025, which bookworm and trixie lack)
#   MLIP_LAMMPS_JOBS    parallel compile jobs (default 2); the compile runs under `nice -n 19`
#   MLIP_PYTHON         python whose torch is linked (default .venv/bin/python)
#   MLIP_OPS_CFLAGS     compiler flags of libmlip_ops.so (default "-O3 -march=native"; use
#                       "-O3" when lmp runs on other CPUs than the one it is built on)
#   MLIP_LAMMPS_PLUGIN  plugin sources (default ../shared/third_party/pair_nequip_allegro)
#
# What it does (root, or sudo, is needed for step 1 only):
#   1. apt-get install the build dependencies that are missing (libopenmpi-dev, openmpi-bin,
#      cmake, g++, make, dpkg-dev).
#   2. A private apt configuration under the build folder (its own source list with a `deb-src`
#      entry for $MLIP_LAMMPS_SUITE, its own package lists and cache; the system's apt setup is
#      not touched), `apt-get update` with it, and `apt-get source --download-only lammps`.
#      Only the upstream tarball (*.orig.tar.*) is used, after checking its SHA-256 against the
#      signed Sources index; Debian's packaging patches are not needed for this build (and some
#      mirrors serve the tarball but not the .dsc).
#   3. Unpack, run the plugin's patch_lammps.sh, configure with CMake (C++20, which the headers of
#      torch 2.13 need; the C++ ABI of the venv's torch, MKL_INCLUDE_DIR pointed at an empty folder
#      because torch's CMake config looks for MKL for no reason), build `lmp`.
# Idempotent: when `lmp` for the same (plugin commit, torch version, AOT flag, suite) exists, it
# only prints its path. Delete the build folder (or its build-* subfolder) to force a rebuild.
set -euo pipefail

log() { printf '[build_lammps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

AOT=OFF
for arg in "$@"; do
    case "$arg" in
        --aot) AOT=ON ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (see --help)" ;;
    esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
PY="${MLIP_PYTHON:-$REPO/.venv/bin/python}"
PLUGIN="${MLIP_LAMMPS_PLUGIN:-$REPO/../shared/third_party/pair_nequip_allegro}"
SUITE="${MLIP_LAMMPS_SUITE:-forky}"
JOBS="${MLIP_LAMMPS_JOBS:-2}"
ROOT="${MLIP_LAMMPS_BUILD:-$HOME/.cache/mlip-lammps}"

[ -x "$PY" ] || die "no python at $PY (run scripts/setup.sh, or set MLIP_PYTHON)"
[ -f "$PLUGIN/pair_nequip_allegro.cpp" ] && [ -f "$PLUGIN/patch_lammps.sh" ] \
    || die "plugin sources not found at $PLUGIN (set MLIP_LAMMPS_PLUGIN)"
PLUGIN="$(cd "$PLUGIN" && pwd)"
ROOT="$(realpath -m "$ROOT")"
case "$ROOT/" in "$REPO/"*) die "build folder $ROOT is inside the repository; choose another MLIP_LAMMPS_BUILD" ;; esac
mkdir -p "$ROOT"

read -r TORCH_VERSION TORCH_PREFIX TORCH_ABI < <("$PY" -c \
    'import torch; print(torch.__version__, torch.utils.cmake_prefix_path, int(torch._C._GLIBCXX_USE_CXX11_ABI))') \
    || true
[ -n "${TORCH_ABI:-}" ] || die "cannot import torch with $PY"
PLUGIN_COMMIT="$(grep -oE '[0-9a-f]{40}' "$PLUGIN/SOURCE" 2>/dev/null | head -1 || true)"
PLUGIN_COMMIT="${PLUGIN_COMMIT:-$(cat "$PLUGIN"/*.cpp "$PLUGIN"/*.h | sha1sum | cut -c1-40)}"
KEY="${SUITE}-plugin${PLUGIN_COMMIT:0:10}-torch${TORCH_VERSION//+/_}-aot${AOT}"
BUILD="$ROOT/build-$KEY"
STAMP="$BUILD/.mlip-build-complete"

report() {
    log "done: $BUILD/lmp"
    cat "$STAMP" >&2
    echo "lmp: $BUILD/lmp"
    echo "run the LAMMPS tests with:"
    echo "  MLIP_LMP=$BUILD/lmp $PY -m pytest -m lammps tests/test_lammps_real.py"
}

# --- mlip's kernel library: rebuilt (lmp need not be) whenever its source or flags change ------
OPS_SRC="$REPO/mlip/ops/csrc/message_cpu.cpp"
OPS_CFLAGS="${MLIP_OPS_CFLAGS:--O3 -march=native}"
OPS_DIR="$BUILD/mlip-ops"
build_ops() {
    local torch_dir hash
    torch_dir="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
    hash="$( (cat "$OPS_SRC"; echo "$OPS_CFLAGS $TORCH_VERSION") | sha1sum | cut -c1-16)"
    if [ -f "$OPS_DIR/libmlip_ops.so" ] && [ "$(cat "$OPS_DIR/.hash" 2>/dev/null)" = "$hash" ]; then
        return
    fi
    log "building $OPS_DIR/libmlip_ops.so ($OPS_CFLAGS)"
    mkdir -p "$OPS_DIR"
    # shellcheck disable=SC2086
    nice -n 19 g++ $OPS_CFLAGS -fopenmp -fPIC -shared -std=c++20 -D_GLIBCXX_USE_CXX11_ABI="$TORCH_ABI" \
        -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include" "$OPS_SRC" \
        -o "$OPS_DIR/libmlip_ops.so.tmp" -L"$torch_dir/lib" -Wl,--no-as-needed -lc10 -ltorch_cpu \
        -Wl,-rpath,"$torch_dir/lib" -Wl,-soname,libmlip_ops.so 2> "$OPS_DIR/build.log" \
        || { tail -20 "$OPS_DIR/build.log" >&2; die "libmlip_ops.so failed to build (log: $OPS_DIR/build.log)"; }
    mv "$OPS_DIR/libmlip_ops.so.tmp" "$OPS_DIR/libmlip_ops.so"
    echo "$hash" > "$OPS_DIR/.hash"
}
[ -f "$OPS_SRC" ] || die "no $OPS_SRC"

if [ -f "$STAMP" ] && [ -x "$BUILD/lmp" ] && grep -q "^mlip_ops:" "$STAMP"; then
    build_ops
    log "already built for $KEY"
    ln -sfn "$BUILD/lmp" "$ROOT/lmp"
    report
    exit 0
fi

T0=$(date +%s)
log "build folder $ROOT; torch $TORCH_VERSION (CXX11 ABI $TORCH_ABI); plugin ${PLUGIN_COMMIT:0:12}; AOT $AOT; suite $SUITE"

# --- 1. build dependencies --------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && SUDO="sudo" || SUDO="__none__"
fi
missing=()
for pkg in libopenmpi-dev openmpi-bin cmake g++ make dpkg-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$SUDO" = "__none__" ] && die "missing packages ${missing[*]} and neither root nor sudo"
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- 2. LAMMPS sources from Debian's source package (private apt configuration) ---------------
APTDIR="$ROOT/apt"
mkdir -p "$APTDIR/sources.list.d" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$ROOT/downloads"
cat > "$APTDIR/sources.list.d/mlip-lammps-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT_OPTS=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
          -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache" -o "APT::Sandbox::User=root")
log "apt-get update (deb-src $SUITE, private lists in $APTDIR)"
apt-get "${APT_OPTS[@]}" update -qq >&2 || die "apt-get update with deb-src $SUITE failed"
SRCINFO="$(apt-cache "${APT_OPTS[@]}" showsrc lammps)" || die "no lammps source package in $SUITE"
LAMMPS_DEB_VERSION="$(printf '%s\n' "$SRCINFO" | sed -n 's/^Version: //p' | head -1)"
ORIG_LINE="$(printf '%s\n' "$SRCINFO" | sed -n '/^Checksums-Sha256:/,/^[A-Z]/p' | grep -E '\.orig\.tar\.(gz|xz|bz2)$' | head -1)"
ORIG_SHA="$(echo "$ORIG_LINE" | awk '{print $1}')"
ORIG_NAME="$(echo "$ORIG_LINE" | awk '{print $3}')"
[ -n "$ORIG_NAME" ] || die "no upstream tarball listed for lammps $LAMMPS_DEB_VERSION"
log "lammps $LAMMPS_DEB_VERSION from $SUITE: $ORIG_NAME"
cd "$ROOT/downloads"
if [ ! -f "$ORIG_NAME" ] || ! echo "$ORIG_SHA  $ORIG_NAME" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$ORIG_NAME"
    log "apt-get source --download-only lammps=$LAMMPS_DEB_VERSION"
    # the .dsc and .debian.tar.* are not needed (and not served by some mirrors): only the
    # upstream tarball has to arrive
    apt-get "${APT_OPTS[@]}" source --download-only -qq "lammps=$LAMMPS_DEB_VERSION" >&2 \
        || log "apt-get source reported errors (checking whether the upstream tarball arrived)"
    [ -f "$ORIG_NAME" ] || die "apt-get source did not fetch $ORIG_NAME"
fi
echo "$ORIG_SHA  $ORIG_NAME" | sha256sum -c --quiet - || die "$ORIG_NAME: SHA-256 differs from the Sources index"

# --- 3. unpack, patch, configure, build -------------------------------------------------------
SRC="$ROOT/src-$KEY-lammps${LAMMPS_DEB_VERSION//[:+~]/_}"
if [ ! -f "$SRC/.mlip-patched" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    log "unpacking into $SRC"
    # examples, benchmarks and the manual are not needed to build
    nice -n 19 tar -xf "$ROOT/downloads/$ORIG_NAME" -C "$SRC" --anchored \
        --exclude=examples --exclude=bench --exclude=doc --exclude=./examples --exclude=./bench --exclude=./doc
    if [ ! -d "$SRC/cmake" ]; then   # tarball with a top-level folder
        top="$(find "$SRC" -mindepth 1 -maxdepth 1 -type d | head -1)"
        [ -d "$top/cmake" ] || die "unexpected tarball layout"
        mv "$top"/* "$top"/.[!.]* "$SRC"/ 2>/dev/null || true
        rmdir "$top"
    fi
    LMP_VERSION="$(sed -n 's/^#define LAMMPS_VERSION "\(.*\)"/\1/p' "$SRC/src/version.h")"
    log "LAMMPS version: $LMP_VERSION"
    # the plugin needs LAMMPS >= 10 Sep 2025
    if [ "$(date -d "$LMP_VERSION" +%Y%m%d 2>/dev/null || echo 0)" -lt 20250910 ]; then
        die "LAMMPS $LMP_VERSION is older than 10 Sep 2025, which the plugin needs (choose MLIP_LAMMPS_SUITE)"
    fi
    log "patching with $PLUGIN/patch_lammps.sh"
    (cd "$PLUGIN" && bash ./patch_lammps.sh "$SRC") >&2
    grep -q "find_package(Torch REQUIRED)" "$SRC/cmake/CMakeLists.txt" || die "patch_lammps.sh did not patch CMakeLists.txt"
    touch "$SRC/.mlip-patched"
fi
LMP_VERSION="$(sed -n 's/^#define LAMMPS_VERSION "\(.*\)"/\1/p' "$SRC/src/version.h")"

mkdir -p "$BUILD" "$ROOT/empty-mkl-include"
build_ops
cd "$BUILD"
# linked whether or not lmp uses a symbol of it (--no-as-needed): loading it registers the ops
OPS_LINK="-Wl,--no-as-needed $OPS_DIR/libmlip_ops.so -Wl,--as-needed"
if [ ! -f CMakeCache.txt ] || [ ! -f Makefile ] || ! grep -q "libmlip_ops.so" CMakeCache.txt; then
    log "cmake configure"
    nice -n 19 cmake "$SRC/cmake" \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CXX_STANDARD=20 \
        -DCMAKE_CXX_FLAGS="-D_GLIBCXX_USE_CXX11_ABI=$TORCH_ABI" \
        -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
        -DMKL_INCLUDE_DIR="$ROOT/empty-mkl-include" \
        -DNEQUIP_AOT_COMPILE="$AOT" \
        -DBUILD_MPI=on -DBUILD_OMP=off -DBUILD_SHARED_LIBS=off \
        -DBUILD_TOOLS=off -DBUILD_LAMMPS_GUI=off -DENABLE_TESTING=off \
        -DDOWNLOAD_POTENTIALS=off -DWITH_JPEG=off -DWITH_PNG=off -DWITH_FFMPEG=off -DWITH_GZIP=off \
        -DCMAKE_BUILD_RPATH="$TORCH_PREFIX/../../lib;$OPS_DIR" \
        -DCMAKE_EXE_LINKER_FLAGS="$OPS_LINK" \
        > cmake-configure.log 2>&1 || { tail -40 cmake-configure.log >&2; die "cmake configure failed (log: $BUILD/cmake-configure.log)"; }
    grep -E "NEQUIP_AOT_COMPILE is|C\+\+ Standard|MPI" cmake-configure.log | head -5 >&2 || true
fi
log "compiling with $JOBS jobs under nice -n 19 (about 12 minutes on 2 free cores; log: $BUILD/make.log)"
nice -n 19 cmake --build . --target lmp -- -j"$JOBS" > make.log 2>&1 \
    || { grep -E -B2 -A8 "error|Error" make.log | head -60 >&2; die "build failed (log: $BUILD/make.log)"; }
[ -x "$BUILD/lmp" ] || die "build finished but $BUILD/lmp is missing"
"$BUILD/lmp" -h 2>/dev/null | grep -qi "nequip" || die "$BUILD/lmp does not list pair_style nequip"
ldd "$BUILD/lmp" | grep -q "libmlip_ops.so => $OPS_DIR" || die "$BUILD/lmp is not linked with $OPS_DIR/libmlip_ops.so"

T1=$(date +%s)
cat > "$STAMP" <<EOF
lammps: $LMP_VERSION (Debian $LAMMPS_DEB_VERSION from $SUITE, $ORIG_NAME sha256 $ORIG_SHA)
plugin: $PLUGIN_COMMIT ($PLUGIN)
torch: $TORCH_VERSION ($TORCH_PREFIX, CXX11 ABI $TORCH_ABI)
NEQUIP_AOT_COMPILE: $AOT
mlip_ops: $OPS_DIR/libmlip_ops.so ($OPS_CFLAGS)
mpi: $(mpirun --version 2>/dev/null | head -1)
built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((T1 - T0)) s with $JOBS jobs
EOF
ln -sfn "$BUILD/lmp" "$ROOT/lmp"
report
