"""Accuracy experiments and diagnostics, on the public API (see README.md)."""
