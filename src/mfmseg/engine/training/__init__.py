"""Training: the trainer loop, the optimiser and its schedule, resume checks."""
