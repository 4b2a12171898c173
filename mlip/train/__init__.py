"""Training: config, statistics, loss, loop, checkpoints and evaluation."""
