"""Shelfcast ML pipeline: one module per DVC stage plus the shared domain code."""
