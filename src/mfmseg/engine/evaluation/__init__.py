"""Evaluation and deployment: metrics, inference, evaluate, predict, export (PyTorch and ONNX), label-free
metrics and checkpoint selection, figures (report)."""
