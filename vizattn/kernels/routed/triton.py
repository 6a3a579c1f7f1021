"""Triton kernels of routed attention (BiFormer's token attention over routed regions), forward and backward.

The maps stay in their NHWC layout and are read through their strides: q, k and v are usually channel slices of one
projection output, and no kernel copies them. A token is addressed by its image ``n``, its region ``r`` (row-major,
``r = j * n_win + i``) and its index ``t`` inside the region (row-major over ``h x w``); a head is a contiguous
channel chunk. The logsumexp (base 2) and the backward's ``delta = rowsum(dO * O)`` are float32 per (image, head,
token), tokens in region-major order.

Two ways to enumerate the keys of a query block, chosen per call by :func:`choose_mode`; both compute the same
function, and the tests run both:

- ``gather``: a program owns a block of query tokens of one region and walks the ``topk * h * w`` routed keys in
  blocks of ``BLOCK_N``, loading each key row by index (``r_idx`` gives its region). Used for regions of 16 tokens
  or more (stages 0 and 1 at 224 px, every dense-prediction size).
- ``dense``: a program owns a block of query tokens of the whole image (region-major, so several regions) and walks
  every token of the image, keeping the keys whose region is in the query region's routing list (a 64-bit mask per
  query region, so at most 64 regions). With 2x2 regions and topk 16 (stage 2 at 224 px) the gather kernel would
  pad 4-row query tiles to 16 rows for the tensor cores and re-read each key region ``topk`` times; walking the
  196-token image costs about the same arithmetic and reads each key once per query block. With lists of distinct
  regions (``distinct=True``, BiFormer's) the mask is added to the scores by one more product on the tensor cores:
  each query row's list as 0/1 per region (:func:`_route_rows`) times each key's region one-hot scaled by ``2**20``
  (:func:`_key_table`), onto which the scores are accumulated
  (:func:`~vizattn.kernels._triton_util.dot_onto`), instead of testing a bit per pair. Routing is per image, not per
  head, so a forward or dq program may run several heads (``HEADS``) on one such prologue.

A region listed twice in one routing list counts twice, as in the reference: the gather kernel simply walks it
twice; the dense kernel, unless told the lists hold distinct regions (``distinct=True``, as ``torch.topk`` gives),
weights each key by its region's count in the list, counted from ``r_idx`` (a slower compilation of the kernel).

Backward with one region per routing list (topk 1, BiFormer's stage 0) and regions of at most 128 tokens: one kernel,
a program per key region that walks the query regions that chose it, writing their ``dq`` (they see no other key)
next to the region's ``dk`` and ``dv`` (:func:`_routed_bwd_fused_kernel`). Otherwise: ``dq`` by a kernel shaped like
the forward (it also writes ``delta``, and in dense mode the routing rows);
``dk``/``dv`` by a kernel that owns a block of key tokens and walks the query blocks that attend to it, so every
gradient element is written once, by one program: deterministic, no float32 scratch, no atomics. In gather mode the
query regions that chose a key region come from an inverse routing list (per key region, the query regions and their
multiplicity, in increasing order) built by a small kernel; in dense mode from the masks.

Integer division by run-time sizes (region side, tokens per region) goes through a float32 reciprocal, exact for
the index ranges allowed (< 2**21, checked by the caller), which keeps the kernels free of slow ``div.s32``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels._triton_util import cdiv as _cdiv
from vizattn.kernels._triton_util import dot as _dot
from vizattn.kernels._triton_util import dot_onto as _dot_onto
from vizattn.kernels._triton_util import dot_precision as _dot_precision
from vizattn.kernels._triton_util import head_block as _head_block
from vizattn.kernels._triton_util import next_pow2 as _next_pow2
from vizattn.kernels._triton_util import register_cap as _register_cap

__all__ = [
    "routed_attention_fwd", "routed_attention_bwd", "choose_mode", "CONFIGS", "SMALL_REGION_CONFIGS", "MAX_INDEX"
]

_LOG2E = 1.4426950408889634
MAX_INDEX = 1 << 21  # token/region indices stay below this for the float32 division to be exact
_DENSE_MAX_REGIONS = 64  # a routing mask is one int64


# ---------------------------------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _divmod(x, d, inv_d):
    # x // d and x % d for 0 <= x < 2**21, d >= 1, with inv_d = float32(1 / d): (x + 0.5) / d is at least 0.5 / d
    # away from an integer and the float32 error is below that.
    q = ((x.to(tl.float32) + 0.5) * inv_d).to(tl.int32)
    return q, x - q * d


@triton.jit
def _token_offset(region, tok, n_win, inv_n_win, h, w, inv_w, s_h, s_w):
    rj, ri = _divmod(region, n_win, inv_n_win)
    tr, tc = _divmod(tok, w, inv_w)
    return (rj * h + tr) * s_h + (ri * w + tc) * s_w


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _routing_masks(RIDX, row_base, rows_valid, topk, TOPK_PAD: tl.constexpr):
    """The int64 mask of the regions in the routing lists that start at ``RIDX + row_base`` (one per row)."""
    t = tl.arange(0, TOPK_PAD)
    ok = rows_valid[:, None] & (t < topk)[None, :]
    sel = tl.load(RIDX + row_base[:, None] + t[None, :], mask=ok, other=0)
    bit = tl.where(ok, tl.full(sel.shape, 1, tl.int64) << sel.to(tl.int64), 0)
    return tl.reduce(bit, 1, _bit_or)


@triton.jit
def _dense_weights(RIDX, row_base, k_reg, k_valid, topk, ROWS_AXIS: tl.constexpr):
    """Multiplicity of key region ``k_reg`` in each row's routing list, counted from ``r_idx`` (lists that may repeat
    a region), as int32 shaped [rows, keys] when ``ROWS_AXIS == 0`` and [keys, rows] when 1. Lists of distinct regions
    take the mask products instead (:func:`_mask_scores`)."""
    k_reg = tl.where(k_valid, k_reg, 0)
    if ROWS_AXIS == 0:
        wgt = (k_reg[None, :] < 0).to(tl.int32) + (row_base[:, None] < 0).to(tl.int32)
        for t in range(topk):
            sel = tl.load(RIDX + row_base + t)
            wgt += (sel[:, None] == k_reg[None, :]).to(tl.int32)
        wgt = tl.where(k_valid[None, :], wgt, 0)
    else:
        wgt = (k_reg[:, None] < 0).to(tl.int32) + (row_base[None, :] < 0).to(tl.int32)
        for t in range(topk):
            sel = tl.load(RIDX + row_base + t)
            wgt += (sel[None, :] == k_reg[:, None]).to(tl.int32)
        wgt = tl.where(k_valid[:, None], wgt, 0)
    return wgt


@triton.jit
def _route_rows(bits, ROUTE_W: tl.constexpr):
    """The routing masks ``bits`` (int64, one per row) as [rows, ROUTE_W] bfloat16 rows of 0/1 by region, and 1 in
    the last column: with :func:`_key_table`'s rows, one product gives each pair's additive mask (see
    :func:`_mask_scores`)."""
    r = tl.arange(0, ROUTE_W)
    low_half = r < 32
    amount = tl.where(low_half, r, r - 32) & 31
    word = tl.where(low_half[None, :], bits.to(tl.int32)[:, None], (bits >> 32).to(tl.int32)[:, None])
    bit = tl.where((r < 64)[None, :], (word >> amount[None, :]) & 1, 0)
    # through float32: Triton's interpreter converts int32 to bfloat16 as 0
    return tl.where((r == ROUTE_W - 1)[None, :], 1, bit).to(tl.float32).to(tl.bfloat16)


@triton.jit
def _mask_scores(rows, keys, MASK_PRECISION: tl.constexpr):
    """[rows, keys] float32: 0 where the key's region is in the row's routing list, ``-2**20`` elsewhere (exact: each
    product sums one ``2**20`` and one ``-2**20`` term, or only the latter); ``exp2`` of a score so shifted is 0."""
    return _dot(rows, tl.trans(keys), MASK_PRECISION)


@triton.jit
def _key_rows(start, n64, q_region, n_keys, RIDX, p2, topk, n_tok, inv_n_tok, BLOCK_N: tl.constexpr,
              DENSE: tl.constexpr):
    """Region and in-region index of keys ``start .. start + BLOCK_N``: all tokens of the image in region-major
    order (dense) or the routed regions of ``q_region`` in rank order (gather)."""
    kk = start + tl.arange(0, BLOCK_N)
    k_valid = kk < n_keys
    if DENSE:
        k_reg, k_tok = _divmod(kk, n_tok, inv_n_tok)
    else:
        rank, k_tok = _divmod(kk, n_tok, inv_n_tok)
        k_reg = tl.load(RIDX + (n64 * p2 + q_region) * topk + rank, mask=k_valid, other=0).to(tl.int32)
    return k_reg, k_tok, k_valid


@triton.jit
def _fwd_keys(q, m_i, l_i, acc, k_base, v_base, RIDX, row_base, n64, q_region, n_keys, p2, topk,
              n_win, inv_n_win, h, w, inv_w, n_tok, inv_n_tok, s_kh, s_kw, s_kc, s_vh, s_vw, s_vc,
              cq, cq_ok, cv, cv_ok, qk_scale,
              BLOCK_N: tl.constexpr, DENSE: tl.constexpr, COUNT: tl.constexpr, DOT_PRECISION: tl.constexpr,
              KEYTAB, route, ROUTE_W: tl.constexpr, MASK_PRECISION: tl.constexpr):
    for start in range(0, n_keys, BLOCK_N):
        k_reg, k_tok, k_valid = _key_rows(start, n64, q_region, n_keys, RIDX, p2, topk, n_tok, inv_n_tok, BLOCK_N,
                                          DENSE)
        k = tl.load(k_base + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_kh, s_kw)[:, None]
                    + cq[None, :] * s_kc, mask=k_valid[:, None] & cq_ok[None, :], other=0.0)
        v = tl.load(v_base + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_vh, s_vw)[:, None]
                    + cv[None, :] * s_vc, mask=k_valid[:, None] & cv_ok[None, :], other=0.0)
        if ROUTE_W > 0:
            keys = tl.load(KEYTAB + (start + tl.arange(0, BLOCK_N))[:, None] * ROUTE_W + tl.arange(0, ROUTE_W)[None, :])
            s = _dot_onto(q, tl.trans(k), _mask_scores(route, keys, MASK_PRECISION), DOT_PRECISION)
        elif DENSE:  # lists that may repeat a region
            s = _dot(q, tl.trans(k), DOT_PRECISION)
            wgt = _dense_weights(RIDX, row_base, k_reg, k_valid, topk, 0).to(tl.float32)
            s = tl.where(wgt > 0, s, float("-inf"))
        else:
            s = _dot(q, tl.trans(k), DOT_PRECISION)
            s = tl.where(k_valid[None, :], s, float("-inf"))
        # the scale is applied in the exponent's fused multiply-add (s is unscaled; qk_scale > 0 keeps the max)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        if COUNT:
            p = p * wgt
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _dq_keys(q, do, lse, delta, dq, k_base, v_base, RIDX, row_base, n64, q_region, n_keys, p2, topk,
             n_win, inv_n_win, h, w, inv_w, n_tok, inv_n_tok, s_kh, s_kw, s_kc, s_vh, s_vw, s_vc,
             cq, cq_ok, cv, cv_ok, qk_scale,
             BLOCK_N: tl.constexpr, DENSE: tl.constexpr, COUNT: tl.constexpr, DOT_PRECISION: tl.constexpr,
             KEYTAB, route, ROUTE_W: tl.constexpr, MASK_PRECISION: tl.constexpr, REGION_STEP: tl.constexpr = False):
    if REGION_STEP:
        # gather mode, a step = one routed region (BLOCK_N == its h * w tokens): the tokens' offsets are computed
        # once, a step loads its region (one scalar) and adds that region's offsets; every key is real
        tr, tc = _divmod(tl.arange(0, BLOCK_N), w, inv_w)
        k_tok_off = (tr * s_kh + tc * s_kw)[:, None] + cq[None, :] * s_kc
        v_tok_off = (tr * s_vh + tc * s_vw)[:, None] + cv[None, :] * s_vc
        for rank in range(0, topk):
            reg = tl.load(RIDX + (n64 * p2 + q_region) * topk + rank).to(tl.int32)
            rj, ri = _divmod(reg, n_win, inv_n_win)
            k = tl.load(k_base + (rj * h * s_kh + ri * w * s_kw) + k_tok_off, mask=cq_ok[None, :], other=0.0)
            v = tl.load(v_base + (rj * h * s_vh + ri * w * s_vw) + v_tok_off, mask=cv_ok[None, :], other=0.0)
            p = tl.exp2(_dot(q, tl.trans(k), DOT_PRECISION) * qk_scale - lse[:, None])
            ds = p * (_dot(do, tl.trans(v), DOT_PRECISION) - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, DOT_PRECISION)
        return dq
    for start in range(0, n_keys, BLOCK_N):
        k_reg, k_tok, k_valid = _key_rows(start, n64, q_region, n_keys, RIDX, p2, topk, n_tok, inv_n_tok, BLOCK_N,
                                          DENSE)
        k = tl.load(k_base + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_kh, s_kw)[:, None]
                    + cq[None, :] * s_kc, mask=k_valid[:, None] & cq_ok[None, :], other=0.0)
        v = tl.load(v_base + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_vh, s_vw)[:, None]
                    + cv[None, :] * s_vc, mask=k_valid[:, None] & cv_ok[None, :], other=0.0)
        if ROUTE_W > 0:
            keys = tl.load(KEYTAB + (start + tl.arange(0, BLOCK_N))[:, None] * ROUTE_W + tl.arange(0, ROUTE_W)[None, :])
            s = _dot_onto(q, tl.trans(k), _mask_scores(route, keys, MASK_PRECISION), DOT_PRECISION) * qk_scale
        else:
            s = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if DENSE and ROUTE_W == 0:  # lists that may repeat a region
            wgt = _dense_weights(RIDX, row_base, k_reg, k_valid, topk, 0).to(tl.float32)
            p = tl.where(wgt > 0, p * wgt, 0.0)
        elif not DENSE:
            p = tl.where(k_valid[None, :], p, 0.0)
        dp = _dot(do, tl.trans(v), DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_PRECISION)
    return dq


# ---------------------------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _query_block(num_heads, n_tok, p2, topk, inv_n_tok, DENSE: tl.constexpr, BLOCK_M: tl.constexpr,
                 HEADS: tl.constexpr):
    """The forward's and dq's program: its first head (``HEADS`` heads per program, ``num_heads % HEADS == 0``,
    sharing the query block's routing rows), image, query region (gather mode; 0 in dense mode), query tokens in
    region-major order, their validity, region and in-region index, and the number of keys each query walks."""
    pid = tl.program_id(0)
    head0 = (pid % (num_heads // HEADS)) * HEADS
    rest = pid // (num_heads // HEADS)
    if DENSE:
        n_mb = tl.cdiv(p2 * n_tok, BLOCK_M)
        qq = (rest % n_mb) * BLOCK_M + tl.arange(0, BLOCK_M)
        n = rest // n_mb
        q_valid = qq < p2 * n_tok
        n_keys = p2 * n_tok
        q_region = 0
    else:
        n_mb = tl.cdiv(n_tok, BLOCK_M)
        tok = (rest % n_mb) * BLOCK_M + tl.arange(0, BLOCK_M)
        rest = rest // n_mb
        q_region = rest % p2
        n = rest // p2
        q_valid = tok < n_tok
        qq = q_region * n_tok + tok
        n_keys = topk * n_tok
    q_reg, q_tok = _divmod(qq, n_tok, inv_n_tok)
    return head0, n.to(tl.int64), q_region, qq, q_valid, q_reg, q_tok, n_keys


@triton.jit
def _routed_fwd_kernel(
    Q, K, V, OUT, LSE, RIDX, KEYTAB,
    s_qn, s_qh, s_qw, s_qc,
    s_kn, s_kh, s_kw, s_kc,
    s_vn, s_vh, s_vw, s_vc,
    s_on, s_oh, s_ow, s_oc,
    qk_scale, num_heads, n_win, inv_n_win, h, w, inv_w, inv_n_tok, topk, d_qk, d_v,
    DENSE: tl.constexpr, COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, TOPK_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUTE_W: tl.constexpr = 0, MASK_PRECISION: tl.constexpr = "tf32", HEADS: tl.constexpr = 1,
):
    n_tok = h * w
    p2 = n_win * n_win
    head0, n64, q_region, qq, q_valid, q_reg, q_tok, n_keys = _query_block(num_heads, n_tok, p2, topk, inv_n_tok,
                                                                           DENSE, BLOCK_M, HEADS)

    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    cq_ok = cq < d_qk
    cv_ok = cv < d_v
    q_off = _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_qh, s_qw)
    o_off = _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_oh, s_ow)
    row_base = 0
    if DENSE:
        row_base = tl.where(q_valid, (n64 * p2 + q_reg) * topk, 0)
    route = 0
    if ROUTE_W > 0:
        route = _route_rows(_routing_masks(RIDX, row_base, q_valid, topk, TOPK_PAD), ROUTE_W)

    for j in tl.static_range(HEADS):
        head = head0 + j
        q = tl.load(Q + n64 * s_qn + q_off[:, None] + (head * d_qk + cq)[None, :] * s_qc,
                    mask=q_valid[:, None] & cq_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        k_base = K + n64 * s_kn + head * d_qk * s_kc
        v_base = V + n64 * s_vn + head * d_v * s_vc
        m_i, l_i, acc = _fwd_keys(q, m_i, l_i, acc, k_base, v_base, RIDX, row_base, n64, q_region, n_keys, p2,
                                  topk, n_win, inv_n_win, h, w, inv_w, n_tok, inv_n_tok, s_kh, s_kw, s_kc, s_vh,
                                  s_vw, s_vc, cq, cq_ok, cv, cv_ok, qk_scale, BLOCK_N, DENSE, COUNT,
                                  DOT_PRECISION, KEYTAB, route, ROUTE_W, MASK_PRECISION)
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(OUT + n64 * s_on + o_off[:, None] + (head * d_v + cv)[None, :] * s_oc,
                 out.to(OUT.dtype.element_ty), mask=q_valid[:, None] & cv_ok[None, :])
        tl.store(LSE + (n64 * num_heads + head) * (p2 * n_tok) + qq, m_i + tl.log2(l_safe), mask=q_valid)


# ---------------------------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _routed_bwd_dq_kernel(
    Q, K, V, OUT, DO, DQ, LSE, DELTA, RIDX, KEYTAB, ROUTES,
    s_qn, s_qh, s_qw, s_qc,
    s_kn, s_kh, s_kw, s_kc,
    s_vn, s_vh, s_vw, s_vc,
    s_on, s_oh, s_ow, s_oc,
    s_gn, s_gh, s_gw, s_gc,
    s_dn, s_dh, s_dw, s_dc,
    qk_scale, sm_scale, num_heads, n_win, inv_n_win, h, w, inv_w, inv_n_tok, topk, d_qk, d_v,
    DENSE: tl.constexpr, COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, TOPK_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUTE_W: tl.constexpr = 0, MASK_PRECISION: tl.constexpr = "tf32", HEADS: tl.constexpr = 1,
    REGION_STEP: tl.constexpr = False,
):
    n_tok = h * w
    p2 = n_win * n_win
    head0, n64, q_region, qq, q_valid, q_reg, q_tok, n_keys = _query_block(num_heads, n_tok, p2, topk, inv_n_tok,
                                                                           DENSE, BLOCK_M, HEADS)

    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    cq_ok = cq < d_qk
    cv_ok = cv < d_v
    mq = q_valid[:, None] & cq_ok[None, :]
    mv = q_valid[:, None] & cv_ok[None, :]
    q_off = _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_qh, s_qw)
    g_off = _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_gh, s_gw)
    o_off = _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_oh, s_ow)
    d_off = _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_dh, s_dw)
    row_base = 0
    if DENSE:
        row_base = tl.where(q_valid, (n64 * p2 + q_reg) * topk, 0)
    route = 0
    if ROUTE_W > 0:
        route = _route_rows(_routing_masks(RIDX, row_base, q_valid, topk, TOPK_PAD), ROUTE_W)
        # Every program of a region writes the same row; the dk/dv kernel reads them from here.
        r = tl.arange(0, ROUTE_W)
        tl.store(ROUTES + (n64 * p2 + q_reg)[:, None] * ROUTE_W + r[None, :], route, mask=q_valid[:, None])

    for j in tl.static_range(HEADS):
        head = head0 + j
        q = tl.load(Q + n64 * s_qn + q_off[:, None] + (head * d_qk + cq)[None, :] * s_qc, mask=mq, other=0.0)
        do = tl.load(DO + n64 * s_gn + g_off[:, None] + (head * d_v + cv)[None, :] * s_gc, mask=mv, other=0.0)
        o = tl.load(OUT + n64 * s_on + o_off[:, None] + (head * d_v + cv)[None, :] * s_oc, mask=mv, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        stat = (n64 * num_heads + head) * (p2 * n_tok) + qq
        tl.store(DELTA + stat, delta, mask=q_valid)
        lse = tl.load(LSE + stat, mask=q_valid, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
        k_base = K + n64 * s_kn + head * d_qk * s_kc
        v_base = V + n64 * s_vn + head * d_v * s_vc
        dq = _dq_keys(q, do, lse, delta, dq, k_base, v_base, RIDX, row_base, n64, q_region, n_keys, p2, topk,
                      n_win, inv_n_win, h, w, inv_w, n_tok, inv_n_tok, s_kh, s_kw, s_kc, s_vh, s_vw, s_vc,
                      cq, cq_ok, cv, cv_ok, qk_scale, BLOCK_N, DENSE, COUNT, DOT_PRECISION,
                      KEYTAB, route, ROUTE_W, MASK_PRECISION, REGION_STEP)
        dq = dq * sm_scale
        tl.store(DQ + n64 * s_dn + d_off[:, None] + (head * d_qk + cq)[None, :] * s_dc, dq.to(DQ.dtype.element_ty),
                 mask=mq)


@triton.jit
def _inverse_routing_kernel(RIDX, LISTS, COUNTS, n_win, topk, QC: tl.constexpr, TOPK_PAD: tl.constexpr):
    """Program (n, key region r): the query regions whose list holds r, increasing, each packed as
    ``region | multiplicity << 16`` into ``LISTS[n, r, :count]``; ``COUNTS[n, r] = count``."""
    p2 = n_win * n_win
    pid = tl.program_id(0)
    kr = pid % p2
    n64 = (pid // p2).to(tl.int64)
    t = tl.arange(0, TOPK_PAD)
    total = 0
    for start in range(0, p2, QC):
        qr = start + tl.arange(0, QC)
        sel = tl.load(RIDX + (n64 * p2 + qr[:, None]) * topk + t[None, :],
                      mask=(qr < p2)[:, None] & (t < topk)[None, :], other=-1)
        mult = tl.sum((sel == kr).to(tl.int32), 1)
        hit = mult > 0
        pos = total + tl.cumsum(hit.to(tl.int32), 0) - 1
        tl.store(LISTS + pid.to(tl.int64) * p2 + pos, qr | (mult << 16), mask=hit)
        total += tl.sum(hit.to(tl.int32), 0)
    tl.store(COUNTS + pid, total)


@triton.jit
def _dkdv_update(dk, dv, k, v, q, do, lse, delta, wgt, qk_scale, DOT_PRECISION: tl.constexpr,
                BY_SCORES: tl.constexpr):
    # Flash-attention backward for one (key block, query block) pair, transposed so rows are keys. wgt: [keys,
    # queries] float32 multiplicity (0 where the pair is not attended), or with BY_SCORES the pairs' additive mask
    # (see _mask_scores).
    if BY_SCORES:
        p_t = tl.exp2(_dot_onto(k, tl.trans(q), wgt, DOT_PRECISION) * qk_scale - lse[None, :])
    else:
        s_t = _dot(k, tl.trans(q), DOT_PRECISION) * qk_scale
        p_t = tl.where(wgt > 0, tl.exp2(s_t - lse[None, :]) * wgt, 0.0)
    dv += _dot(p_t.to(do.dtype), do, DOT_PRECISION)
    dp_t = _dot(v, tl.trans(do), DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(ds_t.to(q.dtype), q, DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_dense_queries(dk, dv, k, v, k_reg, k_valid, q_base, do_base, LSE, DELTA, RIDX, stat_base, n64, p2,
                        topk, n_win, inv_n_win, h, w, inv_w, n_tok, inv_n_tok, s_qh, s_qw, s_qc, s_gh, s_gw, s_gc,
                        cq, cq_ok, cv, cv_ok, qk_scale,
                        BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr, keys, ROUTES, ROUTE_W: tl.constexpr,
                        MASK_PRECISION: tl.constexpr):
    for start in range(0, p2 * n_tok, BLOCK_M):
        qq = start + tl.arange(0, BLOCK_M)
        q_valid = qq < p2 * n_tok
        q_reg, q_tok = _divmod(qq, n_tok, inv_n_tok)
        q = tl.load(q_base + _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_qh, s_qw)[:, None]
                    + cq[None, :] * s_qc, mask=q_valid[:, None] & cq_ok[None, :], other=0.0)
        do = tl.load(do_base + _token_offset(q_reg, q_tok, n_win, inv_n_win, h, w, inv_w, s_gh, s_gw)[:, None]
                     + cv[None, :] * s_gc, mask=q_valid[:, None] & cv_ok[None, :], other=0.0)
        delta = tl.load(DELTA + stat_base + qq, mask=q_valid, other=0.0)
        if ROUTE_W > 0:
            # padded queries: an infinite lse makes their probabilities 0
            lse = tl.load(LSE + stat_base + qq, mask=q_valid, other=float("inf"))
            r = tl.arange(0, ROUTE_W)
            route = tl.load(ROUTES + (n64 * p2 + q_reg)[:, None] * ROUTE_W + r[None, :], mask=q_valid[:, None],
                            other=0.0)
            dk, dv = _dkdv_update(dk, dv, k, v, q, do, lse, delta, _mask_scores(keys, route, MASK_PRECISION),
                                  qk_scale, DOT_PRECISION, True)
        else:  # lists that may repeat a region
            lse = tl.load(LSE + stat_base + qq, mask=q_valid, other=0.0)
            row_base = tl.where(q_valid, (n64 * p2 + q_reg) * topk, 0)
            wgt = _dense_weights(RIDX, row_base, k_reg, k_valid, topk, 1)
            wgt = tl.where(q_valid[None, :], wgt, 0).to(tl.float32)
            dk, dv = _dkdv_update(dk, dv, k, v, q, do, lse, delta, wgt, qk_scale, DOT_PRECISION, False)
    return dk, dv


@triton.jit
def _routed_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, RIDX, LISTS, COUNTS, KEYTAB, ROUTES,
    s_qn, s_qh, s_qw, s_qc,
    s_kn, s_kh, s_kw, s_kc,
    s_vn, s_vh, s_vw, s_vc,
    s_gn, s_gh, s_gw, s_gc,
    s_dkn, s_dkh, s_dkw, s_dkc,
    s_dvn, s_dvh, s_dvw, s_dvc,
    qk_scale, sm_scale, num_heads, n_win, inv_n_win, h, w, inv_w, inv_n_tok, topk, d_qk, d_v,
    DENSE: tl.constexpr, COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUTE_W: tl.constexpr = 0, MASK_PRECISION: tl.constexpr = "tf32", HOIST: tl.constexpr = False,
):
    n_tok = h * w
    p2 = n_win * n_win
    pid = tl.program_id(0)
    head = pid % num_heads
    rest = pid // num_heads
    if DENSE:
        n_nb = tl.cdiv(p2 * n_tok, BLOCK_N)
        kk = (rest % n_nb) * BLOCK_N + tl.arange(0, BLOCK_N)
        n = rest // n_nb
        k_valid = kk < p2 * n_tok
    else:
        n_nb = tl.cdiv(n_tok, BLOCK_N)
        ktok = (rest % n_nb) * BLOCK_N + tl.arange(0, BLOCK_N)
        rest = rest // n_nb
        k_region = rest % p2
        n = rest // p2
        k_valid = ktok < n_tok
        kk = k_region * n_tok + ktok
    n64 = n.to(tl.int64)
    k_reg, k_tok = _divmod(kk, n_tok, inv_n_tok)

    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    cq_ok = cq < d_qk
    cv_ok = cv < d_v
    mk = k_valid[:, None] & cq_ok[None, :]
    mv = k_valid[:, None] & cv_ok[None, :]
    k = tl.load(K + n64 * s_kn + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_kh, s_kw)[:, None]
                + (head * d_qk + cq)[None, :] * s_kc, mask=mk, other=0.0)
    v = tl.load(V + n64 * s_vn + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_vh, s_vw)[:, None]
                + (head * d_v + cv)[None, :] * s_vc, mask=mv, other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    q_base = Q + n64 * s_qn + head * d_qk * s_qc
    do_base = DO + n64 * s_gn + head * d_v * s_gc
    stat_base = (n64 * num_heads + head) * (p2 * n_tok)
    if DENSE:
        keys = 0
        if ROUTE_W > 0:
            keys = tl.load(KEYTAB + kk[:, None] * ROUTE_W + tl.arange(0, ROUTE_W)[None, :])
        dk, dv = _dkdv_dense_queries(dk, dv, k, v, k_reg, k_valid, q_base, do_base, LSE, DELTA, RIDX,
                                     stat_base, n64, p2, topk, n_win, inv_n_win, h, w, inv_w, n_tok, inv_n_tok,
                                     s_qh, s_qw, s_qc, s_gh, s_gw, s_gc, cq, cq_ok, cv, cv_ok, qk_scale,
                                     BLOCK_M, DOT_PRECISION, keys, ROUTES, ROUTE_W, MASK_PRECISION)
    else:
        list_base = (n64 * p2 + k_region) * p2
        n_entries = tl.load(COUNTS + n64 * p2 + k_region)
        if HOIST:
            # query blocks outside, entries inside: a block's token offsets and masks are computed once and an
            # entry adds its region's offsets (scalars); per block the entries are summed in list order
            for start in range(0, n_tok, BLOCK_M):
                q_tok = start + tl.arange(0, BLOCK_M)
                q_valid = q_tok < n_tok
                tr, tc = _divmod(q_tok, w, inv_w)
                mq = q_valid[:, None] & cq_ok[None, :]
                mg = q_valid[:, None] & cv_ok[None, :]
                qo = (tr * s_qh + tc * s_qw)[:, None] + cq[None, :] * s_qc
                go = (tr * s_gh + tc * s_gw)[:, None] + cv[None, :] * s_gc
                sp = stat_base + q_tok
                ok = q_valid[None, :] & (kk >= 0)[:, None]
                for e in range(0, n_entries):
                    entry = tl.load(LISTS + list_base + e)
                    q_region = entry & 0xFFFF
                    rj, ri = _divmod(q_region, n_win, inv_n_win)
                    q = tl.load(q_base + (rj * h * s_qh + ri * w * s_qw) + qo, mask=mq, other=0.0)
                    do = tl.load(do_base + (rj * h * s_gh + ri * w * s_gw) + go, mask=mg, other=0.0)
                    lse = tl.load(LSE + sp + q_region * n_tok, mask=q_valid, other=0.0)
                    delta = tl.load(DELTA + sp + q_region * n_tok, mask=q_valid, other=0.0)
                    wgt = tl.where(ok, (entry >> 16).to(tl.float32), 0.0)
                    dk, dv = _dkdv_update(dk, dv, k, v, q, do, lse, delta, wgt, qk_scale, DOT_PRECISION, False)
        else:
            for e in range(0, n_entries):
                entry = tl.load(LISTS + list_base + e)
                q_region = entry & 0xFFFF
                mult = (entry >> 16).to(tl.float32)
                for start in range(0, n_tok, BLOCK_M):
                    q_tok = start + tl.arange(0, BLOCK_M)
                    q_valid = q_tok < n_tok
                    qq = q_region * n_tok + q_tok
                    q = tl.load(q_base + _token_offset(q_region, q_tok, n_win, inv_n_win, h, w, inv_w, s_qh,
                                                       s_qw)[:, None]
                                + cq[None, :] * s_qc, mask=q_valid[:, None] & cq_ok[None, :], other=0.0)
                    do = tl.load(do_base + _token_offset(q_region, q_tok, n_win, inv_n_win, h, w, inv_w, s_gh,
                                                         s_gw)[:, None]
                                 + cv[None, :] * s_gc, mask=q_valid[:, None] & cv_ok[None, :], other=0.0)
                    lse = tl.load(LSE + stat_base + qq, mask=q_valid, other=0.0)
                    delta = tl.load(DELTA + stat_base + qq, mask=q_valid, other=0.0)
                    wgt = tl.where(q_valid[None, :] & (kk >= 0)[:, None], mult, 0.0)
                    dk, dv = _dkdv_update(dk, dv, k, v, q, do, lse, delta, wgt, qk_scale, DOT_PRECISION, False)

    dk = dk * sm_scale
    tl.store(DK + n64 * s_dkn + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_dkh, s_dkw)[:, None]
             + (head * d_qk + cq)[None, :] * s_dkc, dk.to(DK.dtype.element_ty), mask=mk)
    tl.store(DV + n64 * s_dvn + _token_offset(k_reg, k_tok, n_win, inv_n_win, h, w, inv_w, s_dvh, s_dvw)[:, None]
             + (head * d_v + cv)[None, :] * s_dvc, dv.to(DV.dtype.element_ty), mask=mv)


@triton.jit
def _fused_block(k, v, dk, dv, q_region, dq_base, q_base, do_base, LSE, stat_base, s_qh, s_qw, s_qc, s_gh, s_gw,
                 s_gc, s_dh, s_dw, s_dc, n_win, inv_n_win, h, w, inv_w, n_tok, cq, cq_ok, cv, cv_ok, qk_scale,
                 sm_scale, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr, QUERY_ROWS: tl.constexpr = False):
    """One query region's part of :func:`_routed_bwd_fused_kernel`: its dq, written, and its terms of dk and dv.
    ``QUERY_ROWS`` (see FUSED_QUERY_ROWS): the score blocks as (queries, keys) instead of (keys, queries)."""
    for start in range(0, n_tok, BLOCK_M):
        q_tok = start + tl.arange(0, BLOCK_M)
        q_valid = q_tok < n_tok
        mq = q_valid[:, None] & cq_ok[None, :]
        mv = q_valid[:, None] & cv_ok[None, :]
        q = tl.load(q_base + _token_offset(q_region, q_tok, n_win, inv_n_win, h, w, inv_w, s_qh, s_qw)[:, None]
                    + cq[None, :] * s_qc, mask=mq, other=0.0)
        do = tl.load(do_base + _token_offset(q_region, q_tok, n_win, inv_n_win, h, w, inv_w, s_gh, s_gw)[:, None]
                     + cv[None, :] * s_gc, mask=mv, other=0.0)
        # padded queries: an infinite lse makes their probabilities 0; padded keys are zero rows: their scores are
        # finite, their products with q, dO and v vanish, and their dk / dv rows are not stored
        lse = tl.load(LSE + stat_base + q_region * n_tok + q_tok, mask=q_valid, other=float("inf"))
        if QUERY_ROWS:
            p = tl.exp2(_dot(q, tl.trans(k), DOT_PRECISION) * qk_scale - lse[:, None])  # [queries, keys]
            dv += _dot(tl.trans(p.to(do.dtype)), do, DOT_PRECISION)
            dp = _dot(do, tl.trans(v), DOT_PRECISION)
            delta = tl.sum(p * dp, 1)  # within each query's row: no sum across warps
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, DOT_PRECISION)
            dq = _dot(ds.to(k.dtype), k, DOT_PRECISION) * sm_scale
        else:
            p_t = tl.exp2(_dot(k, tl.trans(q), DOT_PRECISION) * qk_scale - lse[None, :])  # [keys, queries]
            dv += _dot(p_t.to(do.dtype), do, DOT_PRECISION)
            dp_t = _dot(v, tl.trans(do), DOT_PRECISION)
            # these keys are all the query's keys: delta = sum_j P_ij dP_ij, which is dO_i . O_i without reading O
            delta = tl.sum(p_t * dp_t, 0)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += _dot(ds_t.to(q.dtype), q, DOT_PRECISION)
            dq = _dot(tl.trans(ds_t.to(k.dtype)), k, DOT_PRECISION) * sm_scale
        tl.store(dq_base + _token_offset(q_region, q_tok, n_win, inv_n_win, h, w, inv_w, s_dh, s_dw)[:, None]
                 + cq[None, :] * s_dc, dq.to(dq_base.dtype.element_ty), mask=mq)
    return dk, dv


@triton.jit
def _routed_bwd_fused_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, LISTS, COUNTS,
    s_qn, s_qh, s_qw, s_qc,
    s_kn, s_kh, s_kw, s_kc,
    s_vn, s_vh, s_vw, s_vc,
    s_gn, s_gh, s_gw, s_gc,
    s_dn, s_dh, s_dw, s_dc,
    s_dkn, s_dkh, s_dkw, s_dkc,
    s_dvn, s_dvh, s_dvw, s_dvc,
    qk_scale, sm_scale, num_heads, n_win, inv_n_win, h, w, inv_w, inv_n_tok, topk, d_qk, d_v,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, QUERY_ROWS: tl.constexpr = False,
):
    """The whole backward when every routing list holds one region (topk 1): a program owns one key region (all its
    tokens, ``BLOCK_N >= h * w``) and walks the query regions that chose it (the inverse lists, increasing). Those
    queries attend to no other key, so their ``dq`` is complete here and is written once, by this program, next to
    the key region's ``dk`` and ``dv``; and each query's ``delta = dO . O`` is the sum of its probabilities times
    their gradients, all in the program. One pass over q, k, v and dO (the output is not read), the scores and their
    gradients computed once. Deterministic, no atomics; a key region no list names reads nothing and gets zero
    gradients."""
    n_tok = h * w
    p2 = n_win * n_win
    pid = tl.program_id(0)
    head = pid % num_heads
    rest = pid // num_heads
    k_region = rest % p2
    n64 = (rest // p2).to(tl.int64)
    ktok = tl.arange(0, BLOCK_N)
    k_valid = ktok < n_tok

    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    cq_ok = cq < d_qk
    cv_ok = cv < d_v
    mk = k_valid[:, None] & cq_ok[None, :]
    mkv = k_valid[:, None] & cv_ok[None, :]
    n_entries = tl.load(COUNTS + n64 * p2 + k_region)
    chosen = n_entries > 0
    k = tl.load(K + n64 * s_kn + _token_offset(k_region, ktok, n_win, inv_n_win, h, w, inv_w, s_kh, s_kw)[:, None]
                + (head * d_qk + cq)[None, :] * s_kc, mask=mk & chosen, other=0.0)
    v = tl.load(V + n64 * s_vn + _token_offset(k_region, ktok, n_win, inv_n_win, h, w, inv_w, s_vh, s_vw)[:, None]
                + (head * d_v + cv)[None, :] * s_vc, mask=mkv & chosen, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    stat_base = (n64 * num_heads + head) * (p2 * n_tok)
    list_base = (n64 * p2 + k_region) * p2
    for e in range(0, n_entries):
        q_region = tl.load(LISTS + list_base + e) & 0xFFFF
        dk, dv = _fused_block(k, v, dk, dv, q_region, DQ + n64 * s_dn + head * d_qk * s_dc,
                              Q + n64 * s_qn + head * d_qk * s_qc, DO + n64 * s_gn + head * d_v * s_gc, LSE,
                              stat_base, s_qh, s_qw, s_qc, s_gh, s_gw, s_gc, s_dh, s_dw, s_dc, n_win, inv_n_win, h,
                              w, inv_w, n_tok, cq, cq_ok, cv, cv_ok, qk_scale, sm_scale, BLOCK_M, DOT_PRECISION,
                              QUERY_ROWS)

    dk = dk * sm_scale
    tl.store(DK + n64 * s_dkn + _token_offset(k_region, ktok, n_win, inv_n_win, h, w, inv_w, s_dkh, s_dkw)[:, None]
             + (head * d_qk + cq)[None, :] * s_dkc, dk.to(DK.dtype.element_ty), mask=mk)
    tl.store(DV + n64 * s_dvn + _token_offset(k_region, ktok, n_win, inv_n_win, h, w, inv_w, s_dvh, s_dvw)[:, None]
             + (head * d_v + cv)[None, :] * s_dvc, dv.to(DV.dtype.element_ty), mask=mkv)


# ---------------------------------------------------------------------------------------------------------------------
# Launchers


def fused_backward_applies(mode: str, topk: int, n_tok: int, d_qk: int = 32, d_v: int = 32) -> bool:
    """Whether :func:`routed_attention_bwd` runs the one-kernel backward (:data:`FUSED_TOPK1`): gather mode, topk 1,
    regions of at most 128 tokens, and a key region's k, v, dk and dv not larger than at the widest measured shape
    (64 tokens, head dims 128 + 128); beyond that the two kernels run."""
    width = _next_pow2(n_tok) * (_head_block(d_qk) + _head_block(d_v))
    return (FUSED_TOPK1 and mode == "gather" and topk == 1 and n_tok <= _FUSED_MAX_TOKENS
            and width <= _FUSED_MAX_WIDTH)


def choose_mode(n_win: int, h: int, w: int, topk: int) -> str:
    """``'dense'`` for small regions when walking the whole image costs at most about twice the padded gather."""
    n_tok = h * w
    if n_tok >= 16 or n_win * n_win > _DENSE_MAX_REGIONS:
        return "gather"
    # Score elements per real query: a gather tile pads a region's n_tok rows to 16, each meeting topk * n_tok
    # keys; the dense kernel meets every token of the image, padded to whole 64-key blocks.
    gather_cost = 16 * topk
    dense_cost = _cdiv(n_win * n_win * n_tok, 64) * 64
    return "dense" if dense_cost <= 2 * gather_cost else "gather"


# Tuning knobs per (kernel, mode), from a sweep on an H200 at the BiFormer-S stage shapes (batch 64, bf16, head dim
# 32; docs/benchmarks.md). For dk/dv, BLOCK_N is the key block a program owns and BLOCK_M the query block it walks.
# tools/benchmark.py and tests may overwrite entries. The gather forward at stage 0 (8x8 regions): 64 keys per step
# and two stages 0.045 ms, 32 keys and one stage 0.041 (sweep of 2026-11-29 18:30 UTC, CUDA-graph kernel times).
CONFIGS: dict[tuple[str, str], dict[str, int]] = {
    ("fwd", "gather"): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1),
    ("fwd", "dense"): dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=2, HEADS=2),
    ("dq", "gather"): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    ("dq", "dense"): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2, HEADS=4),
    ("dkdv", "gather"): dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1),
    ("dkdv", "dense"): dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=1),
    ("fused", "gather"): dict(BLOCK_M=64, num_warps=4, num_stages=1),
}
# Dense mode (stage 2, B64 14x14 C256 8 heads, topk 16), CUDA-graph kernel time. 2026-11-30 03:18-03:25 UTC, masks
# from the bits: the forward on 128-query blocks 0.038 ms against 0.042 on 64 (82 (block, warps, stages) combinations
# tried); dk/dv on one-warp programs of 32 keys, walking 32 queries per step with two stages, took the backward from
# 0.121 to 0.108 ms. 06:20, masks by product (_mask_scores, lists of distinct regions; sm_90 loop of the forward 602
# -> 347 instructions, dq 295 -> 165, dk/dv 790 -> 645): at the launches above forward 0.0377 ms (bits) -> 0.0362
# (two stages; 0.0431 at one), backward with dq on 64-key steps at two stages 0.1079 -> 0.1001 (dk/dv at the former
# launch), with dk/dv on 4-warp programs of 64 keys 0.1008 (dq at the former launch); 16, 24 and 54 launches tried.
# 2026-12-01 07:27 (`.gpu/heads_ab.py`, CUDA-graph ms, median of 3 rounds): the forward's scale moved into the
# exponent's multiply-add 0.0339 -> 0.0332; then two heads per program (HEADS, one routing prologue for both) 0.0324,
# four 0.0464 (at 128 queries x 4 warps x 2 stages; 14 other launches x 1/2/4 heads 0.0367-0.0473). The dq kernel
# with HEADS 2 or 4 gained nothing uncapped (dq + dk/dv 0.0898-0.1143 against 0.0901); under a cap of 128 registers
# (07:52, `.gpu/dq_caps.py`; 18 (heads, keys per step, cap) combinations) four heads on 32-key steps took it to
# 0.0872 against 0.0898 (caps of 96 and 168: 0.092-0.112).
# Gather mode with regions of at most 16 tokens (BiFormer-S stage 1: 4x4 regions, topk 4), where a program's tile is
# one region's 16 rows: one warp per program (the same sweep: forward 0.052 -> 0.029 ms; backward dq 0.170 -> 0.159
# and dk/dv 0.170 -> 0.119 ms of the two kernels' sum, each measured with the other at the general configuration).
# The dq kernel with two pipeline stages (2026-12-03 07:56 and 08:10 UTC, `.gpu/routed_sweep.py`, profiler kernel time
# of the autograd backward, median of 3 rounds): 0.1057 -> 0.0977 and 0.1055 -> 0.0980 ms; 3 stages 0.1001, 32 keys
# per step 0.0993, register caps 64 / 80 / 128 0.0973 / 0.0975 / 0.0999, the dk/dv kernel at 2 stages 0.1133-0.1229,
# two-warp dq 0.1141.
SMALL_REGION_CONFIGS: dict[str, dict[str, int]] = {
    "fwd": dict(BLOCK_M=16, BLOCK_N=32, num_warps=1, num_stages=2),
    "dq": dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=2),
    "dkdv": dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1),
    "fused": dict(BLOCK_M=16, num_warps=1, num_stages=1),
}
# The backward of routing lists of one region (topk 1; BiFormer's stage 0) as one kernel, _routed_bwd_fused_kernel,
# on regions of at most _FUSED_MAX_TOKENS tokens (a program holds a whole key region); False: dq, then dk/dv. H200,
# bf16, head dim 32, routing by region_routing on random maps, backward kernel time with the inverse lists
# (2026-12-01 03:04 UTC, two kernels -> one): B64 56x56 2 heads 7x7 regions of 64 tokens 0.126 -> 0.092 ms, B128
# 0.235 -> 0.168, B16 64x128 8x8 regions of 128 tokens 0.113 -> 0.094. Tried and slower (same runs): delta from
# reading the output (0.095), the program finding its query regions in r_idx by the bits of an int64 instead of the
# lists (166 -> 184-196 registers; 0.124; 0.120 with a cumsum over the image's routing row instead of the bits), two
# query regions per step (0.128), the next step's loads issued a step ahead (0.101), 8 warps or 2 (0.13-0.22),
# register caps of 80-168 (0.089-0.154; the uncapped kernel takes 166); 12-01 04:52: the first list entry loaded next to
# the count (its query loads one dependent load earlier; 0.0929 against 0.0920, 128-token regions 0.102 against
# 0.096), k and v loaded before the count is known (0.094-0.095). Balanced routing (every region chosen once)
# took the same time as random: the lists' unequal lengths cost nothing. Regions of 16 and 32 tokens and head dims 64
# and 128 (03:08): 0.066 -> 0.047, 0.077 -> 0.057, 0.115 -> 0.082, 0.068 -> 0.060 ms.
FUSED_TOPK1 = True
# The one-kernel backward's blocks of scores as (queries, keys) instead of (keys, queries) (FUSED_QUERY_ROWS): each
# query's delta is then a sum within its row (two shuffles) instead of one across the program's warps, and the
# transposed operands of dv and dk go through shared memory as the old layout's dq operand did. sm_90 at BiFormer-S
# stage 0 (tools/kernel_report.py, 2026-12-03): loop 602 -> 383 instructions (80 -> 4 shuffles, 21 -> 7 loads), 167 ->
# 157 registers, 16 -> 24 KB of shared memory. H200, 2026-12-03 12:48 (tools/benchmark.py --ab, 3 interleaved rounds,
# kernel time): stage-0 forward+backward 0.1329 -> 0.1251 ms (-5.9%; fb/f 3.3 -> 3.1), stages 1 and 2 unchanged (they
# do not take this kernel). On.
FUSED_QUERY_ROWS = True
# The gather-mode dk/dv kernel walks its query blocks outside and its routing-list entries inside (DKDV_HOIST): a
# block's token offsets and masks are then computed once, an entry adding its region's scalar offsets. sm_90 at
# BiFormer-S stage 1 (one-warp programs, 16-token regions; tools/kernel_report.py, 2026-12-03): 269 -> 209
# instructions per entry, but 16 bytes of spill at the shipped 96-register cap (106 registers uncapped). H200,
# 2026-12-03 12:54 (tools/benchmark.py --ab): stage-1 forward+backward 0.1254 -> 0.1323 ms (+5.5%): off.
DKDV_HOIST = False
# The gather-mode dq kernel, where a step of keys is exactly one routed region (BLOCK_N == its tokens: BiFormer-S
# stage 1), walks the routing list by rank (DQ_REGION_STEPS): one scalar load of the region per step and token offsets
# computed once, instead of per key a rank / token division, a gathered load of its region and its offsets. sm_90 at
# stage 1: see docs/benchmarks.md. H200, 2026-12-03 12:54 (tools/benchmark.py --ab): stage-1 forward+backward 0.1258
# -> 0.1251 ms (-0.5%, within run-to-run noise): off.
DQ_REGION_STEPS = False
_FUSED_MAX_TOKENS = 128
_FUSED_MAX_WIDTH = 64 * 256  # region tokens (padded) x (q/k + v head dims, padded)
_SMALL_REGION_HEAD_DIM = 32  # measured at BiFormer's head dim 32; wider heads keep CONFIGS (one warp holds less)
# Register caps (Triton's maxnreg) per (kernel, "gather" | "small" | "dense"), at head dims up to 32 only (where they
# were measured; wider heads need the registers). H200, BiFormer-S stage shapes at B64, bf16, CUDA-graph kernel time,
# 3 interleaved rounds each, uncapped -> capped (2026-11-30 08:2x and again 10:00 UTC, ms): stage 0 backward (dk/dv at
# 128) 0.1303 -> 0.1256, stage 1 backward (dk/dv at 96) 0.1091 -> 0.1044, stage 2 forward (at 128) 0.0356 -> 0.0345.
# Caps of 96-168 on the other kernels were as fast or slower (the stage-0 and stage-1 forwards 2-12%, dq 1-15%).
REGISTER_CAPS: dict[tuple[str, str], int] = {
    ("dkdv", "gather"): 128, ("dkdv", "small"): 96, ("fwd", "dense"): 128, ("dq", "dense"): 128,
}


def _config(kernel: str, mode: str, n_tok: int, n_keys: int, head_dim: int,
            interpret: bool | None = None) -> dict[str, int]:
    """The launch of ``kernel`` in ``mode``: block sizes, warps, stages and, compiled for a GPU (``interpret`` False;
    None reads Triton's setting), the register cap of :data:`REGISTER_CAPS`."""
    region_rows = max(16, _next_pow2(n_tok))
    small = mode == "gather" and region_rows == 16 and head_dim <= _SMALL_REGION_HEAD_DIM
    cfg = dict(SMALL_REGION_CONFIGS[kernel] if small else CONFIGS[(kernel, mode)])
    cap = REGISTER_CAPS.get((kernel, "small" if small else mode)) if head_dim <= _SMALL_REGION_HEAD_DIM else None
    cfg.update(_register_cap(cap, interpret))
    if head_dim > _SMALL_REGION_HEAD_DIM:
        cfg.pop("HEADS", None)  # several heads per program measured at head dim 32 only, with the caps above
    if mode == "gather":
        # Never pad a tile far beyond a region's tokens or a query's keys.
        cfg["BLOCK_M"] = min(cfg["BLOCK_M"], region_rows)
        if kernel == "fused":
            cfg["BLOCK_N"] = region_rows  # the whole key region
        elif kernel in ("fwd", "dq"):
            cfg["BLOCK_N"] = min(cfg["BLOCK_N"], max(16, _next_pow2(n_keys)))
        else:
            cfg["BLOCK_N"] = min(cfg["BLOCK_N"], region_rows)
    return cfg


_MASK_BIG = 2.0**20  # the additive mask of a pair outside the routing list (see _mask_scores)


def _route_width(mode: str, distinct: bool, p2: int) -> int:
    """Columns of the mask products (``ROUTE_W``): in dense mode with lists of distinct regions, one per region and
    one constant column, padded to a power of two; 0 otherwise (gather mode; dense mode counting repeated regions per
    pair)."""
    return max(16, _next_pow2(p2 + 1)) if mode == "dense" and distinct else 0


@functools.lru_cache(maxsize=64)
def _key_table(p2: int, n_tok: int, route_w: int, device: torch.device) -> torch.Tensor:
    """Row ``t`` (a token in region-major order): ``2**20`` in its region's column, ``-2**20`` in the last; rows
    padded to whole 128-key blocks, which only the last column fills (padded keys are masked)."""
    n_keys = p2 * n_tok
    table = torch.zeros(_cdiv(n_keys, 128) * 128, route_w)
    table[:, -1] = -_MASK_BIG
    t = torch.arange(n_keys)
    table[t, t // n_tok] = _MASK_BIG
    return table.to(device=device, dtype=torch.bfloat16)


def _heads_per_program(wanted: int, num_heads: int) -> int:
    """The largest divisor of ``num_heads`` not above ``wanted``: heads per program of a kernel with ``HEADS``."""
    return max(d for d in range(1, max(1, wanted) + 1) if num_heads % d == 0)


class _Geometry:
    __slots__ = ("n", "hh", "ww", "h", "w", "n_tok", "p2", "topk", "d_qk", "d_v", "scalars")

    def __init__(self, q: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, n_win: int, num_heads: int):
        self.n, self.hh, self.ww, c_qk = q.shape
        self.h, self.w = self.hh // n_win, self.ww // n_win
        self.n_tok, self.p2, self.topk = self.h * self.w, n_win * n_win, r_idx.shape[2]
        self.d_qk, self.d_v = c_qk // num_heads, v.shape[-1] // num_heads
        # Kernel arguments after the scale(s): num_heads, n_win, 1/n_win, h, w, 1/w, 1/(h*w), topk, d_qk, d_v.
        self.scalars = (num_heads, n_win, 1.0 / n_win, self.h, self.w, 1.0 / self.w, 1.0 / self.n_tok, self.topk,
                        self.d_qk, self.d_v)


def routed_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    n_win: int,
    num_heads: int,
    scale: float,
    distinct: bool = False,
    mode: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher. Shapes as :func:`vizattn.kernels.routed.routed_attention`; arguments already validated.
    ``distinct`` promises that no routing list repeats a region; ``mode`` overrides :func:`choose_mode`.

    Returns:
        out (N, H, W, C_v) contiguous in v's dtype, and lse (N, num_heads, H * W) float32, base-2 logsumexp of the
        scaled scores in region-major token order (what the backward needs).
    """
    g = _Geometry(q, v, r_idx, n_win, num_heads)
    mode = mode or choose_mode(n_win, g.h, g.w, g.topk)
    ridx = r_idx.contiguous()
    out = new_output((g.n, g.hh, g.ww, v.shape[-1]), v.dtype, v.device)
    lse = new_output((g.n, num_heads, g.hh * g.ww), torch.float32, v.device)
    cfg = _config("fwd", mode, g.n_tok, g.topk * g.n_tok, max(g.d_qk, g.d_v))
    bm = cfg.pop("BLOCK_M")
    heads = _heads_per_program(cfg.pop("HEADS", 1), num_heads)
    rows = _cdiv(g.p2 * g.n_tok, bm) if mode == "dense" else g.p2 * _cdiv(g.n_tok, bm)
    route_w = _route_width(mode, distinct, g.p2)
    keytab = _key_table(g.p2, g.n_tok, route_w, q.device) if route_w else ridx
    _routed_fwd_kernel[(g.n * rows * (num_heads // heads),)](
        q, k, v, out, lse, ridx, keytab,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        scale * _LOG2E, *g.scalars,
        DENSE=mode == "dense", COUNT=not distinct and mode == "dense", BLOCK_M=bm, HEADS=heads,
        BLOCK_DQK=_head_block(g.d_qk), BLOCK_DV=_head_block(g.d_v), TOPK_PAD=_next_pow2(g.topk),
        DOT_PRECISION=_dot_precision(q.dtype), ROUTE_W=route_w, MASK_PRECISION=_dot_precision(torch.bfloat16), **cfg,
    )
    return out, lse


def routed_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    r_idx: torch.Tensor,
    n_win: int,
    num_heads: int,
    scale: float,
    distinct: bool = False,
    mode: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: (dq, dk, dv), contiguous, in the dtypes of q, k, v. No gradient flows to ``r_idx``."""
    g = _Geometry(q, v, r_idx, n_win, num_heads)
    mode = mode or choose_mode(n_win, g.h, g.w, g.topk)
    dense = mode == "dense"
    ridx = r_idx.contiguous()
    dq = new_output(tuple(q.shape), q.dtype, q.device)
    dk = new_output(tuple(k.shape), k.dtype, k.device)
    dv = new_output(tuple(v.shape), v.dtype, v.device)
    topk_pad = _next_pow2(g.topk)
    route_w = _route_width(mode, distinct, g.p2)
    keytab = routes = ridx  # placeholders, never read without route_w
    if route_w:
        keytab = _key_table(g.p2, g.n_tok, route_w, q.device)
        routes = new_output((g.n, g.p2, route_w), torch.bfloat16, q.device)
    if dense:
        lists = counts = ridx  # placeholders, never read
    else:
        lists = new_output((g.n, g.p2, g.p2), torch.int32, q.device)
        counts = new_output((g.n, g.p2), torch.int32, q.device)
        qc = max(1, min(64, _next_pow2(g.p2), 2048 // topk_pad))
        _inverse_routing_kernel[(g.n * g.p2,)](ridx, lists, counts, n_win, g.topk, QC=qc, TOPK_PAD=topk_pad)
    common = dict(
        DENSE=dense, COUNT=not distinct, BLOCK_DQK=_head_block(g.d_qk), BLOCK_DV=_head_block(g.d_v),
        DOT_PRECISION=_dot_precision(q.dtype), ROUTE_W=route_w, MASK_PRECISION=_dot_precision(torch.bfloat16),
    )
    scalars = (scale * _LOG2E, scale, *g.scalars)

    if fused_backward_applies(mode, g.topk, g.n_tok, g.d_qk, g.d_v):
        cfg = _config("fused", mode, g.n_tok, g.n_tok, max(g.d_qk, g.d_v))
        _routed_bwd_fused_kernel[(g.n * g.p2 * num_heads,)](
            q, k, v, grad_out, dq, dk, dv, lse, lists, counts,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(), *dk.stride(), *dv.stride(),
            *scalars, BLOCK_DQK=common["BLOCK_DQK"], BLOCK_DV=common["BLOCK_DV"],
            DOT_PRECISION=common["DOT_PRECISION"], QUERY_ROWS=FUSED_QUERY_ROWS, **cfg,
        )
        return dq, dk, dv

    delta = new_output((g.n, num_heads, g.hh * g.ww), torch.float32, q.device)
    cfg = _config("dq", mode, g.n_tok, g.topk * g.n_tok, max(g.d_qk, g.d_v))
    bm = cfg.pop("BLOCK_M")
    heads = _heads_per_program(cfg.pop("HEADS", 1), num_heads)
    rows = _cdiv(g.p2 * g.n_tok, bm) if dense else g.p2 * _cdiv(g.n_tok, bm)
    _routed_bwd_dq_kernel[(g.n * rows * (num_heads // heads),)](
        q, k, v, out, grad_out, dq, lse, delta, ridx, keytab, routes,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(), *dq.stride(),
        *scalars, BLOCK_M=bm, TOPK_PAD=topk_pad, HEADS=heads,
        REGION_STEP=DQ_REGION_STEPS and not dense and cfg["BLOCK_N"] == g.n_tok, **common, **cfg,
    )

    cfg = _config("dkdv", mode, g.n_tok, g.topk * g.n_tok, max(g.d_qk, g.d_v))
    bn = cfg.pop("BLOCK_N")
    cols = _cdiv(g.p2 * g.n_tok, bn) if dense else g.p2 * _cdiv(g.n_tok, bn)
    _routed_bwd_dkdv_kernel[(g.n * cols * num_heads,)](
        q, k, v, grad_out, dk, dv, lse, delta, ridx, lists, counts, keytab, routes,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(),
        *scalars, BLOCK_N=bn, HOIST=DKDV_HOIST, **common, **cfg,
    )
    return dq, dk, dv
