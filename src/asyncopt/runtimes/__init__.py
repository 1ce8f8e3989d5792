"""Runtimes: where gradients come from, and on what clock."""
