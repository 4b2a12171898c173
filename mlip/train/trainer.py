"""The training loop: data and statistics, model, optimiser, schedule, EMA, checkpoints, resume.

A run directory (``output_dir``) holds::

    config.yaml          the resolved config (every default filled in)
    statistics.json      E0s (eV), energy scale, average neighbour count, split sizes
    log.txt              the lines printed to the terminal
    metrics.csv          one row per epoch: loss and MAE/RMSE of energy per atom (eV/atom), total
                         energy (eV), forces (eV/A), stress (eV/A^3) on train and validation
    checkpoints/         ckpt-<step>-e<epoch>.pt: everything needed to continue exactly
    best_model.pt        EMA weights of the epoch with the best weighted validation metric
    last_model.pt        EMA weights at the end of training
    learning_curve.png   loss and RMSEs per epoch
    test/                per-structure CSV, metrics and parity plots of each test file

Exact resume: the order of structures in an epoch is a function of (seed, epoch), a checkpoint
stores the number of batches already done in the current epoch plus every state that changes
(weights, optimiser, schedule, EMA, RNGs, partial epoch metrics, history), so a resumed run
repeats the uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional

import torch

from mlip.checkpoint import ensure_writable_dir, model_record
from mlip.errors import StorageError, TrainingDiverged
from mlip.train import data as D
from mlip.train import distributed as dist_utils
from mlip.train import finetune as FT
from mlip.train.resume import CheckpointDir, find_resume, restore_training, seed_everything, training_checkpoint
from mlip.train.clock import TrainingClock
from mlip.train.distributed import reduce_accumulator, resolve_device
from mlip.train.ema import EMA
from mlip.train.evaluation import set_loss, validation_metrics
from mlip.train.loss import LossWeights, compute_loss, stage_loss_weights
from mlip.train.metrics import format_errors, weighted_metric
from mlip.train.model_setup import build_run_model, describe_model, load_kernels, run_model_config, step_model
from mlip.train.run_files import RunFiles
from mlip.train.run_log import Logger, WandbLogger, progress_bar
from mlip.train.schedule import LRSchedule, make_optimizer
from mlip.train.state import TrainingState
from mlip.train.step import NonFiniteStep, diverged_error, train_step
from mlip.train.training_data import TrainingData, run_r_max

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Trainer:
    """One training run from a validated config (see :mod:`mlip.train.config`): data
    (:class:`TrainingData`), model (:mod:`~mlip.train.model_setup`), the step
    (:func:`~mlip.train.step.train_step`), position and history (:class:`TrainingState`),
    checkpoints; this class runs the epochs and writes the run directory."""

    def __init__(self, cfg: Dict[str, Any], resume: Optional[bool] = None, echo: bool = True):
        """``resume``: True = must resume, None = resume when the run directory has a checkpoint,
        False = refuse to start over an existing run."""
        self.cfg = cfg
        self.run_dir = cfg["output_dir"]
        # under torchrun: one process per GPU (or CPU share); rank 0 alone writes files
        self.dist, dist_device = dist_utils.setup(cfg["device"])
        self.is_main = self.dist.is_main
        ensure_writable_dir(self.run_dir)  # before any data is read
        self.log = Logger(os.path.join(self.run_dir, "log.txt") if self.is_main else None, echo and self.is_main)
        self.files = RunFiles(self.run_dir, self.log, lambda: (self.state.global_step, self.last_checkpoint))
        self.ckpts = CheckpointDir(os.path.join(self.run_dir, "checkpoints"), cfg["train"]["keep_checkpoints"])
        self.device = dist_device if dist_device is not None else resolve_device(cfg["device"])
        self.dtype = DTYPES[cfg["dtype"]]
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(cfg["allow_tf32"])
            torch.backends.cudnn.allow_tf32 = bool(cfg["allow_tf32"])
        self.progress_bar = bool(cfg["logging"]["progress_bar"]) and echo and self.is_main
        if self.dist.enabled:
            self.log(f"distributed: {self.dist.world_size} processes ({self.dist.backend}), global batch "
                     f"{cfg['data']['batch_size']} structures split over them")
        self._resume_obj, self._resume_path = find_resume(self.ckpts, self.log, self.dist, resume, cfg)
        seed_everything(cfg["seed"])
        self.foundation = None
        if cfg["finetune"]["from"] and self._resume_obj is None:
            self.foundation = FT.load_foundation(os.path.expanduser(cfg["finetune"]["from"]))
        self._setup_data_and_model()
        self._setup_optim()
        self.out_of_time = False
        self.clock = TrainingClock(cfg["train"]["max_time_minutes"], cfg["train"]["schedule_follows_budget"])
        self.last_checkpoint: Optional[str] = None
        self.wandb: Optional[WandbLogger] = None
        if self._resume_obj is not None:
            self._load_state(self._resume_obj)
            self.last_checkpoint = self._resume_path
        self._resume_obj = None  # free memory

    # --- set-up -------------------------------------------------------------------------------

    def _setup_data_and_model(self) -> None:
        cfg = self.cfg
        resume = self._resume_obj
        self.data = TrainingData(cfg, run_r_max(cfg, resume, self.foundation), self.log, lambda fn: dist_utils.on_main(fn, self.dist),
                                 resume=resume, foundation=self.foundation)
        self.r_max, self.type_names, self.stats = self.data.r_max, self.data.type_names, self.data.stats
        self.train_set, self.valid_set = self.data.train_set, self.data.valid_set
        if self.is_main:
            self.files.write_start(self.stats, cfg)
        self.model_config = run_model_config(cfg, self.stats, self.log, resume, self.foundation, self.type_names)
        model = build_run_model(self.model_config, self.type_names, self.dtype, self.r_max, cfg["finetune"],
                                self.log, None if resume is not None else self.foundation)
        self.foundation = None  # free memory
        self.model = model.to(self.device)
        self.log(describe_model(self.model, self.model_config, cfg["dtype"], self.device))
        load_kernels(self.device, self.log)
        self.step_model = step_model(self.model, self.model_config, cfg["train"]["compile"], self.dist,
                                     self.device, self.log)
        self.ema = EMA(self.model, cfg["ema"]["decay"]) if cfg["ema"]["enabled"] else None

    def _setup_optim(self) -> None:
        o = self.cfg["optim"]
        self.optimizer = make_optimizer([p for p in self.model.parameters() if p.requires_grad], o)
        self.batches_per_epoch = math.ceil(len(self.train_set) / self.cfg["data"]["batch_size"])
        st = self.cfg["stage_two"]
        self.schedule = LRSchedule(self.cfg["schedule"], o["lr"], self.batches_per_epoch, o["max_epochs"],
                                   st["start_epoch"] if st["enabled"] else None, st["lr"])
        self.state = TrainingState()

    # --- checkpoint state -----------------------------------------------------------------------

    def _record(self, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        return model_record(self.model_config, self.type_names, self.cfg["dtype"], state_dict)

    def _eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def checkpoint_state(self) -> Dict[str, Any]:
        return training_checkpoint(self._record(self.model.state_dict()), self.ema, self.optimizer, self.schedule,
                                   self.state, self.cfg, self.stats.to_dict())

    def save_checkpoint(self) -> str:
        """Rank 0 writes; every rank must call this (the partial epoch metrics are gathered first)."""
        self._gather_epoch_metrics()
        st = self.state
        if self.clock.started:
            st.train_seconds = self.clock.seconds()
        if self.is_main:
            try:
                self.last_checkpoint = self.ckpts.save(self.checkpoint_state(), st.global_step, st.epoch)
            except StorageError as exc:
                raise self.files.storage_error(exc) from None
        else:
            self.last_checkpoint = self.ckpts.path_for(st.global_step, st.epoch)
        return self.last_checkpoint

    def _gather_epoch_metrics(self) -> None:
        """Sum the ranks' metric accumulators into rank 0's (the others restart from zero), so
        that rank 0's copy, which checkpoints store, holds the whole partial epoch."""
        if self.dist.enabled:
            self.state.epoch_acc = reduce_accumulator(self.state.epoch_acc, self.dist, keep=self.is_main)

    def _load_state(self, obj: Mapping[str, Any]) -> None:
        # rank 0's accumulator holds the sums of all ranks (see save_checkpoint)
        restore_training(obj, self.model, self.ema, self.optimizer, self.schedule, self.state, self.is_main)
        st = self.state
        self.log(f"resumed from {self._resume_path}: epoch {st.epoch}, batch {st.step_in_epoch}/"
                 f"{self.batches_per_epoch}, step {st.global_step}")
        # the CSV may hold a row for an epoch the checkpoint had not finished: rewrite it from history
        if self.is_main:
            self._write_csv()

    # --- the loop -----------------------------------------------------------------------------

    def stage(self, epoch: int) -> int:
        s2 = self.schedule.stage_two_epoch
        return 2 if s2 is not None and epoch >= s2 else 1

    def loss_weights(self, epoch: int) -> LossWeights:
        return stage_loss_weights(self.cfg["loss"], self.cfg["stage_two"], self.stage(epoch))

    def _stage_two_by_budget(self) -> None:
        """A budget run enters stage two at the first epoch that starts once the budget fraction
        ``stage_two.start_epoch / optim.max_epochs`` is used (its epochs would not reach it)."""
        s2, st = self.schedule.stage_two_epoch, self.state
        if s2 is None or st.epoch >= s2 or st.step_in_epoch:
            return
        if self.clock.stage_two_due(self.cfg["stage_two"]["start_epoch"], self.cfg["optim"]["max_epochs"]):
            self.log(f"{100 * self.clock.progress:.0f}% of the time budget used: stage two starts now "
                     f"(epoch {st.epoch + 1})")
            self.schedule.stage_two_epoch = st.epoch

    def _diverged(self, what: str, idx: List[int]) -> TrainingDiverged:
        st = self.state
        return diverged_error(what, st.epoch, st.step_in_epoch, self.batches_per_epoch, st.global_step,
                              D.describe_sources(self.train_set.sources, idx), self.last_checkpoint)

    def train_epoch(self) -> None:
        """Train the rest of the current epoch (or until the time budget runs out)."""
        cfg, st = self.cfg, self.state
        weights = self.loss_weights(st.epoch)
        lc = cfg["loss"]

        def loss_fn(out, batch, counts=None):
            return compute_loss(out, batch, weights, lc["energy_per_atom"], lc["type"], lc["huber_delta"],
                                counts=counts)

        need_stress = weights.stress > 0 and self.train_set.has_stress()
        every = cfg["train"]["checkpoint_every_steps"]
        order = D.epoch_permutation(cfg["seed"], st.epoch, len(self.train_set))
        batches = D.batch_indices(order, cfg["data"]["batch_size"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        # this rank's share of each remaining global batch (a rank left without structures runs
        # one with zero weight: see train_step)
        remaining = batches[st.step_in_epoch:]
        to_load = ([dist_utils.shard(idx, self.dist) or idx[:1] for idx in remaining] if self.dist.enabled
                   else remaining)
        stream = D.collated_batches(self.train_set.graphs, to_load, cfg["data"]["num_workers"])
        bar = progress_bar(len(batches), st.step_in_epoch, f"epoch {st.epoch}") if self.progress_bar else None
        self.model.train()
        t0 = time.perf_counter()
        try:
            while st.step_in_epoch < len(batches):
                idx = batches[st.step_in_epoch]
                lr = self.schedule.lr(st.epoch, st.global_step, self.clock.schedule_progress())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = D.to_device(next(stream), self.device, self.dtype)
                counts = self.train_set.label_counts(idx, weights) if self.dist.enabled else None
                try:
                    step = train_step(self.step_model, batch, loss_fn, self.optimizer, params, idx, need_stress,
                                      cfg["optim"]["clip_grad_norm"], self.dist, counts, self.clock.used)
                except NonFiniteStep as exc:
                    raise self._diverged(str(exc), idx) from None
                if self.ema is not None:
                    self.ema.update(self.model)
                self.clock.progress = step.progress
                st.global_step += 1
                st.step_in_epoch += 1
                if step.local:
                    st.epoch_acc.update(step.out, batch)
                if self.is_main:
                    st.epoch_acc.add_loss(step.loss, len(idx))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step.loss:.4g}", lr=f"{lr:.2g}", refresh=False)
                if step.time_up:
                    self.out_of_time = True
                    break
                if every and st.global_step % every == 0 and st.step_in_epoch < len(batches):
                    st.epoch_time += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
        finally:
            stream.close()  # stops DataLoader workers still reading ahead
            if bar is not None:
                bar.close()
        st.epoch_time += time.perf_counter() - t0

    def validate(self, weights: LossWeights) -> Dict[str, float]:
        """Errors of the EMA (or plain) model on the validation set; the loss is that of the whole
        set, independent of the batching. Under DDP each rank scores every world_size-th
        structure and the sums are all-reduced."""
        if not len(self.valid_set):
            return {}
        model = self._eval_model()
        model.eval()
        mine = dist_utils.shard(range(len(self.valid_set)), self.dist)
        acc, parts = validation_metrics(model, self.valid_set.graphs, self.cfg["data"]["valid_batch_size"],
                                        self.device, self.valid_set.has_stress(), weights, self.cfg["loss"],
                                        indices=mine, workers=self.cfg["data"]["num_workers"])
        metrics = reduce_accumulator(acc, self.dist, keep=True).result()
        metrics["loss"] = set_loss(weights, dist_utils.all_reduce_sum(parts, self.dist))
        return metrics

    def end_epoch(self) -> bool:
        """Validate, log, track the best model; returns False when training should stop."""
        cfg, st = self.cfg, self.state
        epoch, max_epochs = st.epoch, cfg["optim"]["max_epochs"]
        weights = self.loss_weights(epoch)
        self._gather_epoch_metrics()
        # every rank needs the totals: the best-model choice and the schedule depend on them
        train_metrics = reduce_accumulator(st.epoch_acc, self.dist, keep=True).result()
        do_valid = len(self.valid_set) > 0 and ((epoch + 1) % cfg["train"]["valid_every"] == 0
                                                or epoch + 1 == max_epochs)
        valid_metrics = self.validate(weights) if do_valid else {}
        judged = valid_metrics if do_valid else (train_metrics if not len(self.valid_set) else None)
        metric = weighted_metric(judged, cfg["train"]["best_metric_weights"]) if judged is not None else None
        is_best = metric is not None and st.judge(metric)
        if is_best and self.is_main:
            self._save_model_file("best_model.pt", {"epoch": epoch, "metric": metric, "metrics": judged})
        if judged is not None and self.schedule.end_epoch(epoch, judged.get("loss", metric)):
            self.log(f"plateau: learning rate reduced to {self.schedule.plateau_lr:.3g}")
        row = st.add_epoch(self.stage(epoch), self.optimizer.param_groups[0]["lr"], weights, train_metrics,
                           valid_metrics, metric, is_best)
        if self.is_main:
            self._write_csv()
        if self.wandb is not None:
            self.wandb.log(row)
        line = (f"epoch {epoch + 1:>4d}/{max_epochs}  loss {train_metrics['loss']:.4g}  "
                f"train {format_errors(train_metrics)}")
        if valid_metrics:
            line += f"  valid {format_errors(valid_metrics)}"
        self.log(line + f"  lr {row['lr']:.3g}  {st.epoch_time:.1f}s" + ("  *best" if is_best else ""))
        # move on to the next epoch before the checkpoint, so that resuming starts there
        st.start_next_epoch()
        keep_going = st.epoch < max_epochs and not self._stop_for_patience()
        self.save_checkpoint()
        if epoch % 10 == 9 and self.is_main:
            self.write_learning_curve()
        return keep_going

    def _stop_for_patience(self) -> bool:
        """After ``early_stopping_patience`` validations without a new best: start stage two
        early if it is still ahead, else stop (True)."""
        patience, st = self.cfg["train"]["early_stopping_patience"], self.state
        if patience is None or st.bad_validations < patience:
            return False
        s2 = self.schedule.stage_two_epoch
        if s2 is not None and st.epoch < s2:
            self.log(f"no improvement for {patience} validations: starting stage two now (epoch {st.epoch})")
            self.schedule.stage_two_epoch = st.epoch
            st.bad_validations = 0
            return False
        self.log(f"early stopping: no improvement for {patience} validations")
        st.stopped_early = True
        return True

    def fit(self) -> Dict[str, Any]:
        """Train to ``optim.max_epochs`` (or early stopping); returns where the results are."""
        cfg, st = self.cfg, self.state
        self.clock.start(st.train_seconds)
        if cfg["logging"]["wandb"] and self.is_main:
            self.wandb = WandbLogger(cfg, self.run_dir, st.wandb_id)
            st.wandb_id = self.wandb.id
        max_epochs = cfg["optim"]["max_epochs"]
        s2 = self.schedule.stage_two_epoch
        if s2 is not None and s2 >= max_epochs:
            self.log(f"warning: stage_two.start_epoch {s2} >= optim.max_epochs {max_epochs}: stage two will not run")
        if st.at_start:
            self.log(f"training {max_epochs} epochs of {self.batches_per_epoch} batches; errors are RMSE: "
                     "E meV/atom, F meV/A, S meV/A^3")
            self.save_checkpoint()
        keep_going = st.epoch < max_epochs and not st.stopped_early
        if not keep_going:
            self.log(f"nothing to train: the run in {self.run_dir} has finished "
                     f"({'early stopping' if st.stopped_early else f'{st.epoch} epochs'}); raise "
                     "optim.max_epochs to continue it")
        elif self.clock.exhausted:
            keep_going = False
            self.log(f"nothing to train: the run in {self.run_dir} has used its time budget of "
                     f"{cfg['train']['max_time_minutes']:g} min; "
                     "raise train.max_time_minutes to continue it")
        try:
            while keep_going:
                self._stage_two_by_budget()
                s2 = self.schedule.stage_two_epoch
                if s2 is not None and st.epoch == s2 and st.step_in_epoch == 0:
                    w = self.loss_weights(st.epoch)
                    self.log(f"stage two from epoch {st.epoch + 1}: lr {cfg['stage_two']['lr']:.3g}, loss weights "
                             f"energy {w.energy:g} forces {w.forces:g} stress {w.stress:g}")
                self.train_epoch()
                if st.step_in_epoch >= self.batches_per_epoch:
                    keep_going = self.end_epoch()
                if self.out_of_time:
                    self.log(f"time budget of {cfg['train']['max_time_minutes']:g} min reached after step "
                             f"{st.global_step} (epoch {st.epoch + (1 if st.step_in_epoch else 0)}, batch "
                             f"{st.step_in_epoch}/{self.batches_per_epoch}): stopping; `mlip train` on this run "
                             "directory continues")
                    if st.step_in_epoch:
                        self.save_checkpoint()  # the exact position inside the epoch, for a resume
                    keep_going = False
        finally:
            if self.is_main:
                self.write_learning_curve()
            if self.wandb is not None:
                self.wandb.finish()
        last = os.path.join(self.run_dir, "last_model.pt")
        best = os.path.join(self.run_dir, "best_model.pt")
        results: Dict[str, Dict[str, float]] = {}
        if self.is_main:
            self._save_model_file("last_model.pt", {"epoch": st.epoch - 1, "global_step": st.global_step})
            if not os.path.exists(best):
                best = last
            results = self.final_evaluation(best)
        dist_utils.barrier(self.dist)
        if not os.path.exists(best):
            best = last
        return {"best_model": best, "last_model": last, "run_dir": self.run_dir, "results": results,
                "best_epoch": st.best_epoch, "checkpoint": self.last_checkpoint,
                "stopped_by_time": self.out_of_time, "global_step": st.global_step}

    # --- outputs ------------------------------------------------------------------------------

    def _save_model_file(self, name: str, info: Mapping[str, Any]) -> str:
        return self.files.save_model(name, self._record(self._eval_model().state_dict()), self.stats, info)

    def _write_csv(self) -> None:
        self.files.write_csv(self.state)

    def write_learning_curve(self) -> Optional[str]:
        return self.files.learning_curve(self.state, self.schedule.stage_two_epoch
                                         if self.cfg["stage_two"]["enabled"] else None)

    def final_evaluation(self, model_path: str) -> Dict[str, Dict[str, float]]:
        """Score the best model on the validation set and every test file; print a table."""
        return self.files.final_evaluation(model_path, self.data.test_sets(), self.device,
                                           self.cfg["data"]["valid_batch_size"])


def train(cfg: Dict[str, Any], resume: Optional[bool] = None, echo: bool = True) -> Dict[str, Any]:
    """Run (or continue) the training described by a validated config (under torchrun: this
    process's part of it; the process group is closed at the end)."""
    try:
        return Trainer(cfg, resume=resume, echo=echo).fit()
    finally:
        dist_utils.cleanup()
