#!/usr/bin/env bash
# Produce NequIP's OWN deployed models (what a NequIP user runs in LAMMPS) for the "size S" Cu model
# of ../shared/bench/workloads.py, so they can be timed next to mlip's exported models in one LAMMPS
# binary (e.g. with scripts/bench_lammps.py).
#
#   bash scripts/nequip_peer_models.sh [OUTDIR] [--channels N]
#
#   OUTDIR        output folder (default $HOME/.cache/mlip-peers/lammps-models)
#   --channels N  num_features of the NequIP model (default 64; other values name the files _cN)
#
# Environment:
#   MLIP_NEQUIP_ENV  virtualenv with nequip (default $HOME/.cache/mlip-peers/nequip, made by
#                    ../shared/bench/setup_peers.sh)
#   MLIP_LMP         LAMMPS with the pair_nequip_allegro plugin (default $HOME/.cache/mlip-lammps/lmp,
#                    from `bash scripts/build_lammps.sh --aot`)
#   MLIP_THREADS     threads for training, compile and the LAMMPS check (default 2)
#
# What it does (heavy steps run under `nice -n 10`):
#   1. Writes OUTDIR/nequip_cu_S.yaml: a NequIP training config derived from nequip's
#      utils/unittests/minimal_toy_emt.yaml: Cu EMT frames from EMTTestDataset (4x4x4 fcc
#      supercell, 30 train + 5 val frames), NequIPGNNModel with num_layers=2, num_features=64,
#      l_max=1, parity=False, r_max=5.0, num_bessels=8, float32 (the hyperparameters of
#      ../shared/bench/peers.py), energy+force loss, 2 epochs. Accuracy does not matter; the
#      weights only need to be a real NequIP training result.
#   2. nequip-train -cp OUTDIR -cn nequip_cu_S hydra.run.dir=OUTDIR/train
#      -> OUTDIR/train/last.ckpt
#   3. nequip-compile last.ckpt nequip_cu_S.nequip.pth --mode torchscript  --device cpu
#      nequip-compile last.ckpt nequip_cu_S.nequip.pt2 --mode aotinductor --device cpu --target pair_nequip
#      Either may fail (NequIP >= 0.17 refuses `--mode torchscript` on torch >= 2.10); the reason
#      is printed and the other file is kept. The script fails if neither is produced.
#   4. Runs every produced model for 5 NVE steps in LAMMPS (256 Cu atoms, pair_style nequip,
#      newton off) and fails loudly if LAMMPS fails; prints its "Loop time" line.
#   5. Prints the paths of the produced files.
# Idempotent: training is skipped when the checkpoint exists, each compile when its output exists
# (a failed compile is retried on the next run). Delete OUTDIR (or single files) to redo.
#
# Outputs (in OUTDIR): nequip_cu_S.yaml, train/ (Hydra run dir, last.ckpt), nequip_cu_S.nequip.pth
# and/or nequip_cu_S.nequip.pt2, logs/*.log (train, compile, lammps), lammps_check/ (inputs/logs).
set -euo pipefail

log() { printf '[nequip_peer_models %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

OUT=""
CHANNELS=64
while [ $# -gt 0 ]; do
    case "$1" in
        --channels) [ $# -ge 2 ] || die "--channels needs a value"; CHANNELS="$2"; shift 2 ;;
        --channels=*) CHANNELS="${1#--channels=}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [ -z "$OUT" ] || die "only one output folder, got '$OUT' and '$1'"; OUT="$1"; shift ;;
    esac
done
[[ "$CHANNELS" =~ ^[1-9][0-9]*$ ]] || die "--channels must be a positive integer, got '$CHANNELS'"
OUT="${OUT:-$HOME/.cache/mlip-peers/lammps-models}"

VENV="${MLIP_NEQUIP_ENV:-$HOME/.cache/mlip-peers/nequip}"
LMP="${MLIP_LMP:-$HOME/.cache/mlip-lammps/lmp}"
THREADS="${MLIP_THREADS:-2}"
for tool in nequip-train nequip-compile python; do
    [ -x "$VENV/bin/$tool" ] || die "no $VENV/bin/$tool (run ../shared/bench/setup_peers.sh, or set MLIP_NEQUIP_ENV)"
done
[ -x "$LMP" ] || die "no LAMMPS at $LMP (bash scripts/build_lammps.sh --aot, or set MLIP_LMP)"

NAME=nequip_cu_S
[ "$CHANNELS" = 64 ] || NAME="nequip_cu_S_c$CHANNELS"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd -P)"
CFG="$OUT/$NAME.yaml"
RUNDIR="$OUT/train"
[ "$CHANNELS" = 64 ] || RUNDIR="$OUT/train_c$CHANNELS"
CKPT="$RUNDIR/last.ckpt"
PTH="$OUT/$NAME.nequip.pth"
PT2="$OUT/$NAME.nequip.pt2"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

# timed DIR LOGFILE CMD...: run CMD in DIR under nice, output to LOGFILE; wall seconds in $ELAPSED
ELAPSED=0
timed() {
    local dir="$1" logfile="$2"; shift 2
    log "running (in $dir): $*  (log: $logfile)"
    local t0=$SECONDS rc=0
    (cd "$dir" && exec nice -n 10 "$@") >"$logfile" 2>&1 || rc=$?
    ELAPSED=$((SECONDS - t0))
    return $rc
}

# ---- 1. training config ----------------------------------------------------------------------------
cat >"$CFG" <<EOF
# Written by scripts/nequip_peer_models.sh (derived from nequip/utils/unittests/minimal_toy_emt.yaml).
# Size S of ../shared/bench/workloads.py: NequIPGNNModel, 2 layers, $CHANNELS features, l_max 1,
# parity False, r_max 5.0, 8 Bessels, float32; a short training run on Cu EMT data.
run: [train]

seed: 1
cutoff_radius: 5.0
model_type_names: [Cu]
chemical_species: \${model_type_names}

dataloader:
  _target_: torch.utils.data.DataLoader
  batch_size: 5

data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: \${seed}
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.EMTTestDataset
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: \${model_type_names}
          chemical_species_to_atom_type_map: \${list_to_identity_dict:\${chemical_species}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: \${cutoff_radius}
      supercell: [4, 4, 4]
      seed: \${seed}
      num_frames: 35
      element: Cu
    train: 30
    val: 5
  train_dataloader: \${dataloader}
  val_dataloader: \${dataloader}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: \${model_type_names}

trainer:
  _target_: lightning.Trainer
  max_epochs: 2
  check_val_every_n_epoch: 1
  log_every_n_steps: 5
  enable_progress_bar: false
  callbacks:
    - _target_: lightning.pytorch.callbacks.ModelCheckpoint
      dirpath: \${hydra:runtime.output_dir}
      filename: latest
      save_top_k: 1
      save_last: true

training_module:
  _target_: nequip.train.EMALightningModule
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs:
      total_energy: 1.0
      forces: 1.0
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs:
      total_energy_mae: 1.0
      forces_mae: 1.0
  train_metrics: \${training_module.val_metrics}
  optimizer:
    _target_: torch.optim.Adam
    lr: 0.01
  model:
    _target_: nequip.model.NequIPGNNModel
    seed: \${seed}
    model_dtype: float32
    type_names: \${model_type_names}
    r_max: \${cutoff_radius}
    num_layers: 2
    l_max: 1
    parity: false
    num_features: $CHANNELS
    num_bessels: 8
    # data-dependent (as a NequIP user would set them; ../shared/bench/peers.py uses constants,
    # which changes no shapes or cost)
    avg_num_neighbors: \${training_data_stats:num_neighbors_mean}
    per_type_energy_shifts: \${training_data_stats:per_atom_energy_mean}
    per_type_energy_scales: \${training_data_stats:forces_rms}
EOF
log "config: $CFG"

# ---- 2. training -----------------------------------------------------------------------------------
if [ -f "$CKPT" ]; then
    log "checkpoint exists, skipping training: $CKPT"
else
    # run in OUT: Hydra and Lightning write relative files (outputs/, lightning_logs/) into the cwd
    timed "$OUT" "$OUT/logs/train_$NAME.log" "$VENV/bin/nequip-train" -cp "$OUT" -cn "$NAME" \
        "hydra.run.dir=$RUNDIR" || { tail -n 30 "$OUT/logs/train_$NAME.log" >&2; die "nequip-train failed"; }
    log "training took ${ELAPSED}s"
    [ -f "$CKPT" ] || die "nequip-train finished but wrote no $CKPT (see $OUT/logs/train_$NAME.log)"
fi

# parameter count of the trained model, loaded the way nequip-compile loads it
count_params() {
    (cd "$OUT" && nice -n 10 "$VENV/bin/python" -c '
import sys
from nequip.utils.global_state import set_global_state
from nequip.model.utils import _EAGER_MODEL_KEY
from nequip.train.lightning import _SOLE_MODEL_KEY
from nequip.model.saved_models.load_utils import load_saved_model
set_global_state()
model = load_saved_model(sys.argv[1], _EAGER_MODEL_KEY, _SOLE_MODEL_KEY)
print(sum(p.numel() for p in model.parameters()))
' "$CKPT" 2>/dev/null | tail -n 1)
}
PARAMS="$(count_params || true)"
PARAMS="${PARAMS:-?}"

# ---- 3. compile ------------------------------------------------------------------------------------
declare -A WHY=()
compile() {  # compile MODE OUTFILE [extra args]
    local mode="$1" file="$2"; shift 2
    if [ -f "$file" ]; then log "exists, skipping $mode compile: $file"; return 0; fi
    local logfile="$OUT/logs/compile_${NAME}_$mode.log"
    if timed "$OUT" "$logfile" "$VENV/bin/nequip-compile" "$CKPT" "$file" --mode "$mode" --device cpu "$@"; then
        log "$mode compile took ${ELAPSED}s -> $file"
    else
        rm -f "$file"
        WHY[$mode]="$(grep -E 'Error|error:' "$logfile" | tail -n 1 | cut -c1-300)"
        log "WARNING: $mode compile failed after ${ELAPSED}s: ${WHY[$mode]:-see $logfile}"
    fi
}
compile torchscript "$PTH"
compile aotinductor "$PT2" --target pair_nequip
MODELS=()
for f in "$PTH" "$PT2"; do [ -f "$f" ] && MODELS+=("$f"); done
[ ${#MODELS[@]} -gt 0 ] || die "neither compile produced a model (logs in $OUT/logs)"

# ---- 4. LAMMPS check -------------------------------------------------------------------------------
CHECK="$OUT/lammps_check"
mkdir -p "$CHECK"
for model in "${MODELS[@]}"; do
    ext="${model##*.}"
    cat >"$CHECK/in.$ext.lammps" <<EOF
units           metal
atom_style      atomic
newton          off
boundary        p p p
lattice         fcc 3.61
region          box block 0 4 0 4 0 4
create_box      1 box
create_atoms    1 box
mass            1 63.546
pair_style      nequip
pair_coeff      * * $model Cu
velocity        all create 300 1
fix             1 all nve
thermo          1
run             5
EOF
    logfile="$CHECK/log.$ext.lammps"
    if ! timed "$CHECK" "$CHECK/screen.$ext.txt" "$LMP" -in "in.$ext.lammps" -log "$logfile"; then
        tail -n 30 "$CHECK/screen.$ext.txt" >&2
        die "LAMMPS failed to run $model (input $CHECK/in.$ext.lammps)"
    fi
    loop="$(grep '^Loop time' "$logfile" || true)"
    [ -n "$loop" ] || die "LAMMPS ran $model but printed no 'Loop time' line (see $logfile)"
    if grep -qE '^ERROR' "$logfile" || grep -qiw 'nan' "$logfile"; then die "LAMMPS log of $model has an ERROR or NaN (see $logfile)"; fi
    log "LAMMPS ok ($ext, ${ELAPSED}s): $loop"
done

# ---- 5. report -------------------------------------------------------------------------------------
echo "NequIP size-S Cu model ($CHANNELS features, $PARAMS parameters), checkpoint $CKPT"
for mode in torchscript aotinductor; do
    [ -z "${WHY[$mode]:-}" ] || echo "no $mode model: ${WHY[$mode]}"
done
for model in "${MODELS[@]}"; do echo "$model"; done
