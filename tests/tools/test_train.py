"""tools/train.py and vizattn.train: exact resume, DDP under torchrun, validate.py agreement, output files."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from trainkit import ROOT, TINY_MODEL, load_tool, run_train, tiny_args

from vizattn.train.distributed import weights_digest

# Every source of randomness the recipes use: RandAugment, random erasing, mixup/cutmix, drop path, repeated
# augmentation; plus the state that must survive a resume: AdamW moments, EMA, the per-step schedule.
FULL_RECIPE = ["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
               "--drop-path", "0.1", "--aug-repeats", "3", "--model-ema", "--model-ema-decay", "0.9", "--clip-grad",
               "1.0", "--seed", "3"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_matches_uninterrupted_run(shapes_tiny, tmp_path):
    # 3 steps per epoch: the break at step 2 is mid-epoch and the resumed run crosses an epoch boundary.
    full = run_train(tiny_args(shapes_tiny, tmp_path, *FULL_RECIPE, "--max-steps", "4", "--experiment", "full"))
    first = run_train(tiny_args(shapes_tiny, tmp_path, *FULL_RECIPE, "--max-steps", "2", "--experiment", "split"))
    # A resumed run writes into its checkpoint's folder: resume from a copy so the step-2 checkpoint stays.
    (tmp_path / "resumed").mkdir()
    shutil.copy(first.output_dir / "last.pth", tmp_path / "resumed" / "last.pth")
    # The resumed half loads its images in two worker processes: sample augmentations must not depend on that.
    second = run_train(tiny_args(shapes_tiny, tmp_path, *FULL_RECIPE, "--max-steps", "4", "--workers", "2",
                                 "--resume", str(tmp_path / "resumed" / "last.pth")))
    assert second.output_dir == (tmp_path / "resumed").resolve()

    assert sorted(full.losses) == [1, 2, 3, 4]
    assert first.losses == {1: full.losses[1], 2: full.losses[2]}
    assert second.losses == {3: full.losses[3], 4: full.losses[4]}
    assert len(set(full.losses.values())) == 4  # the losses do move: equality above is not a constant's

    a, b = _state(full.output_dir / "last.pth"), _state(second.output_dir / "last.pth")
    assert (a["epoch"], a["epoch_step"], a["global_step"]) == (b["epoch"], b["epoch_step"], b["global_step"]) == (
        1, 1, 4)
    assert weights_digest(a["state_dict"]) == weights_digest(b["state_dict"]) == full.digest
    assert weights_digest(a["state_dict_ema"]) == weights_digest(b["state_dict_ema"])
    assert weights_digest(a["state_dict"]) != weights_digest(_state(first.output_dir / "last.pth")["state_dict"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["metrics"] == b["metrics"]


def test_output_folder_and_validate_agree(shapes_tiny, tmp_path, capsys):
    result = run_train(tiny_args(shapes_tiny, tmp_path, "--epochs", "2", "--experiment", "run"))
    out = result.output_dir
    assert sorted(p.name for p in out.iterdir()) == ["args.yaml", "best.pth", "last.pth", "summary.csv"]

    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["model"] == "biformer_t" and args["input_size"] == 32 and args["epochs"] == 2
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["3", "6"]
    assert float(rows[-1]["top1"]) == pytest.approx(result.last["top1"])

    ckpt = _state(out / "last.pth")
    assert ckpt["pretrained_cfg"]["input_size"] == (3, 32, 32)
    assert ckpt["metrics"]["top1"] == result.last["top1"]

    validate = load_tool("validate")
    assert validate.main(["--checkpoint", str(out / "last.pth"), "--data-dir", str(shapes_tiny), "--workers", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    top1, top5, loss = map(float, re.match(r"top-1 ([\d.]+)%\s+top-5 ([\d.]+)%\s+loss ([\d.]+)", line).groups())
    # The printed values are rounded; the library result is compared exactly.
    assert (top1, top5) == (round(result.last["top1"], 2), round(result.last["top5"], 2))
    assert loss == pytest.approx(result.last["loss"], abs=1e-4)
    from vizattn.train import validate as validate_fn

    again = validate_fn(str(shapes_tiny), str(out / "last.pth"), workers=0)
    assert (again.metrics.top1, again.metrics.top5) == (result.last["top1"], result.last["top5"])
    assert again.metrics.loss == pytest.approx(result.last["loss"], rel=1e-6)
    assert again.metrics.count == 20


def test_torchrun_two_ranks_hold_identical_weights(shapes_tiny, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tools" / "train.py"),
           *tiny_args(shapes_tiny, tmp_path, "--batch-size", "4", "--max-steps", "2", "--model-ema",
                      "--experiment", "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d)/2: weights sha256 ([0-9a-f]{64})", proc.stdout))
    assert set(digests) == {"0", "1"}, proc.stdout[-3000:]
    assert digests["0"] == digests["1"]
    assert "2 process(es) on cpu" in proc.stdout and "global batch 8" in proc.stdout

    ckpt = _state(tmp_path / "ddp" / "last.pth")
    assert ckpt["global_step"] == 2
    assert weights_digest(ckpt["state_dict"]) == digests["0"]  # rank 0 saved what every rank holds


def test_train_tool_prints_result_and_evaluate_command(shapes_tiny, tmp_path, capsys):
    train = load_tool("train")
    assert train.main(tiny_args(shapes_tiny, tmp_path, "--epochs", "1", "--experiment", "cli")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3] == f"checkpoint: {tmp_path / 'cli' / 'best.pth'}"
    assert re.fullmatch(rf"evaluate it: \S*python\S* tools/validate.py --checkpoint {tmp_path / 'cli' / 'best.pth'} "
                        rf"--data-dir {shapes_tiny} --workers 0", lines[-2])
    assert re.match(r"best top-1 [\d.]+% \(top-5 [\d.]+%\) at epoch 1 step 3, biformer_t", lines[-1])
    assert re.search(r"epoch 1/1  3/3  step 3  loss [\d.]+  lr [\d.e+-]+  \d+ img/s  eta 0:00:00", "\n".join(lines))


def test_a_second_run_gets_a_new_folder(shapes_tiny, tmp_path):
    one = run_train(tiny_args(shapes_tiny, tmp_path, "--max-steps", "1", "--experiment", "same"))
    two = run_train(tiny_args(shapes_tiny, tmp_path, "--max-steps", "1", "--experiment", "same"))
    assert one.output_dir.name == "same" and two.output_dir.name == "same-2"


def test_pretrained_path_loads_through_the_family_filter(shapes_tiny, tmp_path):
    # A training checkpoint is a {'state_dict': ...} container, which BiFormer's checkpoint_filter_fn unwraps, as it
    # does the official {'model': ...} files; a classifier of another width is dropped and re-initialised.
    from vizattn.train.models import build_model

    run = run_train(tiny_args(shapes_tiny, tmp_path, "--max-steps", "2", "--experiment", "source"))
    saved = _state(run.output_dir / "last.pth")["state_dict"]
    kwargs = yaml.safe_load(TINY_MODEL[3])
    same = build_model("biformer_t", 10, kwargs, pretrained_path=str(run.output_dir / "last.pth")).state_dict()
    assert weights_digest(same) == weights_digest(saved)
    other = build_model("biformer_t", 5, kwargs, pretrained_path=str(run.output_dir / "last.pth")).state_dict()
    assert other["head.weight"].shape == (5, 32)
    assert all(torch.equal(other[k], v) for k, v in saved.items() if not k.startswith("head."))


def test_randaugment_posterize_at_full_magnitude():
    # The recipes' rand-m9-mstd0.5 reaches magnitude 10, where PosterizeIncreasing keeps 0 bits: Pillow >= 12 raises
    # there; vizattn.train gives the black image older Pillow gave.
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    import vizattn.train.loaders  # noqa: F401  (patches timm's posterize)

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=0)(img).getpixel((0, 0)) == (192, 96, 48)
