"""Training: config, statistics, loss, loop, checkpoints and evaluation.

``mlip train CONFIG.yaml`` (:mod:`mlip.train.cli`) reads and validates the config
(:mod:`~mlip.train.config`), computes the statistics stored in the model
(:mod:`~mlip.train.statistics`: E0s, force-RMS energy scale, average neighbour count) and runs
:class:`~mlip.train.trainer.Trainer`: loss (:mod:`~mlip.train.loss`), metrics
(:mod:`~mlip.train.metrics`), EMA (:mod:`~mlip.train.ema`), learning-rate schedule
(:mod:`~mlip.train.schedule`) and exact-resume checkpoints (:mod:`~mlip.train.checkpoints`).
``mlip evaluate`` (:mod:`mlip.train.evaluate_cli`) scores a model with
:mod:`~mlip.train.evaluation` and draws parity plots (:mod:`~mlip.train.plots`).
"""
