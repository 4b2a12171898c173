"""Training: config, statistics, loss, loop, checkpoints and evaluation.

``mlip train CONFIG.yaml`` (:mod:`mlip.train.cli`) reads and validates the config
(:mod:`~mlip.train.config`), computes the statistics stored in the model
(:mod:`~mlip.train.statistics`: E0s, force-RMS energy scale, average neighbour count) and runs
:class:`~mlip.train.trainer.Trainer`: loss (:mod:`~mlip.train.loss`), metrics
(:mod:`~mlip.train.metrics`), EMA (:mod:`~mlip.train.ema`), learning-rate schedule
(:mod:`~mlip.train.schedule`) and exact-resume checkpoints (:mod:`~mlip.train.resume`).
``mlip evaluate`` (:mod:`mlip.train.evaluate_cli`) scores a model with
:mod:`~mlip.train.evaluation` and draws parity plots (:mod:`~mlip.train.plots`).

The package can be called: ``mlip.train("run.yaml")`` or ``mlip.train({...config...})`` runs a
training from Python (:func:`run_training`); see :class:`_CallableModule` for why.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Any, Dict, Iterable, Mapping, Optional, Union


def run_training(config: Union[str, "os.PathLike[str]", Mapping[str, Any]], overrides: Iterable[str] = (),
                 resume: Optional[bool] = None, echo: bool = True) -> Dict[str, Any]:
    """Train a potential, as ``mlip train`` does; ``mlip.train(...)`` calls this.

    ``config``: a path to a YAML config file, or the config itself as a dict (the same sections
    and keys as the file; relative data paths are taken from ``data.root``, relative to the
    current directory). ``overrides``: ``"section.key=value"`` strings, as ``--set``.
    ``resume``: True = continue the run in ``output_dir`` (an error without a checkpoint),
    None = continue when it holds one, False = an error when it holds one. ``echo``: print the
    log lines (they also go to the run directory's log).

    Returns the trainer's result: ``best_model`` and ``last_model`` (paths), ``run_dir`` and
    ``results`` (test-set errors per file: energies eV, forces eV/A). A bad config or file is an
    :class:`~mlip.errors.InputError` naming the key or path.
    """
    # imported here, not at the top: `import mlip.train` (and `mlip.train.config`) stays light
    from mlip.perf import tune_malloc
    from mlip.train.config import apply_overrides, load_config, validate

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if isinstance(config, (str, os.PathLike)):
        cfg = load_config(os.fspath(config), overrides)
    elif isinstance(config, Mapping):
        cfg = validate(apply_overrides(dict(config), overrides))
    else:
        raise TypeError(f"mlip.train: config must be a path to a YAML file or a dict, got {type(config).__name__}")
    tune_malloc()  # the CPU speed `mlip train` has (MLIP_MALLOC_TUNING=0: off)
    from mlip.train.trainer import train

    return train(cfg, resume=resume, echo=echo)


class _CallableModule(types.ModuleType):
    """The type of the ``mlip.train`` module: a module that can also be called.

    Why: the public API has ``mlip.train(config)``, and ``mlip.train`` is also this package.
    A function ``train`` in ``mlip/__init__.py`` would not last: importing any submodule
    (``import mlip.train.config``) sets the attribute ``mlip.train`` to the package, replacing
    the function. Making the package itself callable gives one object that is both, whatever
    was imported first.
    """

    def __call__(self, config: Union[str, "os.PathLike[str]", Mapping[str, Any]], overrides: Iterable[str] = (),
                 resume: Optional[bool] = None, echo: bool = True) -> Dict[str, Any]:
        return run_training(config, overrides=overrides, resume=resume, echo=echo)

    __call__.__doc__ = run_training.__doc__


sys.modules[__name__].__class__ = _CallableModule
