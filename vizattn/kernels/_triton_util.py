"""Small pieces the Triton attention kernels share (routed attention, the halo kernels of na2d and CLEAR)."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

__all__ = [
    "cdiv", "dot", "dot_onto", "dot_precision", "head_block", "head_split", "next_pow2", "register_cap", "row_chunks",
    "sm_count",
]


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1). The launchers' own: ``triton.next_power_of_2`` and
    ``triton.cdiv`` are constexpr functions in Triton >= 3.5 and cost about 3 us per host call, several per launch."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` of ints (see :func:`next_pow2`)."""
    return -(-a // b)


def row_chunks(m: int, block_m: int, programs: int) -> tuple[int, int]:
    """Split ``m`` rows over about ``programs`` programs, each a run of whole ``block_m``-row tiles: ``(rows per
    program, programs)`` (fewer programs when there are fewer tiles)."""
    rows = cdiv(cdiv(m, min(programs, cdiv(m, block_m))), block_m) * block_m
    return rows, cdiv(m, rows)


def register_cap(cap: int | None, interpret: bool | None = None) -> dict[str, int]:
    """The launch option capping a program's registers per thread at ``cap`` (Triton's ``maxnreg``): none without a
    cap or under the interpreter (``interpret`` None reads Triton's setting), which takes no compiler options."""
    if interpret is None:
        interpret = bool(triton.knobs.runtime.interpret)
    return {} if cap is None or interpret else {"maxnreg": cap}


@functools.lru_cache(maxsize=16)
def sm_count(device: torch.device) -> int:
    """SMs of a GPU; under the interpreter, 1 (so the launchers make few, long programs)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr):
    """``tl.dot`` with the precision :func:`dot_precision` chose for the input dtype."""
    if DOT_PRECISION == "upcast":
        # Triton's interpreter multiplies bfloat16 tiles wrongly; their exact float32 products are the same math.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def dot_onto(a, b, acc, DOT_PRECISION: tl.constexpr):
    """``acc + a @ b`` as :func:`dot`, the product accumulated onto ``acc`` by the tensor cores. Not the same as
    ``dot(a, b) + acc`` when ``acc`` holds large terms: Triton fuses that sum into a product too, with either side as
    the accumulator, and the tensor cores align a sum to its largest term (routed attention adds a mask of 0 /
    -2**20 this way, so that its scores stay exact where the mask is 0)."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


def head_block(d: int) -> int:
    """Block size covering a head dim: head dims that are not powers of two (72, 40) are padded up and masked."""
    return max(16, next_pow2(d))


def head_split(d: int) -> tuple[int, int]:
    """Blocks ``(main, tail)`` covering a head dim with the fewest columns two powers of two >= 16 can, for kernels
    that split their head dim: 72 as 64 + 16, 40 as 32 + 16, 96 as 64 + 32 (80, 48, 96 columns of dot products instead
    of :func:`head_block`'s 128, 64, 128). ``tail`` is 0 (one block, :func:`head_block`'s) when a split covers no fewer
    columns: powers of two, 17-32, 49-63, 97-127."""
    block = head_block(d)
    main = block // 2
    if main < 16:
        return block, 0
    tail = head_block(d - main)
    return (main, tail) if main + tail < block else (block, 0)


def dot_precision(dtype: torch.dtype) -> str:
    """The ``DOT_PRECISION`` constexpr of :func:`dot` for inputs of ``dtype``."""
    # float32 inputs get true float32 products so they match the float32 reference; 16-bit inputs ignore it.
    if dtype == torch.float32:
        return "ieee"
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return "upcast"
    return "tf32"
