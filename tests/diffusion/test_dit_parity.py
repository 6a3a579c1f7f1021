"""vizattn's DiT equals the official DiT (facebookresearch/DiT ``models.py``) on the golden fixtures.

tests/fixtures/dit was produced by the official code (see tests/fixtures/README.md): a tiny DiT with seeded weights
saved in the official flat layout, with its inputs and outputs. The checkpoint is loaded through ``create_dit``
(``checkpoint_path``, i.e. ``dit_checkpoint_filter_fn`` and a strict load).
"""

from __future__ import annotations

import pytest
import torch
from dit_helpers import FIXTURES, RTOL, TINY, fixture_config, fixture_io, rel_err

from vizattn.diffusion import DiT, create_dit, list_dit_models
from vizattn.diffusion.dit import dit_sincos_pos_embed

# Parameter counts (pos_embed excluded) and state-dict key counts of the OFFICIAL constructors at input_size 32, counted
# by the fixture generator from models.DiT_models.
OFFICIAL_COUNTS = {
    "dit_s_2": (32_865_056, 132),
    "dit_s_4": (32_920_448, 132),
    "dit_s_8": (33_142_016, 132),
    "dit_b_2": (130_315_808, 132),
    "dit_b_4": (130_426_496, 132),
    "dit_b_8": (130_869_248, 132),
    "dit_l_2": (457_840_672, 252),
    "dit_l_4": (457_988_224, 252),
    "dit_l_8": (458_578_432, 252),
    "dit_xl_2": (674_834_720, 292),
    "dit_xl_4": (675_000_704, 292),
    "dit_xl_8": (675_664_640, 292),
}


def _official_model() -> DiT:
    return create_dit("dit_s_2", checkpoint_path=FIXTURES / "checkpoint.pt", **fixture_config()["constructor"]).eval()


def test_fixture_config_is_the_tiny_one():
    cfg = fixture_config()
    assert {k: cfg["constructor"][k] for k in TINY} == TINY
    assert cfg["constructor"]["class_dropout_prob"] == 0.1 and cfg["constructor"]["learn_sigma"] is True
    # The counts above are the generator's: keep them in sync with the fixture.
    official = cfg["official_param_counts_input32"]
    for name, (params, keys) in OFFICIAL_COUNTS.items():
        size, patch = name.split("_")[1:]
        entry = official[f"DiT-{size.upper()}/{patch}"]
        assert (entry["params_without_pos_embed"], entry["keys"]) == (params, keys)


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_parameter_counts_match_official(name):
    with torch.device("meta"):
        model = create_dit(name)
    params = sum(p.numel() for n, p in model.named_parameters() if n != "pos_embed")
    assert (params, len(model.state_dict())) == OFFICIAL_COUNTS[name]
    assert set(list_dit_models()) == set(OFFICIAL_COUNTS)


def test_forward_matches_official():
    io = fixture_io()
    model = _official_model()
    with torch.no_grad():
        assert rel_err(model(io["x"], io["t"], io["y"]), io["out"]) < RTOL


def test_forward_with_cfg_matches_official():
    io = fixture_io()
    model = _official_model()
    with torch.no_grad():
        out = model.forward_with_cfg(io["x_cfg"], io["t_cfg"], io["y_cfg"], float(io["cfg_scale"]))
    assert rel_err(out, io["out_cfg"]) < RTOL


def test_training_mode_label_dropout_matches_official():
    # Same seed, same single torch.rand draw per forward: the same labels are dropped to the null class.
    io, cfg = fixture_io(), fixture_config()
    model = _official_model().train()
    torch.manual_seed(cfg["train_dropout_seed"])
    with torch.no_grad():
        out = model(io["x"], io["t"], io["y"])
    assert rel_err(out, io["out_train"]) < RTOL
    assert io["train_drop_mask"].any()
    labels = torch.where(io["train_drop_mask"], 10, io["y"])
    with torch.no_grad():
        assert rel_err(model.eval()(io["x"], io["t"], labels), io["out_train"]) < RTOL


def test_seeded_init_equals_official_init():
    # Modules are built and initialised in the official order, so the same seed gives the same weights.
    cfg = fixture_config()
    torch.manual_seed(cfg["init_seed"])
    model = DiT(**cfg["constructor"])
    sums = {k: float(v.double().sum()) for k, v in model.state_dict().items()}
    assert sums.keys() == cfg["official_init_checksums"].keys()
    for key, value in cfg["official_init_checksums"].items():
        assert sums[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_pos_embed_tables_match_official():
    io = fixture_io()
    state = torch.load(FIXTURES / "checkpoint.pt", weights_only=True)
    assert torch.allclose(dit_sincos_pos_embed(64, (4, 4)), state["pos_embed"][0], atol=1e-6, rtol=0)
    # The official square table of a 6x6 grid holds (column code | row code) per token; any smaller grid, square or
    # not, is its top-left corner.
    full = io["pos_embed_6x6"].view(6, 6, 64)
    for rows, cols in [(6, 6), (3, 5), (6, 2), (1, 4)]:
        ours = dit_sincos_pos_embed(64, (rows, cols)).view(rows, cols, 64)
        assert torch.allclose(ours, full[:rows, :cols], atol=1e-6, rtol=0), (rows, cols)


def test_small_numerical_choices_are_official():
    # These change the fixture outputs by less than the tolerance (LN eps 1e-5: 2.5e-6 relative), so assert them.
    model = _official_model()
    for block in model.blocks:
        for norm in (block.norm1, block.norm2):
            assert norm.eps == 1e-6 and not norm.elementwise_affine
        assert block.mlp.act.approximate == "tanh"
    assert model.final_layer.norm_final.eps == 1e-6
    emb = model.t_embedder.timestep_embedding(torch.tensor([1.0]), 256)
    expected = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(128) / 128)
    assert torch.allclose(emb[0, :128], torch.cos(expected), atol=1e-6)
    assert torch.allclose(emb[0, 128:], torch.sin(expected), atol=1e-6)
