"""Shared by training and evaluation: numeric precision (AMP, determinism), processes (DDP), checkpoint files."""
