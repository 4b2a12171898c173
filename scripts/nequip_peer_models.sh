#!/usr/bin/env bash
# Produce NequIP's OWN deployed models (what a NequIP user runs in LAMMPS) of the "size S" model of
# ../shared/bench/workloads.py, for Cu (EMT) and for the 3BPA molecule (C, H, N, O; DFT), so they can
# be timed next to mlip's exported models in one LAMMPS binary (e.g. with scripts/bench_lammps.py).
#
#   bash scripts/nequip_peer_models.sh [OUTDIR] [--channels N] [--system cu|3bpa|all]
#
#   OUTDIR        output folder (default $HOME/.cache/mlip-peers/lammps-models)
#   --channels N  num_features of the NequIP model (default 64; other values name the files _cN)
#   --system S    which model(s) to make: cu, 3bpa or all (default all)
#
# Environment:
#   MLIP_NEQUIP_ENV  virtualenv with nequip (default $HOME/.cache/mlip-peers/nequip, made by
#                    ../shared/bench/setup_peers.sh)
#   MLIP_LMP         LAMMPS with the pair_nequip_allegro plugin (default $HOME/.cache/mlip-lammps/lmp,
#                    from `bash scripts/build_lammps.sh --aot`)
#   MLIP_THREADS     threads for training, compile and the LAMMPS check (default 2)
#   MLIP_3BPA_DATA   folder with 3BPA's train_300K.xyz, test_300K.xyz, iso_atoms.xyz (default
#                    ../shared/data/3bpa relative to the repository root)
#
# What it does for each system (heavy steps run under `nice -n 10`):
#   1. Writes OUTDIR/NAME.yaml (NAME = nequip_cu_S or nequip_3bpa_S): a NequIP training config
#      derived from nequip's utils/unittests/minimal_toy_emt.yaml, with NequIPGNNModel
#      num_layers=2, num_features=64, l_max=1, parity=False, r_max=5.0, num_bessels=8, float32 (the
#      hyperparameters of ../shared/bench/peers.py), energy+force loss, 2 epochs, batch 5.
#      Accuracy does not matter; the weights only need to be a real NequIP training result.
#      - cu:   Cu EMT frames from EMTTestDataset (4x4x4 fcc supercell, 30 train + 5 val frames),
#              per-type energy shift = mean per-atom energy of the data.
#      - 3bpa: nequip.data.dataset.ASEDataset on OUTDIR/3bpa_train_first40.xyz (the first 40
#              frames of train_300K.xyz, extxyz `energy` in eV, `forces` in eV/A, no periodicity;
#              35 train + 5 val), type names C H N O, per-type energy shifts = the isolated-atom
#              energies of iso_atoms.xyz.
#   2. nequip-train -cp OUTDIR -cn NAME hydra.run.dir=RUNDIR  -> RUNDIR/last.ckpt
#      (RUNDIR = OUTDIR/train for cu, OUTDIR/train_3bpa for 3bpa; _cN appended for --channels N)
#   3. nequip-compile last.ckpt NAME.nequip.pth --mode torchscript  --device cpu
#      nequip-compile last.ckpt NAME.nequip.pt2 --mode aotinductor --device cpu --target pair_nequip
#      Either may fail (NequIP >= 0.17 refuses `--mode torchscript` on torch >= 2.10); the reason
#      is printed and the other file is kept. The script fails if neither is produced.
#   4. Runs every produced model for 5 NVE steps in LAMMPS (pair_style nequip, newton off) and
#      fails loudly if LAMMPS fails; prints its "Loop time" line. cu: 256 Cu atoms, periodic.
#      3bpa: one 3BPA molecule (first frame of test_300K.xyz, centred in a 30 A box, written with
#      ASE as a lammps-data file), boundary f f f, pair_coeff * * FILE C H N O.
#   5. Prints the paths of the produced files (and, for .pt2 files, the type names stored in them).
# Idempotent: training is skipped when the checkpoint exists, each compile when its output exists
# (a failed compile is retried on the next run). Delete OUTDIR (or single files) to redo.
#
# Outputs (in OUTDIR): NAME.yaml, RUNDIR/ (Hydra run dir, last.ckpt), NAME.nequip.pth and/or
# NAME.nequip.pt2, 3bpa_train_first40.xyz, logs/*.log (train, compile), lammps_check/ (inputs,
# data file, logs).
set -euo pipefail

log() { printf '[nequip_peer_models %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

OUT=""
CHANNELS=64
SYSTEM=all
while [ $# -gt 0 ]; do
    case "$1" in
        --channels) [ $# -ge 2 ] || die "--channels needs a value"; CHANNELS="$2"; shift 2 ;;
        --channels=*) CHANNELS="${1#--channels=}"; shift ;;
        --system) [ $# -ge 2 ] || die "--system needs a value"; SYSTEM="$2"; shift 2 ;;
        --system=*) SYSTEM="${1#--system=}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [ -z "$OUT" ] || die "only one output folder, got '$OUT' and '$1'"; OUT="$1"; shift ;;
    esac
done
[[ "$CHANNELS" =~ ^[1-9][0-9]*$ ]] || die "--channels must be a positive integer, got '$CHANNELS'"
case "$SYSTEM" in
    cu) SYSTEMS=(cu) ;;
    3bpa) SYSTEMS=(3bpa) ;;
    all) SYSTEMS=(cu 3bpa) ;;
    *) die "--system must be cu, 3bpa or all, got '$SYSTEM'" ;;
esac
OUT="${OUT:-$HOME/.cache/mlip-peers/lammps-models}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="${MLIP_NEQUIP_ENV:-$HOME/.cache/mlip-peers/nequip}"
LMP="${MLIP_LMP:-$HOME/.cache/mlip-lammps/lmp}"
THREADS="${MLIP_THREADS:-2}"
BPA_DATA="${MLIP_3BPA_DATA:-$REPO/../shared/data/3bpa}"
BPA_FRAMES=40  # first frames of train_300K.xyz used for training: 35 train + 5 val
for tool in nequip-train nequip-compile python; do
    [ -x "$VENV/bin/$tool" ] || die "no $VENV/bin/$tool (run ../shared/bench/setup_peers.sh, or set MLIP_NEQUIP_ENV)"
done
[ -x "$LMP" ] || die "no LAMMPS at $LMP (bash scripts/build_lammps.sh --aot, or set MLIP_LMP)"
if [[ " ${SYSTEMS[*]} " == *" 3bpa "* ]]; then
    for f in train_300K.xyz test_300K.xyz iso_atoms.xyz; do
        [ -f "$BPA_DATA/$f" ] || die "no $BPA_DATA/$f (set MLIP_3BPA_DATA)"
    done
fi

mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd -P)"
CHECK="$OUT/lammps_check"
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

# ---- 1. training config: the part that differs between systems ------------------------------------
# Sets TYPES (model type names, in this order in the model and in pair_coeff), DATASET_YAML (the
# split_dataset block) and SHIFTS_YAML (per_type_energy_shifts).
system_setup() {
    case "$1" in
    cu)
        TYPES=(Cu)
        DATASET_YAML='  split_dataset:
    dataset:
      _target_: nequip.data.dataset.EMTTestDataset
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${model_type_names}
          chemical_species_to_atom_type_map: ${list_to_identity_dict:${chemical_species}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${cutoff_radius}
      supercell: [4, 4, 4]
      seed: ${seed}
      num_frames: 35
      element: Cu
    train: 30
    val: 5'
        SHIFTS_YAML='${training_data_stats:per_atom_energy_mean}'
        ;;
    3bpa)
        TYPES=(C H N O)
        local subset="$OUT/3bpa_train_first${BPA_FRAMES}.xyz" e0s
        # the first BPA_FRAMES frames (ASEDataset reads whole files; its ase_args may not set `index`),
        # and the isolated-atom energies as per-type shifts (what a NequIP user sets for molecules)
        e0s="$(nice -n 10 "$VENV/bin/python" - "$BPA_DATA" "$subset" "$BPA_FRAMES" <<'PY'
import os, sys
import ase.io
data, subset, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if not os.path.exists(subset):
    frames = ase.io.read(os.path.join(data, "train_300K.xyz"), index=f":{n}", format="extxyz")
    assert len(frames) == n and all(a.get_chemical_formula() == frames[0].get_chemical_formula() for a in frames)
    ase.io.write(subset + ".tmp", frames, format="extxyz")
    os.replace(subset + ".tmp", subset)
e0 = {a.get_chemical_symbols()[0]: float(a.get_potential_energy())
      for a in ase.io.read(os.path.join(data, "iso_atoms.xyz"), index=":", format="extxyz")}
print("{" + ", ".join(f"{s}: {e0[s]!r}" for s in ("C", "H", "N", "O")) + "}")
PY
)" || die "could not prepare the 3BPA data from $BPA_DATA"
        DATASET_YAML="  split_dataset:
    dataset:
      _target_: nequip.data.dataset.ASEDataset
      file_path: $subset
      ase_args:
        format: extxyz
      # extxyz energy (eV, total) and forces (eV/A); ASE puts them into a SinglePointCalculator
      key_mapping:
        energy: total_energy
        forces: forces
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: \${model_type_names}
          chemical_species_to_atom_type_map: \${list_to_identity_dict:\${chemical_species}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: \${cutoff_radius}
    train: $((BPA_FRAMES - 5))
    val: 5"
        SHIFTS_YAML="$e0s  # isolated-atom energies (eV) of iso_atoms.xyz"
        ;;
    esac
}

write_config() {  # write_config SYSTEM CFG
    local system="$1" cfg="$2" what
    case "$system" in
        cu) what="a short training run on Cu EMT data" ;;
        3bpa) what="a short training run on the first $BPA_FRAMES frames of 3BPA train_300K.xyz" ;;
    esac
    cat >"$cfg" <<EOF
# Written by scripts/nequip_peer_models.sh (derived from nequip/utils/unittests/minimal_toy_emt.yaml).
# Size S of ../shared/bench/workloads.py: NequIPGNNModel, 2 layers, $CHANNELS features, l_max 1,
# parity False, r_max 5.0, 8 Bessels, float32; $what.
run: [train]

seed: 1
cutoff_radius: 5.0
model_type_names: [$(IFS=,; echo "${TYPES[*]}" | sed 's/,/, /g')]
chemical_species: \${model_type_names}

dataloader:
  _target_: torch.utils.data.DataLoader
  batch_size: 5

data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: \${seed}
$DATASET_YAML
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
    per_type_energy_shifts: $SHIFTS_YAML
    per_type_energy_scales: \${training_data_stats:forces_rms}
EOF
    log "config: $cfg"
}

# parameter count of the trained model, loaded the way nequip-compile loads it
count_params() {  # count_params CKPT
    (cd "$OUT" && nice -n 10 "$VENV/bin/python" -c '
import sys
from nequip.utils.global_state import set_global_state
from nequip.model.utils import _EAGER_MODEL_KEY
from nequip.train.lightning import _SOLE_MODEL_KEY
from nequip.model.saved_models.load_utils import load_saved_model
set_global_state()
model = load_saved_model(sys.argv[1], _EAGER_MODEL_KEY, _SOLE_MODEL_KEY)
print(sum(p.numel() for p in model.parameters()))
' "$1" 2>/dev/null | tail -n 1)
}

# type names stored in an AOT .pt2 by nequip-compile (its metadata json), space-separated
pt2_type_names() {  # pt2_type_names FILE
    "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith("metadata.json")]
    print(json.loads(z.read(names[0]))["type_names"])
PY
}

# LAMMPS input (and data) for the check of SYSTEM with MODEL; prints the input file's name
write_lammps_input() {  # write_lammps_input SYSTEM MODEL TAG
    local system="$1" model="$2" tag="$3"
    case "$system" in
    cu)
        cat >"$CHECK/in.$tag.lammps" <<EOF
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
        ;;
    3bpa)
        local data="$CHECK/3bpa_molecule.data"
        if [ ! -f "$data" ]; then
            nice -n 10 "$VENV/bin/python" - "$BPA_DATA/test_300K.xyz" "$data" <<'PY' || die "could not write $data"
import os, sys
import ase.io
atoms = ase.io.read(sys.argv[1], index=0, format="extxyz")
atoms.calc = None
atoms.set_cell([30.0, 30.0, 30.0])
atoms.center()
atoms.pbc = False
ase.io.write(sys.argv[2] + ".tmp", atoms, format="lammps-data", specorder=["C", "H", "N", "O"],
             masses=True, atom_style="atomic", units="metal")
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
        fi
        cat >"$CHECK/in.$tag.lammps" <<EOF
units           metal
atom_style      atomic
newton          off
boundary        f f f
read_data       $data
pair_style      nequip
pair_coeff      * * $model ${TYPES[*]}
velocity        all create 300 1
fix             1 all nve
thermo          1
run             5
EOF
        ;;
    esac
    echo "$CHECK/in.$tag.lammps"
}

REPORT=()
make_system() {  # make_system SYSTEM
    local system="$1"
    local name="nequip_${system}_S" rundir="$OUT/train"
    [ "$system" = cu ] || rundir="$OUT/train_$system"
    if [ "$CHANNELS" != 64 ]; then name="${name}_c$CHANNELS"; rundir="${rundir}_c$CHANNELS"; fi
    local cfg="$OUT/$name.yaml" ckpt="$rundir/last.ckpt"
    local pth="$OUT/$name.nequip.pth" pt2="$OUT/$name.nequip.pt2"
    log "=== $system: $name ==="

    # 1. config
    system_setup "$system"
    write_config "$system" "$cfg"

    # 2. training
    if [ -f "$ckpt" ]; then
        log "checkpoint exists, skipping training: $ckpt"
    else
        # run in OUT: Hydra and Lightning write relative files (outputs/, lightning_logs/) into the cwd
        timed "$OUT" "$OUT/logs/train_$name.log" "$VENV/bin/nequip-train" -cp "$OUT" -cn "$name" \
            "hydra.run.dir=$rundir" || { tail -n 30 "$OUT/logs/train_$name.log" >&2; die "nequip-train failed ($system)"; }
        log "training took ${ELAPSED}s"
        [ -f "$ckpt" ] || die "nequip-train finished but wrote no $ckpt (see $OUT/logs/train_$name.log)"
    fi
    local params
    params="$(count_params "$ckpt" || true)"
    params="${params:-?}"

    # 3. compile (each may fail; see the header)
    local -A why=()
    local mode file logfile
    for mode in torchscript aotinductor; do
        local extra=()
        if [ "$mode" = torchscript ]; then file="$pth"; else file="$pt2"; extra=(--target pair_nequip); fi
        if [ -f "$file" ]; then log "exists, skipping $mode compile: $file"; continue; fi
        logfile="$OUT/logs/compile_${name}_$mode.log"
        if timed "$OUT" "$logfile" "$VENV/bin/nequip-compile" "$ckpt" "$file" --mode "$mode" --device cpu "${extra[@]}"; then
            log "$mode compile took ${ELAPSED}s -> $file"
        else
            rm -f "$file"
            why[$mode]="$(grep -E 'Error|error:' "$logfile" | tail -n 1 | cut -c1-300 || true)"
            log "WARNING: $mode compile failed after ${ELAPSED}s: ${why[$mode]:-see $logfile}"
        fi
    done
    local models=() f
    for f in "$pth" "$pt2"; do [ -f "$f" ] && models+=("$f"); done
    [ ${#models[@]} -gt 0 ] || die "neither compile produced a $system model (logs in $OUT/logs)"

    # the type names compiled into the .pt2 must be the ones pair_coeff gets
    local stored=""
    if [ -f "$pt2" ]; then
        stored="$(pt2_type_names "$pt2" || true)"
        [ "$stored" = "${TYPES[*]}" ] || die "$pt2 stores type names '$stored', expected '${TYPES[*]}'"
    fi

    # 4. LAMMPS check
    mkdir -p "$CHECK"
    local model ext tag input lmplog loop
    for model in "${models[@]}"; do
        ext="${model##*.}"
        tag="$ext"; [ "$system" = cu ] || tag="$system.$ext"  # cu keeps its original file names
        [ "$CHANNELS" = 64 ] || tag="$tag.c$CHANNELS"
        input="$(write_lammps_input "$system" "$model" "$tag")"
        lmplog="$CHECK/log.$tag.lammps"
        rm -f "$lmplog"
        if ! timed "$CHECK" "$CHECK/screen.$tag.txt" "$LMP" -in "$input" -log "$lmplog"; then
            tail -n 30 "$CHECK/screen.$tag.txt" >&2
            die "LAMMPS failed to run $model (input $input)"
        fi
        loop="$(grep '^Loop time' "$lmplog" || true)"
        [ -n "$loop" ] || die "LAMMPS ran $model but printed no 'Loop time' line (see $lmplog)"
        if grep -qE '^ERROR' "$lmplog" || grep -qiw 'nan' "$lmplog"; then die "LAMMPS log of $model has an ERROR or NaN (see $lmplog)"; fi
        log "LAMMPS ok ($system $ext, ${ELAPSED}s): $loop"
    done

    # 5. report lines (printed at the end)
    REPORT+=("NequIP size-S $system model ($CHANNELS features, $params parameters, type names: ${TYPES[*]}), checkpoint $ckpt")
    for mode in torchscript aotinductor; do
        [ -z "${why[$mode]:-}" ] || REPORT+=("no $system $mode model: ${why[$mode]}")
    done
    [ -z "$stored" ] || REPORT+=("type names stored in $(basename "$pt2"): $stored")
    for model in "${models[@]}"; do REPORT+=("$model"); done
}

for system in "${SYSTEMS[@]}"; do make_system "$system"; done

# ---- 5. report -------------------------------------------------------------------------------------
printf '%s\n' "${REPORT[@]}"
