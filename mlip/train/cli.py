"""``mlip train CONFIG.yaml [--set section.key=value ...] [--resume]``.

Resumes automatically when the run directory (``output_dir``) already holds a checkpoint;
``--resume`` makes that a requirement. ``--show-keys`` lists every config key with its default.
"""
from __future__ import annotations

import argparse

from mlip.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML training config (see configs/example.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set optim.lr=0.001 data.batch_size=8 "
                             "(values are read as YAML; repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir (an error if it has no checkpoint); without it a "
                             "run directory holding a checkpoint is resumed too")
    parser.add_argument("--show-keys", action="store_true", help="list every config key with its default and exit")


def run(args: argparse.Namespace) -> int:
    from mlip.perf import tune_malloc
    from mlip.train.config import describe, load_config

    tune_malloc()  # CPU speed: keep freed per-edge buffers in the process (MLIP_MALLOC_TUNING=0: off)
    if args.show_keys:
        print("\n".join(describe()))
        return 0
    overrides = [item for group in args.overrides for item in group]
    if not args.config:
        # `mlip train --set a=1 cfg.yaml`: argparse hands the config to --set
        paths = [o for o in overrides if "=" not in o and o.endswith((".yaml", ".yml"))]
        if len(paths) == 1:
            args.config = paths[0]
            overrides.remove(paths[0])
    if not args.config:
        raise InputError("a config file is required: mlip train CONFIG.yaml (see configs/example.yaml)")
    cfg = load_config(args.config, overrides)
    from mlip.train.trainer import train

    train(cfg, resume=True if args.resume else None)  # errors reach the user as one line (mlip.cli)
    return 0
