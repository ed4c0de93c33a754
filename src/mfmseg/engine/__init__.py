"""What runs a model: `runtime` (precision, processes, checkpoint files) ← `evaluation` (metrics, inference,
prediction, export, label-free selection, figures) ← `training` (the trainer and its optimiser) ← `tools` (sweep,
demo, cost); each sub-package imports only those to its left."""
