"""Protocols: when the server steps and what each worker does next."""
