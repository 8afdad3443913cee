"""Helpers the tests share: fake clocks, X windows, drives, models and checkpoints."""
