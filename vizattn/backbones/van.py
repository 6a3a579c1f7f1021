"""VAN: Visual Attention Network (large kernel attention).

Paper: Meng-Hao Guo, Cheng-Ze Lu, Zheng-Ning Liu, Ming-Ming Cheng, Shi-Min Hu, "Visual Attention Network", CVMJ
2023, https://arxiv.org/abs/2202.09741.
Official code and weights: https://github.com/Visual-Attention-Network/VAN-Classification (``models/van.py``);
ImageNet-22k and VAN-B4 weights as converted by OpenMMLab (mmpretrain ``configs/van``).

Layout: four stages, each an overlapping patch embedding (strided conv + BatchNorm; 7x7 stride 4, then 3x3 stride 2),
BatchNorm pre-norm blocks of large kernel attention and a depthwise-conv MLP with per-channel layer scale, and a
LayerNorm (eps 1e-6) over the stage's tokens. Everything runs NCHW. The head averages the LayerNorm'd last-stage
tokens. Module names are the official ones (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, ``head``), so the
released ``{'state_dict': ...}`` files load key for key; mmpretrain-format files are mapped back to them.

Any input size runs: every conv is padded, stage maps are ceil(H / 4), then halved (rounding up) per stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
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
from vizattn.blocks.layers import pointwise_conv
from vizattn.blocks.lka import VANAttention
from vizattn.kernels.dwconv import dwconv2d_module
from vizattn.kernels.scaled_add import scaled_add

__all__ = ["VAN", "VANBlock", "VANMlp", "DWConv", "OverlapPatchEmbed", "checkpoint_filter_fn"]


class DWConv(nn.Module):
    """3x3 depthwise conv with bias, wrapped one level deep to keep the official key (``mlp.dwconv.dwconv``).

    It runs through :func:`vizattn.kernels.dwconv.dwconv2d_module`: on CUDA with channels_last maps the Triton kernel
    (``backend='auto'``), elsewhere the ``nn.Conv2d`` itself.
    """

    def __init__(self, dim: int, backend: str = "auto"):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dwconv2d_module(self.dwconv, x, backend=self.backend)


class VANMlp(nn.Module):
    """``fc2(drop(GELU(dwconv(fc1(x)))))`` with 1x1 convs; the depthwise conv comes before the activation.

    Shape: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, kernel_backend: str = "auto"):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.dwconv = DWConv(hidden_dim, kernel_backend)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.dwconv.backend
        x = self.drop(self.act(self.dwconv(pointwise_conv(self.fc1, x, backend))))
        return self.drop(pointwise_conv(self.fc2, x, backend))


class VANBlock(nn.Module):
    """BatchNorm pre-norm block: ``x + DropPath(ls1 * attn(norm1(x)))``, then ``x + DropPath(ls2 * mlp(norm2(x)))``.

    Args:
        dim: channels.
        mlp_ratio: MLP hidden width / dim (the hidden width is ``int(dim * mlp_ratio)``).
        drop: dropout in the MLP.
        drop_path: stochastic depth rate of both residual branches.
        layer_scale_init_value: initial value of the per-channel ``layer_scale_1`` / ``layer_scale_2`` (1e-2).
        kernel_backend: backend of the depthwise convs, LKA's and the MLP's, of the layer-scale residuals and of
            the 1x1 convs (``'auto'``, ``'triton'``, ``'torch'``).

    Shape: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-2,
        kernel_backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = VANAttention(dim, backend=kernel_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = VANMlp(dim, int(dim * mlp_ratio), drop=drop, kernel_backend=kernel_backend)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.kernel_backend = kernel_backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._residual(x, self.layer_scale_1, self.attn(self.norm1(x)))
        return self._residual(x, self.layer_scale_2, self.mlp(self.norm2(x)))

    def _residual(self, x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x + drop_path(scale * y)``; where no path is dropped, one :func:`~vizattn.kernels.scaled_add.scaled_add`
        (one pass over the maps forward and one backward on CUDA channels_last maps)."""
        if isinstance(self.drop_path, nn.Identity) or not self.training:
            return scaled_add(x, scale, y, backend=self.kernel_backend)
        return x + self.drop_path(scale[:, None, None] * y)


class OverlapPatchEmbed(nn.Module):
    """Conv (kernel k, stride s, padding k // 2, bias) then BatchNorm.

    Shape: (B, in_chans, H, W) -> (B, embed_dim, ceil(H / s), ceil(W / s)) for odd k.
    """

    def __init__(self, patch_size: int = 7, stride: int = 4, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _layer_norm_nchw(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stage-end LayerNorm over channels of an NCHW map (the official code normalises the flattened tokens)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VAN(ClassifierMixin, nn.Module):
    """VAN (official ``models/van.py`` ``VAN``).

    Args:
        embed_dims: channels of the four stages.
        mlp_ratios: MLP hidden width / dim per stage.
        depths: blocks per stage.
        in_chans, num_classes, global_pool: as everywhere in timm.
        drop_rate: dropout inside the MLPs (the official ``drop_rate``; the official head has no dropout).
        drop_path_rate: stochastic depth, linear from 0 over all blocks.
        norm_eps: eps of the stage-end LayerNorms (1e-6 in every classification release).
        layer_scale_init_value: initial layer scale (1e-2).
        kernel_backend: backend of the depthwise convolutions, LKA's and the MLP's, of the layer-scale residuals and
            of the 1x1 convs (``'auto'``, ``'triton'``, ``'torch'``; see :func:`vizattn.kernels.dwconv.lka_spatial`,
            ``dwconv2d_module``, :func:`vizattn.kernels.scaled_add.scaled_add` and
            :func:`vizattn.blocks.layers.pointwise_conv`; 'torch' runs PyTorch's modules and ops).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        layer_scale_init_value: float = 1e-2,
        kernel_backend: str = "auto",
    ):
        super().__init__()
        if not len(embed_dims) == len(mlp_ratios) == len(depths):
            raise ValueError(
                f"VAN: embed_dims {tuple(embed_dims)}, mlp_ratios {tuple(mlp_ratios)} and depths {tuple(depths)} "
                f"need one entry per stage."
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_stages = len(depths)
        self.grad_checkpointing = False
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.feature_info = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            start = sum(depths[:i])
            self.add_module(
                f"patch_embed{i + 1}",
                OverlapPatchEmbed(
                    patch_size=7 if i == 0 else 3,
                    stride=4 if i == 0 else 2,
                    in_chans=in_chans if i == 0 else embed_dims[i - 1],
                    embed_dim=dim,
                ),
            )
            blocks = [
                VANBlock(dim, mlp_ratios[i], drop_rate, dpr[start + j], layer_scale_init_value, kernel_backend)
                for j in range(depth)
            ]
            self.add_module(f"block{i + 1}", nn.ModuleList(blocks))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dim, eps=norm_eps))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"norm{i + 1}"))
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
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
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stage(self, i: int) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
        return getattr(self, f"patch_embed{i + 1}"), getattr(self, f"block{i + 1}"), getattr(self, f"norm{i + 1}")

    @property
    def stages(self) -> nn.ModuleList:
        """Per stage ``(patch_embed, blocks, norm)``, under timm's usual name (the checkpoint keys are flat)."""
        return nn.ModuleList(nn.ModuleList(self._stage(i)) for i in range(self.num_stages))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official list names parameters VAN does not have; norms and biases are excluded by timm anyway.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed1\.",
            blocks=r"^(?:patch_embed|block|norm)(\d+)"
            if coarse
            else [
                (r"^block(\d+)\.(\d+)", None),
                # a stage's patch embedding runs before its first block, its norm after its last one
                (r"^patch_embed(\d+)", (-1,)),
                (r"^norm(\d+)", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _stages(self, x: torch.Tensor, n_run: int) -> Iterator[torch.Tensor]:
        """Yield each stage's output (after its LayerNorm, NCHW) for the first ``n_run`` stages."""
        for i in range(n_run):
            patch_embed, blocks, norm = self._stage(i)
            # channels_last between blocks: the depthwise convs of LKA then take the channels_last Triton kernels on
            # CUDA (3x faster than PyTorch's best layout for the dilated 7x7), the 1x1 convs cuDNN's NHWC GEMMs, and
            # the stage-end LayerNorm reads a view; the values are those of the NCHW model
            x = patch_embed(x).contiguous(memory_format=torch.channels_last)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(blocks, x)
            else:
                for blk in blocks:
                    x = blk(x)
            x = _layer_norm_nchw(norm, x)
            yield x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) (sides rounded up), after the last stage's norm."""
        self._check_input(x)
        *_, x = self._stages(x, self.num_stages)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
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
        """Stage outputs (strides 4, 8, 16, 32) and the final features.

        Every intermediate is its stage's output after the stage's LayerNorm ``norm{i}``, which is what the official
        dense-prediction backbone returns; there is no separate final norm, so ``norm`` changes nothing.

        Args:
            x: (B, in_chans, H, W) images.
            indices: the last n stages if int, all if None, else the listed stage indices.
            norm: accepted for timm's interface (see above).
            stop_early: stop after the last stage taken.
            output_fmt: ``'NCHW'`` (the model's native layout) or ``'NHWC'``.
            intermediates_only: return only the list of intermediates.

        Returns:
            The intermediates, or (final features as :meth:`forward_features`, intermediates).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(
                f"{type(self).__name__}.forward_intermediates: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}."
            )
        self._check_input(x)
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        n_run = max_index + 1 if stop_early else self.num_stages
        intermediates = []
        for i, feat in enumerate(self._stages(x, n_run)):
            if i in take_indices:
                intermediates.append(feat if output_fmt == "NCHW" else feat.permute(0, 2, 3, 1))
            x = feat
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one ``indices`` needs (and the head when asked). Returns the indices.

        The stage norms belong to the stage outputs (see :meth:`forward_intermediates`), so ``prune_norm`` keeps them.
        """
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"block{i + 1}", f"norm{i + 1}"):
                delattr(self, name)
        prune_end = max_index < self.num_stages - 1
        self.num_stages = max_index + 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    @torch.jit.ignore
    def load_pretrained(self, path: str) -> None:
        """Load an official checkpoint file (timm calls this for ``pretrained=True``, file or URL)."""
        load_official_checkpoint(self, path, checkpoint_filter_fn)


# mmpretrain's converter (tools/model_converters/van2mmpretrain.py) applied to the official keys, inverted.
_MMPRETRAIN_TO_OFFICIAL = (
    (r"^head\.fc\.", "head."),
    (r"^(patch_embed\d+)\.projection\.", r"\1.proj."),
    (r"^blocks(\d+)\.", r"block\1."),
    (r"\.spatial_gating_unit\.DW_conv\.", ".spatial_gating_unit.conv0."),
    (r"\.spatial_gating_unit\.DW_D_conv\.", ".spatial_gating_unit.conv_spatial."),
    (r"\.mlp\.dwconv\.(weight|bias)$", r".mlp.dwconv.dwconv.\1"),
)


def _from_mmpretrain(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("backbone.")
        for pattern, repl in _MMPRETRAIN_TO_OFFICIAL:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn an official VAN checkpoint into this model's state dict.

    The released files hold the weights under ``state_dict`` (``{'model': ...}`` containers, bare state dicts and
    DDP ``module.`` prefixes are accepted too); their keys are the official names, kept by this model. mmpretrain
    files (``backbone.blocks1.0...``, ``head.fc.*``, as the ImageNet-22k and VAN-B4 weights are published by
    OpenMMLab) are mapped back to the official names. Raises ValueError when the keys belong to another model.
    """
    sd = unwrap_state_dict(state_dict, keys=("state_dict", "model"))
    if any(k.startswith("backbone.") for k in sd):
        sd = _from_mmpretrain(sd)
    check_state_dict_keys(sd, model, "VAN")
    return sd


def _create_van(variant: str, pretrained: bool = False, **kwargs: Any) -> VAN:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        VAN,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **keep_official_loader(kwargs),
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    # Official training and evaluation resolved the data config from timm 0.4.12's vision_transformer._cfg:
    # mean = std = 0.5, crop 0.9, bicubic (spec §3).
    return {
        "url": url,
        "custom_load": True,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed1.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2202.09741",
        "paper_name": "Visual Attention Network",
        "origin_url": "https://github.com/Visual-Attention-Network/VAN-Classification",
        "license": "apache-2.0",
        **kwargs,
    }


_HF = "https://huggingface.co/Visual-Attention-Network/{}-original/resolve/main/{}.pth.tar"
_MM = "https://download.openmmlab.com/mmclassification/v0/van/{}.pth"

default_cfgs = generate_default_cfgs(
    {
        "van_b0.in1k": _cfg(_HF.format("VAN-Tiny", "van_tiny_754")),
        "van_b1.in1k": _cfg(_HF.format("VAN-Small", "van_small_811")),
        "van_b2.in1k": _cfg(_HF.format("VAN-Base", "van_base_828")),
        "van_b3.in1k": _cfg(_HF.format("VAN-Large", "van_large_839")),
        # B4-B6: the official files are on Tsinghua Cloud only; these are OpenMMLab's conversions of them.
        "van_b4.in1k": _cfg(_MM.format("van-b4_3rdparty_in1k_20220909-f4665b92")),
        "van_b4.in22k": _cfg(_MM.format("van-b4_3rdparty_in21k_20220909-db926b18"), num_classes=21841),
        "van_b5.in22k": _cfg(_MM.format("van-b5_3rdparty_in21k_20220909-18e904e3"), num_classes=21841),
        "van_b6.in22k": _cfg(_MM.format("van-b6_3rdparty_in21k_20220909-96c2cb3a"), num_classes=21841),
    }
)

_RATIOS = (8, 8, 4, 4)
_WIDE = (64, 128, 320, 512)

# The official training used drop_path_rate 0.1 (b0, b1, b2) and 0.2 (b3); as for every timm model it defaults to 0
# here and is passed when training.


@register_model
def van_b0(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B0 (VAN-Tiny): 4.11M params, 75.4% ImageNet-1k top-1."""
    model_args = dict(embed_dims=(32, 64, 160, 256), mlp_ratios=_RATIOS, depths=(3, 3, 5, 2))
    return _create_van("van_b0", pretrained, **dict(model_args, **kwargs))


@register_model
def van_b1(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B1 (VAN-Small): 13.86M params, 81.1% ImageNet-1k top-1."""
    model_args = dict(embed_dims=_WIDE, mlp_ratios=_RATIOS, depths=(2, 2, 4, 2))
    return _create_van("van_b1", pretrained, **dict(model_args, **kwargs))


@register_model
def van_b2(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B2 (VAN-Base): 26.58M params, 82.8% ImageNet-1k top-1."""
    model_args = dict(embed_dims=_WIDE, mlp_ratios=_RATIOS, depths=(3, 3, 12, 3))
    return _create_van("van_b2", pretrained, **dict(model_args, **kwargs))


@register_model
def van_b3(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B3 (VAN-Large): 44.77M params, 83.9% ImageNet-1k top-1."""
    model_args = dict(embed_dims=_WIDE, mlp_ratios=_RATIOS, depths=(3, 5, 27, 3))
    return _create_van("van_b3", pretrained, **dict(model_args, **kwargs))


@register_model
def van_b4(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B4: 60.28M params, 84.1% ImageNet-1k top-1 (ImageNet-1k and ImageNet-22k weights)."""
    model_args = dict(embed_dims=_WIDE, mlp_ratios=_RATIOS, depths=(3, 6, 40, 3))
    return _create_van("van_b4", pretrained, **dict(model_args, **kwargs))


@register_model
def van_b5(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B5: 89.97M params (ImageNet-22k weights only, 21841 classes)."""
    model_args = dict(embed_dims=(96, 192, 480, 768), mlp_ratios=_RATIOS, depths=(3, 3, 24, 3))
    return _create_van("van_b5", pretrained, **dict(model_args, **kwargs))


@register_model
def van_b6(pretrained: bool = False, **kwargs: Any) -> VAN:
    """VAN-B6: 199.83M params (ImageNet-22k weights only, 21841 classes)."""
    model_args = dict(embed_dims=(96, 192, 384, 768), mlp_ratios=_RATIOS, depths=(6, 6, 90, 6))
    return _create_van("van_b6", pretrained, **dict(model_args, **kwargs))
