"""Placeholder: the runner implementations land here (one module per backend, imported here)."""
