"""BiFormer: Vision Transformer with Bi-Level Routing Attention.

Paper: Lei Zhu, Xinjiang Wang, Zhanghan Ke, Wayne Zhang, Rynson Lau, "BiFormer: Vision Transformer with Bi-Level
Routing Attention", CVPR 2023, https://arxiv.org/abs/2303.08810.
Official code and weights: https://github.com/rayleizhu/BiFormer (models/biformer.py, models/biformer_stl.py).

Two layouts share the blocks here:

- ``BiFormer`` (T/S/B): overlapping conv stem, conv downsampling, a residual 3x3 depthwise positional conv in every
  block, MLP ratio 3.
- ``BiFormerSTL`` (the Swin-Tiny-layout ablation model): 4x4 patch stem, BatchNorm + 2x2 conv merging, no positional
  conv, MLP ratio 4.

Stages 0-2 use bi-level routing attention (``RoutingAttention``), stage 3 global attention with LePE. Module names
follow the official code, so the released ``{'model': state_dict}`` checkpoints load key for key. ``auto_pad=True``
(the default) pads feature maps to multiples of ``n_win`` inside the attention, as the official dense-prediction
models do; at sizes that divide (224 with ``n_win=7``) it changes nothing, so classification outputs are the
official ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from vizattn.backbones._helpers import (
    ClassifierMixin,
    check_state_dict_keys,
    keep_official_loader,
    load_official_checkpoint,
    unwrap_state_dict,
)
from vizattn.blocks.layers import norms_feed_linears, use_fast_layers
from vizattn.blocks.routing import AttentionLePE, RoutingAttention
from vizattn.kernels.dwconv import dwconv2d_module

__all__ = ["BiFormer", "BiFormerSTL", "BiFormerBlock", "checkpoint_filter_fn"]


def _mlp(dim: int, ratio: float, with_identity: bool) -> nn.Sequential:
    # The official T/S/B MLP keeps an Identity slot (for an unused depthwise conv), so its second Linear is mlp.3;
    # the STL MLP has none (mlp.2). Keeping the slot keeps the checkpoint keys.
    hidden = int(ratio * dim)
    layers = [nn.Linear(dim, hidden)] + ([nn.Identity()] if with_identity else []) + [nn.GELU(), nn.Linear(hidden, dim)]
    return nn.Sequential(*layers)


class BiFormerBlock(nn.Module):
    """Pre-norm transformer block on an NHWC map: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: channels.
        num_heads: heads of the routing attention (``dim // 32`` in the releases).
        n_win, topk, auto_pad: routing attention settings; ``topk=None`` selects global attention with LePE (the
            official ``topk=-2``, 8 heads).
        mlp_ratio: MLP hidden width / dim.
        side_dwconv: LePE kernel size.
        drop_path: stochastic depth rate of both residual branches.
        mlp_identity_slot: keep the official T/S/B MLP layout (``mlp.0``/``mlp.3``) instead of STL's (``mlp.0``/
            ``mlp.2``).
        backend: kernel backend of the routing attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_win: int = 7,
        topk: int | None = 4,
        mlp_ratio: float = 3.0,
        side_dwconv: int = 5,
        drop_path: float = 0.0,
        auto_pad: bool = True,
        mlp_identity_slot: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk is None:
            self.attn = AttentionLePE(dim, num_heads=8, side_dwconv=side_dwconv)
        else:
            self.attn = RoutingAttention(
                dim, num_heads, n_win, topk=topk, side_dwconv=side_dwconv, auto_pad=auto_pad, backend=backend
            )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _mlp(dim, mlp_ratio, mlp_identity_slot)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BiFormerConvBlock(BiFormerBlock):
    """T/S/B block on an NCHW map: a residual 3x3 depthwise positional conv, then :class:`BiFormerBlock` in NHWC."""

    def __init__(self, dim: int, num_heads: int, **kwargs: Any):
        super().__init__(dim, num_heads, **kwargs)
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the blocks' NHWC outputs come back as channels_last maps, whose depthwise conv takes the Triton kernel
        x = x + dwconv2d_module(self.pos_embed, x, backend=self.backend)
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BiFormerSTLStage(nn.Module):
    """A stage of the STL layout: NCHW in and out, blocks in NHWC under ``.blocks`` (the official key level)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            for blk in self.blocks:
                x = blk(x)
        return x.permute(0, 3, 1, 2)


class _BiFormerBase(ClassifierMixin, nn.Module):
    """timm model API shared by both layouts; subclasses build ``downsample_layers``, ``stages`` and ``norm``."""

    downsample_layers: nn.ModuleList
    stages: nn.ModuleList
    norm: nn.Module

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float, in_chans: int) -> None:
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # Norms and biases are excluded by timm's optimizer factory; BiFormer has no other no-decay parameter.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^downsample_layers\.0",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.(?:blocks\.)?(\d+)", None),
                (r"^downsample_layers\.(\d+)", (0,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            if isinstance(stage, BiFormerSTLStage):
                stage.grad_checkpointing = enable

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # Channels-last memory makes every NCHW <-> NHWC permute in the blocks a free view and lets the depthwise
        # convs run their channels-last kernels; the values are those of the official NCHW model.
        x = self.downsample_layers[i](x).contiguous(memory_format=torch.channels_last)
        stage = self.stages[i]
        if self.grad_checkpointing and isinstance(stage, nn.Sequential) and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_features, H/32, W/32), after the final BatchNorm."""
        self._check_input(x)
        for i in range(len(self.stages)):
            x = self._run_stage(i, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (NCHW, before any norm unless ``norm`` and it is the last stage) and the final features.

        Args:
            x: (N, in_chans, H, W) images.
            indices: the last n stages if int, all if None, else the listed stage indices.
            norm: apply the final BatchNorm to the last stage's output if it is taken.
            stop_early: stop after the last stage taken.
            output_fmt: only ``'NCHW'``.
            intermediates_only: return only the list of intermediates.
        """
        if output_fmt != "NCHW":
            raise ValueError(
                f"{type(self).__name__}.forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}."
            )
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        n_run = max_index + 1 if stop_early else len(self.stages)
        intermediates = []
        for i in range(n_run):
            x = self._run_stage(i, x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if n_run - 1 == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one ``indices`` needs (and the norm/head when asked). Returns the indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.downsample_layers = self.downsample_layers[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    @torch.jit.ignore
    def load_pretrained(self, path: str) -> None:
        """Load an official checkpoint file (timm calls this for ``pretrained=True``, file or URL)."""
        load_official_checkpoint(self, path, checkpoint_filter_fn)


class BiFormer(_BiFormerBase):
    """BiFormer-T/S/B (official ``models/biformer.py``).

    Args:
        depths: blocks per stage.
        embed_dims: channels per stage.
        head_dim: channels per routing-attention head (heads = embed_dim // head_dim in stages 0-2).
        mlp_ratios: MLP hidden width / dim per stage.
        n_win: regions per side of every routing-attention map (7 for ImageNet, 16 COCO, 8 ADE20K).
        topks: routed regions per stage; ``None`` means global attention with LePE (the official ``-2``).
        side_dwconv: LePE kernel size.
        auto_pad: pad maps to multiples of ``n_win`` in the attention (any input size); False makes a
            non-divisible size an error, as the official classification model.
        in_chans, num_classes, global_pool, drop_rate, drop_path_rate: as everywhere in timm.
        kernel_backend: backend of the routing-attention op, the positional depthwise convs and the LayerNorms
            (``'auto'``, ``'triton'``, ``'torch'``; 'torch' keeps plain ``nn.LayerNorm`` and ``nn.Linear`` modules, see
            :func:`vizattn.blocks.layers.use_fast_layers`).
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (4, 4, 18, 4),
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        head_dim: int = 32,
        mlp_ratios: tuple[float, ...] = (3, 3, 3, 3),
        n_win: int = 7,
        topks: tuple[int | None, ...] = (1, 4, 16, None),
        side_dwconv: int = 5,
        auto_pad: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kernel_backend: str = "auto",
    ):
        super().__init__()
        _check_config(depths, embed_dims, mlp_ratios, topks, n_win, head_dim)
        c0 = embed_dims[0]
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1),
                    nn.BatchNorm2d(c0 // 2),
                    nn.GELU(),
                    nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1),
                    nn.BatchNorm2d(c0),
                )
            ]
            + [
                nn.Sequential(
                    nn.Conv2d(embed_dims[i], embed_dims[i + 1], 3, stride=2, padding=1),
                    nn.BatchNorm2d(embed_dims[i + 1]),
                )
                for i in range(len(depths) - 1)
            ]
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(
                nn.Sequential(
                    *[
                        BiFormerConvBlock(
                            embed_dims[i],
                            embed_dims[i] // head_dim,
                            n_win=n_win,
                            topk=topks[i],
                            mlp_ratio=mlp_ratios[i],
                            side_dwconv=side_dwconv,
                            drop_path=dpr[start + j],
                            auto_pad=auto_pad,
                            mlp_identity_slot=True,
                            backend=kernel_backend,
                        )
                        for j in range(depth)
                    ]
                )
            )
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.norm = nn.BatchNorm2d(self.num_features)
        self._init_head(num_classes, global_pool, drop_rate, in_chans)
        _fast_layers(self, kernel_backend)


class BiFormerSTL(_BiFormerBase):
    """BiFormer-STL, the Swin-Tiny-layout ablation model (official ``models/biformer_stl.py``).

    Arguments as :class:`BiFormer`; the MLP ratio default is 4 and there is no positional conv.
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        embed_dims: tuple[int, ...] = (96, 192, 384, 768),
        head_dim: int = 32,
        mlp_ratios: tuple[float, ...] = (4, 4, 4, 4),
        n_win: int = 7,
        topks: tuple[int | None, ...] = (1, 4, 16, None),
        side_dwconv: int = 5,
        auto_pad: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kernel_backend: str = "auto",
    ):
        super().__init__()
        _check_config(depths, embed_dims, mlp_ratios, topks, n_win, head_dim)
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, embed_dims[0], 4, stride=4), nn.BatchNorm2d(embed_dims[0]))]
            + [
                nn.Sequential(nn.BatchNorm2d(embed_dims[i]), nn.Conv2d(embed_dims[i], embed_dims[i + 1], 2, stride=2))
                for i in range(len(depths) - 1)
            ]
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = [
                BiFormerBlock(
                    embed_dims[i],
                    embed_dims[i] // head_dim,
                    n_win=n_win,
                    topk=topks[i],
                    mlp_ratio=mlp_ratios[i],
                    side_dwconv=side_dwconv,
                    drop_path=dpr[start + j],
                    auto_pad=auto_pad,
                    mlp_identity_slot=False,
                    backend=kernel_backend,
                )
                for j in range(depth)
            ]
            self.stages.append(BiFormerSTLStage(blocks))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.norm = nn.BatchNorm2d(self.num_features)
        self._init_head(num_classes, global_pool, drop_rate, in_chans)
        _fast_layers(self, kernel_backend)


def _fast_layers(model: nn.Module, backend: str) -> None:
    """vizattn's Linear and LayerNorm modules in place (:func:`~vizattn.blocks.layers.use_fast_layers`); each block's
    second norm feeds only the MLP's first linear layer (the first also feeds LePE's conv, so it keeps float32)."""
    use_fast_layers(model, backend)
    for m in model.modules():
        if isinstance(m, BiFormerBlock):
            norms_feed_linears(m.norm2)


def _check_config(depths, embed_dims, mlp_ratios, topks, n_win, head_dim) -> None:
    lengths = {len(depths), len(embed_dims), len(mlp_ratios), len(topks)}
    if len(lengths) != 1:
        raise ValueError(
            f"BiFormer: depths {depths}, embed_dims {embed_dims}, mlp_ratios {mlp_ratios} and topks {topks} must "
            "have one entry per stage."
        )
    if not isinstance(n_win, int) or n_win < 1:
        raise ValueError(f"BiFormer: n_win must be a positive int, got {n_win!r}.")
    for i, (dim, topk) in enumerate(zip(embed_dims, topks)):
        if topk is not None and not 1 <= topk <= n_win * n_win:
            raise ValueError(f"BiFormer: topks[{i}]={topk} must be in [1, n_win^2 = {n_win * n_win}] or None.")
        if topk is not None and dim % head_dim:
            raise ValueError(f"BiFormer: embed_dims[{i}]={dim} must be a multiple of head_dim={head_dim}.")


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn an official BiFormer checkpoint into this model's state dict.

    Accepts the released ``{'model': state_dict, ...}`` files, ``{'state_dict': ...}`` containers (the official
    dense-prediction loader's first choice) and bare state dicts, with or without a DDP ``module.`` prefix. The key
    names are the official ones, so nothing is renamed. Keys of the official dense-prediction backbone
    (``extra_norms``) and derived buffers are dropped. Raises ValueError when the keys belong to another model.
    """
    sd = unwrap_state_dict(state_dict, keys=("model", "state_dict"))
    sd = {k: v for k, v in sd.items() if not k.startswith("extra_norms.")}
    check_state_dict_keys(sd, model, "BiFormer")
    return sd


def _create_biformer(variant: str, pretrained: bool = False, **kwargs: Any) -> _BiFormerBase:
    cls = BiFormerSTL if variant.startswith("biformer_stl") else BiFormer
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **keep_official_loader(kwargs),
    )


def _cfg(url: str = "", file_name: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        # The OneDrive links all end in '/content'; the (url, file name) pair keeps their cache files apart.
        "url": (url, file_name) if url else "",
        "custom_load": True,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "downsample_layers.0.0",
        "classifier": "head",
        "paper_ids": "arXiv:2303.08810",
        "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        "license": "mit",
        **kwargs,
    }


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"

default_cfgs = generate_default_cfgs(
    {
        "biformer_t.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM"), "biformer_tiny_in1k.pth"),
        "biformer_s.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832"), "biformer_small_in1k.pth"),
        "biformer_b.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO"), "biformer_base_in1k.pth"),
        "biformer_stl.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChSf-m7ujkvx9lIQ1"), "biformer_stl_in1k.pth"),
    }
)


@register_model
def biformer_t(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-T: 13.1M params, 81.4% ImageNet-1k top-1."""
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_t", pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_s(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-S: 25.5M params, 83.8% ImageNet-1k top-1."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_s", pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_b(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-B: 56.8M params, 84.3% ImageNet-1k top-1."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer("biformer_b", pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_stl(pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    """BiFormer-STL (Swin-Tiny layout): 28.4M params, 82.7% ImageNet-1k top-1."""
    model_args = dict(depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768))
    return _create_biformer("biformer_stl", pretrained, **dict(model_args, **kwargs))
