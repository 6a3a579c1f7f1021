"""NAT and DiNAT: Neighborhood Attention Transformer and Dilated Neighborhood Attention Transformer.

Papers: Ali Hassani, Steven Walton, Jiachen Li, Shen Li, Humphrey Shi, "Neighborhood Attention Transformer", CVPR
2023, https://arxiv.org/abs/2204.07143; Ali Hassani, Humphrey Shi, "Dilated Neighborhood Attention Transformer",
https://arxiv.org/abs/2209.15001.
Official code and weights: https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (classification/nat.py,
classification/dinat.py), attention kernels https://github.com/SHI-Labs/NATTEN.

Layout: a two-conv tokenizer (stride 4, no norm or activation between the convs), four levels of pre-norm NA + MLP
layers at widths C * 2^i with a stride-2 conv downsampler after levels 0-2, a final LayerNorm and a linear head over
the mean token. Everything runs channels-last. DiNAT is NAT with a per-layer dilation schedule (every other layer
dilated at levels 0-2). Module names follow the official code (``levels.i.blocks.j.attn.rpb``...), so the released
bare-state-dict checkpoints load key for key.

Any input size runs: a map smaller than ``kernel_size * dilation`` is zero-padded inside the attention module the way
NATTEN <= 0.15 (which trained every released model) did (``auto_pad=True``); at 224 (and 384 for the 384 models) no
padding happens, so the official classification outputs are reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from vizattn.backbones._helpers import (
    ClassifierMixin,
    check_state_dict_keys,
    keep_official_loader,
    load_official_checkpoint,
    resize_rel_pos_bias_tables,
    unwrap_state_dict,
)
from vizattn.blocks.layers import norms_feed_linears, use_fast_layers
from vizattn.blocks.neighborhood import NeighborhoodAttention2d

__all__ = ["NAT", "NATLayer", "NATLevel", "ConvTokenizer", "ConvDownsampler", "checkpoint_filter_fn"]


class ConvTokenizer(nn.Module):
    """Stem: two 3x3 stride-2 convs (no norm or activation between them), then LayerNorm channels-last.

    Shape: (B, in_chans, H, W) -> (B, ceil(ceil(H / 2) / 2), ceil(ceil(W / 2) / 2), embed_dim).
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 64):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 conv (no bias) doubling the channels, then LayerNorm. Channels-last in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATLayer(nn.Module):
    """Pre-norm NA + MLP layer on a channels-last map, with optional layer scale.

    ``x + DropPath(gamma1 * attn(norm1(x)))`` then ``x + DropPath(gamma2 * mlp(norm2(x)))``; without layer scale
    the gammas are absent (not ones), as in the official checkpoints.

    Args:
        dim: channels.
        num_heads: attention heads.
        kernel_size, dilation: neighborhood window side and dilation.
        mlp_ratio: MLP hidden width / dim.
        qkv_bias, qk_scale: attention projection bias and temperature.
        proj_drop: dropout after the attention projection and in the MLP.
        drop_path: stochastic depth rate of both residual branches.
        layer_scale: initial value of ``gamma1``/``gamma2`` (``None``: no layer scale).
        auto_pad, backend: see :class:`vizattn.blocks.NeighborhoodAttention2d`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        auto_pad: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2d(
            dim,
            num_heads,
            kernel_size=kernel_size,
            dilation=dilation,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop,
            auto_pad=auto_pad,
            backend=backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.norm1(x))
        if self.gamma1 is not None:
            attn = self.gamma1 * attn
        x = x + self.drop_path(attn)
        mlp = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            mlp = self.gamma2 * mlp
        return x + self.drop_path(mlp)


class NATLevel(nn.Module):
    """One level: ``blocks`` (NATLayer list) and an optional ``downsample`` applied after them.

    The model calls the two parts separately so that the pre-downsample map can be returned as a feature.
    """

    def __init__(self, blocks: list[NATLayer], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


def _check_config(
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    kernel_size: int,
    dilations: Sequence[Sequence[int]] | None,
) -> None:
    if len(depths) != len(num_heads):
        raise ValueError(f"NAT: depths {tuple(depths)} and num_heads {tuple(num_heads)} need one entry per level.")
    for i, heads in enumerate(num_heads):
        if (embed_dim * 2**i) % heads:
            raise ValueError(f"NAT: level {i} width {embed_dim * 2**i} is not a multiple of num_heads[{i}]={heads}.")
    if not isinstance(kernel_size, int) or kernel_size < 2:
        raise ValueError(f"NAT: kernel_size must be an int >= 2, got {kernel_size!r}.")
    if dilations is not None:
        if len(dilations) != len(depths) or any(len(d) != n for d, n in zip(dilations, depths)):
            raise ValueError(
                f"NAT: dilations must give one value per layer of every level (depths {tuple(depths)}), got "
                f"{[list(d) for d in dilations]}."
            )
        bad = [d for level in dilations for d in level if not isinstance(d, int) or d < 1]
        if bad:
            raise ValueError(f"NAT: dilations must be positive ints, got {bad[0]!r}.")


class NAT(ClassifierMixin, nn.Module):
    """NAT / DiNAT (official ``classification/nat.py``; ``DiNAT`` is this class with ``dilations``).

    Args:
        embed_dim: width C of level 0; level i has C * 2^i channels.
        depths: layers per level.
        num_heads: attention heads per level (32 channels per head in every release).
        mlp_ratio: MLP hidden width / dim.
        kernel_size: neighborhood window side (7; 11 for the 11x11 DiNAT-L).
        dilations: per level, per layer dilation (``None``: all 1, i.e. NAT).
        layer_scale: initial layer-scale value (``None``: no layer scale, no gamma parameters).
        qkv_bias, qk_scale: attention projection bias and temperature (default head_dim ** -0.5).
        auto_pad: zero-pad maps smaller than ``kernel_size * dilation`` inside the attention, as NATTEN <= 0.15 did
            for every official model (any input size works); False makes such maps an error.
        in_chans, num_classes, global_pool: as everywhere in timm.
        drop_rate: dropout before the classifier (the official models have none).
        pos_drop_rate: dropout on the tokens after the stem (the official ``drop_rate``).
        proj_drop_rate: dropout after the attention projection and in the MLP (the official ``drop_rate``).
        drop_path_rate: stochastic depth, linear from 0 over all layers.
        kernel_backend: backend of the neighborhood-attention op and of the LayerNorms (``'auto'``, ``'triton'``,
            ``'torch'``; 'torch' keeps plain ``nn.LayerNorm`` and ``nn.Linear`` modules, see
            :func:`vizattn.blocks.layers.use_fast_layers`).
    """

    def __init__(
        self,
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        layer_scale: float | None = None,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        auto_pad: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kernel_backend: str = "auto",
    ):
        super().__init__()
        _check_config(embed_dim, depths, num_heads, kernel_size, dilations)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.kernel_size = kernel_size
        self.dilations = [list(d) for d in dilations] if dilations is not None else [[1] * n for n in depths]
        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            start = sum(depths[:i])
            blocks = [
                NATLayer(
                    dim,
                    num_heads[i],
                    kernel_size=kernel_size,
                    dilation=self.dilations[i][j],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    proj_drop=proj_drop_rate,
                    drop_path=dpr[start + j],
                    layer_scale=layer_scale,
                    auto_pad=auto_pad,
                    backend=kernel_backend,
                )
                for j in range(depth)
            ]
            downsample = ConvDownsampler(dim) if i < len(depths) - 1 else None
            self.levels.append(NATLevel(blocks, downsample))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"levels.{i}"))
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        use_fast_layers(self, kernel_backend)
        for level in self.levels:  # each block's norms feed the attention's qkv and the MLP's first linear layer
            for block in level.blocks:
                norms_feed_linears(block.norm1, block.norm2)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def stages(self) -> nn.ModuleList:
        """The levels, under timm's usual name (the checkpoint keys say ``levels``)."""
        return self.levels

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official code excludes every 'rpb' from weight decay (norms and biases are excluded by timm anyway).
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^levels\.(\d+)"
            if coarse
            else [
                (r"^levels\.(\d+)\.blocks\.(\d+)", None),
                # a level's downsampler runs after its last block
                (r"^levels\.(\d+)\.downsample", (99998,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for level in self.levels:
            level.grad_checkpointing = enable

    def _levels(self, x: torch.Tensor, n_run: int):
        """Yield each level's pre-downsample map (channels-last) for the first ``n_run`` levels."""
        x = self.pos_drop(self.patch_embed(x))
        for i in range(n_run):
            level = self.levels[i]
            x = level.forward_blocks(x)
            yield x
            if level.downsample is not None and i < n_run - 1:
                x = level.downsample(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) (sides rounded up), after the final LayerNorm."""
        self._check_input(x)
        *_, x = self._levels(x, len(self.levels))
        return self.norm(x).permute(0, 3, 1, 2)

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
        """Level outputs before their downsampler (strides 4, 8, 16, 32) and the final features.

        Args:
            x: (B, in_chans, H, W) images.
            indices: the last n levels if int, all if None, else the listed level indices.
            norm: apply the final LayerNorm to the last level's output if it is taken.
            stop_early: stop after the last level taken.
            output_fmt: ``'NCHW'`` or ``'NHWC'`` (the model's native layout) for the intermediates.
            intermediates_only: return only the list of intermediates.

        Returns:
            The intermediates, or (final features in NCHW as :meth:`forward_features`, intermediates).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(
                f"{type(self).__name__}.forward_intermediates: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}."
            )
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        last = len(self.levels) - 1
        n_run = max_index + 1 if stop_early else len(self.levels)
        intermediates = []
        for i, feat in enumerate(self._levels(x, n_run)):
            if i in take_indices:
                y = self.norm(feat) if norm and i == last else feat
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
            x = feat
        if intermediates_only:
            return intermediates
        if n_run - 1 == last:
            x = self.norm(x)
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the levels after the last one ``indices`` needs (and the norm/head when asked). Returns the indices."""
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        prune_end = max_index < len(self.levels) - 1
        self.levels = self.levels[: max_index + 1]
        self.levels[-1].downsample = None
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


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn an official NAT / DiNAT checkpoint into this model's state dict.

    The released classification files are bare state dicts; ``{'model': ...}`` and ``{'state_dict': ...}``
    containers and DDP ``module.`` prefixes are unwrapped too. Key names are the official ones, so nothing is
    renamed. The per-output norms of the official dense-prediction backbones (``norm0``..``norm3``) are dropped.
    A relative position bias table of another kernel size is resized by bicubic interpolation (how the official
    11x11 DiNAT-L weights were made from the 7x7 ones); ``rpb`` does not depend on the dilation, so any schedule
    loads the same weights. Raises ValueError when the keys belong to another model.
    """
    sd = unwrap_state_dict(state_dict, keys=("model", "state_dict"))
    sd = {k: v for k, v in sd.items() if not k.startswith(("norm0.", "norm1.", "norm2.", "norm3."))}
    sd = resize_rel_pos_bias_tables(sd, model, suffix=".attn.rpb")
    check_state_dict_keys(sd, model, "NAT/DiNAT")
    return sd


def _create_nat(variant: str, pretrained: bool = False, **kwargs: Any) -> NAT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        NAT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **keep_official_loader(kwargs),
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "custom_load": True,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        "paper_ids": "arXiv:2204.07143",
        "paper_name": "Neighborhood Attention Transformer",
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        "license": "mit",
        **kwargs,
    }


def _dinat_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return _cfg(url, paper_ids="arXiv:2209.15001", paper_name="Dilated Neighborhood Attention Transformer", **kwargs)


_NAT_URL = "https://shi-labs.com/projects/nat/checkpoints/CLS/{}.pth"
_DINAT_URL = "https://shi-labs.com/projects/dinat/checkpoints/{}.pth"
# The 384 models were fine-tuned with crop_pct 1.0 (configs/dinat_large_384.yml); the crop used for the reported
# 384 accuracy is not recorded (validate.py defaults to 0.875), so the fine-tuning value is used.
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)

default_cfgs = generate_default_cfgs(
    {
        "nat_mini.in1k": _cfg(_NAT_URL.format("nat_mini")),
        "nat_tiny.in1k": _cfg(_NAT_URL.format("nat_tiny")),
        "nat_small.in1k": _cfg(_NAT_URL.format("nat_small")),
        "nat_base.in1k": _cfg(_NAT_URL.format("nat_base")),
        "dinat_mini.in1k": _dinat_cfg(_DINAT_URL.format("imagenet1k/dinat_mini_in1k_224")),
        "dinat_tiny.in1k": _dinat_cfg(_DINAT_URL.format("imagenet1k/dinat_tiny_in1k_224")),
        "dinat_small.in1k": _dinat_cfg(_DINAT_URL.format("imagenet1k/dinat_small_in1k_224")),
        "dinat_base.in1k": _dinat_cfg(_DINAT_URL.format("imagenet1k/dinat_base_in1k_224")),
        "dinat_large.in22k_ft_in1k": _dinat_cfg(_DINAT_URL.format("imagenet1k/dinat_large_in22k_in1k_224")),
        "dinat_large.in22k": _dinat_cfg(_DINAT_URL.format("imagenet22k/dinat_large_in22k_224"), num_classes=21841),
        "dinat_large_384.in22k_ft_in1k": _dinat_cfg(_DINAT_URL.format("imagenet1k/dinat_large_in22k_in1k_384"), **_384),
        "dinat_large_384_11x11.in22k_ft_in1k": _dinat_cfg(
            _DINAT_URL.format("imagenet1k/dinat_large_in22k_in1k_384_11x11"), **_384
        ),
    }
)


def _alternating(depths: Sequence[int], dilation: Sequence[int]) -> list[list[int]]:
    """DiNAT's schedule: layer j of level i has dilation 1 if j is even, ``dilation[i]`` if odd."""
    return [[1 if j % 2 == 0 else d for j in range(n)] for n, d in zip(depths, dilation)]


_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0)
_TINY = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0)
_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0)
_BASE = dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0)
_LARGE = dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0)
# Largest dilation per level (every other layer); k * d equals the 224 (or 384) feature map of every level.
_DIL_224 = (8, 4, 2, 1)
_DIL_384 = (13, 6, 3, 1)

# The official training used drop_path_rate 0.2 (mini, tiny), 0.3 (small), 0.5 (base), 0.35 (large fine-tunes),
# 0.2 (large 22K); as for every timm model it defaults to 0 here and is passed when training.


@register_model
def nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: 20.0M params, 81.8% ImageNet-1k top-1."""
    return _create_nat("nat_mini", pretrained, **dict(_MINI, **kwargs))


@register_model
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: 27.9M params, 83.2% ImageNet-1k top-1."""
    return _create_nat("nat_tiny", pretrained, **dict(_TINY, **kwargs))


@register_model
def nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small: 50.7M params, 83.7% ImageNet-1k top-1 (layer scale 1e-5)."""
    return _create_nat("nat_small", pretrained, **dict(_SMALL, layer_scale=1e-5, **kwargs))


@register_model
def nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base: 89.8M params, 84.3% ImageNet-1k top-1 (layer scale 1e-5)."""
    return _create_nat("nat_base", pretrained, **dict(_BASE, layer_scale=1e-5, **kwargs))


@register_model
def dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini: 20.0M params, 81.8% ImageNet-1k top-1."""
    model_args = dict(_MINI, dilations=_alternating(_MINI["depths"], _DIL_224))
    return _create_nat("dinat_mini", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny: 27.9M params, 82.7% ImageNet-1k top-1."""
    model_args = dict(_TINY, dilations=_alternating(_TINY["depths"], _DIL_224))
    return _create_nat("dinat_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small: 50.7M params, 83.8% ImageNet-1k top-1 (no layer scale, unlike NAT-Small)."""
    model_args = dict(_SMALL, dilations=_alternating(_SMALL["depths"], _DIL_224))
    return _create_nat("dinat_small", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base: 89.8M params, 84.4% ImageNet-1k top-1 (layer scale 1e-5)."""
    model_args = dict(_BASE, layer_scale=1e-5, dilations=_alternating(_BASE["depths"], _DIL_224))
    return _create_nat("dinat_base", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large, ImageNet-22k pre-trained: 200.9M params, 86.6% ImageNet-1k top-1 at 224."""
    model_args = dict(_LARGE, dilations=_alternating(_LARGE["depths"], _DIL_224))
    return _create_nat("dinat_large", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384 (dilations 13/6/3/1): 200.9M params, 87.4% ImageNet-1k top-1."""
    model_args = dict(_LARGE, dilations=_alternating(_LARGE["depths"], _DIL_384))
    return _create_nat("dinat_large_384", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large_384_11x11(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384 with 11x11 windows (the 224 dilation schedule): 201.1M params, 87.5% top-1."""
    model_args = dict(_LARGE, kernel_size=11, dilations=_alternating(_LARGE["depths"], _DIL_224))
    return _create_nat("dinat_large_384_11x11", pretrained, **dict(model_args, **kwargs))
