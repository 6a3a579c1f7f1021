"""What the kernel tests share: the device they run on, dtype ids, the attention kernels' error bounds and the error
measure they are checked with."""

from __future__ import annotations

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative error bounds of the attention kernels (L2 over the tensor, and max-abs over max |ref|) per input dtype.
# 16-bit inputs round q, k, v, p and ds to their precision once each (unit roundoff 2^-9 bf16, 2^-12 fp16); float32
# runs exact float32 dots.
ATTN_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 2e-2), torch.float16: (1.5e-3, 3e-3)}


def rel_errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error, max-abs error over max |ref|), in float64."""
    ours, ref = ours.double(), ref.double()
    l2 = ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    mx = ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    return l2, mx


def split_programs(monkeypatch, kernels, launcher: str, programs: int | None) -> None:
    """Have ``kernels.<launcher>`` run with ``programs=programs`` (tests of a launcher's split of rows over programs;
    None keeps its default)."""
    if programs is None:
        return
    run = getattr(kernels, launcher)
    monkeypatch.setattr(kernels, launcher, lambda *args: run(*args, programs=programs))


def count_device_calls(monkeypatch, module, name: str) -> list:
    """A list that grows by one on each call of the ``@triton.jit`` helper ``module.<name>`` from a kernel, so a test
    can check that a code path ran. Only the interpreter runs kernels as Python; on a GPU the list stays empty."""
    calls = []
    if not ON_GPU:
        real = getattr(module, name)

        def counted(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls
