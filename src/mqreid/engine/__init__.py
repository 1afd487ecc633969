"""Orchestration: the training loop, checkpoints, distributed helpers and loggers."""
