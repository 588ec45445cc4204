"""Pieces shared by the Triton kernels of every family
(``triton_kernels/<family>.py``), installed as ``segfast.triton_kernels._common``.

Imports only triton, torch and the standard library, and imports cleanly
without a GPU. Device helpers are ``@triton.jit`` functions that the family
kernels call; the launcher helpers below them are plain Python.
"""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------


@triton.jit
def log1p(u):
    """log(1 + u), accurate for small |u| (u > -1; u == -1 gives 0, callers
    select another branch there)."""
    v = 1.0 + u
    d = v - 1.0
    tiny = d == 0.0
    return tl.where(tiny, u, tl.log(tl.where(v > 0.0, v, 1.0)) * (u / tl.where(tiny, 1.0, d)))


@triton.jit
def softplus(z):
    """log(1 + exp(z)), stable."""
    return tl.maximum(z, 0.0) + log1p(tl.exp(-tl.abs(z)))


@triton.jit
def focal_pow(a, g):
    """a^g for a >= 0 and g >= 0, the focal factor (1 - p)^gamma: 0^0 = 1
    (as torch), 0^g = 0 for g > 0, a <= 0 counts as 0; a NaN ``a`` stays NaN."""
    pos = a > 0.0
    small = tl.where(a == a, tl.where(g == 0.0, 1.0, 0.0), a)
    return tl.where(pos, tl.exp(g * tl.log(tl.where(pos, a, 1.0))), small)


@triton.jit
def sigmoid_parts(x):
    """-> (softplus(x), softplus(-x), s, 1 - s) of s = sigmoid(x), from one exp
    and one log: -log(1 - s) and -log(s) without cancellation, 1 - s without
    cancellation; +-inf give the limits, NaN stays NaN."""
    e = tl.exp(-tl.abs(x))  # in [0, 1]
    lp = log1p(e)
    inv = 1.0 / (1.0 + e)
    pos = x >= 0.0
    sp_pos = tl.where(pos, x, 0.0) + lp
    sp_neg = tl.where(pos, 0.0, -x) + lp
    s = tl.where(pos, inv, e * inv)
    oms = tl.where(pos, e * inv, inv)
    return sp_pos, sp_neg, s, oms


@triton.jit
def chunk_bounds(pid, P, L, S):
    """Program ``pid`` of an (image, chunk) grid of N * P programs -> (n64,
    start, end): image n and pixels [j*L, min((j+1)*L, S)) of its chunk j."""
    n64 = pid // P
    j64 = pid % P
    start = j64 * L
    end = tl.minimum(start + L, S)
    return n64, start, end


@triton.jit
def load_tile(base, c64, s64, sc, ss, mask):
    """fp32 [BLOCK_C, BLOCK_S] tile of base[c, s] (element strides sc, ss); 0 off mask."""
    return tl.load(base + c64[:, None] * sc + s64[None, :] * ss, mask=mask, other=0).to(tl.float32)


@triton.jit
def load_labels(t_ptr, n64, s64, stn, sts, smask,
                T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr, ign_i):
    """-> (lab int64 [BLOCK_S], per-pixel valid mask [BLOCK_S]: in range and
    not ignore_index). Dense targets: (zeros, smask), t_ptr is not read."""
    if T_IS_LABEL:
        lab = tl.load(t_ptr + n64 * stn + s64 * sts, mask=smask, other=0).to(tl.int64)
        if HAS_IGNORE:
            pvalid = smask & (lab != ign_i)
        else:
            pvalid = smask
    else:
        lab = s64 * 0
        pvalid = smask
    return lab, pvalid


@triton.jit
def load_target_tile(t_ptr, n64, c64, s64, stn, stc, sts, mask,
                     T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
                     lab, label_offset, ign_f):
    """-> (t fp32, v bool) tiles [BLOCK_C, BLOCK_S]; t is already zero where not v.

    For labels ``lab`` ([BLOCK_S] int64 from ``load_labels``) gives the one-hot
    target (a label outside [label_offset, label_offset + C) gives an all-zero
    column) and t_ptr is not read; ``mask`` must already contain the per-pixel
    valid mask. Dense targets are read here; v is also false where t equals
    the ignore value ``ign_f`` (HAS_IGNORE).
    """
    if T_IS_LABEL:
        vb = mask
        t = ((lab[None, :] == (c64[:, None] + label_offset)) & vb).to(tl.float32)
    else:
        tv = load_tile(t_ptr + n64 * stn, c64, s64, stc, sts, mask)
        if HAS_IGNORE:
            vb = mask & (tv != ign_f)
        else:
            vb = mask
        t = tl.where(vb, tv, 0.0)
    return t, vb


# --------------------------------------------------------------------------
# launcher helpers
# --------------------------------------------------------------------------


def wrap(kernel):
    """The kernel as launched inside a torch.library triton_op."""
    import torch
    # torch < 2.6 has no wrap_triton: the op is then an opaque custom op
    # (segfast/ops/_common.py triton_op) and launches the kernel itself.
    wrap_triton = getattr(torch.library, "wrap_triton", None)
    return wrap_triton(kernel) if wrap_triton is not None else kernel


def blocks(C: int, block_s, block_c, *, tile: int, max_single_c: int, loop_block_c: int):
    """-> (SINGLE_C, BLOCK_C, BLOCK_S): one class tile of the next power of two
    >= C when C <= max_single_c, else class chunks of loop_block_c; BLOCK_S
    fills ``tile`` elements (at least 16). block_s / block_c override."""
    if block_c is None:
        if C <= max_single_c:
            block_c = triton.next_power_of_2(max(C, 1))
        else:
            block_c = loop_block_c
    single = C <= block_c
    if block_s is None:
        block_s = max(tile // block_c, 16)
    return single, block_c, block_s


def chunk_len(S: int, P: int, block_s: int) -> int:
    """Pixels per chunk of an (image, chunk) grid of P chunks per image: the
    ceil(S / P) a grid of P needs, rounded up to a multiple of ``block_s`` (a
    power of two) and of 16. Every chunk start is then a multiple of 16
    pixels, which Triton's divisibility specialisation of L turns into
    aligned vector loads and stores; the last chunks may be short or empty
    (an empty chunk writes zero partial sums)."""
    unit = max(block_s, 16)
    L = -(-S // max(P, 1))
    return max(unit, -(-L // unit) * unit)


def chunks(N: int, S: int, block_s: int, sm_count: int, waves: int, min_blocks: int = 2) -> int:
    """P of an (image, chunk) grid of N * P programs: about ``waves`` programs
    per SM, chunks of a whole number (at least ``min_blocks``, when S has
    them) of pixel blocks of ``block_s``. ``chunk_len(S, P, block_s)`` is then
    the chunk length and every chunk holds pixels."""
    max_p = max(1, -(-S // (min_blocks * block_s)))
    want = max(1, -(-waves * sm_count // max(N, 1)))
    P = min(want, max_p)
    return -(-S // chunk_len(S, P, block_s))


def target_args(t, t_is_label: bool, has_ignore: bool, ignore_value: float):
    """-> (t, (stn, stc, sts), has_ignore, ign_i, ign_f): bool targets viewed as
    uint8; labels get stc = 0 and an integer ignore value (has_ignore is
    dropped when no integer label can equal ignore_value)."""
    import torch
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    ign_f = float(ignore_value) if has_ignore else 0.0
    ign_i = 0
    if t_is_label:
        strides = (t.stride(0), 0, t.stride(1))
        if has_ignore:
            iv = float(ignore_value)
            if iv.is_integer() and -2**63 <= iv < 2**63:
                ign_i = int(iv)
            else:  # no integer label can equal it
                has_ignore = False
    else:
        strides = (t.stride(0), t.stride(1), t.stride(2))
    return t, strides, has_ignore, ign_i, ign_f
