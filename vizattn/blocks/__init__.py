"""Attention blocks: nn.Modules a user can drop into their own network, one file per family."""

from vizattn.blocks.neighborhood import NeighborhoodAttention2d
from vizattn.blocks.routing import AttentionLePE, QKVLinear, RoutingAttention

__all__ = ["AttentionLePE", "NeighborhoodAttention2d", "QKVLinear", "RoutingAttention"]
