"""Attention blocks: nn.Modules a user can drop into their own network, one file per family."""

from vizattn.blocks.clear import ClearAttention, convert_to_clear
from vizattn.blocks.ela import ELA, ELA_VARIANTS
from vizattn.blocks.lka import LKA, VANAttention
from vizattn.blocks.neighborhood import NeighborhoodAttention2d
from vizattn.blocks.routing import AttentionLePE, QKVLinear, RoutingAttention
from vizattn.blocks.ulsam import ULSAM, SubSpace

__all__ = [
    "ClearAttention",
    "convert_to_clear",
    "ELA",
    "ELA_VARIANTS",
    "LKA",
    "AttentionLePE",
    "NeighborhoodAttention2d",
    "QKVLinear",
    "RoutingAttention",
    "SubSpace",
    "ULSAM",
    "VANAttention",
]
