"""DiT, the class-conditional latent diffusion transformer, with the official parameter layout.

Paper: W. Peebles and S. Xie, "Scalable Diffusion Models with Transformers", ICCV 2023,
https://arxiv.org/abs/2212.09748. Official code: facebookresearch/DiT ``models.py`` (commit ed81ce2). The module
tree and parameter names are the official ones, so the released ``DiT-XL-2-{256x256,512x512}.pt`` files load with
strict key matching and give the official outputs to float32 rounding.

Differences from the official module, none of which changes the math at the training size:

- any latent whose sides are multiples of the patch size works, square or not: the fixed sin-cos position table is
  recomputed (and cached) for other token grids, while the stored ``pos_embed`` is used at the training grid;
- attention is :class:`DiTAttention`, which takes the token grid ``hw`` so that local attention (CLEAR) can replace
  it, and exposes its pre-projection output through an ``nn.Identity`` named ``tap`` for hooks;
- wrong channel counts, sides not divisible by the patch and labels out of range raise ``ValueError``;
- the number of channels that classifier-free guidance touches is an argument (default 3, the official quirk).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DiT",
    "DiTAttention",
    "DiTBlock",
    "FinalLayer",
    "LabelEmbedder",
    "TimestepEmbedder",
    "create_dit",
    "dit_checkpoint_filter_fn",
    "dit_sincos_pos_embed",
    "list_dit_models",
]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # shift/scale are (B, 1, D) so they broadcast over the tokens; the operand order is the official one.
    return x * (1 + scale) + shift


def dit_sincos_pos_embed(dim: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The fixed 2-D sin-cos position table of DiT (the MAE formula), for any token grid.

    Each half of the channels holds a 1-D table ``[sin(p * w_i) | cos(p * w_i)]`` with
    ``w_i = 10000 ** (-i / (dim / 4))``, ``i < dim / 4``. As in the official (MAE) code the first half encodes the
    column index and the second half the row index (its meshgrid puts the width axis first). Computed in float64 on
    the CPU like the official numpy code, returned as float32.

    Args:
        dim: channels D, a multiple of 4.
        grid_hw: token grid (rows, columns).

    Returns:
        (rows * columns, dim) float32 table, tokens in raster (row-major) order.
    """
    if dim % 4:
        raise ValueError(f"The sin-cos position table needs a hidden size divisible by 4, got {dim}.")
    rows, cols = grid_hw
    quarter = dim // 4
    # Built on the CPU whatever the default device (float64 is missing on some accelerators).
    cpu64 = dict(dtype=torch.float64, device="cpu")
    omega = 1.0 / 10000 ** (torch.arange(quarter, **cpu64) / quarter)
    row_of = torch.arange(rows, **cpu64).repeat_interleave(cols)
    col_of = torch.arange(cols, **cpu64).repeat(rows)

    def table_1d(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([table_1d(col_of), table_1d(row_of)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features followed by ``mlp`` = Linear -> SiLU -> Linear.

    Args:
        hidden_size: output channels D.
        frequency_embedding_size: number of sinusoidal features (256 in DiT).

    Shape:
        t: (B,) integer or fractional timesteps -> (B, D).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """``[cos(t * f_i) | sin(t * f_i)]`` with ``f_i = exp(-ln(max_period) * i / (dim // 2))``, float32.

        The frequencies divide by ``dim // 2`` (128 for DiT), not ``dim // 2 - 1`` as diffusers does. They are built
        on the CPU in float32 with the official order of operations because ``t * f_i`` reaches ~1000 radians, where
        one ulp of ``f_i`` already moves the features by ~1e-4.

        Args:
            t: (B,) timesteps.
            dim: number of features; an odd ``dim`` gets one trailing zero.
            max_period: sets the lowest frequency.

        Returns:
            (B, dim) float32 features.
        """
        half = dim // 2
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device="cpu")
        freqs = torch.exp(exponent / half).to(t.device)
        angles = t.float()[:, None] * freqs[None, :]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if dim % 2:
            features = F.pad(features, (0, 1))
        return features

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class-label table with label dropout for classifier-free guidance.

    When ``dropout_prob > 0`` the table has one extra row, index ``num_classes``, the "null" class: in training each
    label is replaced by it with probability ``dropout_prob`` (one ``torch.rand(B)`` draw per call, as official).

    Args:
        num_classes: number of real classes.
        hidden_size: embedding channels D.
        dropout_prob: label dropout probability in training.

    Shape:
        labels: (B,) int64 -> (B, D).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace dropped labels by the null class: random drops, or where ``force_drop_ids == 1``."""
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class DiTAttention(nn.Module):
    """Multi-head self-attention of a DiT block (timm ``Attention`` with ``qkv_bias=True``, no q/k norm).

    ``qkv`` rows are ``[q | k | v]``, each head-major; the scale is ``head_dim ** -0.5`` (SDPA's default). ``tap`` is
    an ``nn.Identity`` on the attention output before ``proj``, so a forward hook on it sees the per-token mix of
    values (the feature CLEAR's attention-output distillation matches).

    Args:
        dim: channels C.
        num_heads: heads; ``dim`` must be divisible by it.
        qkv_bias: bias of the ``qkv`` projection.

    Shape:
        x: (B, N, C) tokens in raster order; ``hw = (grid_h, grid_w)`` with ``grid_h * grid_w == N``. Full attention
        ignores ``hw``; it is part of the signature for drop-in local attentions. Output: (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"DiTAttention needs dim divisible by num_heads, got dim={dim}, num_heads={num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.tap = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(self.tap(out.transpose(1, 2).reshape(b, n, c)))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning.

    ``adaLN_modulation(c)`` gives (shift, scale, gate) for attention and for the MLP, in that order;
    ``x += gate * f(LN(x) * (1 + scale) + shift)``. LayerNorms have no affine and eps 1e-6; the MLP uses tanh GELU.

    Args:
        hidden_size: channels D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.

    Shape:
        x: (B, N, D), c: (B, D), hw: token grid -> (B, N, D).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = DiTAttention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate_a * self.attn(_modulate(self.norm1(x), shift_a, scale_a), hw)
        return x + gate_m * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> LayerNorm -> ``linear`` to ``patch_size ** 2 * out_channels`` values per token.

    Shape:
        x: (B, N, D), c: (B, D) -> (B, N, patch_size ** 2 * out_channels).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    rows, cols = size
    return int(rows), int(cols)


class DiT(nn.Module):
    """Diffusion transformer on latents (official ``models.DiT``), any latent size divisible by the patch.

    Args:
        input_size: training latent side I (or (rows, columns)); it fixes the stored ``pos_embed`` grid, not the
            sizes the model accepts.
        patch_size: patch side p.
        in_channels: latent channels (4 for the SD VAE).
        hidden_size: width D (a multiple of 4 and of ``num_heads``).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        class_dropout_prob: label dropout in training; > 0 adds the null class ``num_classes`` used by guidance.
        num_classes: number of classes.
        learn_sigma: also predict the variance interpolation (``out_channels = 2 * in_channels``).

    Shape:
        forward(x (B, in_channels, H, W), t (B,), y (B,)) -> (B, out_channels, H, W), H and W multiples of p.

    The official initialisation zeroes every ``adaLN_modulation[-1]`` and ``final_layer.linear``, so a freshly built
    DiT outputs exactly zero and each block is an identity (adaLN-Zero).
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ):
        super().__init__()
        size = _pair(input_size)
        if size[0] % patch_size or size[1] % patch_size:
            raise ValueError(f"DiT input_size {input_size} must be divisible by patch_size {patch_size}.")
        if hidden_size % 4 or hidden_size % num_heads:
            raise ValueError(
                f"DiT hidden_size must be divisible by 4 and by num_heads, got {hidden_size} and {num_heads}."
            )
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.grad_checkpointing = False

        self.x_embedder = PatchEmbed(size, patch_size, in_channels, hidden_size, bias=True, strict_img_size=False)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # A fixed table, kept as a frozen Parameter (not a buffer) so the official key layout loads strictly.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._pos_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.initialize_weights()

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid of the training size, the grid of the stored ``pos_embed``."""
        return tuple(self.x_embedder.grid_size)

    def initialize_weights(self) -> None:
        """Official initialisation; modules are visited in the official order, so a seed gives the official weights.

        Linear layers and the patch projection: Xavier-uniform (the conv weight seen as a (D, C*p*p) matrix), zero
        bias; label table and timestep MLP weights N(0, 0.02); every adaLN output layer and ``final_layer.linear``
        zero.
        """

        def xavier_linear(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier_linear)
        with torch.no_grad():
            self.pos_embed.copy_(dit_sincos_pos_embed(self.hidden_size, self.grid_size)[None])
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [block.adaLN_modulation[-1] for block in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (only while training with gradients enabled)."""
        self.grad_checkpointing = enable

    def _pos_embed_for(self, hw: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        if hw == self.grid_size:
            return self.pos_embed
        key = (hw, like.device, like.dtype)
        table = self._pos_cache.get(key)
        if table is None:
            if len(self._pos_cache) >= 8:
                self._pos_cache.clear()
            table = dit_sincos_pos_embed(self.hidden_size, hw)[None].to(device=like.device, dtype=like.dtype)
            self._pos_cache[key] = table
        return table

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiT expects latents of shape (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}."
            )
        height, width = x.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"DiT latent sides must be multiples of the patch size {p}, got {height}x{width}.")
        batch = x.shape[0]
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"DiT expects timesteps of shape ({batch},) or a scalar, got shape {tuple(t.shape)}.")
        if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(
                f"DiT expects integer labels of shape ({batch},), got {y.dtype} of shape {tuple(y.shape)}."
            )
        # Out-of-range labels would index past the table (a device-side assert on CUDA); the check costs one sync.
        rows = self.y_embedder.embedding_table.num_embeddings
        if not torch.compiler.is_compiling() and y.numel() and (int(y.min()) < 0 or int(y.max()) >= rows):
            valid = f"0..{rows - 1}" + (f" ({self.num_classes} is the null class)" if rows > self.num_classes else "")
            raise ValueError(f"DiT labels must be in {valid}, got values from {int(y.min())} to {int(y.max())}.")
        return t, (height // p, width // p)

    def unpatchify(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Patch tokens back to a latent map.

        Args:
            x: (B, grid_h * grid_w, p * p * out_channels), each token's values ordered (p_row, p_col, channel).
            hw: token grid (grid_h, grid_w); ``None`` means square, as in the official code.

        Returns:
            (B, out_channels, grid_h * p, grid_w * p).
        """
        b, n, _ = x.shape
        if hw is None:
            side = math.isqrt(n)
            hw = (side, side)
        gh, gw = hw
        if gh * gw != n:
            raise ValueError(f"unpatchify got {n} tokens for a {gh}x{gw} grid.")
        p, c = self.patch_size, self.out_channels
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, gh * p, gw * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict the diffusion output for latents ``x`` at timesteps ``t`` with labels ``y``.

        Args:
            x: (B, in_channels, H, W) noisy latents, H and W multiples of the patch size.
            t: (B,) timesteps in the model's original numbering (0..999), or a scalar for the whole batch.
            y: (B,) int64 labels in 0..num_classes-1, or ``num_classes`` (the null class) when label dropout is on.

        Returns:
            (B, out_channels, H, W): epsilon in the first ``in_channels`` channels, then (with ``learn_sigma``) the
            variance interpolation values.
        """
        t, hw = self._check_inputs(x, t, y)
        x = self.x_embedder(x) + self._pos_embed_for(hw, x)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, c, hw, use_reentrant=False) if use_checkpoint else block(x, c, hw)
        return self.unpatchify(self.final_layer(x, c), hw)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, guided_channels: int = 3
    ) -> torch.Tensor:
        """Forward with classifier-free guidance, batched as in the official sampler.

        The batch holds the conditional half (real labels) followed by the unconditional half (null labels). Only the
        first half of ``x`` is used: it is run twice, once per label half, and the guided prediction
        ``uncond + cfg_scale * (cond - uncond)`` is returned for both halves.

        Guidance touches only the first ``guided_channels`` output channels. The official code guides 3 of the 4
        epsilon channels (a slip inherited from GLIDE, kept by the authors for reproducibility: the released FID
        numbers were measured that way); pass ``guided_channels=in_channels`` for standard guidance on all of epsilon.

        Args:
            x: (2B, in_channels, H, W); the second half is ignored.
            t: (2B,) timesteps.
            y: (2B,) labels: B real labels then B null labels (``num_classes``).
            cfg_scale: guidance scale (1 = no guidance).
            guided_channels: number of leading output channels that receive guidance.

        Returns:
            (2B, out_channels, H, W), both halves equal in the guided channels.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch (conditional + unconditional), got {x.shape[0]}.")
        if not 0 < guided_channels <= self.out_channels:
            raise ValueError(f"guided_channels must be in 1..{self.out_channels}, got {guided_channels}.")
        half = x[: x.shape[0] // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        guided, rest = out[:, :guided_channels], out[:, guided_channels:]
        cond, uncond = guided.chunk(2, dim=0)
        mixed = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([mixed, mixed], dim=0), rest], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


_DIFFUSERS_RENAMES = {
    "pos_embed.proj.": "x_embedder.proj.",
    "proj_out_1.": "final_layer.adaLN_modulation.1.",
    "proj_out_2.": "final_layer.linear.",
}
_DIFFUSERS_BLOCK_RENAMES = {
    "norm1.linear.": "adaLN_modulation.1.",
    "attn1.to_out.0.": "attn.proj.",
    "ff.net.0.proj.": "mlp.fc1.",
    "ff.net.2.": "mlp.fc2.",
}
_DIFFUSERS_EMBEDDER_RENAMES = {
    "timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "class_embedder.embedding_table.": "y_embedder.embedding_table.",
}


def _rename_prefix(key: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _from_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert diffusers' ``convert_dit_to_diffusers.py`` mapping (``DiTTransformer2DModel`` -> official keys)."""
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    embedders: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "pos_embed.pos_embed":
            continue  # diffusers' own (derived) sin-cos buffer; the official table is recomputed by the filter
        if key.startswith("transformer_blocks."):
            _, index, rest = key.split(".", 2)
            if rest.startswith("norm1.emb."):
                embedders.setdefault(index, {})[rest[len("norm1.emb.") :]] = value
                continue
            if rest.startswith(("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")):
                which, tail = rest[len("attn1.to_") :].split(".", 1)
                qkv_parts.setdefault((index, tail), {})[which] = value
                continue
            renamed = _rename_prefix(rest, _DIFFUSERS_BLOCK_RENAMES)
            out[f"blocks.{index}.{renamed}" if renamed else key] = value
            continue
        out[_rename_prefix(key, _DIFFUSERS_RENAMES) or key] = value
    for (index, tail), parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ValueError(f"diffusers checkpoint lacks transformer_blocks.{index}.attn1.to_{missing[0]}.{tail}.")
        # The official fused qkv rows are [q | k | v]; diffusers' converter split them with chunk(3, dim=0).
        out[f"blocks.{index}.attn.qkv.{tail}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if embedders:
        first = embedders[min(embedders, key=int)]
        for index, emb in embedders.items():
            same = emb.keys() == first.keys() and all(torch.equal(emb[k], first[k]) for k in emb)
            if not same:
                raise ValueError(
                    f"diffusers checkpoint has different timestep/class embedders in transformer_blocks.{index} and in "
                    "the first block; DiT shares one embedder across blocks, so these weights cannot be represented."
                )
        for sub, value in first.items():
            renamed = _rename_prefix(sub, _DIFFUSERS_EMBEDDER_RENAMES)
            out[renamed or f"transformer_blocks.0.norm1.emb.{sub}"] = value
    return out


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    # train.py checkpoints are {'model', 'ema', 'opt', 'args'} and the official loader samples from 'ema'.
    for container in ("ema", "model", "state_dict", "module"):
        inner = state_dict.get(container)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return state_dict


def dit_checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Turn any supported DiT checkpoint into ``model``'s state dict layout.

    Accepts: the official flat EMA state dict (``DiT-XL-2-256x256.pt``), ``train.py`` checkpoints
    ``{'model', 'ema', 'opt', 'args'}`` (the ``'ema'`` weights are taken, as the official ``find_model`` does), keys
    prefixed by ``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``), and diffusers ``DiTTransformer2DModel`` state
    dicts (``to_q/to_k/to_v`` concatenated into ``qkv``; the embedders, copied into every diffusers block, taken once
    from ``transformer_blocks.0.norm1.emb``). ``pos_embed`` is a fixed table: when it is missing or was stored for
    another grid, the table of ``model``'s training grid is computed instead.

    Args:
        state_dict: the loaded checkpoint.
        model: the target :class:`DiT` (its keys and shapes are checked).

    Returns:
        A state dict that ``model.load_state_dict(..., strict=True)`` accepts.

    Raises:
        ValueError: naming the missing, unexpected or wrongly shaped keys.
    """
    sd = dict(_unwrap(state_dict))
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith(("transformer_blocks.", "proj_out_1.")) for k in sd):
        sd = _from_diffusers(sd)

    target = model.state_dict()
    expected = target.get("pos_embed")
    if expected is not None and ("pos_embed" not in sd or sd["pos_embed"].shape != expected.shape):
        sd["pos_embed"] = dit_sincos_pos_embed(expected.shape[-1], tuple(model.x_embedder.grid_size))[None]

    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if missing or unexpected:

        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {listing(unexpected)}")
        raise ValueError("The checkpoint does not match this DiT; " + "; ".join(parts) + ".")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in target.items() if sd[k].shape != v.shape]
    if wrong:
        raise ValueError(
            "The checkpoint's shapes do not match this DiT (checkpoint vs model): " + "; ".join(wrong[:8]) + "."
        )
    return sd


def _read_checkpoint(path: str | os.PathLike) -> Mapping[str, Any]:
    """Load a DiT checkpoint file or a diffusers model folder onto the CPU."""
    path = Path(path)
    if path.is_dir():
        for folder in (path, path / "transformer"):
            for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
                if (folder / name).is_file():
                    return _read_checkpoint(folder / name)
            index = folder / "diffusion_pytorch_model.safetensors.index.json"
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                merged: dict[str, torch.Tensor] = {}
                for shard in shards:
                    merged.update(_read_checkpoint(folder / shard))
                return merged
        raise FileNotFoundError(
            f"{path} is a folder without diffusion_pytorch_model.safetensors (or .bin), directly or under transformer/."
        )
    if not path.is_file():
        raise FileNotFoundError(f"DiT checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # train.py stores its argparse.Namespace under 'args': allow just that class besides tensors.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects other than tensors and argparse.Namespace, so it is not loaded with "
            "weights_only=True. If you trust it, load it yourself with torch.load(..., weights_only=False) and pass "
            f"its state dict through dit_checkpoint_filter_fn. ({err})"
        ) from err


_DIT_SIZES = {
    "s": dict(depth=12, hidden_size=384, num_heads=6),
    "b": dict(depth=12, hidden_size=768, num_heads=12),
    "l": dict(depth=24, hidden_size=1024, num_heads=16),
    "xl": dict(depth=28, hidden_size=1152, num_heads=16),
}
_DIT_CONFIGS = {
    f"dit_{size}_{patch}": dict(patch_size=patch, **cfg) for size, cfg in _DIT_SIZES.items() for patch in (2, 4, 8)
}
_DIT_URLS = {
    32: "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
    64: "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt",
}


def list_dit_models() -> list[str]:
    """Names accepted by :func:`create_dit`: ``dit_{s,b,l,xl}_{2,4,8}`` (the official ``DiT-{S,B,L,XL}/{2,4,8}``)."""
    return list(_DIT_CONFIGS)


def create_dit(
    name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None, **kwargs: Any
) -> DiT:
    """Build a DiT by its official configuration, optionally with weights.

    Args:
        name: one of :func:`list_dit_models`.
        pretrained: download the official ImageNet weights into the torch hub cache. Only ``dit_xl_2`` at
            ``input_size`` 32 (256x256 images) or 64 (512x512) has weights.
        checkpoint_path: a local file or folder loaded instead of the download: an official ``.pt``, a ``train.py``
            checkpoint, a diffusers ``.safetensors``/``.bin`` file or a diffusers model folder. Loaded through
            :func:`dit_checkpoint_filter_fn` with strict key matching.
        **kwargs: :class:`DiT` arguments; they override the named configuration (e.g. ``input_size=64``).

    Returns:
        The model, in training mode like any new ``nn.Module``: call ``.eval()`` before sampling, otherwise labels
        are dropped at random.
    """
    if name not in _DIT_CONFIGS:
        raise ValueError(f"Unknown DiT model {name!r}; available: {', '.join(_DIT_CONFIGS)}.")
    cfg = {**_DIT_CONFIGS[name], **kwargs}
    url = None
    if pretrained and checkpoint_path is None:
        url = _DIT_URLS.get(cfg.get("input_size", 32)) if name == "dit_xl_2" else None
        if url is None:
            raise ValueError(
                f"No pretrained weights for {name} with input_size {cfg.get('input_size', 32)}: only dit_xl_2 at "
                "input_size 32 (256x256) or 64 (512x512) has official weights. Pass checkpoint_path for your own."
            )
    model = DiT(**cfg)
    if checkpoint_path is not None:
        state_dict = _read_checkpoint(checkpoint_path)
    elif url is not None:
        state_dict = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    else:
        return model
    model.load_state_dict(dit_checkpoint_filter_fn(state_dict, model), strict=True)
    return model
