"""Distillation stage: pure loss functions, the training loop."""
