"""Triton kernel of the Lovász family: the weights step of
``lovasz_sort_weights`` (segfast/ops/lovasz.py) after the sort.

Installed as ``segfast.triton_kernels.lovasz``. Imports only triton, torch and
the standard library, and imports cleanly without a GPU.

The caller sorts the whole batch with one torch.sort of packed (row, error
bits) keys and hands over ``perm`` [G*L] (int64 flat indices; row g's pixels,
by error descending, invalid pixels last, occupy perm[g*L:(g+1)*L]), the
contiguous fg / valid [G*L] and ``total`` [G] float64 (Σ fg over the valid
pixels). One program per row walks its sorted positions in blocks: gathers
fg through perm, ``tl.cumsum`` within the block plus a carry across blocks
gives A_i, and the weight (csrc/common/lovasz.h)

    w_i = (T - A_i + i·fg_i) / ((T + B_i)(T + B_{i-1})),  B_i = i - A_i  (1 when T + B_{i-1} = 0)

is scattered back through perm (0 for invalid pixels). Arithmetic in the
weights' dtype (fp32, or fp64 for fp64 errors / rows of >= 2^24 pixels): fp32
counts of binary fg are exact below 2^24.

GPU tuning left to do (correctness verified in the Triton interpreter only):
BLOCK / num_warps, and more than one program per long row (a decoupled
look-back scan) when there are few rows (a class over the batch).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import wrap

BLOCK = 1024
WARPS = 4


@triton.jit
def _weights_kernel(perm_ptr, f_ptr, v_ptr, total_ptr, w_ptr, L,
                    HAS_VALID: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    base = g * L
    if F64:
        T = tl.load(total_ptr + g)
    else:
        T = tl.load(total_ptr + g).to(tl.float32)
    carry = T * 0
    offs = tl.arange(0, BLOCK).to(tl.int64)
    for start in range(0, L, BLOCK):
        p = start + offs
        m = p < L
        idx = tl.load(perm_ptr + base + p, mask=m, other=0)
        ok = m
        if HAS_VALID:
            ok = m & (tl.load(v_ptr + idx, mask=m, other=0) != 0)
        f = tl.load(f_ptr + idx, mask=ok, other=0).to(T.dtype)
        f = tl.where(ok, f, 0)
        cum = carry + tl.cumsum(f, 0)
        rank = (p + 1).to(T.dtype)
        d1 = T + rank - cum  # T + B_i
        d0 = d1 - (1 - f)  # T + B_{i-1}
        safe = tl.where(d0 > 0, d1 * d0, 1)
        w = tl.where(d0 > 0, (T - cum + rank * f) / safe, 1)
        w = tl.where(ok, w, 0)
        tl.store(w_ptr + idx, w.to(w_ptr.dtype.element_ty), mask=m)
        carry += tl.sum(f, 0)


def launch_weights(G, L, perm, f, v, total, w):
    """Write w [G*L] (float32 / float64) from perm, f, v (or None) and total; see the module docstring."""
    import torch

    wrap(_weights_kernel)[(G,)](perm, f, v, total, w, L,
                                HAS_VALID=v is not None, F64=w.dtype == torch.float64,
                                BLOCK=BLOCK, num_warps=WARPS)
