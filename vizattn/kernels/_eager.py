"""How an op with Triton kernels is called: through its ``torch.library`` custom op under ``torch.compile``, directly
in eager mode.

A custom op with a registered autograd formula costs a few hundred microseconds of host time per forward + backward
on the H200 machine's CPU (dispatch, the output aliasing check, the generated autograd function; measured
2026-11-29 with torch 2.11: na2d forward alone 115 us through the op against 79 us for the launcher, forward +
backward 907 us against 225 us), as much as the kernels of a small map. :class:`KernelOp` keeps the custom op for
``torch.compile`` (one opaque node with a fake implementation) and for ``torch.ops.vizattn.*`` callers, and runs eager
calls through a plain ``autograd.Function`` built from the same pieces, or straight through the launcher when no
gradient is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

__all__ = ["KernelOp"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)


class KernelOp:
    """One op's custom op and its eager twin, sharing the forward, the saved context and the backward formula.

    Args:
        op: the forward custom op; its autograd formula is registered here.
        forward: the launcher the op wraps, ``forward(*args)``.
        backward_op: the backward custom op.
        backward_impl: the launcher ``backward_op`` wraps (same arguments and results).
        setup_context: ``setup_context(ctx, inputs, output)`` as for ``register_autograd``.
        backward: ``backward(ctx, run_backward, *grads)``: the formula, calling ``run_backward`` (the backward op
            under the custom op's autograd, the launcher in eager mode) and returning one gradient per input.
    """

    def __init__(
        self,
        op,
        forward: Callable,
        backward_op,
        backward_impl: Callable,
        setup_context: Callable,
        backward: Callable,
    ) -> None:
        op.register_autograd(lambda ctx, *grads: backward(ctx, backward_op, *grads), setup_context=setup_context)

        class Eager(torch.autograd.Function):
            @staticmethod
            def forward(*args):
                return forward(*args)

            @staticmethod
            def setup_context(ctx, inputs, output):
                # Outputs the loss does not use (the logsumexp) get None instead of a zero tensor per backward.
                ctx.set_materialize_grads(False)
                setup_context(ctx, inputs, output)

            @staticmethod
            @once_differentiable
            def backward(ctx, *grads):
                if grads[0] is None:  # the main output took no part in the loss: no gradient reaches the inputs
                    return (None,) * len(ctx.needs_input_grad)
                return backward(ctx, backward_impl, *grads)

        Eager.__name__ = Eager.__qualname__ = f"Eager_{getattr(op, '_name', 'op')}"
        self.op = op
        self.eager = Eager
        self._forward = forward

    def __call__(self, *args):
        """Run the op: the custom op while compiling or on tensor subclasses (fake tensors have no data for the
        launcher), the eager function when a gradient is wanted, else the launcher alone."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if torch.compiler.is_compiling() or any(type(t) not in _PLAIN for t in tensors):
            return self.op(*args)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self.eager.apply(*args)
        return self._forward(*args)
