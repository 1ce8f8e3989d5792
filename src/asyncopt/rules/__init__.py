"""Rules: how a gradient becomes a step (optax-style init/update pairs)."""
