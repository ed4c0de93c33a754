"""mfmseg: domain-adaptive semantic segmentation with Masked Feature Modeling."""

__version__ = "0.1.0"
