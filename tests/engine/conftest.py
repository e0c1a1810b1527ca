"""Shared helpers for engine tests: a fresh default graph per test and the gradient checker."""

from __future__ import annotations

import pytest

import engine as en


@pytest.fixture(autouse=True)
def fresh_default_graph():
    """Each test builds in its own empty default graph."""
    en.reset_default_graph()
    yield
    en.reset_default_graph()
