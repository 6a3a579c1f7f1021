"""timm CNNs with light attention modules inserted: ELA in ResNet / MobileNetV2, ULSAM in MobileNetV1 / V2.

Papers: Wei Xu, Yi Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", 2024,
https://arxiv.org/abs/2403.01123 (no official code or weights); Rajat Saini, Nandan Kumar Jha, Bedanta Das, Sparsh
Mittal, C. Krishna Mohan, "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural
Networks", WACV 2020, https://arxiv.org/abs/2006.15102 (https://github.com/Nandan91/ULSAM, no weights).

The host networks are timm's own ``resnet18`` / ``resnet50`` / ``mobilenetv2_100`` / ``mobilenetv1_100`` with every
host key unchanged, so timm's ImageNet weights for the host load (``pretrained_cfg_overlay=dict(file=...)``) and the
attention modules start from their init:
- ELA sits in timm's attention hooks: in every ResNet block after the last conv + BN, before the shortcut add
  (``layerX.Y.se``), and in every MobileNetV2 block after the depthwise conv + BN + act, before the linear projection
  (``blocks.X.Y.se``). These are CA's / SE's positions; that the paper uses the same ones in every block is
  **unverified** (spec ela.md §4), as is the ELA variant of the ResNet results (B used here; the paper reports
  MobileNetV2 with ELA-S).
- ULSAM (4 subspaces, the paper's best setting) is appended to a stage, after its last block: MobileNetV1 at the end of
  the 14x14x512 stage (``blocks.3.6``), MobileNetV2 at the end of the last 7x7 stage (``blocks.6.1``). The paper's
  positions are **inferred** from its FLOP deltas only (spec ulsam.md §3); which of the 14x14 layers it used is not
  known.

The models expose timm's features with four levels, strides 4/8/16/32 (the stride-2 stem level of the hosts is left
out, as in dense-prediction backbones), and use ``zero_init_last=False`` for ResNet so that ELA sees a non-zero input
(and receives gradients) from the first step.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, resolve_bn_args, round_channels
from timm.models._features import feature_take_indices
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from vizattn.backbones._helpers import (
    check_state_dict_keys,
    keep_official_loader,
    load_official_checkpoint,
    unwrap_state_dict,
)
from vizattn.blocks.ela import ELA
from vizattn.blocks.ulsam import ULSAM

__all__ = ["AttentionResNet", "AttentionMobileNet", "checkpoint_filter_fn"]


def _four_level_feature_info(feature_info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The host's feature levels without the stride-2 stem level."""
    return [dict(info) for info in feature_info if info["reduction"] >= 4]


class _FourLevels:
    """Feature interface over the host's levels 1..4 (index i here is host index i + 1)."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at strides 4, 8, 16, 32 (NCHW) and the final features; as timm's host otherwise."""
        if output_fmt != "NCHW":
            raise ValueError(
                f"{type(self).__name__}.forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}."
            )
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        return super().forward_intermediates(
            x,
            indices=[i + 1 for i in take_indices],
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
        )

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last level ``indices`` needs (and the head when asked). Returns the indices."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        super().prune_intermediate_layers([i + 1 for i in take_indices], prune_norm=prune_norm, prune_head=prune_head)
        return take_indices

    @torch.jit.ignore
    def load_pretrained(self, path: str) -> None:
        """Load a checkpoint of this model or of its timm host (timm calls this for ``pretrained=True``)."""
        load_official_checkpoint(self, path, checkpoint_filter_fn)


class AttentionResNet(_FourLevels, ResNet):
    """timm's ResNet (attention modules through ``block_args=dict(attn_layer=...)``) with four feature levels."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.feature_info = _four_level_feature_info(self.feature_info)

    @property
    def stages(self) -> nn.ModuleList:
        """``layer1``..``layer4`` (the ones pruning left empty, or replaced by ``nn.Identity`` as timm 1.0.29 does,
        excluded)."""
        layers = [getattr(self, f"layer{i}") for i in range(1, 5)]
        return nn.ModuleList(layer for layer in layers if not isinstance(layer, nn.Identity) and len(layer))


class AttentionMobileNet(_FourLevels, EfficientNet):
    """timm's EfficientNet-family network (MobileNetV1 / V2) with four feature levels; ``append`` adds a module
    (ULSAM) at the end of the listed stages of ``blocks``, after the host's blocks so their keys are unchanged."""

    def __init__(self, append: Mapping[int, nn.Module] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        for stage, module in (append or {}).items():
            self.blocks[stage].append(module)
        self.feature_info = _four_level_feature_info(self.feature_info)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last level ``indices`` needs, the head conv and the classifier (timm's rule)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        end = self.feature_info[max_index]["stage"]
        prune_end = prune_norm or prune_head or end < len(self.blocks)
        self.blocks = self.blocks[:end]
        if prune_end:
            self.conv_head = nn.Identity()
            self.bn2 = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    @property
    def stages(self) -> nn.ModuleList:
        """The ``blocks`` stages grouped per feature level (levels emptied by pruning excluded)."""
        ends = [info["stage"] for info in self.feature_info]
        starts = [0, *ends[:-1]]
        return nn.ModuleList(nn.Sequential(*self.blocks[s:e]) for s, e in zip(starts, ends) if s < len(self.blocks))


def _attention_keys(model: nn.Module) -> set[str]:
    return {
        f"{name}.{key}"
        for name, module in model.named_modules()
        if isinstance(module, (ELA, ULSAM))
        for key in module.state_dict()
    }


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn a checkpoint of this model, or of its timm host network, into this model's state dict.

    ``{'model': ...}`` / ``{'state_dict': ...}`` containers and DDP prefixes are unwrapped. A host checkpoint (no ELA /
    ULSAM keys at all, e.g. timm's ``resnet50`` weights) gets the model's current attention parameters, so the
    attention modules start from their init. Raises ValueError when the keys belong to another network.
    """
    sd = unwrap_state_dict(state_dict, keys=("model", "state_dict"))
    attn_keys = _attention_keys(model)
    if not attn_keys & set(sd):
        own = model.state_dict()
        sd.update({k: own[k] for k in attn_keys})
    check_state_dict_keys(sd, model, "timm CNN + ELA/ULSAM", ignore=(model.pretrained_cfg["classifier"] + ".",))
    return sd


def _create(cls: type, variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **keep_official_loader(kwargs),
    )


def _mobilenet_kwargs(arch_def: list[list[str]], num_features: int, **kwargs: Any) -> dict[str, Any]:
    """timm's ``_gen_mobilenet_v1`` / ``_gen_mobilenet_v2`` model kwargs (multipliers 1.0) for ``arch_def``."""
    return dict(
        block_args=decode_arch_def(arch_def),
        num_features=num_features,
        stem_size=32,
        round_chs_fn=partial(round_channels, multiplier=1.0),
        norm_layer=kwargs.pop("norm_layer", None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, "relu6"),
        **kwargs,
    )


# timm's mobilenetv2_100 / mobilenetv1_100 arch strings.
_MBV2 = [
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s2_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]
_MBV1 = [
    ["dsa_r1_k3_s1_c64"],
    ["dsa_r2_k3_s2_c128"],
    ["dsa_r2_k3_s2_c256"],
    ["dsa_r6_k3_s2_c512"],
    ["dsa_r2_k3_s2_c1024"],
]


def _with_se(arch_def: list[list[str]]) -> list[list[str]]:
    # An se ratio makes timm's builder instantiate se_layer in the block; ELA ignores the ratio (no rd_ratio argument).
    return [[f"{block}_se0.25" for block in stage] for stage in arch_def]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "custom_load": True,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        **kwargs,
    }


_ELA = dict(paper_ids="arXiv:2403.01123", paper_name="ELA: Efficient Local Attention for Deep CNNs")
_ULSAM = dict(
    paper_ids="arXiv:2006.15102",
    paper_name="ULSAM: Ultra-Lightweight Subspace Attention Module",
    origin_url="https://github.com/Nandan91/ULSAM",
)
_RESNET = dict(first_conv="conv1", classifier="fc", **_ELA)
_MOBILENET = dict(first_conv="conv_stem", classifier="classifier")

default_cfgs = generate_default_cfgs(
    {
        "resnet18_ela_b.untrained": _cfg(**_RESNET),
        "resnet50_ela_b.untrained": _cfg(**_RESNET),
        "mobilenetv2_100_ela_s.untrained": _cfg(**_MOBILENET, **_ELA),
        "mobilenetv1_100_ulsam.untrained": _cfg(**_MOBILENET, **_ULSAM),
        "mobilenetv2_100_ulsam.untrained": _cfg(**_MOBILENET, **_ULSAM),
    }
)


@register_model
def resnet18_ela_b(pretrained: bool = False, **kwargs: Any) -> AttentionResNet:
    """ResNet-18 with ELA-B in every block (host: timm ``resnet18``)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), block_args=dict(attn_layer=partial(ELA, variant="B")))
    return _create(AttentionResNet, "resnet18_ela_b", pretrained, **dict(model_args, zero_init_last=False, **kwargs))


@register_model
def resnet50_ela_b(pretrained: bool = False, **kwargs: Any) -> AttentionResNet:
    """ResNet-50 with ELA-B in every block (host: timm ``resnet50``)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer=partial(ELA, variant="B")))
    return _create(AttentionResNet, "resnet50_ela_b", pretrained, **dict(model_args, zero_init_last=False, **kwargs))


@register_model
def mobilenetv2_100_ela_s(pretrained: bool = False, **kwargs: Any) -> AttentionMobileNet:
    """MobileNetV2-1.0 with ELA-S in every block, on the depthwise output (host: timm ``mobilenetv2_100``)."""
    model_args = _mobilenet_kwargs(_with_se(_MBV2), 1280, se_layer=partial(ELA, variant="S"), **kwargs)
    return _create(AttentionMobileNet, "mobilenetv2_100_ela_s", pretrained, **model_args)


@register_model
def mobilenetv1_100_ulsam(pretrained: bool = False, **kwargs: Any) -> AttentionMobileNet:
    """MobileNetV1-1.0 with ULSAM (g = 4) after the last 14x14x512 layer (host: timm ``mobilenetv1_100``)."""
    model_args = _mobilenet_kwargs(_MBV1, 0, append={3: ULSAM(512, 4)}, **kwargs)
    return _create(AttentionMobileNet, "mobilenetv1_100_ulsam", pretrained, **model_args)


@register_model
def mobilenetv2_100_ulsam(pretrained: bool = False, **kwargs: Any) -> AttentionMobileNet:
    """MobileNetV2-1.0 with ULSAM (g = 4) after the last 7x7 block (host: timm ``mobilenetv2_100``)."""
    model_args = _mobilenet_kwargs(_MBV2, 1280, append={6: ULSAM(320, 4)}, **kwargs)
    return _create(AttentionMobileNet, "mobilenetv2_100_ulsam", pretrained, **model_args)
