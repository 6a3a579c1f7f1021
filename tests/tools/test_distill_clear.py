"""CLEAR distillation end to end at laptop scale: a tiny DiT teacher trained on latents with long-range structure, its
teacher set, a CLEAR student distilled through tools/distill_clear.py, and sampling through tools/sample_dit.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from vizattn.blocks.clear import ClearAttention
from vizattn.diffusion import create_dit
from vizattn.diffusion.distill import (
    build_student,
    generate_teacher_set,
    load_student,
    reinit_zero_layers_,
    synthetic_latents,
    train_teacher,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import distill_clear  # noqa: E402
import sample_dit  # noqa: E402

TINY = dict(depth=4, hidden_size=64, num_heads=4, num_classes=8)
LATENT = 24  # 12 x 12 tokens at patch 2


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A teacher trained for 200 steps (never a fresh DiT: its adaLN-Zero output is exactly zero), saved as the
    official flat state dict."""
    torch.manual_seed(0)
    teacher = create_dit("dit_s_2", input_size=LATENT, **TINY)
    latents, labels = synthetic_latents(512, LATENT, TINY["num_classes"], seed=0)
    train_teacher(teacher, latents, labels, steps=200, batch_size=16, lr=1e-3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return path


def _config(tmp_path: Path, teacher: Path, **over) -> Path:
    cfg = dict(model="dit_s_2", image_size=LATENT * 8, model_kwargs=TINY, teacher_path=str(teacher), radius=2,
               data_dir=str(tmp_path / "teacher_set"), num_samples=192, gen_batch_size=32, gen_steps=10,
               gen_cfg_scale=1.5, steps=150, batch_size=16, lr=1e-3, eval_samples=32, eval_interval=50,
               log_interval=50, save_interval=50, grad_checkpointing=True, output=str(tmp_path / "runs"))
    cfg.update(over)
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_distillation_halves_the_error_and_samples(teacher_file, tmp_path, capsys):
    # Distillation terms dominate here (L_diff weighted 0.2, not 1): the teacher set of a 200-step teacher is small
    # and noisy, so DiT's own loss on it mostly fits the teacher's sampling errors rather than the teacher. 100 steps
    # (the error fell 0.0336 -> 0.0116 when this was written); gradient checkpointing (the same numbers, slower) runs
    # in the resume test.
    config = _config(tmp_path, teacher_file, loss_diff_weight=0.2, steps=100, grad_checkpointing=False)
    assert distill_clear.main(["--config", str(config)]) == 0
    line = _last_line(capsys)
    assert line.startswith("distilled 100 steps")
    ckpt = torch.load(tmp_path / "runs" / "distill" / "last.pth", weights_only=False)
    before, after = ckpt["error_before"], ckpt["history"][-1]["error"]
    assert before > 0.01, "the teacher does not use attention beyond the radius: the test would prove nothing"
    assert after <= 0.5 * before, (before, after)
    buckets = ckpt["history"][-1]["errors"]
    assert buckets["all"] == after and len(buckets) > 2 and all(v >= 0 for v in buckets.values())
    assert all(".attn.qkv." in k or ".attn.proj." in k for k in ckpt["student"])  # only the trained part is saved

    student = load_student(tmp_path / "runs" / "distill" / "last.pth")
    assert all(isinstance(b.attn, ClearAttention) and b.attn.radius == 2 for b in student.blocks)
    out = tmp_path / "samples"
    assert sample_dit.main(["--student", str(tmp_path / "runs" / "distill" / "last.pth"), "--classes", "1", "5",
                            "--sampler", "ddim", "--steps", "4", "--cfg-scale", "2.0", "--out", str(out)]) == 0
    saved = torch.load(out / "latents.pt", weights_only=False)
    assert saved["latents"].shape == (2, 4, LATENT, LATENT) and torch.isfinite(saved["latents"]).all()
    assert saved["labels"].tolist() == [1, 5]


def test_resume_continues_the_run(teacher_file, tmp_path, capsys):
    # The recipe's optimizer (Prodigy), whose state must survive the resume too.
    config = _config(tmp_path, teacher_file, num_samples=48, gen_batch_size=16, gen_steps=2, eval_samples=16,
                     steps=2, save_interval=1, eval_interval=1, opt="prodigy", lr=1.0, weight_decay=1e-4)
    assert distill_clear.main(["--config", str(config)]) == 0
    run = tmp_path / "runs" / "distill"
    first = torch.load(run / "last.pth", weights_only=False)
    assert first["step"] == 2
    assert distill_clear.main(["--config", str(config), "--steps", "4", "--resume", str(run / "last.pth")]) == 0
    assert _last_line(capsys).startswith("distilled 4 steps")
    second = torch.load(run / "last.pth", weights_only=False)
    assert second["step"] == 4 and second["error_before"] == first["error_before"]
    assert [h["step"] for h in second["history"]] == [1, 2, 3, 4]
    assert any(not torch.equal(second["student"][k], first["student"][k]) for k in first["student"])
    assert second["optimizer"]["param_groups"][0]["k"] == 4  # Prodigy's own step count continued


def test_teacher_set_resumes_identically(tmp_path):
    torch.manual_seed(0)
    teacher = reinit_zero_layers_(create_dit("dit_s_2", input_size=8, **TINY)).eval()
    folder = generate_teacher_set(teacher, tmp_path / "set", 40, batch_size=16, sampler="ddpm", steps=3,
                                  cfg_scale=2.0, seed=3, progress=False)
    shards = sorted(folder.glob("shard_*.pt"))
    assert len(shards) == 3
    full = [torch.load(s) for s in shards]
    assert [len(s["labels"]) for s in full] == [16, 16, 8]
    shards[1].unlink()  # an interrupted generation
    generate_teacher_set(teacher, folder, 40, batch_size=16, sampler="ddpm", steps=3, cfg_scale=2.0, seed=3,
                         progress=False)
    again = torch.load(shards[1])
    assert torch.equal(again["latents"], full[1]["latents"]) and torch.equal(again["labels"], full[1]["labels"])
    with pytest.raises(ValueError, match="steps"):
        generate_teacher_set(teacher, folder, 40, batch_size=16, sampler="ddpm", steps=4, cfg_scale=2.0, seed=3)


def test_student_with_radius_beyond_the_grid_equals_teacher():
    torch.manual_seed(0)
    teacher = reinit_zero_layers_(create_dit("dit_s_2", input_size=12, **TINY)).eval()
    student = build_student(teacher, radius=9).eval()  # 6x6 tokens: diagonal 7.1 < 9
    x, t, y = torch.randn(2, 4, 12, 12), torch.tensor([3, 700]), torch.tensor([1, 8])
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, y), teacher(x, t, y), rtol=0, atol=1e-5)
        assert not torch.allclose(build_student(teacher, radius=2).eval()(x, t, y), teacher(x, t, y), atol=1e-3)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.{p}" for i in range(4) for p in ("qkv.weight", "qkv.bias", "proj.weight",
                                                                           "proj.bias")}


def test_bad_configs(tmp_path, capsys):
    assert distill_clear.main(["--data-dir", str(tmp_path), "--radius", "0", "--random-teacher"]) == 2
    assert "radius must be at least 1" in capsys.readouterr().err
    assert distill_clear.main(["--data-dir", str(tmp_path)]) == 2
    assert "exactly one teacher source" in capsys.readouterr().err
    assert distill_clear.main(["--data-dir", str(tmp_path), "--radius", "3", "--random-teacher", "--radus", "2"]) == 2
    assert "--radius" in capsys.readouterr().err


def test_sample_dit_decodes_with_a_vae(tmp_path, capsys):
    from diffusers import AutoencoderKL  # in the dev extra
    torch.manual_seed(0)
    teacher = reinit_zero_layers_(create_dit("dit_s_2", input_size=8, **TINY))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    vae.save_pretrained(tmp_path / "vae")
    args = ["--model", "dit_s_2", "--image-size", "64", "--teacher-path", str(tmp_path / "teacher.pt"),
            "--classes", "3", "7", "--sampler", "ddpm", "--steps", "3", "--out", str(tmp_path / "out"),
            "--vae", str(tmp_path / "vae")]
    assert sample_dit.main(args) == 2  # the tiny teacher does not fit dit_s_2's default shapes
    assert "sample_dit.py: error:" in capsys.readouterr().err
    assert sample_dit.main(args + ["--model-kwargs", "{depth: 4, hidden_size: 64, num_heads: 4, num_classes: 8}"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["000_class3.png", "001_class7.png"]
    assert "sampled 2 latents of shape (4, 8, 8)" in capsys.readouterr().out
    assert sample_dit.main(["--pretrained", "--teacher-path", "x.pt"]) == 2
    assert "exactly one of --pretrained and --teacher-path" in capsys.readouterr().err
