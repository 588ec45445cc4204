"""Resource report of the CUDA kernels (segfast.gpucheck.cuda_resources):
registers, spills, shared memory and occupancy from nvcc cubins, and the
nms shared-memory decision. The compiling tests skip without nvcc and are
slow (nvcc: the report compiles every .cu file for sm_80 and sm_90)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segfast.gpucheck import cuda_resources as cr
from segfast.gpucheck import triton_aot

CSRC = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None or not CSRC.is_dir(),
                                reason="nvcc is not on PATH (or no csrc/cuda sources)")


def test_parse_resource_usage():
    text = """
Resource usage:
 Common:
  GLOBAL:0
 Function _Z3fooPf:
  REG:38 STACK:16 SHARED:1792 LOCAL:8 CONSTANT[2]:288 CONSTANT[0]:440 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z3barv:
  REG:27 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:400 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    got = triton_aot.parse_resource_usage(text)
    assert got == {"_Z3fooPf": {"registers": 38, "stack": 16, "static_shared": 1792, "local": 8},
                   "_Z3barv": {"registers": 27, "stack": 0, "static_shared": 0, "local": 0}}


def test_parse_ptxas_v():
    text = """ptxas info    : Compiling entry function '_Z3foo' for 'sm_80'
ptxas info    : Function properties for _Z3foo
    24 bytes stack frame, 20 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, 1024 bytes smem, 380 bytes cmem[0]
"""
    assert triton_aot.parse_ptxas_v(text) == {"_Z3foo": {"registers": 255, "stack": 24, "static_shared": 1024,
                                                         "local": 0, "spill_stores": 20, "spill_loads": 20}}


def test_split_name():
    assert cr.split_name("void segfast::boxes::(anonymous namespace)::nms_mask_kernel<float>"
                         "(segfast::boxes::NmsProblem, long, unsigned long long*)") == ("nms_mask_kernel", "float")
    assert cr.split_name("segfast::crf::(anonymous namespace)::update_kernel(float const*, "
                         "segfast::crf::(anonymous namespace)::SliceArgs, int)") == ("update_kernel", "")
    assert cr.split_name("void segfast::pixel::(anonymous namespace)::softmax_kernel<0, double>"
                         "(segfast::pixel::Problem, long)") == ("softmax_kernel", "0, double")


def test_occupancy():
    # 256 threads, 32 registers, no shared memory: 8 blocks fill sm_80's 64 warps
    assert cr.occupancy(80, 256, 32, 0) == {"blocks_per_sm": 8, "occupancy": 1.0, "limiter": "threads"}
    # 64 registers: 65536 / (64 * 32) = 32 warps -> 4 blocks of 8 warps
    assert cr.occupancy(80, 256, 64, 0)["occupancy"] == 0.5
    # 40 KiB of shared memory per block (+1 KiB reserved): 4 blocks in sm_80's 164 KiB, 5 in sm_90's 228
    assert cr.occupancy(80, 128, 32, 40 * 1024) == {"blocks_per_sm": 4, "occupancy": 0.25, "limiter": "shared"}
    assert cr.occupancy(90, 128, 32, 40 * 1024)["blocks_per_sm"] == 5


def test_failure_rules():
    base = dict(file="region.cu", kernel="stats_kernel", template="float, float", arch=80, block=256, registers=40,
                local=0, stack=0, static_shared=1024, dynamic_shared=0, error=None)
    assert cr.failures([base]) == []
    assert "spills" in cr.failures([dict(base, local=16)])[0]
    assert "spills" in cr.failures([dict(base, stack=8, spill_stores=8)])[0]
    assert cr.failures([dict(base, stack=40, spill_stores=0)]) == []  # a stack frame without spills
    assert cr.failures([dict(base, file="crf.cu", local=16)]) == []  # spills fail the loss kernels only
    over = dict(base, static_shared=520, dynamic_shared=48 * 1024)
    assert "without the opt-in" in cr.failures([over])[0]
    assert cr.failures([dict(over, opt_in=True)]) == []


SASS = """
\t\tFunction : _Z4loopv
        /*0000*/                   LDG.E.128 R4, [R2.64] ;             /* 0x0 */
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;       /* 0x0 */
        /*0020*/                   LDG.E R8, [R2.64] ;                 /* 0x0 */
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;       /* 0x0 */
        /*0040*/              @!P0 BRA 0x20 ;                          /* 0x0 */
        /*0050*/                   STG.E.128 [R2.64], R4 ;             /* 0x0 */
        /*0060*/               @P1 BRA 0x0 ;                           /* 0x0 */
        /*0070*/                   EXIT ;                              /* 0x0 */
\t\tFunction : _Z4flatv
        /*0000*/                   LDG.E.64 R4, [R2.64] ;              /* 0x0 */
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;       /* 0x0 */
        /*0020*/                   STG.E [R2.64], R4 ;                 /* 0x0 */
        /*0030*/               @P0 BRA 0x70 ;                          /* 0x0 */
        /*0040*/                   EXIT ;                              /* 0x0 */
"""


def test_sass_counts():
    """Vector widths and barriers from SASS: a barrier inside a loop nested in
    another runs per tile (bar_loop); one in the outer loop only is not counted."""
    funcs = cr.sass_functions(SASS)
    assert set(funcs) == {"_Z4loopv", "_Z4flatv"}
    assert cr.sass_counts(funcs["_Z4loopv"]) == {"ldg128": 1, "ldg": 2, "stg128": 1, "stg": 1, "bar_sync": 2,
                                                 "bar_loop": 1}
    assert cr.sass_counts(funcs["_Z4flatv"]) == {"ldg128": 0, "ldg": 1, "stg128": 0, "stg": 1, "bar_sync": 1,
                                                 "bar_loop": 0}


DIVERGENT = """
\t\tFunction : _Z4warpv
        /*0000*/                   LDG.E.128 R4, [R2.64] ;             /* 0x0 */
        /*0010*/                   BRA.DIV ~URZ, 0x90 ;                /* 0x0 */
        /*0020*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;   /* 0x0 */
        /*0030*/               @P0 BRA 0x0 ;                           /* 0x0 */
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;       /* 0x0 */
        /*0050*/               @P1 BRA 0x0 ;                           /* 0x0 */
        /*0060*/                   EXIT ;                              /* 0x0 */
        /*0070*/                   BRA 0x70 ;                          /* 0x0 */
        /*0090*/                   CALL.REL.NOINC 0xb0 ;               /* 0x0 */
        /*00a0*/                   BRA 0x30 ;                          /* 0x0 */
        /*00b0*/                   RET.REL.NODEC R20 0x0 ;             /* 0x0 */
"""


def test_sass_divergence_handler_is_not_a_loop():
    """The out-of-line handler of a warp collective (BRA.DIV) jumps back into
    the body after the collective: not a loop around the per-image barrier.
    Counted as one, the barrier would sit in two loops (bar_loop 1)."""
    for sass in (DIVERGENT, DIVERGENT.replace("BRA.DIV ~URZ, 0x90", "BRA.DIV UR5, 0x90")):  # sm_80, sm_90 forms
        got = cr.sass_counts(cr.sass_functions(sass)["_Z4warpv"])
        assert got["bar_sync"] == 1 and got["bar_loop"] == 0
    # a predicated branch back is a loop (here around the barrier): counted
    looped = DIVERGENT.replace("       BRA 0x30 ;", "   @P2 BRA 0x30 ;")
    assert cr.sass_counts(cr.sass_functions(looped)["_Z4warpv"])["bar_loop"] == 1


def test_streaming_rules():
    base = dict(file="region.cu", kernel="stats_kernel", template="float, float, 1", arch=80, block=256,
                registers=71, local=0, stack=0, static_shared=13312, dynamic_shared=0, error=None, ldg128=18,
                bar_loop=0)
    assert cr.failures([base]) == []
    assert "tile loop" in cr.failures([dict(base, bar_loop=2)])[0]
    for kernel in ("stats_wide_kernel", "grad_kernel"):
        assert "tile loop" in cr.failures([dict(base, kernel=kernel, bar_loop=2)])[0]
        assert "128-bit" in cr.failures([dict(base, kernel=kernel, ldg128=0)])[0]
    for kernel in ("softmax_kernel", "softmax_dense_kernel", "sigmoid_kernel"):
        assert "128-bit" in cr.failures([dict(base, kernel=kernel, file="pixel.cu", ldg128=0)])[0]
    assert cr.failures([dict(base, kernel="finish_kernel", bar_loop=2, ldg128=0)]) == []


@needs_nvcc
@pytest.mark.slow
def test_nms_reduce_shared_memory_decision(tmp_path):
    """nms_reduce_kernel asks for at most 48 KiB of shared memory: the kept /
    diagonal words always, the removed words only while they fit; the switch
    to global memory comes exactly where the total would pass 48 KiB."""
    cbs = [1, 100, 6078, 6079, 6080, 6081, 65535]
    exprs = {f"bytes_{cb}": f"nms_reduce_shared_bytes({cb})" for cb in cbs}
    exprs.update({f"shared_{cb}": f"int(nms_removed_in_shared({cb}))" for cb in cbs})
    exprs["max_bytes"] = "kNmsReduceMaxSharedBytes"
    exprs["word"] = "kNmsWord"
    got = cr.probe(CSRC / "boxes_match.cu", CSRC.parent, exprs, tmp_path)
    fixed = (got["word"] + 1) * 8
    last = (48 * 1024 - fixed) // 8  # the largest removed-word count kept in shared memory
    assert last == 6079
    for cb in cbs:
        in_shared = cb <= last
        assert got[f"shared_{cb}"] == int(in_shared), cb
        assert got[f"bytes_{cb}"] == fixed + (cb * 8 if in_shared else 0), cb
        assert got[f"bytes_{cb}"] <= 48 * 1024, cb
    assert got["max_bytes"] == 48 * 1024


@needs_nvcc
@pytest.mark.slow
def test_cuda_kernel_resources(capsys):
    rows = cr.report(CSRC, (80, 90))
    with capsys.disabled():
        print("\n" + cr.format_table(rows))
    bad = cr.failures(rows)  # spills in the loss kernels included
    assert bad == [], "\n".join(bad)
    seen = {(r["kernel"], r["arch"]) for r in rows}
    for kernel in cr.LAUNCHES:
        for arch in (80, 90):
            assert (kernel, arch) in seen, f"{kernel} sm_{arch} missing from the report"
    # the nms reduce launch: no static shared memory, its dynamic request within 48 KiB
    nms = [r for r in rows if r["kernel"] == "nms_reduce_kernel"]
    assert nms and all(r["static_shared"] + r["dynamic_shared"] <= 48 * 1024 for r in nms)
    for r in rows:
        assert 0 < r["occupancy"] <= 1, r
