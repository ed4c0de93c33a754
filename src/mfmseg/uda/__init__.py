"""Self-training UDA (DACS / DAFormer / MIC ingredients) and Masked Feature Modeling.

One idea per module: `ema` (mean teacher), `pseudo` (pseudo-labels + confidence weight), `mixing` (ClassMix,
colour jitter, blur), `fd` (ImageNet feature distance), `mic` (masked image consistency), `mfm` (the Rebuilder
and L_mfm), `losses` (the reference's CE reduction), and `step.UDAStep`, which composes them into one iteration.
"""
