"""Faster stand-ins for two conversion helpers of Triton's interpreter (CPU runs of the kernel tests), installed by
tests/conftest.py and compared with the originals by tests/kernels/test_interpreter.py. Each is built from the
function it replaces (``general``), keeps it as its ``general`` attribute and falls back to it outside its fast path.
"""

from __future__ import annotations

import numpy as np
import triton.language as tl

__all__ = ["fast_bfloat16_casts", "memoized_np_dtype"]


def fast_bfloat16_casts(general):
    """``_convert_float`` with bfloat16 <-> float32 by 16-bit shifts where that is the interpreter's own result.

    The general route takes any pair of float formats, with a loop over the mantissa bits whenever an input has a zero
    exponent, which every zero has (masked loads fill with zeros): about a tenth of a bfloat16 kernel test's time.
    Upcasts and truncating downcasts (``rounding_mode`` None: what a kernel's ``.to(tl.bfloat16)`` runs under the
    interpreter) of inputs without subnormals are a 16-bit shift there; anything else (other formats, round-to-nearest,
    subnormal inputs, which the general route converts its own way) still takes it.
    """

    def convert(input, input_dtype, output_dtype, rounding_mode):
        up = input_dtype == tl.bfloat16 and output_dtype == tl.float32
        down = input_dtype == tl.float32 and output_dtype == tl.bfloat16 and rounding_mode is None
        if up or down:
            # (ascontiguousarray makes 0-d inputs 1-d: the result takes the input's shape back, as the general route)
            bits = np.ascontiguousarray(input).view(np.uint16 if up else np.uint32)
            exponent_bits, mantissa_bits = (0x7F80, 0x007F) if up else (0x7F800000, 0x007FFFFF)
            if not np.any(((bits & exponent_bits) == 0) & ((bits & mantissa_bits) != 0)):
                if up:
                    return (bits.astype(np.uint32) << np.uint32(16)).reshape(np.shape(input))
                return (bits >> np.uint32(16)).astype(np.uint16).reshape(np.shape(input))
        return general(input, input_dtype, output_dtype, rounding_mode)

    convert.general = general
    return convert


def memoized_np_dtype(general):
    """``_get_np_dtype`` memoized by element type: the interpreter's builds a dictionary of 17 numpy dtypes at each of
    its calls (several per interpreted operation); its answer depends on the element type alone."""
    known: dict = {}

    def np_dtype(tt_dtype):
        key = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        if isinstance(key, tl.pointer_type):  # not hashable; uint64 addresses
            return general(key)
        found = known.get(key)
        if found is None:
            found = known[key] = general(key)
        return found

    np_dtype.general = general
    return np_dtype
