"""Self-training UDA (DACS / DAFormer / MIC ingredients) and Masked Feature Modeling.

One idea per module: `ema` (mean teacher), `pseudo` (pseudo-labels + confidence weight), `mixing` (ClassMix,
colour jitter, blur), `term` (the contract of an auxiliary loss), `fd` (ImageNet feature distance), `mic` (masked
image consistency), `mfm` (the Rebuilder and L_mfm), and `step.UDAStep`, the method that owns the networks and the
terms and composes them into one iteration.
"""
