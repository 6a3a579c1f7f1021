"""The stand-ins tests/conftest.py installs into Triton's interpreter (CPU runs of the kernel tests) return what the
interpreter's own functions return, bit for bit. Built here from the originals, so this runs with or without a GPU."""

from __future__ import annotations

import os

import numpy as np
from interpreter_patches import fast_bfloat16_casts, memoized_np_dtype
from triton.runtime import interpreter


def _both(name: str, make):
    """(stand-in, original) of the interpreter function ``name`` (the original kept by an installed stand-in)."""
    installed = getattr(interpreter, name)
    if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels run interpreted: tests/conftest.py installed it
        assert hasattr(installed, "general"), f"tests/conftest.py did not install a stand-in for {name}"
    general = getattr(installed, "general", installed)
    return make(general), general


def test_bfloat16_casts_equal_the_interpreters():
    import triton.language as tl

    fast, general = _both("_convert_float", fast_bfloat16_casts)
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -1.2e-38, 1.0 + 2**-8, 1.0 + 2**-9], np.float32)
    scales = (1e-30, 1e-3, 1.0, 1e30)
    f32 = np.concatenate([rng.standard_normal(4096).astype(np.float32) * s for s in scales] + [specials])
    bf16 = rng.integers(0, 1 << 16, 8192, dtype=np.uint16)
    bf16 = bf16[((bf16 & 0x7F80) != 0) | ((bf16 & 0x7F) == 0)]  # subnormals take the general route, checked below
    cases = [
        (f32, tl.float32, tl.bfloat16),
        (f32[:16384].reshape(8, -1)[:, 3:], tl.float32, tl.bfloat16),  # not contiguous
        (np.array(1.7, np.float32), tl.float32, tl.bfloat16),  # 0-d
        (bf16, tl.bfloat16, tl.float32),
        (bf16[: bf16.size // 2 * 2].reshape(2, -1), tl.bfloat16, tl.float32),
        (np.array([1e-39, 3.0], np.float32), tl.float32, tl.bfloat16),  # a subnormal: the general route
        (np.array([0x0001, 0x3F80], np.uint16), tl.bfloat16, tl.float32),
    ]
    for data, src, dst in cases:
        ours, theirs = fast(data, src, dst, None), general(data, src, dst, None)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (src, dst, data.shape)
        assert np.array_equal(ours, theirs), (src, dst, data.shape)


def test_numpy_dtypes_equal_the_interpreters():
    import triton.language as tl

    fast, general = _both("_get_np_dtype", memoized_np_dtype)
    types = [tl.int1, tl.int8, tl.int16, tl.int32, tl.int64, tl.uint8, tl.uint32, tl.float16, tl.bfloat16,
             tl.float32, tl.float64, tl.pointer_type(tl.float32)]
    for t in types:
        for ty in (t, tl.block_type(t, [4, 8]), tl.block_type(t, [16])):
            assert fast(ty) == general(ty), ty
            assert fast(ty) == general(ty), ty  # memoized
