"""Attention blocks: nn.Modules a user can drop into their own network, one file per family."""

from vizattn.blocks.routing import AttentionLePE, QKVLinear, RoutingAttention

__all__ = ["AttentionLePE", "QKVLinear", "RoutingAttention"]
