"""Serving: generation from a base model with or without a tuned adapter."""
