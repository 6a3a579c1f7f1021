"""diffusers ``DiTTransformer2DModel`` weights load into vizattn's DiT and give diffusers' outputs.

A small random diffusers model (the XL/2 constructor arguments of diffusers' converter, tiny sizes) is converted by
``dit_checkpoint_filter_fn``. diffusers differs from the official DiT in two numerical details, which are patched on
the diffusers instance so that the comparison can be tight: its timestep frequencies divide by 127
(``downscale_freq_shift=1``) instead of 128, and its pre-MLP LayerNorm (``norm3``) uses eps 1e-5 instead of 1e-6.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from dit_helpers import RTOL, TINY, randomize, rel_err

from vizattn.diffusion import create_dit, dit_checkpoint_filter_fn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never reach the Hub
diffusers = pytest.importorskip("diffusers")


def _diffusers_dit(seed: int = 0):
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=10,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    randomize(model, seed)
    # DiT has one timestep/label embedder; diffusers' converter copies it into every block. Do the same.
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)
    return model.eval()


def _make_official_numerics(model) -> None:
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = 1e-6


_BLOCK_MAP = {
    "attn.proj.": "attn1.to_out.0.",
    "mlp.fc1.": "ff.net.0.proj.",
    "mlp.fc2.": "ff.net.2.",
    "adaLN_modulation.1.": "norm1.linear.",
}
_TOP_MAP = {
    "x_embedder.proj.": "pos_embed.proj.",
    "t_embedder.mlp.0.": "transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_2.",
    "y_embedder.embedding_table.": "transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.",
    "final_layer.adaLN_modulation.1.": "proj_out_1.",
    "final_layer.linear.": "proj_out_2.",
}


def _diffusers_tensors(sd: dict, key: str, depth: int) -> list[torch.Tensor]:
    """The diffusers tensors that official ``key`` maps to (spec section 4; the embedders exist once per block)."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match:
        index, rest = match.groups()
        if rest.startswith("attn.qkv."):
            tail = rest.rsplit(".", 1)[1]
            return [torch.cat([sd[f"transformer_blocks.{index}.attn1.to_{w}.{tail}"] for w in "qkv"])]
        for ours, theirs in _BLOCK_MAP.items():
            if rest.startswith(ours):
                return [sd[f"transformer_blocks.{index}.{theirs}{rest[len(ours):]}"]]
    for ours, theirs in _TOP_MAP.items():
        if key.startswith(ours):
            names = {theirs.format(i=i) + key[len(ours) :] for i in range(depth)}
            return [sd[name] for name in sorted(names)]
    raise KeyError(key)


def _inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0, 321, 999]), torch.tensor([2, 9, 10])


def test_every_parameter_equals_its_diffusers_tensor():
    reference = _diffusers_dit()
    sd = reference.state_dict()
    model = create_dit("dit_s_2", **TINY)
    converted = dit_checkpoint_filter_fn(sd, model)
    model.load_state_dict(converted, strict=True)
    for key, value in model.state_dict().items():
        if key == "pos_embed":
            assert torch.allclose(value, reference.pos_embed.pos_embed, atol=1e-6)
            continue
        for theirs in _diffusers_tensors(sd, key, depth=2):
            assert torch.equal(value, theirs), key


def test_outputs_match_diffusers_up_to_the_documented_differences():
    reference = _diffusers_dit()
    model = create_dit("dit_s_2", **TINY).eval()
    model.load_state_dict(dit_checkpoint_filter_fn(reference.state_dict(), model))
    x, t, y = _inputs()
    with torch.no_grad():
        ours = model(x, t, y)
        before = reference(x, timestep=t, class_labels=y).sample
        _make_official_numerics(reference)
        after = reference(x, timestep=t, class_labels=y).sample
    assert rel_err(ours, before) > 1e-3  # the /127 frequencies matter; the patch below is what makes them agree
    assert rel_err(ours, after) < RTOL


@pytest.mark.parametrize("layout", ["folder", "safetensors", "bin"])
def test_create_dit_loads_diffusers_files(tmp_path, layout):
    reference = _diffusers_dit(seed=1)
    reference.save_pretrained(tmp_path / "transformer")
    path = {
        "folder": tmp_path,  # a pipeline folder: the model is under transformer/
        "safetensors": tmp_path / "transformer" / "diffusion_pytorch_model.safetensors",
        "bin": tmp_path / "diffusion_pytorch_model.bin",
    }[layout]
    if layout == "bin":
        torch.save(reference.state_dict(), path)
    model = create_dit("dit_s_2", checkpoint_path=path, **TINY).eval()
    _make_official_numerics(reference)
    x, t, y = _inputs()
    with torch.no_grad():
        assert rel_err(model(x, t, y), reference(x, timestep=t, class_labels=y).sample) < RTOL


def test_different_embedders_per_block_are_refused():
    reference = _diffusers_dit()
    with torch.no_grad():
        reference.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    with pytest.raises(ValueError, match="different timestep/class embedders in transformer_blocks.1"):
        dit_checkpoint_filter_fn(reference.state_dict(), create_dit("dit_s_2", **TINY))
