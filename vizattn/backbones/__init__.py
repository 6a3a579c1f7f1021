"""timm model files, one per family. Importing this package registers every vizattn model with timm."""

from __future__ import annotations

import timm

from vizattn.backbones import biformer, cnn_attention, nat, van  # noqa: F401  (registers the models)

__all__ = ["list_models", "FAMILIES"]

# timm keys its registry by the defining module's last name component; ours never collide with timm's modules.
FAMILIES = ("biformer", "nat", "van", "cnn_attention")


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Names of the models vizattn registers with timm (optionally filtered with a wildcard, e.g. ``'biformer*'``)."""
    return timm.list_models(filter=filter, module=list(FAMILIES), pretrained=pretrained)
