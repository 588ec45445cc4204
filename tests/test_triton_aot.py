"""Every Triton kernel compiles for sm_80 and sm_90 (segfast.gpucheck.triton_aot):
no GPU needed, Triton's own compiler and ptxas. The launches are recorded
while the public ops run (in the interpreter without a GPU), and a tile
sweep records what each launcher derives from the class count, the dtypes
and the chunk count (its own tile functions over every class count that
changes them x every dtype, kernels not run), so a new constexpr path, tile
or dtype is compiled as soon as the dispatch code can reach it.

The quick sweep (default tier) compiles one recorded launch of every kernel
function per arch. The full sweep (slow tier) compiles, per arch, the
covering set of the configuration space derived from the recorded launches
and the tile sweep (``KernelSpace.covering`` seeded with the recorded
launches, about 1,320 launches per arch): every configuration (constexpr
values and launch options) of every kernel once at least, and every
argument dtype / None tuple paired with every value of every other factor,
keeping to pairs of configuration values and argument classes that a
recorded launch showed together. Not compiled here: the rest of the derived
space (about 12,900 launches per arch; ``--level space`` of the module
compiles it), 64-bit integer arguments, and the plain (unaligned) variant
beyond one launch per kernel. Both sweeps fail on a compile error, shared
memory over the per-block limit, or a spill in the streaming loss kernels
(spill stores in ptxas's log: spills land in the stack frame, which
cuobjdump counts as STACK, not LOCAL).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import textwrap
import time

import pytest

pytest.importorskip("triton")

from conftest import triton_needs_run  # noqa: E402

from segfast.gpucheck import triton_aot as aot  # noqa: E402
from segfast.gpucheck import triton_workload  # noqa: E402

WORKERS = min(2, os.cpu_count() or 1)


def _names(launches):
    return {(la.module, la.kernel) for la in launches}


def test_describe_launch():
    import torch

    def k(x_ptr, n, s, f, flag, BLOCK: "tl.constexpr", MODE: "tl.constexpr" = 3):  # noqa: F821
        pass

    la = aot.describe_launch(k, (torch.zeros(3, dtype=torch.float16), 1, 2**40, 0.5, True), dict(BLOCK=64,
                                                                                              num_warps=4))
    assert la.kernel == "k"
    assert la.args == (("T", "float16"), ("I", "1"), ("I", "i64"), ("F",), ("B", True), ("C", 64), ("C", 3))
    assert la.options == (("num_warps", 4),)
    assert aot.describe_launch(k, (torch.zeros(3), 5, 17, 1.0, False), dict(BLOCK=64)).args[1:3] == \
        (("I", "i32"), ("I", "i32"))


def _toy_launch(x_dt, t_dt, weighted, C, wide=False):
    """The launch a toy dispatcher makes: labels or a dense target (a
    constexpr), an optional weight tensor (a constexpr, None otherwise), the
    gradient in the input's dtype, a class tile with the pixel tile and
    warps following it (``wide``: and pixel vectors twice as long for 16-bit
    inputs, as 16-byte loads make them)."""
    label = t_dt in ("int64", "uint8")
    block_c = 1 << max(C - 1, 0).bit_length() if C <= 8 else 4
    block_s, warps = (2048 // block_c, 8) if C <= 8 else (128, 4)
    if wide and x_dt in ("float16", "bfloat16"):
        block_s *= 2
    args = (("T", x_dt), ("T", t_dt), ("T", "float32") if weighted else ("N",), ("T", x_dt), ("I", "i32"),
            ("C", label), ("C", weighted), ("C", block_c), ("C", block_s), ("C", C <= 8))
    return aot.Launch("toy", "toy_kernel", args, (("num_warps", warps),))


TOY_X = ("float32", "float16", "bfloat16")
TOY_T = ("int64", "uint8", "float32", "bool")
TOY_C = (1, 2, 3, 5, 9)  # tiles 1, 2, 4, 8 and the looped tile


def _toy_recorded(wide=False, launch=_toy_launch):
    """A sparse workload: every class tile at one setting, every dtype and
    option at one class count."""
    recorded = [launch("float32", "int64", False, C, wide) for C in TOY_C]
    recorded += [launch(x, "int64", False, 3, wide) for x in TOY_X]
    return recorded + [launch("float32", t, w, 3, wide) for t in TOY_T for w in (False, True)]


def _toy_tiles(wide=False, launch=_toy_launch):
    """The toy's tile sweep (as ``aot.record_tiles`` gives it): every class
    count x every dtype, one form per target kind, kernels not run."""
    return [(("toy", "labels" if t in ("int64", "uint8") else "dense", C, x, t), 0, launch(x, t, False, C, wide))
            for C in TOY_C for x in TOY_X for t in TOY_T]


@pytest.mark.parametrize("wide", [False, True])
def test_config_space_toy(wide):
    """From a sparse set of recorded launches (each choice seen, overlapping
    at one common setting) and the tile sweep, the derivation gives exactly
    the toy dispatcher's full cross product: no combination missed, none
    invented. The tile keys form one group with the dtypes they follow, so
    they are not crossed with each other, and cross freely with the other
    choices; without the sweep they keep to the pairs the workload showed."""
    every = {_toy_launch(*c, wide) for c in itertools.product(TOY_X, TOY_T, (False, True), TOY_C)}
    recorded = _toy_recorded(wide)
    assert len(set(recorded)) < len(every) // 5
    (space,) = aot.config_space(recorded, _toy_tiles(wide))
    got = set(space.launches)
    assert got - every == set(), sorted(got - every, key=repr)[:5]
    assert every - got == set(), sorted(every - got, key=repr)[:5]
    assert len(space.launches) == len(got) == space.size()
    # the tile group: the class tile, the pixel tile, the flag and the warps (and the input's
    # dtype, with its gradient's, when the pixel tile follows it)
    tile = space.config_groups[space.tile]
    assert tile == [("C", 7), ("C", 8), ("C", 9), ("O", "num_warps")] + ([("A", 0), ("A", 3)] if wide else [])
    assert space.num_configs() == len({aot._config(la) for la in every})
    # the label flag fixes the target's class; the weight flag None or a tensor
    assert space.couplings[1] == [("C", 5)] and space.couplings[2] == [("C", 6)]
    # without the sweep only the pairs the workload showed: tiles it ran with one setting miss the others
    (sparse,) = aot.config_space(recorded)
    assert sparse.tile is None and every - set(sparse.launches)


def test_tile_function_change():
    """A change of the launcher's tile function shows up in the space: the
    new tile tuple is there, the old one gone."""
    def bigger(x, t, w, C, wide=False):
        la = _toy_launch(x, t, w, C, wide)
        if C == 5:  # the launcher now takes a wider pixel tile at 5 classes
            la = dataclasses.replace(la, args=la.args[:8] + (("C", 512),) + la.args[9:])
        return la
    (old,) = aot.config_space(_toy_recorded(), _toy_tiles())
    (new,) = aot.config_space(_toy_recorded(launch=bigger), _toy_tiles(launch=bigger))
    assert (8, 512, True, 8) in new.config_values[new.tile] and (8, 512, True, 8) not in old.config_values[old.tile]
    assert (8, 256, True, 8) in old.config_values[old.tile]
    assert {la for la in new.launches if la.args[7] == ("C", 8)} \
        == {dataclasses.replace(la, args=la.args[:8] + (("C", 512),) + la.args[9:])
            for la in old.launches if la.args[7] == ("C", 8)}


def _role_launch(x_dt, role, C):
    """A toy kernel launched in three roles (the loss sums, the loss map,
    the gradient) whose class count is unrolled only without the gradient."""
    want_map, want_dx = role == "map", role == "dx"
    args = (("T", x_dt), ("T", x_dt), ("I", "i32"), ("C", want_map), ("C", want_dx),
            ("C", C if C <= 4 and not want_dx else 0))
    return aot.Launch("toy", "role_kernel", args, (("num_warps", 4),))


def test_tile_follows_role():
    """A tile key that changes between one case's launches (forward and
    backward) keeps, per role, to the values the sweep launched with it."""
    roles = ("loss", "map", "dx")
    real = {_role_launch(x, r, C) for x, r, C in itertools.product(TOY_X, roles, range(1, 6))}
    recorded = [_role_launch("float32", r, 3) for r in roles]
    tiles = [(("toy", form, C, x), n, _role_launch(x, r, C)) for C in range(1, 6) for x in TOY_X
             for form, rs in (("sums", ("loss", "dx")), ("map", ("map", "dx"))) for n, r in enumerate(rs)]
    (space,) = aot.config_space(recorded, tiles)
    assert set(space.launches) == real
    assert space.num_configs() == len({aot._config(la) for la in real}) == 11


def _factor_pairs(ks, launches, configs=True):
    """Every pair of factor values (configuration groups' and argument groups'
    tuples; the tile group's by its dtypes when it pins any) that
    ``launches`` combine; without ``configs`` the pairs of two configuration
    groups are left out."""
    def factors(la):
        out = []
        for n, g in enumerate(ks.config_groups):
            keys = [k for k in g if k[0] == "A"] if n == ks.tile and any(k[0] == "A" for k in g) else g
            out.append(("G", n, tuple(aot._key_value(la, k) for k in keys)))
        return out + [("A", n, tuple(la.args[p] for p in g)) for n, g in enumerate(ks.arg_groups)]
    return {(a, b) for la in launches for a, b in itertools.combinations(factors(la), 2)
            if configs or a[0] == "A" or b[0] == "A"}


@pytest.mark.parametrize("max_configs,wide", [(1000, False), (1000, True), (1, False)])
def test_covering(max_configs, wide):
    """The covering set is part of the space and keeps to pairs of values
    that a recorded launch combined (a weight seen with labels only stays
    with labels); within that, it has every configuration (or, when the
    kernel has more than ``max_configs``, every pair of two configuration
    groups' values), every argument tuple and every pair of factor values
    (the tile group's: its dtypes); and it is far smaller."""
    recorded = _toy_recorded(wide)
    recorded.remove(_toy_launch("float32", "bool", True, 3, wide))  # weights never with a bool target
    (space,) = aot.config_space(recorded, _toy_tiles(wide))
    every = space.launches
    real = {_toy_launch(x, t, w, C, wide) for x, t, w, C in itertools.product(TOY_X, TOY_T, (False, True), TOY_C)
            if not (t == "bool" and w)}
    assert set(every) == real and space.size() == len(every)
    assert space.num_configs() == len({aot._config(la) for la in real}) == (40 if wide else 20)
    assert all(space.consistent(la) for la in every)
    cover = space.covering(max_configs=max_configs)
    assert set(cover) <= set(every) and len(set(cover)) == len(cover)
    assert _factor_pairs(space, cover) >= _factor_pairs(space, every)
    if max_configs >= space.num_configs():
        assert {aot._config(la) for la in cover} == {aot._config(la) for la in every}
    assert len(cover) <= len(every) // 2
    # the recorded launches and the covering sets of every kernel, seeded with them (what a
    # recorded launch covers is not asked again)
    seeded = space.covering(max_configs, seed=recorded)
    assert set(seeded) >= set(recorded) and len(seeded) < len(recorded) + len(cover)
    assert _factor_pairs(space, seeded) >= _factor_pairs(space, every)
    assert set(aot.covering_set(recorded, _toy_tiles(wide))) == set(space.covering(1000, seed=recorded))


def test_vector_counts():
    ptx = textwrap.dedent("""
        ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        @%p1 ld.global.nc.v2.b32 { %r5, %r6 }, [ %rd2 + 0 ];
        ld.global.b16 %rs1, [ %rd3 + 0 ];
        st.global.v4.b32 [ %rd4 + 0 ], { %r1, %r2, %r3, %r4 };
        bar.sync 0;
        barrier.sync 0;
    """)
    sass = "LDG.E.128 R4, desc[UR4][R2.64] ;\n STG.E.128 desc[UR4][R6.64], R8 ;\n LDG.E R1, [R2] ;"
    c = aot.vector_counts(ptx, sass)
    assert (c["ld_v4"], c["ld_v2"], c["ld_v1"], c["st_v4"], c["bar_sync"]) == (1, 1, 1, 1, 2)
    assert (c["ldg128"], c["stg128"], c["ldg"]) == (1, 1, 2)


def test_compile_reports_errors(tmp_path, monkeypatch):
    """A kernel the interpreter runs but the compiler rejects (a plain global
    read in jit code) is reported as a failure; the same kernel with a
    constexpr global compiles, with its resources."""
    (tmp_path / "aot_probe_kernels.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl

        SCALE = 2.0
        SCALE_C = tl.constexpr(2.0)

        @triton.jit
        def bad_kernel(x_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) * SCALE, mask=i < n)

        @triton.jit
        def good_kernel(x_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) * SCALE_C, mask=i < n)
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path)] + sys.path))
    args = (("T", "float32"), ("I", "i32"), ("C", 256))
    jobs = [aot.Job(aot.Launch("aot_probe_kernels", name, args, (("num_warps", 4),)), "div16", 90)
            for name in ("bad_kernel", "good_kernel")]
    bad, good = aot.compile_all(jobs, workers=1)
    assert "SCALE" in bad["error"]
    assert len(aot.failures([bad])) == 1
    assert good["error"] is None, good["error"]
    assert good["registers"] > 0 and good["local"] == 0 and good["spill_stores"] == 0
    assert good["ld_v2"] == 1 and good["ld_v1"] == 0  # 256 fp32 over 128 threads, 16-byte aligned: one 2-wide load
    assert aot.failures([good]) == []


@triton_needs_run()
def test_quick_sweep(capsys):
    """One launch of every kernel function compiles for sm_80 and sm_90."""
    launches = aot.record_launches(lambda: triton_workload.run("quick"))
    every = set(aot.kernel_functions())
    assert _names(launches) == every
    t0 = time.perf_counter()
    rows = aot.compile_all(aot.expand(aot.subset(launches), variants=("div16",)), workers=WORKERS)
    with capsys.disabled():
        print("\n" + aot.format_table(aot.summarise(rows)))
        print(aot.time_report(rows, time.perf_counter() - t0, WORKERS))
    assert aot.failures(rows) == []
    assert {(r["kernel"], r["arch"]) for r in rows} == {(k, a) for _, k in every for a in aot.ARCHS}


def test_spill_rule():
    """A spill in a streaming loss kernel fails unless ptxas only parks a few
    bytes outside every loop (read from the SASS): any spill access inside a
    loop fails, so does one over SPILL_OUTSIDE_LOOPS bytes, or one whose SASS
    was not read; a kernel outside NO_SPILL may spill."""
    row = dict(kernel="_region_stats_kernel", arch=90, variant="div16", types="bfloat16,int32,float32",
               constexprs={"ACT": 2, "XK": 2, "BLOCK_C": 8, "SINGLE_C": True}, error=None, shared=0,
               spill_stores=4, local=0, stack=8, registers=96, local_loop=0)
    assert aot.per_program_spill(row) and aot.failures([row]) == []
    assert len(aot.failures([dict(row, local_loop=2)])) == 1
    assert len(aot.failures([dict(row, spill_stores=aot.SPILL_OUTSIDE_LOOPS + 4)])) == 1
    assert len(aot.failures([dict(row, local_loop=None)])) == 1
    assert len(aot.failures([dict(row, spill_stores=None, stack=64, local_loop=0)])) == 1
    assert aot.failures([dict(row, kernel="_aligned_kernel", local_loop=2)]) == []
    assert aot.failures([dict(row, local_loop=2)], spills=False) == []


def test_local_in_loops():
    """Spill loads and stores count where a backward branch encloses them."""
    from segfast.gpucheck import perf_ptx
    sass = """
        /*0000*/                   STL [R1], R0 ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   STL [R1+0x4], R4 ;
        /*0030*/                   LDL R5, [R1+0x4] ;
        /*0040*/              @P0 BRA 0x10 ;
        /*0050*/                   LDL.LU R6, [R1] ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA 0x70;
    """
    ins, spans = perf_ptx.sass_loops(sass)
    assert (0x10, 0x40) in spans
    assert perf_ptx.local_in_loops(sass) == 2


@triton_needs_run()
@pytest.mark.slow
def test_full_sweep(capsys):
    """The covering set of the full workload and the tile sweep
    (``aot.covering_set``: every recorded launch, and per kernel function
    every configuration, with every argument dtype / None tuple and every
    pair of factor values the configuration space combines, within the pairs
    the recording showed; div16 variant; the generic plain variant once per
    kernel) compiles for sm_80 and sm_90 without a failure. The rest of the
    derived space (its size is printed) is not compiled here: ``python -m
    segfast.gpucheck.triton_aot --level space`` does."""
    t0 = time.perf_counter()
    launches = aot.record_launches(lambda: triton_workload.run("full"))
    t1 = time.perf_counter()
    assert _names(launches) == set(aot.kernel_functions())
    tiles = aot.record_tiles()
    spaces = aot.config_space(launches, tiles)
    # every configuration of every kernel once at least, per arch (SEGFAST_AOT_MAX_CONFIGS: a kernel
    # with more configurations gets every pair of configuration values instead)
    cap = int(os.environ["SEGFAST_AOT_MAX_CONFIGS"]) if os.environ.get("SEGFAST_AOT_MAX_CONFIGS") else None
    cover = aot.covering_set(launches, tiles, cap)
    assert {(la.kernel, aot._config(la)) for ks in spaces for la in ks.launches
            if cap is None or ks.num_configs() <= cap} <= {(la.kernel, aot._config(la)) for la in cover}
    jobs = aot.full_jobs(launches, tiles=tiles, max_configs=cap)
    assert {(j.launch.module, j.launch.kernel) for j in jobs} == set(aot.kernel_functions())
    cache = os.environ.get("SEGFAST_AOT_CACHE")  # a persistent Triton cache for reruns (CI starts without)
    rows = aot.compile_all(jobs, workers=WORKERS, cache_dir=cache)
    t2 = time.perf_counter()
    with capsys.disabled():
        print("\n" + aot.format_table(aot.summarise(rows)))
        print(f"{len(launches)} launches recorded in {t1 - t0:.1f} s; configuration space per arch: "
              f"{sum(ks.size() for ks in spaces)} launches, {sum(ks.num_configs() for ks in spaces)} "
              f"configurations; compiled: {len(jobs) // len(aot.ARCHS)} per arch; "
              + aot.time_report(rows, t2 - t1, WORKERS) + f"; load average {os.getloadavg()[0]:.1f}")
    bad = aot.failures(rows)  # spills in the streaming loss kernels included
    assert bad == [], "\n".join(bad[:20])
