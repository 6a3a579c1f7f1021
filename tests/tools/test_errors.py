"""User mistakes end with one clear sentence (exit status 2, no traceback), and the config layering works."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from trainkit import ROOT, TINY_MODEL, load_tool, tiny_args

from vizattn.train import ConfigError, TrainConfig, add_config_arguments, config_from_args

CONFIGS = sorted((ROOT / "configs" / "cls").glob("*.yaml"))


def _error(capsys, tool: str, argv: list[str]) -> str:
    assert load_tool(tool).main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{tool}.py: error: ")
    return lines[0]


def _cfg(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_wrong_data_folder(capsys, tmp_path, shapes_tiny):
    missing = tmp_path / "imagenet"
    msg = _error(capsys, "train", tiny_args(missing, tmp_path))
    assert f"--data-dir {missing}: no such folder" in msg

    msg = _error(capsys, "train", tiny_args(shapes_tiny / "train", tmp_path))
    assert f"--data-dir {shapes_tiny / 'train'} has no train/ folder" in msg
    assert f"pass --data-dir {shapes_tiny}" in msg

    msg = _error(capsys, "validate", ["--model", "biformer_t", "--data-dir", str(missing)])
    assert f"--data-dir {missing}: no such folder" in msg


def test_missing_and_unknown_config_keys(capsys, tmp_path, shapes_tiny):
    config = tmp_path / "no_model.yaml"
    config.write_text(f"data_dir: {shapes_tiny}\nepochs: 2\n")
    msg = _error(capsys, "train", ["--config", str(config)])
    assert f"Missing required key 'model': {config} has no `model:` key and --model is not on the command line" in msg

    config.write_text(f"model: biformer_t\ndata_dir: {shapes_tiny}\nwarmup_epoch: 3\n")
    msg = _error(capsys, "train", ["--config", str(config)])
    assert f"{config}: unknown key 'warmup_epoch'. Did you mean 'warmup_epochs'" in msg

    config.write_text(f"model: biformer_t\ndata_dir: {shapes_tiny}\nepochs: many\n")
    msg = _error(capsys, "train", ["--config", str(config)])
    assert f"{config}: epochs must be an integer, got 'many'" in msg

    msg = _error(capsys, "train", ["--config", str(tmp_path / "absent.yaml")])
    assert f"--config {tmp_path / 'absent.yaml'}: no such file" in msg

    msg = _error(capsys, "train", [*tiny_args(shapes_tiny, tmp_path), "--lr-base", "512"])
    assert "unknown option --lr-base" in msg and "--lr-base-batch" in msg


def test_bad_model_name(capsys, tmp_path, shapes_tiny):
    msg = _error(capsys, "train", ["--model", "biformer_xs", "--data-dir", str(shapes_tiny)])
    assert "Unknown model 'biformer_xs'" in msg and "Close names: biformer_" in msg
    msg = _error(capsys, "validate", ["--model", "biformer_xs", "--data-dir", str(shapes_tiny)])
    assert "Unknown model 'biformer_xs'" in msg


def test_bad_model_name_from_the_command_line(shapes_tiny):
    # The real script in a fresh interpreter: exit status 2, the sentence on stderr, no traceback.
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--model", "biformer_xs", "--data-dir",
                           str(shapes_tiny)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("train.py: error: Unknown model 'biformer_xs'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_other_user_errors(capsys, tmp_path, shapes_tiny):
    msg = _error(capsys, "train", tiny_args(shapes_tiny, tmp_path, "--mixup", "0.8", "--batch-size", "7"))
    assert "batch_size must be even" in msg
    msg = _error(capsys, "train", tiny_args(shapes_tiny, tmp_path, "--batch-size", "64"))
    assert "batch_size 64 is larger than the 30 training images" in msg
    msg = _error(capsys, "train", tiny_args(shapes_tiny, tmp_path, "--pretrained-path", str(tmp_path / "w.pth")))
    assert f"--pretrained-path {tmp_path / 'w.pth'}: no such file" in msg
    msg = _error(capsys, "train", tiny_args(shapes_tiny, tmp_path, "--resume", str(tmp_path / "last.pth")))
    assert f"{tmp_path / 'last.pth'}: no such checkpoint file" in msg
    msg = _error(capsys, "validate", ["--checkpoint", str(ROOT / "pyproject.toml"), "--data-dir", str(shapes_tiny)])
    assert "is not a vizattn training checkpoint" in msg


def test_command_line_overrides_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: biformer_t\ndata_dir: /data\nlr: 5e-4\nepochs: 10\nmodel_ema: true\n")
    cfg = _cfg("--config", str(config), "--epochs", "3", "--no-model-ema", "--scale", "[0.5, 1.0]")
    assert cfg.lr == 5e-4 and isinstance(cfg.lr, float)  # YAML reads 5e-4 as a string; it is taken as a number
    assert (cfg.epochs, cfg.model_ema, cfg.scale) == (3, False, [0.5, 1.0])
    assert cfg.experiment == "run"  # the run folder is named after the config file
    assert TrainConfig().batch_size == cfg.batch_size  # keys set nowhere keep their defaults
    with pytest.raises(ConfigError, match="--model-kwargs: model_kwargs must be a mapping"):
        _cfg(*TINY_MODEL[:2], "--data-dir", "/data", "--model-kwargs", "[1, 2]")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_configs_load(path: Path):
    import timm

    import vizattn  # noqa: F401

    cfg = _cfg("--config", str(path), "--data-dir", "/data")
    assert timm.is_model(cfg.model)
    assert cfg.experiment == path.stem
    if path.stem.startswith("biformer_"):  # rayleizhu/BiFormer configs/train_args.yaml, main.py, README
        assert (cfg.epochs, cfg.input_size, cfg.model_ema_decay, cfg.aug_repeats) == (300, 224, 0.99996, 3)
        assert cfg.lr * 8 * cfg.batch_size / cfg.lr_base_batch == pytest.approx(1e-3)  # 8 GPUs x 128, DeiT scaling
    if path.stem.startswith(("nat_", "dinat_")):  # SHI-Labs classification/configs/*.yml and train.py defaults
        assert (cfg.epochs, cfg.cooldown_epochs, cfg.warmup_epochs, cfg.lr, cfg.min_lr, cfg.clip_grad) == (
            300, 10, 20, 1e-3, 5e-6, 5.0)
