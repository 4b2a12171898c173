"""What a run prints and records: the terminal and ``log.txt``, and optional Weights & Biases."""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Mapping, Optional

from mlip.errors import InputError, os_error_text


class Logger:
    """Prints through tqdm (so the progress bar is not torn) and appends to ``log.txt``."""

    def __init__(self, path: Optional[str], echo: bool = True):
        self.path = path
        self.echo = echo

    def __call__(self, text: str) -> None:
        if self.echo:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()
        if self.path:
            try:
                with open(self.path, "a") as fh:
                    fh.write(text + "\n")
            except OSError as exc:  # a full disk must not end the run over a log line
                path, self.path = self.path, None
                print(f"warning: {path}: cannot write ({os_error_text(exc)}); log lines go to the terminal only",
                      file=sys.stderr)


def progress_bar(total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on stderr that disappears when done (log lines stay on stdout)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, leave=False, dynamic_ncols=True, desc=desc, file=sys.stderr)


class WandbLogger:
    """Optional Weights & Biases logging; offline unless ``logging.wandb_mode: online``."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: str, run_id: Optional[str]):
        try:
            import wandb
        except ImportError:
            raise InputError("logging.wandb is true but wandb is not installed (pip install 'mlip[wandb]')",
                             key="logging.wandb") from None
        log_cfg = cfg["logging"]
        self.wandb = wandb
        self.run = wandb.init(project=log_cfg["wandb_project"],
                              name=log_cfg["wandb_name"] or os.path.basename(os.path.abspath(run_dir)),
                              mode=log_cfg["wandb_mode"], dir=run_dir, config=dict(cfg), id=run_id,
                              resume="allow")
        self.id = self.run.id

    def log(self, row: Mapping[str, float]) -> None:
        self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not (
            isinstance(v, float) and math.isnan(v))}, step=int(row["epoch"]))

    def finish(self) -> None:
        self.run.finish()
