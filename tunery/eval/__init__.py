"""Evaluation: metrics (pure functions) and before/after comparison."""
