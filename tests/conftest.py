import os

import torch

# pytest-xdist runs one worker per core: keep each worker's intra-op threads to one so they do not oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Without CUDA the Triton kernels run under the interpreter. Triton reads this when a kernel module is imported, so
# it is set here, before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_the_language_once_per_launch() -> None:
    """Make Triton's interpreter patch ``triton.language`` once per kernel launch instead of once per call.

    The interpreter swaps the language's builtins for its own at each launch (and puts them back after), and again at
    every call of a nested ``@triton.jit`` function, although the launch's swap already covers it: under the
    interpreter the nested calls' swaps (an ``inspect.getmembers`` of the language modules each) took a third of
    the NA kernel tests' time (a tenth of the depthwise ones'). This skips a nested swap where the launch's swap, or an
    earlier nested one still in place (``tl.core``, which ``tl.sum`` needs), covers the same modules; the builtins
    the kernels run are the same objects either way. Interpreter internals that do
    not look as expected (another Triton) leave everything as it is.
    """
    try:
        import inspect
        import threading

        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    real_patch = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    empty_scope = getattr(interpreter, "_LangPatchScope", None)
    if real_patch is None or executor is None or empty_scope is None or not hasattr(empty_scope(), "restore"):
        return
    state = threading.local()

    known: dict[int, frozenset[int]] = {}  # per module (its globals): the language modules it sees

    def languages(fn) -> frozenset[int]:
        found = known.get(id(fn.__globals__))
        if found is None:
            found = frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))
            known[id(fn.__globals__)] = found
        return found

    def patch_lang(fn):
        covered = getattr(state, "covered", None)
        if covered is None:  # outside a launch, or the launch's own swap
            scope = real_patch(fn)
            if getattr(state, "launching", False):
                state.covered = languages(fn)
            return scope
        if languages(fn) <= covered:
            return empty_scope()
        # A module the launch's swap does not cover (``tl.core`` for ``tl.sum``): swapped here, and counted as
        # covered until this swap is undone. Triton 3.8 drops a nested call's scope (never undoes it), so the
        # first ``tl.sum`` of a launch swaps ``tl.core`` and the others skip it.
        scope = real_patch(fn)
        state.covered = covered | languages(fn)
        real_restore = scope.restore

        def restore():
            real_restore()
            state.covered = covered

        scope.restore = restore
        return scope

    real_call = executor.__call__

    def call(self, *args, **kwargs):
        saved = getattr(state, "launching", False), getattr(state, "covered", None)
        state.launching, state.covered = True, None
        try:
            return real_call(self, *args, **kwargs)
        finally:
            state.launching, state.covered = saved

    interpreter._patch_lang = patch_lang
    executor.__call__ = call


def _no_integer_overflow_checks() -> None:
    """Turn off the interpreter's check of every 32-bit integer add, sub and mul for overflow.

    The check redoes each integer operation in int64 and compares it with the int32 range: about a quarter of the
    kernel tests' time. At the interpreter's test sizes no index comes near 2^31, so it cannot fire on the offset
    arithmetic it exists for; the kernels' batch offsets, which overflow int32 only at GPU sizes, are int64 in the
    code. Every result is still compared with its reference.
    """
    try:
        import dataclasses

        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is not None and hasattr(options, "sanitize_overflow"):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def _faster_conversions() -> None:
    """Install :mod:`interpreter_patches`' bfloat16 casts and memoized numpy dtypes into Triton's interpreter (each
    returns what the function it replaces returns, bit for bit; tests/kernels/test_interpreter.py checks)."""
    try:
        import interpreter_patches
        from triton.runtime import interpreter
    except ImportError:
        return
    for name, make in (("_convert_float", interpreter_patches.fast_bfloat16_casts),
                       ("_get_np_dtype", interpreter_patches.memoized_np_dtype)):
        general = getattr(interpreter, name, None)
        if general is not None:
            setattr(interpreter, name, make(general))


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_the_language_once_per_launch()
    _no_integer_overflow_checks()
    _faster_conversions()
