"""Decode heads: each takes the encoder's feature list and returns logits at its `output_stride`.

Every head is built as `Head(in_channels, num_classes, **options)`, `in_channels` one entry per encoder level (the
encoder's `feature_info`), so that the zoo builds any head on any encoder the same way; `channels`, where a head
has it, is its width (`model.decoder_channels`)."""
