"""Scoring math: small pure tensor functions (no model, no I/O)."""
