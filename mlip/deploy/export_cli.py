"""``mlip export CHECKPOINT -o NAME.nequip.pth``: a standalone TorchScript model for LAMMPS and ASE.

The file follows the contracts of LAMMPS ``pair_style nequip`` (one MPI rank) and
``pair_style allegro`` (domain decomposition over any number of ranks; see
:mod:`mlip.deploy.export` and :mod:`mlip.deploy.domain`) and loads with plain
``torch.jit.load``; mlip is not needed to run it. ``-o NAME.nequip.pt2`` compiles an
AOTInductor package instead (:mod:`mlip.deploy.aot`).
"""
import argparse

from mlip.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="mlip checkpoint or model file")
    p.add_argument("-o", "--output", required=True,
                   help="output file: NAME.nequip.pth (TorchScript, both pair styles) or NAME.nequip.pt2 (AOTInductor "
                        "package, compiled: pair_style nequip, LAMMPS built with build_lammps.sh --aot)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="precision of the exported network (default: the training precision)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA weights")
    p.add_argument("--single-rank", action="store_true",
                   help="for LAMMPS pair_style nequip on one MPI rank only: LAMMPS' neighbour list stops at the "
                        "network's cutoff (faster), and pair_style allegro is refused. Default: a file for both "
                        "pair styles, any number of ranks")
    p.add_argument("--no-kernels", action="store_true",
                   help="for .nequip.pt2: plain torch operations instead of mlip's fused CPU kernel (runs in any LAMMPS "
                        "built with NEQUIP_AOT_COMPILE, without libmlip_ops.so; slower)")
    p.add_argument("--allow-tf32", action="store_true",
                   help="let LAMMPS use TF32 matmuls on Ampere+ GPUs (metadata allow_tf32=1; default 0)")


def run(args) -> int:
    from mlip.deploy.aot import AOT_EXTENSION, export_aot
    from mlip.deploy.export import export_model

    if args.output.endswith(AOT_EXTENSION):
        print(f"compiling {args.output} with AOTInductor (tens of seconds)...", flush=True)
        meta = export_aot(args.checkpoint, args.output, dtype=args.dtype, use_ema=not args.no_ema,
                          allow_tf32=args.allow_tf32, kernels=not args.no_kernels)
        kernels = "mlip's fused CPU kernel (lmp must link libmlip_ops.so: bash scripts/build_lammps.sh --aot)" \
            if meta["mlip_kernels"] else "plain torch operations"
        print(f"wrote {args.output}: {meta['model_dtype']}, r_max {meta['r_max']} A, types {meta['type_names']}, "
              f"{kernels}")
        print(f"LAMMPS (built with NEQUIP_AOT_COMPILE):  units metal / one MPI rank: newton off, pair_style nequip / "
              f"pair_coeff * * {args.output} <one of: {meta['type_names']} per LAMMPS type>")
        return 0
    if not args.output.endswith(".nequip.pth"):
        raise InputError("the output file name must end in '.nequip.pth' (TorchScript) or '.nequip.pt2' (AOT "
                         "package); LAMMPS' plugin refuses other names", args.output)
    if args.no_kernels:
        raise InputError("--no-kernels applies to .nequip.pt2 packages (TorchScript files use plain torch "
                         "operations)", args.output)
    meta = export_model(args.checkpoint, args.output, dtype=args.dtype, use_ema=not args.no_ema,
                        allow_tf32=args.allow_tf32, single_rank=args.single_rank)
    layers = int(meta["num_message_layers"])
    print(f"wrote {args.output}: {meta['model_dtype']}, r_max {meta['model_r_max']} A, types {meta['type_names']}, "
          f"{layers} message-passing layer{'s' if layers > 1 else ''} (LAMMPS neighbour and ghost cutoff "
          f"{meta['r_max']} A)")
    styles = ("one MPI rank only: newton off, pair_style nequip" if args.single_rank else
              "one MPI rank: newton off, pair_style nequip / any number of ranks: newton on, pair_style allegro")
    print(f"LAMMPS:  units metal / {styles} / pair_coeff * * {args.output} <one of: {meta['type_names']} per LAMMPS "
          "type>")
    return 0
