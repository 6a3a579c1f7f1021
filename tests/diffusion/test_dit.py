"""DiT behaviour: adaLN-Zero init, label dropout, any latent size, attention hooks, checkpoints and errors."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from dit_helpers import TINY, randomize, tiny_dit

from vizattn.diffusion import DiT, DiTAttention, create_dit, dit_checkpoint_filter_fn
from vizattn.diffusion.dit import dit_sincos_pos_embed


def _inputs(batch: int = 4, height: int = 8, width: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, t, y


def test_fresh_init_outputs_exactly_zero():
    model = DiT(**TINY).eval()
    x, t, y = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y), torch.zeros(4, 8, 8, 8))
        assert torch.equal(model.forward_with_cfg(x, t, torch.tensor([1, 2, 10, 10]), 4.0), torch.zeros(4, 8, 8, 8))
    for block in model.blocks:
        assert not block.adaLN_modulation[1].weight.any() and not block.adaLN_modulation[1].bias.any()
    assert not model.pos_embed.requires_grad


def test_label_dropout_uses_the_null_class():
    model = randomize(DiT(**TINY, class_dropout_prob=1.0))
    x, t, y = _inputs()
    null = torch.full_like(y, 10)
    with torch.no_grad():
        dropped = model.train()(x, t, y)  # p = 1: every label dropped
        assert torch.equal(dropped, model.eval()(x, t, null))
        assert not torch.equal(model(x, t, y), dropped)
        forced = model.y_embedder(y, train=False, force_drop_ids=torch.tensor([1, 0, 1, 0]))
        table = model.y_embedder.embedding_table.weight
        assert torch.equal(forced, table[torch.tensor([10, y[1], 10, y[3]])])


def test_without_label_dropout_there_is_no_null_class():
    model = DiT(**TINY, class_dropout_prob=0.0)
    assert model.y_embedder.embedding_table.num_embeddings == 10
    x, t, y = _inputs()
    model.train()(x, t, y)  # no dropout, no error
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        model(x, t, torch.full_like(y, 10))


@pytest.mark.parametrize("hw", [(8, 8), (6, 10), (12, 4), (2, 2)])
def test_any_latent_size_divisible_by_the_patch(hw):
    model = tiny_dit()
    x, t, y = _inputs(2, *hw)
    seen = []
    model.blocks[0].attn.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (2, 8, *hw) and torch.isfinite(out).all()
    assert seen == [(hw[0] // 2, hw[1] // 2)]


def test_pos_embed_stored_at_training_grid_and_cached_elsewhere():
    model = tiny_dit()
    x = torch.zeros(1, 4, 8, 8)
    assert model._pos_embed_for((4, 4), x) is model.pos_embed
    other = model._pos_embed_for((3, 5), x)
    assert other is model._pos_embed_for((3, 5), x)
    assert torch.equal(other[0], dit_sincos_pos_embed(64, (3, 5)))
    # The stored table is what the training grid uses: changing it changes the output.
    x, t, y = _inputs(2)
    with torch.no_grad():
        before = model(x, t, y)
        model.pos_embed.add_(1.0)
        assert not torch.allclose(model(x, t, y), before)


def test_non_square_unpatchify_keeps_patch_layout():
    # A model whose output is its own input patches (identity embedding and head) must return the input.
    model = tiny_dit(learn_sigma=False)
    tokens = torch.arange(2 * 3 * 5 * 16, dtype=torch.float32).view(2, 15, 16)
    image = model.unpatchify(tokens, (3, 5))
    assert image.shape == (2, 4, 6, 10)
    # token (row 1, col 2), value index (pr=1, pc=0, c=3) -> pixel (2*1+1, 2*2+0) of channel 3
    assert image[0, 3, 3, 4] == tokens[0, 1 * 5 + 2, (1 * 2 + 0) * 4 + 3]


def test_attention_matches_plain_softmax_and_tap_sees_pre_projection_output():
    attn = randomize(DiTAttention(64, 4))
    x = torch.randn(2, 12, 64)
    captured = []
    attn.tap.register_forward_hook(lambda m, args, out: captured.append(out))
    out = attn(x, (3, 4))
    q, k, v = attn.qkv(x).view(2, 12, 3, 4, 16).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    mixed = (weights @ v).transpose(1, 2).reshape(2, 12, 64)
    assert torch.allclose(captured[0], mixed, atol=1e-5)
    assert torch.allclose(out, F.linear(mixed, attn.proj.weight, attn.proj.bias), atol=1e-5)
    assert attn.num_heads == 4 and attn.qkv.out_features == 192


def test_forward_with_cfg_guides_the_first_channels_only():
    model = tiny_dit()
    x, t, _ = _inputs(4)
    y = torch.tensor([1, 2, 10, 10])
    with torch.no_grad():
        plain = model(torch.cat([x[:2], x[:2]]), t, y)
        out3 = model.forward_with_cfg(x, t, y, 3.0)
        out4 = model.forward_with_cfg(x, t, y, 3.0, guided_channels=4)
    cond, uncond = plain.chunk(2)
    guided = uncond + 3.0 * (cond - uncond)
    assert torch.allclose(out3[:2, :3], guided[:, :3], atol=1e-5) and torch.allclose(out3[2:, :3], guided[:, :3])
    assert torch.equal(out3[:, 3:], plain[:, 3:])
    assert torch.allclose(out4[:2, :4], guided[:, :4], atol=1e-5) and torch.equal(out4[:, 4:], plain[:, 4:])


def test_grad_checkpointing_gives_the_same_gradients():
    x, t, y = _inputs(2)
    grads = []
    for enable in (False, True):
        model = tiny_dit(class_dropout_prob=0.0).train()
        model.set_grad_checkpointing(enable)
        model(x, t, y).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_bad_inputs_raise_value_errors():
    model = tiny_dit()
    x, t, y = _inputs(2)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.zeros(2, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.zeros(2, 4, 8), t, y)
    with pytest.raises(ValueError, match="multiples of the patch size 2, got 7x8"):
        model(torch.zeros(2, 4, 7, 8), t, y)
    with pytest.raises(ValueError, match=r"labels must be in 0..10 \(10 is the null class\), got values from 0 to 11"):
        model(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="labels must be in"):
        model(x, t, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="integer labels"):
        model(x, t, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="timesteps of shape"):
        model(x, torch.tensor([1, 2, 3]), y)
    with pytest.raises(ValueError, match="even batch"):
        model.forward_with_cfg(torch.zeros(3, 4, 8, 8), torch.zeros(3), torch.zeros(3, dtype=torch.long), 2.0)
    with pytest.raises(ValueError, match="guided_channels"):
        model.forward_with_cfg(x, t, y, 2.0, guided_channels=9)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiT(**{**TINY, "input_size": 7})
    with pytest.raises(ValueError, match="divisible by 4 and by num_heads"):
        DiT(**{**TINY, "num_heads": 3})
    with torch.no_grad():  # a scalar timestep is broadcast to the batch
        assert torch.equal(model(x, torch.tensor(5), y), model(x, torch.tensor([5, 5]), y))


def test_registry_errors():
    with pytest.raises(ValueError, match="Unknown DiT model 'dit_m_2'; available: dit_s_2"):
        create_dit("dit_m_2")
    with pytest.raises(ValueError, match="only dit_xl_2 at input_size 32 \\(256x256\\) or 64"):
        create_dit("dit_s_2", pretrained=True)
    with pytest.raises(ValueError, match="No pretrained weights for dit_xl_2 with input_size 48"):
        create_dit("dit_xl_2", pretrained=True, input_size=48)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_dit("dit_s_2", checkpoint_path="/nonexistent/dit.pt", **TINY)


@pytest.mark.parametrize("input_size, image", [(32, "256x256"), (64, "512x512")])
def test_pretrained_downloads_the_official_file(monkeypatch, input_size, image):
    urls = []

    def fake_download(url, **kwargs):
        urls.append((url, kwargs.get("weights_only")))
        return {k: v for k, v in model_sd.items()}

    with torch.device("meta"):
        model_sd = DiT(input_size=input_size).state_dict()
        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
        create_dit("dit_xl_2", pretrained=True, input_size=input_size)
    assert urls == [(f"https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{image}.pt", True)]


def test_round_trip_flat_and_train_checkpoints(tmp_path):
    model = tiny_dit(seed=3)
    x, t, y = _inputs(2)
    with torch.no_grad():
        expected = model(x, t, y)
    state = model.state_dict()
    torch.save(state, tmp_path / "flat.pt")
    # train.py layout: the EMA weights are the ones to load, 'model' holds the (different) raw weights.
    raw = {k: torch.zeros_like(v) for k, v in state.items()}
    args = argparse.Namespace(model="DiT-S/2", image_size=64, global_batch_size=256, results_dir="results")
    torch.save({"model": raw, "ema": state, "opt": {"state": {}, "param_groups": []}, "args": args},
               tmp_path / "0050000.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    for name in ("flat.pt", "0050000.pt", "ddp.pt"):
        loaded = create_dit("dit_s_2", checkpoint_path=tmp_path / name, **TINY).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), expected), name


def test_filter_recomputes_pos_embed_and_names_bad_keys():
    model = tiny_dit()
    state = model.state_dict()
    without = {k: v for k, v in state.items() if k != "pos_embed"}
    assert torch.allclose(dit_checkpoint_filter_fn(without, model)["pos_embed"], state["pos_embed"], atol=1e-7)
    # A table stored for another grid (e.g. the 512 model's) is replaced by this model's table.
    other_grid = dict(state, pos_embed=torch.zeros(1, 64, 64))
    assert torch.equal(dit_checkpoint_filter_fn(other_grid, model)["pos_embed"], state["pos_embed"])

    broken = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    broken["blocks.1.mlp.fc3.bias"] = torch.zeros(64)
    message = r"missing keys: blocks.1.mlp.fc2.bias; unexpected keys: blocks.1.mlp.fc3.bias"
    with pytest.raises(ValueError, match=message):
        dit_checkpoint_filter_fn(broken, model)
    wrong = dict(state, **{"y_embedder.embedding_table.weight": torch.zeros(1001, 64)})
    with pytest.raises(ValueError, match=r"y_embedder.embedding_table.weight \(1001, 64\) vs \(11, 64\)"):
        dit_checkpoint_filter_fn(wrong, model)


class _Opaque:
    """Stands for any pickled object that torch.load(weights_only=True) refuses."""


def test_untrusted_pickles_are_refused(tmp_path):
    torch.save({"ema": tiny_dit().state_dict(), "extra": _Opaque()}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        create_dit("dit_s_2", checkpoint_path=tmp_path / "odd.pt", **TINY)
