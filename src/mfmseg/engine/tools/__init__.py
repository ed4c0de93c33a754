"""Tools built on training and evaluation: seed sweeps, the synthetic demo, the memory/time cost plan."""
