"""The zoo's GFLOPs (MACs) agree with the numbers the papers report (BiFormer README, NAT/DiNAT model cards)."""

from __future__ import annotations

import pytest
import timm

import vizattn  # noqa: F401
from vizattn.profile import count_gmacs

# Official GFLOPs at 224 (rounded to 0.1 in the papers).
PAPER = {"biformer_t": 2.2, "biformer_stl": 4.6, "nat_mini": 2.7, "dinat_mini": 2.7}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_gmacs_match_the_paper(name):
    model = timm.create_model(name).eval()
    assert round(count_gmacs(model, (3, 224, 224)), 1) == PAPER[name]
