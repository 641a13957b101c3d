"""Triton axial time attention, forward and backward (docs/kernels.md §6.1).

A *sequence* is one (b, h, w, head): its queries and keys are the frames of one pixel and head. q, k
and v are read in place from their (B, T, H, W, heads, d) strides (slices of one fused QKV tensor
included); o, dq, dk and dv are written contiguous. Sequences go on grid axis 0 with int64 index
math, so neither the 65,535 limit of the other grid axes nor 2^31 elements bound the problem.

Two paths, picked per call from (T, Tq):

- **Single tile** (T and Tq up to the tile size: 64 for 16-bit dtypes in the forward and 32 in the
  backward, 16 for float32; the path is picked per direction): a program
  takes ``seqs`` whole sequences and packs their queries into one BLOCK_M x d tile and their keys
  into one BLOCK_N x d tile, so that ``tl.dot`` works on >= 16 x 16 tiles even for T = 3. Scores
  between different sequences are masked out (the block-diagonal costs FLOPs, but at these sizes
  the kernel is bound by memory, not by the tensor cores). The whole score tile lives in
  registers: a plain softmax, no online rescaling.
- **Key loop** (otherwise): a program takes BLOCK_M queries of one sequence and loops over its keys
  in blocks of BLOCK_N with the online softmax.

The forward saves the float32 log-sum-exp, shape (B, Tq, H, W, heads). The backward first computes
delta = rowsum(dO * O) in its own small kernel, then:

- single tile: one program per group of sequences computes dq, dk and dv of its sequences at once;
- key loop: two launches of one kernel, each with a program per sequence: DQ false accumulates dk
  and dv over the query blocks, DQ true dq over the key blocks (both recomputing the probabilities).

Either way every gradient element has exactly one writer: no atomics, bitwise deterministic.

The path is a constexpr (SINGLE), so each path compiles without the other's code: the key loop
takes one sequence per program, and its per-sequence bases are scalars instead of a vector per
tile row and column. float32 inputs use tf32x3 dots, which keep float32 accuracy on the tensor
cores.

A query whose keys are all masked gets o = 0 and lse = +inf, so the recomputed probabilities in the
backward are exp(s - inf) = 0 and its gradients vanish.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import dispatch
from ..autograd import kernel_op
from .aot import AOTCall
from .common import TL_DTYPES, capability, launch, shared_memory_reasons, target_family

HEAD_DIMS = (16, 32, 64, 128)
# Rows and columns of the forward's score tile, which is also the longest T (and Tq) of its
# single-tile path; the backward's is _BWD_TILE's. Chosen from the faithful AOT compile
# (benchmarks/notes/triton_aot.md): float32 operands are twice as large as 16-bit ones and split in
# three for tf32x3, and spill at 32 x 32 in both directions.
TILES = {"fp32": 16, "fp16": 64, "bf16": 64}
# The 16-bit backward's single tile per code family and head dim (walked in _SINGLE_CHUNK columns
# of the head dim): 64 x 64 at 4 warps on sm_90 (one warpgroup: wgmma) at every head dim; on sm_80
# 64 x 64 at d = 64 and 32 x 32 elsewhere, whose 64 rows spill 8 B at d = 32 and 56 B at d = 128.
_BWD_TILE = {80: {16: 32, 32: 32, 64: 64, 128: 32}, 90: {16: 64, 32: 64, 64: 64, 128: 64}}
# The most shared memory any configuration of these kernels takes per block, on sm_80-class and
# sm_90-class code (tests/aef_kernels/triton/test_aot.py fails when a compiled one exceeds it).
SHARED_BYTES = {80: 81 * 1024, 90: 80 * 1024}
DELTA_ROWS = 32
# Grid axis 0 holds at most 2^31 - 1 programs; program and sequence indices are int32.
MAX_PROGRAMS = 2**31 - 1
# Sequence indices are int32 too (_split_sequence), and the padding slots of a call's last packed
# tile are indexed past S: S plus one tile of slots must stay below 2^31.
MAX_SEQUENCES = 2**31 - 1 - max(TILES.values())
LOG2E = 1.4426950408889634
# fp32 inputs keep fp32 accuracy on the tensor cores through three TF32 products per dot.
_DOT_PRECISION = {"fp32": "tf32x3", "fp16": "tf32", "bf16": "tf32"}


@triton.jit
def _split_sequence(s, HWN, NH, W):
    """Sequence index -> (b, (h*W + w)*NH + head, h, w, head), split in int32 (fewer registers; the
    launcher keeps S below 2^31), returned as int64 for offset math past 2^31 elements."""
    b = s // HWN
    hwn = s - b * HWN
    hw = hwn // NH
    n = hwn - hw * NH
    h = hw // W
    w = hw - h * W
    return b.to(tl.int64), hwn.to(tl.int64), h.to(tl.int64), w.to(tl.int64), n.to(tl.int64)


@triton.jit
def _load_rows(ptr, base, t, stride, ok, dd):
    """Columns ``dd`` of the rows at times ``t`` of a strided operand where ``ok``, else zero."""
    return tl.load(ptr + (base + t * stride)[:, None] + dd[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _output_chunk(dd, BLOCK_D: tl.constexpr, BLOCK_DC: tl.constexpr):
    """(head-dim columns of the output, whether they are the first chunk) of this key-loop program:
    chunk program_id(1) of BLOCK_DC columns, or the whole head dim ``dd`` when it is one chunk (no
    address arithmetic, no runtime condition)."""
    if BLOCK_DC < BLOCK_D:
        return tl.program_id(1) * BLOCK_DC + tl.arange(0, BLOCK_DC), tl.program_id(1) == 0
    else:
        return dd, True


@triton.jit
def _key_columns(mask_ptr, m_base, seq_ok, c_t, T, smt):
    """Which key rows at times c_t exist, and which may be attended to (only those are read)."""
    in_range = (c_t < T) & seq_ok
    return in_range, in_range & (tl.load(mask_ptr + m_base + c_t * smt, mask=in_range, other=0) != 0)


@triton.jit
def _load_keys(k_ptr, v_ptr, mask_ptr, k_base, v_base, m_base, seq_ok, c_t, T, skt, svt, smt, dd):
    """Key and value rows at times c_t, with _key_columns' masks."""
    in_range, col_ok = _key_columns(mask_ptr, m_base, seq_ok, c_t, T, smt)
    return in_range, col_ok, _load_rows(k_ptr, k_base, c_t, skt, col_ok, dd), _load_rows(v_ptr, v_base, c_t, svt,
                                                                                         col_ok, dd)


@triton.jit
def _query_rows(lse_ptr, delta_ptr, b_r, hwn_r, seq_ok, r_t, Tq, HWN):
    """(exists, contiguous row, live, base-2 lse, delta) of the backward's queries at times r_t.

    q and dO of a query without any valid key (lse = +inf) are not read (not live): its gradients are
    zero, and whatever is stored there (a masked pixel's NaN) must not reach a key's gradient through
    a zero probability."""
    row_ok = (r_t < Tq) & seq_ok
    row = (b_r * Tq + r_t) * HWN + hwn_r
    lse2 = tl.load(lse_ptr + row, mask=row_ok, other=float("inf")) * 1.4426950408889634
    live = row_ok & (lse2 != float("inf"))
    return row_ok, row, live, lse2, tl.load(delta_ptr + row, mask=live, other=0.0)


@triton.jit
def _dscores(s, dp, lse2, delta, valid, qk_scale):
    """Probabilities P and dS = P * (dP - delta) from the scores Q K^T and dP = dO V^T."""
    p = tl.where(valid, tl.exp2(s * qk_scale - lse2[:, None]), 0.0)
    # Selected, not multiplied: dp of a masked or other-sequence key may be inf (0 * inf = NaN).
    return p, tl.where(valid, p * (dp - delta[:, None]), 0.0)


@triton.jit
def _probs_and_dscores(q, k, v, do, lse2, delta, valid, qk_scale, DOT_PRECISION: tl.constexpr):
    """Recomputed probabilities P and dS, both (queries x keys), of one key-loop block."""
    return _dscores(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION),
                    tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION), lse2, delta, valid, qk_scale)


@triton.jit
def _any_nonfinite(x):
    """Whether a tile holds a NaN or an infinity."""
    return tl.max(tl.max(tl.where(tl.abs(x) < float("inf"), 0, 1), axis=1), axis=0) != 0


@triton.jit
def _fwd_probs(s, valid, qk_scale):
    """Unnormalised probabilities, row sums and (finite) row maxima of one single-tile score matrix
    from its scores Q K^T."""
    s = tl.where(valid, s * qk_scale, float("-inf"))
    m_i = tl.max(s, axis=1)
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
    p = tl.exp2(s - m_safe[:, None])
    return p, tl.sum(p, axis=1), m_safe


@triton.jit
def _store_gradient(ptr, rows, x, ok, wanted, dd, BLOCK_D: tl.constexpr, REDO: tl.constexpr):
    """A single-tile gradient into rows ``rows`` where ``ok``. First pass: stored if it is finite;
    returns 1 if it is not (not stored: the redo will). Redo: stored if ``wanted`` (1: the first
    pass found it non-finite); returns ``wanted``."""
    if REDO:
        bad = wanted
        if wanted != 0:
            _store_rows(ptr, rows, x, ok, dd, BLOCK_D)
    else:
        bad = _any_nonfinite(x).to(tl.int32)
        if bad == 0:
            _store_rows(ptr, rows, x, ok, dd, BLOCK_D)
    return bad


@triton.jit
def _slots(i, per, group, seqs, S, SINGLE: tl.constexpr):
    """(slot, sequence, time offset, whether the sequence exists) of tile rows or columns ``i`` of
    program ``group``, which packs ``seqs`` sequences of ``per`` frames each. The key loop takes
    one sequence per program, which always exists: the sequence is the scalar ``group``, so every
    per-sequence base is a scalar too and the loop carries no vector of int64 bases."""
    if SINGLE:
        slot = i // per
        s = group * seqs + slot
        return slot, s, (i - slot * per).to(tl.int64), (slot < seqs) & (s < S)
    else:
        return 0, group, i.to(tl.int64), True


@triton.jit
def _store_rows(ptr, rows, x, ok, dd, BLOCK_D: tl.constexpr):
    """x into rows ``rows`` of a contiguous (..., BLOCK_D) tensor, where ``ok``."""
    tl.store(ptr + (rows * BLOCK_D)[:, None] + dd[None, :], x.to(ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _store_output(o_ptr, lse_ptr, row, acc, l_i, m_safe, ok, dd, BLOCK_D: tl.constexpr, LSE):
    """Columns ``dd`` of the normalised output of rows ``row`` from the unnormalised ``acc``, the row
    sums ``l_i`` and the finite row maxima ``m_safe`` (base-2 logits), where ``ok``; with LSE also
    their log-sum-exp."""
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    o = tl.where(has_key[:, None], acc / l_safe[:, None], 0.0)
    # Natural-log LSE; +inf for a query without keys makes its backward probabilities exactly 0.
    lse = tl.where(has_key, (m_safe + tl.log2(l_safe)) * 0.6931471805599453, float("inf"))
    _store_rows(o_ptr, row, o, ok, dd, BLOCK_D)
    if LSE:
        tl.store(lse_ptr + row, lse, mask=ok)


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr,
    S, Tq, T, HWN, NH, W,
    sqb, sqt, sqh, sqw, sqn,
    skb, skt, skh, skw, skn,
    svb, svt, svh, svw, svn,
    smb, smt, smh, smw,
    qk_scale, seqs, qrows, kcols, n_qblocks,
    SINGLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DC: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    group = pid // n_qblocks
    qblock = pid - group * n_qblocks
    dd = tl.arange(0, BLOCK_D)

    r_seq, s_r, r_t0, seq_r_ok = _slots(tl.arange(0, BLOCK_M), qrows, group, seqs, S, SINGLE)
    r_t = qblock * qrows + r_t0
    row_ok = (r_t < Tq) & seq_r_ok
    b_r, hwn_r, h_r, w_r, n_r = _split_sequence(s_r, HWN, NH, W)
    q_base = b_r * sqb + h_r * sqh + w_r * sqw + n_r * sqn

    c_seq, s_c, c_t0, seq_ok = _slots(tl.arange(0, BLOCK_N), kcols, group, seqs, S, SINGLE)
    b_c, hwn_c, h_c, w_c, n_c = _split_sequence(s_c, HWN, NH, W)
    k_base = b_c * skb + h_c * skh + w_c * skw + n_c * skn
    v_base = b_c * svb + h_c * svh + w_c * svw + n_c * svn
    m_base = b_c * smb + h_c * smh + w_c * smw

    row = (b_r * Tq + r_t) * HWN + hwn_r
    if SINGLE:
        # The head dim is walked in BLOCK_DC-column chunks, Q K^T accumulated over them and P V
        # computed and stored chunk by chunk: no q, k, v or output tile wider than a chunk is live.
        _, col_ok = _key_columns(mask_ptr, m_base, seq_ok, c_t0, T, smt)
        valid = (r_seq[:, None] == c_seq[None, :]) & col_ok[None, :]
        s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for c in tl.static_range(0, BLOCK_D, BLOCK_DC):
            dc = c + tl.arange(0, BLOCK_DC)
            s = tl.dot(_load_rows(q_ptr, q_base, r_t, sqt, row_ok, dc),
                       tl.trans(_load_rows(k_ptr, k_base, c_t0, skt, col_ok, dc)), s, input_precision=DOT_PRECISION)
        p, l_i, m_safe = _fwd_probs(s, valid, qk_scale)
        p = p.to(v_ptr.dtype.element_ty)
        for c in tl.static_range(0, BLOCK_D, BLOCK_DC):
            dc = c + tl.arange(0, BLOCK_DC)
            v = _load_rows(v_ptr, v_base, c_t0, svt, col_ok, dc)
            acc = tl.dot(p, v, input_precision=DOT_PRECISION)
            if _any_nonfinite(acc):
                # P V multiplies the zero probabilities of other sequences' keys by their values, so
                # one sequence's inf reaches every row of the tile (0 * inf = NaN). Rare, so detected
                # rather than prevented: redo the product once per sequence with the other
                # sequences' values zeroed and store that sequence's rows (P, the row sums and
                # maxima are per sequence already).
                for j in range(0, seqs):
                    acc_j = tl.dot(p, tl.where((c_seq == j)[:, None], v, 0.0), input_precision=DOT_PRECISION)
                    _store_output(o_ptr, lse_ptr, row, acc_j, l_i, m_safe, row_ok & (r_seq == j), dc, BLOCK_D, c == 0)
            else:
                _store_output(o_ptr, lse_ptr, row, acc, l_i, m_safe, row_ok, dc, BLOCK_D, c == 0)
    else:
        oc, first = _output_chunk(dd, BLOCK_D, BLOCK_DC)
        q = _load_rows(q_ptr, q_base, r_t, sqt, row_ok, dd)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DC], dtype=tl.float32)
        for start in range(0, T, kcols):
            _, col_ok = _key_columns(mask_ptr, m_base, seq_ok, start + c_t0, T, smt)
            k = _load_rows(k_ptr, k_base, start + c_t0, skt, col_ok, dd)
            v = _load_rows(v_ptr, v_base, start + c_t0, svt, col_ok, oc)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
        m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
        _store_output(o_ptr, lse_ptr, row, acc, l_i, m_safe, row_ok, oc, BLOCK_D, first)


@triton.jit
def _attn_bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, n_rows, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    dd = tl.arange(0, BLOCK_D)
    ok = rows < n_rows
    offs = (rows * BLOCK_D)[:, None] + dd[None, :]
    o = tl.load(o_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + rows, tl.sum(o * do, axis=1), mask=ok)


@triton.jit
def _attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    S, Tq, T, HWN, NH, W,
    sqb, sqt, sqh, sqw, sqn,
    skb, skt, skh, skw, skn,
    svb, svt, svh, svw, svn,
    smb, smt, smh, smw,
    scale, seqs, qrows, kcols,
    SINGLE: tl.constexpr, DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DC: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # The key loop runs as two launches of this kernel: DQ False for dk and dv, DQ True for dq.
    group = tl.program_id(0)
    qk_scale = scale * 1.4426950408889634
    dd = tl.arange(0, BLOCK_D)

    r_seq, s_r, r_t0, seq_r_ok = _slots(tl.arange(0, BLOCK_M), qrows, group, seqs, S, SINGLE)
    b_r, hwn_r, h_r, w_r, n_r = _split_sequence(s_r, HWN, NH, W)
    q_base = b_r * sqb + h_r * sqh + w_r * sqw + n_r * sqn

    c_seq, s_c, c_t0, seq_c_ok = _slots(tl.arange(0, BLOCK_N), kcols, group, seqs, S, SINGLE)
    b_c, hwn_c, h_c, w_c, n_c = _split_sequence(s_c, HWN, NH, W)
    k_base = b_c * skb + h_c * skh + w_c * skw + n_c * skn
    v_base = b_c * svb + h_c * svh + w_c * svw + n_c * svn
    m_base = b_c * smb + h_c * smh + w_c * smw

    if SINGLE:
        # As in the forward, the head dim is walked in chunks: Q K^T and dO V^T accumulated over
        # them, then dv, dk and dq computed and stored chunk by chunk (their operands read again,
        # from cache); each gradient chunk is stored once it is known finite.
        row_ok, row, live, lse2, delta = _query_rows(lse_ptr, delta_ptr, b_r, hwn_r, seq_r_ok, r_t0, Tq, HWN)
        in_range, col_ok = _key_columns(mask_ptr, m_base, seq_c_ok, c_t0, T, smt)
        valid = (r_seq[:, None] == c_seq[None, :]) & col_ok[None, :]
        col = (b_c * T + c_t0) * HWN + hwn_c
        s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        dp = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for c in tl.static_range(0, BLOCK_D, BLOCK_DC):
            dc = c + tl.arange(0, BLOCK_DC)
            s = tl.dot(_load_rows(q_ptr, q_base, r_t0, sqt, live, dc),
                       tl.trans(_load_rows(k_ptr, k_base, c_t0, skt, col_ok, dc)), s, input_precision=DOT_PRECISION)
            dp = tl.dot(_load_rows(do_ptr, 0, row, BLOCK_D, live, dc),
                        tl.trans(_load_rows(v_ptr, v_base, c_t0, svt, col_ok, dc)), dp, input_precision=DOT_PRECISION)
        p, ds = _dscores(s, dp, lse2, delta, valid, qk_scale)
        p = p.to(q_ptr.dtype.element_ty)
        ds = ds.to(q_ptr.dtype.element_ty)
        for c in tl.static_range(0, BLOCK_D, BLOCK_DC):
            dc = c + tl.arange(0, BLOCK_DC)
            do = _load_rows(do_ptr, 0, row, BLOCK_D, live, dc)
            bad_v = _store_gradient(dv_ptr, col, tl.dot(tl.trans(p), do, input_precision=DOT_PRECISION), in_range, 1,
                                    dc, BLOCK_D, False)
            q = _load_rows(q_ptr, q_base, r_t0, sqt, live, dc)
            bad_k = _store_gradient(dk_ptr, col, tl.dot(tl.trans(ds), q, input_precision=DOT_PRECISION) * scale,
                                    in_range, 1, dc, BLOCK_D, False)
            k = _load_rows(k_ptr, k_base, c_t0, skt, col_ok, dc)
            bad_q = _store_gradient(dq_ptr, row, tl.dot(ds, k, input_precision=DOT_PRECISION) * scale, row_ok, 1, dc,
                                    BLOCK_D, False)
            if bad_v + bad_k + bad_q > 0:
                # As in the forward: the products multiply zero entries of P and dS by other
                # sequences' dO, q and k, so a non-finite one there reaches every sequence of the
                # tile. Redo them once per sequence with the other sequences' operand rows zeroed
                # and store that sequence's rows of the gradients the first pass did not store.
                for j in range(0, seqs):
                    on_r = (r_seq == j)[:, None]
                    on_c = c_seq == j
                    _store_gradient(dv_ptr, col, tl.dot(tl.trans(p), tl.where(on_r, do, 0.0),
                                                        input_precision=DOT_PRECISION),
                                    in_range & on_c, bad_v, dc, BLOCK_D, True)
                    _store_gradient(dk_ptr, col, tl.dot(tl.trans(ds), tl.where(on_r, q, 0.0),
                                                        input_precision=DOT_PRECISION) * scale,
                                    in_range & on_c, bad_k, dc, BLOCK_D, True)
                    _store_gradient(dq_ptr, row, tl.dot(ds, tl.where(on_c[:, None], k, 0.0),
                                                        input_precision=DOT_PRECISION) * scale,
                                    row_ok & (r_seq == j), bad_q, dc, BLOCK_D, True)
    elif not DQ:
        # dk, dv of one key block at a time, summed over every query block of the sequence.
        for kstart in range(0, T, kcols):
            c_t = kstart + c_t0
            in_range, col_ok, k, v = _load_keys(k_ptr, v_ptr, mask_ptr, k_base, v_base, m_base, seq_c_ok, c_t, T,
                                                skt, svt, smt, dd)
            dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
            dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
            for qstart in range(0, Tq, qrows):
                r_t = qstart + r_t0
                row_ok, row, live, lse2, delta = _query_rows(lse_ptr, delta_ptr, b_r, hwn_r, seq_r_ok, r_t, Tq, HWN)
                q = _load_rows(q_ptr, q_base, r_t, sqt, live, dd)
                do = _load_rows(do_ptr, 0, row, BLOCK_D, live, dd)
                p, ds = _probs_and_dscores(q, k, v, do, lse2, delta, col_ok[None, :], qk_scale, DOT_PRECISION)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
            col = (b_c * T + c_t) * HWN + hwn_c
            _store_rows(dk_ptr, col, dk * scale, in_range, dd, BLOCK_D)
            _store_rows(dv_ptr, col, dv, in_range, dd, BLOCK_D)
    else:
        # dq of one query block at a time, summed over every key block of the sequence (output
        # columns oc).
        oc = _output_chunk(dd, BLOCK_D, BLOCK_DC)[0]
        for qstart in range(0, Tq, qrows):
            r_t = qstart + r_t0
            row_ok, row, live, lse2, delta = _query_rows(lse_ptr, delta_ptr, b_r, hwn_r, seq_r_ok, r_t, Tq, HWN)
            q = _load_rows(q_ptr, q_base, r_t, sqt, live, dd)
            do = _load_rows(do_ptr, 0, row, BLOCK_D, live, dd)
            dq = tl.zeros([BLOCK_M, BLOCK_DC], dtype=tl.float32)
            for kstart in range(0, T, kcols):
                _, col_ok, k, v = _load_keys(k_ptr, v_ptr, mask_ptr, k_base, v_base, m_base, seq_c_ok,
                                             kstart + c_t0, T, skt, svt, smt, dd)
                p, ds = _probs_and_dscores(q, k, v, do, lse2, delta, col_ok[None, :], qk_scale, DOT_PRECISION)
                if BLOCK_DC < BLOCK_D:
                    k = _load_rows(k_ptr, k_base, kstart + c_t0, skt, col_ok, oc)
                dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            _store_rows(dq_ptr, row, dq * scale, row_ok, oc, BLOCK_D)


@dataclass(frozen=True)
class _Config:
    """How a call is tiled: ``seqs`` sequences per program, each with ``qrows`` query rows and
    ``kcols`` key columns of the BLOCK_M x BLOCK_N score tile."""

    single: bool
    seqs: int
    qrows: int
    kcols: int


def _config(Tq: int, T: int, tile: int) -> _Config:
    if T <= tile and Tq <= tile:
        seqs = tile // max(triton.next_power_of_2(Tq), triton.next_power_of_2(T))
        # Short query sets (the summarizer) still get tile // seqs rows each, the rest padding.
        return _Config(True, seqs, tile // seqs, tile // seqs)
    return _Config(False, 1, tile, tile)


# Warps per (dtype, direction, path) and head dim 16/32/64/128: tiles of 16-row mma warps covered
# once where that compiles without a spill on sm_80 and sm_90, read off the faithful AOT compile
# (benchmarks/notes/triton_aot.md). 16-bit 64-row tiles take 4 warps (one warpgroup: wgmma on
# sm_90), except the forward's d = 16 single tile on sm_80, which spills 8 B at 4 and runs 2
# (_SM80_WARPS), as do the backward's 32-row single tiles there (_BWD_TILE). float32's 16-row tiles
# take 1 warp, except the forward's d = 32 single tile (2), its d = 128 key loop (2, in _LOOP_CHUNK's
# 64-column chunks: at 1 warp their shared memory leaves 5-7 warps per SM) and the backward's key
# loop (8: it spills at fewer). The 16-bit backward's key loop is
# _BWD_LOOP below.
_WARPS = {("16bit", False, True): (4, 4, 4, 4), ("16bit", False, False): (4, 4, 4, 4),
          ("16bit", True, True): (4, 4, 4, 4),
          ("fp32", False, True): (1, 2, 1, 1), ("fp32", False, False): (1, 1, 1, 2),
          ("fp32", True, True): (1, 1, 1, 1), ("fp32", True, False): (8, 8, 8, 8)}
_SM80_WARPS = {("16bit", False, True): (2, 4, 4, 4), ("16bit", True, True): (2, 2, 4, 2)}


# Head-dim columns the single tile takes at a time per (dtype, backward): its q, k, v, dO and output
# tiles are that wide and the scores are summed over the chunks, so d = 128 fits the warps above
# (whole 128-column tiles spilled 8-700 B at them).
_SINGLE_CHUNK = {("16bit", False): 64, ("16bit", True): 32, ("fp32", False): 32, ("fp32", True): 16}


def _tile(t: str, backward: bool, d: int, family: int) -> int:
    """Rows and columns of the score tile of dtype ``t``: also the longest T of the single-tile path."""
    return _BWD_TILE[family][d] if backward and t != "fp32" else TILES[t]


# The 16-bit backward's key loop per code family and head dim: per pass (dk/dv, then dq) the
# (query rows, key rows) of its blocks and warps. On sm_90 the pass's
# accumulators (dk and dv, or dq) take 64 rows, a warpgroup's wgmma M, and the side it loops over
# 32: no spill, no duplicated warps at d = 32 and 64. On sm_80 the same blocks put [4, 1] mma warps
# on the 32-row side (rows computed twice) and spill 8 B at d = 32, so it keeps 32 x 32 at 2 warps.
# d = 16 on sm_90 takes 64 x 64 blocks at 4 warps: a 32 x 16 operand tile would load 8 bytes a
# thread. At d = 128 the dq pass takes 64-column chunks at 4 (sm_90) or 2 (sm_80) warps (whole, it
# needs 8 warps, which cover its rows twice); the dk/dv pass keeps the whole head dim: on sm_90 at
# 8 warps (at 4 its 64-column chunks spill 56 B), on sm_80 over 64 query rows x 32 keys at 4 warps
# (32 x 32 blocks needed 8 warps, which cover them twice; 81 KB of shared memory, within the 99 KB
# of sm_86/sm_89).
_PASSES_32 = ((32, 32, 2), (32, 32, 2))
_PASSES_WGMMA = ((32, 64, 4), (64, 32, 4))
_BWD_LOOP = {80: {16: _PASSES_32, 32: _PASSES_32, 64: _PASSES_32, 128: ((64, 32, 4), (32, 32, 2))},
             90: {16: ((64, 64, 4), (64, 64, 4)), 32: _PASSES_WGMMA, 64: _PASSES_WGMMA,
                  128: ((32, 64, 8), (64, 32, 4))}}
# Output columns a key-loop program takes per (dtype, pass) where it is not the whole head dim
# (grid axis 1 holds the chunks; each recomputes the scores over all of d): the float32 forward's
# d = 128 tile fits 2 warps in 64-column chunks (whole, it spilled 400-700 B below 8 warps), the
# 16-bit dq pass's fits 4 (sm_90) or 2 (sm_80). The float32 backward's chunks took more shared
# memory than its bound on sm_80.
_LOOP_CHUNK = {("fp32", "fwd"): 64, ("16bit", "dq"): 64}


def _attn_config(t: str, d: int, backward: bool, single: bool, family: int, dq: bool = False) -> dict:
    """Constexprs and launch options of the forward (or backward) kernel for dtype ``t``, head dim
    ``d``, path, backward pass and code family; the launchers and the AOT compilation take them from
    here (the single-tile limit on T is _tile's, whatever the key loop's blocks). Two stages: the
    key loop's K and V tiles double-buffered, which keeps d = 128 within the 99 KB of sm_86/sm_89
    (three stages need 114 KB in the forward and 131 KB in the backward on sm_90)."""
    tile = _tile(t, backward, d, family)
    kind = "fp32" if t == "fp32" else "16bit"
    if backward and not single and t != "fp32":
        rows, cols, warps = _BWD_LOOP[family][d][dq]
    else:
        rows, cols = tile, tile
        key = (kind, backward, single)
        warps = (_SM80_WARPS if family == 80 and key in _SM80_WARPS else _WARPS)[key][HEAD_DIMS.index(d)]
    if single:
        chunk = _SINGLE_CHUNK[kind, backward]
    else:
        chunk = _LOOP_CHUNK.get((kind, "dq" if dq else "dkdv" if backward else "fwd"), d)
    chunk = min(d, chunk)
    return {"SINGLE": single, "BLOCK_M": rows, "BLOCK_N": cols, "BLOCK_D": d, "BLOCK_DC": chunk,
            "DOT_PRECISION": _DOT_PRECISION[t], "num_warps": warps, "num_stages": 2}


def _column_programs(blocks: dict) -> int:
    """Programs along grid axis 1: the key loop's output-column chunks (the single tile walks them)."""
    return 1 if blocks["SINGLE"] else blocks["BLOCK_D"] // blocks["BLOCK_DC"]


def _delta_config(d: int, element_size: int) -> dict:
    """Up to 4 warps, as many as give every thread 16 bytes of each row tile (2 for 16-bit d = 16)."""
    warps = max(1, min(4, DELTA_ROWS * d * element_size // (16 * 32)))
    return {"BLOCK_R": DELTA_ROWS, "BLOCK_D": d, "num_warps": warps, "num_stages": 3}


def _mask_args(mask: Optional[torch.Tensor], q: torch.Tensor):
    """The mask tensor the kernels read and its (b, t, h, w) strides; None becomes all-valid."""
    if mask is None:
        return torch.ones((1,), dtype=torch.bool, device=q.device), (0, 0, 0, 0)
    if mask.dim() == 2:
        return mask, (mask.stride(0), mask.stride(1), 0, 0)
    return mask, tuple(mask.stride())


def _layout_args(q, k, v, mask_strides):
    B, Tq, H, W, NH, d = q.shape
    T = k.shape[1]
    S = B * H * W * NH
    strides = [x.stride(i) for x in (q, k, v) for i in (0, 1, 2, 3, 4)]
    return (S, Tq, T, H * W * NH, NH, W, *strides, *mask_strides)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns o (B, Tq, H, W, heads, d) and the float32 log-sum-exp (B, Tq, H, W, heads)."""
    B, Tq, H, W, NH, d = q.shape
    T = k.shape[1]
    o = torch.empty((B, Tq, H, W, NH, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Tq, H, W, NH), dtype=torch.float32, device=q.device)
    S = B * H * W * NH
    if S == 0 or Tq == 0:
        return o, lse
    cfg = _config(Tq, T, _tile(TL_DTYPES[q.dtype], False, d, target_family(q)))
    mask, mask_strides = _mask_args(key_padding_mask, q)
    n_qblocks = 1 if cfg.single else triton.cdiv(Tq, cfg.qrows)
    blocks = _attn_config(TL_DTYPES[q.dtype], d, backward=False, single=cfg.single, family=target_family(q))
    launch(_attn_fwd_kernel, (triton.cdiv(S, cfg.seqs) * n_qblocks, _column_programs(blocks)), q, k, v, mask, o,
           lse, *_layout_args(q, k, v, mask_strides), scale * LOG2E, cfg.seqs, cfg.qrows, cfg.kcols, n_qblocks,
           **blocks)
    return o, lse


def _backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, key_padding_mask: Optional[torch.Tensor], scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, Tq, H, W, NH, d = q.shape
    T = k.shape[1]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    S = B * H * W * NH
    if S == 0 or Tq == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    do = grad
    n_rows = S * Tq
    delta = torch.empty((B, Tq, H, W, NH), dtype=torch.float32, device=q.device)
    launch(_attn_bwd_delta_kernel, (triton.cdiv(n_rows, DELTA_ROWS),), o, do, delta, n_rows,
           **_delta_config(d, o.element_size()))
    cfg = _config(Tq, T, _tile(TL_DTYPES[q.dtype], True, d, target_family(q)))
    mask, mask_strides = _mask_args(key_padding_mask, q)
    groups = triton.cdiv(S, cfg.seqs)
    for dq_pass in (False,) if cfg.single else (False, True):
        blocks = _attn_config(TL_DTYPES[q.dtype], d, backward=True, single=cfg.single, dq=dq_pass,
                              family=target_family(q))
        # The key loop steps by its blocks, which differ per pass.
        qrows, kcols = (cfg.qrows, cfg.kcols) if cfg.single else (blocks["BLOCK_M"], blocks["BLOCK_N"])
        launch(_attn_bwd_kernel, (groups, _column_programs(blocks)), q, k, v, mask, do, lse, delta, dq, dk, dv,
               *_layout_args(q, k, v, mask_strides), scale, cfg.seqs, qrows, kcols, DQ=dq_pass, **blocks)
    return dq, dk, dv


axial_time_attention_fwd, axial_time_attention_bwd = kernel_op(
    "axial_time_attention", "triton", _forward, _backward, outputs=("o", "lse"),
    saved=("q", "k", "v", "o", "lse", "key_padding_mask", "scale"), grads=("q", "k", "v"))


def _launch_reasons(q, k, v, key_padding_mask, scale) -> list[str]:
    """The grid and shared-memory limits of the configurations these inputs launch."""
    B, Tq, H, W, NH, d = q.shape
    for backward in (False, True):
        cfg = _config(Tq, k.shape[1], _tile(TL_DTYPES[q.dtype], backward, d, target_family(q)))
        groups = triton.cdiv(B * H * W * NH, cfg.seqs)
        programs = groups * (1 if cfg.single or backward else triton.cdiv(Tq, cfg.qrows))
        if programs > MAX_PROGRAMS:
            return [f"{B * H * W * NH} sequences need {programs} programs (grid limit {MAX_PROGRAMS})"]
    return shared_memory_reasons("axial_time_attention", SHARED_BYTES, q)


# Sequence indices are int32 in the kernels.
@dispatch.register("axial_time_attention", "triton", capability(
    one_of={"d": HEAD_DIMS}, at_most={"sequences": MAX_SEQUENCES}, check=_launch_reasons))
def axial_time_attention(q, k, v, key_padding_mask, scale):
    return axial_time_attention_fwd(q, k, v, key_padding_mask, scale)[0]


def aot_calls(sweep: bool = False) -> list:
    """Forward and backward of the model's two callers for each head dim: the time operator (q, k,
    v slices of one fused projection, Tq = T) and the summarizer (one contiguous query per pixel, k
    and v slices), both with the (B, T, H, W) key mask, at T = 8 (single tile) and T = 512 (key
    loop). bfloat16 is the model's training dtype; float32 runs the forward hot (inference) and the
    backward outside the hot set. float16 compiles to the same shared memory and spills as bfloat16
    (every pair in the AOT table of benchmarks/notes/triton_aot.md), so it joins the sweep, with odd
    sizes, an unaligned fused slice, and the (B, T) and absent masks."""
    calls = []
    dtypes = (torch.bfloat16, torch.float32) + ((torch.float16,) if sweep else ())
    for dtype in dtypes:
        ty = TL_DTYPES[dtype]
        for d in HEAD_DIMS:
            # Heads as the presets give them: d_t / 64 in the time operator, one in the summarizer.
            nh = 4 if d == 64 else 1
            for T in (8, 512):
                for train in (False, True) if dtype == torch.float32 else (True,):
                    tag = f"{ty} d{d} T{T}{'' if train else ' infer'}"
                    hot = not (train and dtype == torch.float32)
                    calls.append(AOTCall(f"time {tag}", functools.partial(_aot_run, dtype, 2, T, T, 16, 16, nh, d,
                                                                          "4d", 0, train), hot))
                    calls.append(AOTCall(f"summary {tag}", functools.partial(_aot_run, dtype, 2, 1, T, 64, 64, 1, d,
                                                                             "4d", None, train), hot))
            if sweep:
                for T, Tq, mask, offset in ((3, 3, "2d", 1), (17, 17, None, 0), (65, 33, "2d", None),
                                            (100, 1, None, None)):
                    calls.append(AOTCall(f"sweep {ty} d{d} T{T} Tq{Tq} mask{mask} off{offset}",
                                         functools.partial(_aot_run, dtype, 3, Tq, T, 5, 7, 3, d, mask, offset, True),
                                         hot=False))
    return calls


def _aot_run(dtype, B, Tq, T, H, W, NH, d, mask_kind, fused_offset, train) -> None:
    """One forward (and backward when ``train``) on meta tensors. ``fused_offset`` None: q is
    contiguous and k, v are slices of one (.., 2, NH, d) projection; otherwise q, k and v are slices
    of one (.., 3, NH, d) projection starting ``fused_offset`` elements into its storage."""
    meta = dict(device="meta", dtype=dtype, requires_grad=train)
    if fused_offset is None:
        q = torch.empty((B, Tq, H, W, NH, d), **meta)
        kv = torch.empty((B, T, H, W, 2, NH, d), **meta)
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
    else:
        n = B * T * H * W * 3 * NH * d
        flat = torch.empty((n + fused_offset,), **meta)
        qkv = flat[fused_offset:].view(B, T, H, W, 3, NH, d)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    shape = {"4d": (B, T, H, W), "2d": (B, T), None: None}[mask_kind]
    mask = None if shape is None else torch.empty(shape, device="meta", dtype=torch.bool)
    o = axial_time_attention(q, k, v, mask, d ** -0.5)
    if train:
        o.backward(torch.empty_like(o))
