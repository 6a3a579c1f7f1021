"""2-D tiled halo attention: the mechanism shared by neighborhood attention (:mod:`vizattn.kernels.na2d`) and CLEAR's
circular local attention (:mod:`vizattn.kernels.clear`).

Both ops let a query on an ``H x W`` token map attend to keys near it, with a window that is the same kind of object
along each axis. Split each axis into tiles of ``T`` consecutive queries (per dilation group); the windows of a
tile's queries lie inside a halo of ``T + span - 1`` consecutive keys, ``span`` being how many keys one query can
reach along the axis (``k`` for NA, ``2r - 1`` for a circle of radius ``r``). A 2-D tile is then a small dense
attention of ``T_h * T_w`` queries over ``halo_h * halo_w`` keys with a per-pair mask, built from per-axis tables:

- :mod:`vizattn.kernels._halo2d.tiles`: the per-axis tables (:class:`~vizattn.kernels._halo2d.tiles.AxisTiles`), their
  transpose for the backward (tiles of keys and the halos of the queries that see them) and the PyTorch computation
  of the tiles (the ``'torch'`` backend of both ops);
- :mod:`vizattn.kernels._halo2d.triton`: one fused Triton kernel family (forward; backward as FlashAttention-2's, a
  query-centric dq kernel and key-centric dk/dv kernels, without atomics) whose mask mode is a constexpr: the NA
  window (per-axis tables, relative position bias, dilation) or the truncated circle (from the row and column
  offsets), optionally followed by a dense segment of extra keys that every query sees.

What differs per op (the window of one query along one axis) lives in the op's own ``tiles.py``. The Triton module
is imported by the ops' launchers on first use, never from here: Triton decides at import time whether it compiles
or runs under ``TRITON_INTERPRET=1``.
"""
