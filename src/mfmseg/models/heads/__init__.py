"""Decode heads: each takes the encoder's feature list and returns logits at its `output_stride`."""
