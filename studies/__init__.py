"""Studies beside the product: scripts, protocols, kept run logs and figures (studies/README.md)."""
