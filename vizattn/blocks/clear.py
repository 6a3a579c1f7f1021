"""CLEAR attention (Liu et al., "CLEAR: Conv-Like Linearization Revs Pre-Trained Diffusion Transformers Up",
NeurIPS 2025, https://arxiv.org/abs/2412.16112; official code https://github.com/Huage001/CLEAR).

Each image token of a DiT attends only to the image tokens inside a circle of radius ``r`` around it (Euclidean,
strict ``<``, truncated at the borders), to every prefix token (text tokens in FLUX; none in a class-conditional
DiT) and, with ``down_factor = d > 1``, to ``(H/d)(W/d)`` pooled tokens whose keys and values are a learned
weighted sum (``spatial_weight``, initialised to average pooling) of each ``d x d`` patch. Prefix queries attend to
every prefix and image token (not to the pooled ones). The softmax is the plain one of the teacher (scale
``head_dim ** -0.5``): CLEAR keeps the formulation and only restricts which pairs exist, so a teacher's ``qkv`` and
``proj`` weights are a working starting point, refined by distillation.

:func:`convert_to_clear` swaps the attention layers of a model in place (a :class:`vizattn.diffusion.DiT` or any
model whose attention modules have ``qkv``/``proj`` Linears and ``num_heads``), keeping their weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vizattn.kernels.clear import clear_attention

__all__ = ["ClearAttention", "convert_to_clear", "is_clear_trainable"]


class ClearAttention(nn.Module):
    """Multi-head attention restricted to a circular window on the token grid, with optional pooled tokens.

    A drop-in for DiT's ``blocks.{i}.attn``: the parameters keep the names ``qkv`` and ``proj``, and ``tap`` (an
    ``nn.Identity``) sees the attention output before ``proj``, where CLEAR's attention-output distillation reads it.

    Args:
        dim: channels C.
        num_heads: heads; ``dim`` must be a multiple of it.
        radius: window radius r in tokens: image tokens at distance ``< r`` are attended (r = 1: only itself).
        down_factor: d; values > 1 append ``(H/d)(W/d)`` pooled key/value tokens seen by every image query (H and
            W must then be multiples of d). 1 means none, as in the official code.
        num_prefix_tokens: T tokens at the start of the sequence (text tokens in FLUX) that attend to and are
            attended by everything.
        qkv_bias: bias of the ``qkv`` projection (DiT has one).
        backend: kernel backend of :func:`vizattn.kernels.clear.clear_attention`, ``'auto'``, ``'triton'``,
            ``'torch'``.

    Shape:
        ``x``: (B, T + H * W, dim), image tokens in raster order; ``hw = (H, W)``. Output: same shape as ``x``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        radius: int,
        down_factor: int = 1,
        num_prefix_tokens: int = 0,
        qkv_bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be a multiple of num_heads={num_heads}.")
        if not isinstance(radius, int) or radius < 1:
            raise ValueError(f"radius={radius!r} must be an integer >= 1 (in tokens; 1 keeps only the token itself).")
        if not isinstance(down_factor, int) or down_factor < 1:
            raise ValueError(f"down_factor={down_factor!r} must be an integer >= 1 (1 means no pooled tokens).")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens={num_prefix_tokens} must be >= 0.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.radius = radius
        self.down_factor = down_factor
        self.num_prefix_tokens = num_prefix_tokens
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.tap = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        if down_factor > 1:
            # Official shape (1, 1, 1, d, 1, d, 1), shared by heads and channels; average pooling at start.
            self.spatial_weight = nn.Parameter(torch.full((1, 1, 1, down_factor, 1, down_factor, 1), down_factor**-2.0))
        else:
            self.register_parameter("spatial_weight", None)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, radius={self.radius}, down_factor={self.down_factor}, "
            f"num_prefix_tokens={self.num_prefix_tokens}"
        )

    def _pool(self, m: torch.Tensor) -> torch.Tensor:
        """(B, H, W, heads, hd) -> (B, (H/d)(W/d), heads, hd): the ``spatial_weight``-weighted sum of each patch."""
        b, h, w, nh, hd = m.shape
        d = self.down_factor
        patches = m.reshape(b, h // d, d, w // d, d, nh, hd)
        weight = self.spatial_weight.reshape(d, 1, d, 1, 1).to(m.dtype)
        # .to: CUDA autocast runs sum in float32, and the op wants the extra tokens in the dtype of q
        return (patches * weight).sum(dim=(2, 4)).to(m.dtype).reshape(b, (h // d) * (w // d), nh, hd)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = hw
        t = self.num_prefix_tokens
        if n != t + h * w:
            raise ValueError(
                f"ClearAttention got {n} tokens, but num_prefix_tokens={t} plus an {h}x{w} grid makes {t + h * w}."
            )
        d = self.down_factor
        if d > 1 and (h % d or w % d):
            raise ValueError(f"With down_factor={d} the token grid must be divisible by it, got {h}x{w}.")
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # each (B, N, heads, hd), views of the packed projection
        q_img, k_img, v_img = (m[:, t:].reshape(b, h, w, self.num_heads, self.head_dim) for m in (q, k, v))
        # Every image query also sees the prefix tokens and the pooled tokens: the op's extra key/value tokens.
        ek, ev = k[:, :t], v[:, :t]
        if d > 1:
            ek, ev = torch.cat([ek, self._pool(k_img)], 1), torch.cat([ev, self._pool(v_img)], 1)
        if ek.shape[1] == 0:
            ek = ev = None
        out = clear_attention(q_img, k_img, v_img, self.radius, ek, ev, backend=self.backend).reshape(b, h * w, c)
        if t:
            # Prefix queries see every prefix and image token, not the pooled ones: plain attention.
            pre = F.scaled_dot_product_attention(q[:, :t].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            out = torch.cat([pre.transpose(1, 2).reshape(b, t, c), out], 1)
        return self.proj(self.tap(out))


def _is_attention(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and isinstance(getattr(module, "num_heads", None), int)
    )


def convert_to_clear(
    model: nn.Module,
    radius: int,
    down_factor: int = 1,
    num_prefix_tokens: int = 0,
    backend: str = "auto",
) -> nn.Module:
    """Replace every attention module of ``model`` by a :class:`ClearAttention` with the same weights, in place.

    An attention module is any submodule with ``qkv`` and ``proj`` Linears and an integer ``num_heads`` (DiT's
    ``blocks.{i}.attn``); it must be called as ``attn(x, hw)`` by its parent, as :class:`vizattn.diffusion.DiT`
    does. Existing :class:`ClearAttention` modules are re-created with the new settings (their ``spatial_weight``
    is kept when ``down_factor`` is unchanged). The new modules take the device and dtype of the old weights.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: if the model has no attention module to convert.
    """
    targets = [(name, m) for name, m in model.named_modules() if _is_attention(m)]
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no attention module with 'qkv' and 'proj' Linears and 'num_heads' to convert."
        )
    for name, old in targets:
        dim = old.qkv.in_features
        new = ClearAttention(
            dim,
            old.num_heads,
            radius,
            down_factor=down_factor,
            num_prefix_tokens=num_prefix_tokens,
            qkv_bias=old.qkv.bias is not None,
            backend=backend,
        ).to(device=old.qkv.weight.device, dtype=old.qkv.weight.dtype)
        state = {k: v for k, v in old.state_dict().items() if k != "spatial_weight"}
        if isinstance(old, ClearAttention) and old.down_factor == down_factor and down_factor > 1:
            state["spatial_weight"] = old.spatial_weight.detach()
        missing, unexpected = new.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"spatial_weight"}:  # a new spatial_weight keeps its average-pooling start
            raise ValueError(f"{name} cannot become a ClearAttention: missing {missing}, unexpected {unexpected}.")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def is_clear_trainable(name: str) -> bool:
    """Whether CLEAR's distillation trains the parameter of this name: the attention projections and the pooling
    weights (official filter: ``to_q/to_k/to_v/to_out`` and ``spatial_weight``; DiT's fused ``qkv`` and ``proj``)."""
    return ".attn.qkv." in f".{name}" or ".attn.proj." in f".{name}" or name.endswith("spatial_weight")
