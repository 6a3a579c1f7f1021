"""Helpers of the tool tests: a tiny BiFormer, its command line, and runners for the two tools."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from vizattn.train import TrainResult, add_config_arguments, config_from_args, train

ROOT = Path(__file__).resolve().parents[2]
# BiFormer-T cut to one block of 32 channels per stage: 32 px inputs give 8x8, 4x4, 2x2, 1x1 maps, 2x2 regions.
TINY_MODEL = ["--model", "biformer_t", "--model-kwargs",
              "{depths: [1, 1, 1, 1], embed_dims: [32, 32, 32, 32], n_win: 2, topks: [1, 2, 4, null]}"]


def tiny_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    """Command line of a tiny CPU run: batch 8 gives 3 steps per epoch on ``shapes_tiny``."""
    return [*TINY_MODEL, "--data-dir", str(data_dir), "--input-size", "32", "--batch-size", "8", "--workers", "0",
            "--epochs", "3", "--warmup-epochs", "1", "--log-interval", "1", "--output", str(output), *extra]


def run_train(argv: list[str]) -> TrainResult:
    """The training library, fed exactly what tools/train.py would parse."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return train(config_from_args(parser.parse_args(argv)))


def load_tool(name: str):
    """Import tools/<name>.py as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
