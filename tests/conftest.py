"""Shared pytest fixtures: every test starts from the same random state."""

from __future__ import annotations

import pytest
import torch

# Odd, non-square and degenerate (one row / one column / one pixel) feature-map sizes.
SIZES = [(3, 5), (7, 4), (1, 6), (5, 1), (1, 1), (4, 4)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch before each test so failures reproduce."""
    torch.manual_seed(0)
