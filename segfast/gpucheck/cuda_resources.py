"""Resource report of the CUDA C++ kernels (csrc/cuda/*.cu), no GPU needed.

Each .cu file is compiled to a cubin per architecture with the build's flags
(CMakeLists.txt: -O3 --expt-relaxed-constexpr, C++17, -I csrc) and read with
``cuobjdump --dump-resource-usage`` (Triton's bundled copy, else PATH; else
``nvcc -Xptxas -v``): registers, spills (local memory), stack, static shared
memory per kernel instantiation. ``LAUNCHES`` records, per kernel, the block
sizes its launch site uses (constants read from the source) and the largest
dynamic shared memory it requests (a C++ expression evaluated by compiling
and running a small host program against the .cu file), which give the
theoretical occupancy and the 48 KiB check.

Each row also counts, from the kernel's SASS (``cuobjdump -sass``), its
128-bit and all global loads / stores and its block barriers, in all and
inside a loop nested in the per-image loop (``bar_loop``: per tile).

``failures(rows)``: a compile error, any spill in the loss and metrics
kernels (region, pixel, metrics), a block barrier in the tile loop of a
streaming loss kernel (``NO_LOOP_BARRIER``) or one without 128-bit loads
(``VECTOR_LOADS``), a launch whose static + dynamic shared memory can exceed
48 KiB without the opt-in attribute (cudaFuncAttributeMaxDynamicSharedMemorySize),
a kernel without a ``LAUNCHES`` entry.

Not verified here: the occupancy is the theoretical one (the calculator's
rules), not a measurement.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from .perf_ptx import loop_depth, sass_loops
from .triton_aot import parse_ptxas_v, parse_resource_usage, tool

ARCHS = (80, 90)
FLAGS = ("-O3", "--expt-relaxed-constexpr", "-std=c++17", "-Xcompiler=-fno-math-errno,-fno-trapping-math")
DEFAULT_SMEM = 48 * 1024  # per block without the opt-in attribute

# Per-SM limits of the occupancy calculator.
SM = {
    80: dict(threads=2048, blocks=32, regs=65536, smem=164 * 1024, smem_block=163 * 1024, reserved=1024),
    86: dict(threads=1536, blocks=16, regs=65536, smem=100 * 1024, smem_block=99 * 1024, reserved=1024),
    89: dict(threads=1536, blocks=24, regs=65536, smem=100 * 1024, smem_block=99 * 1024, reserved=1024),
    90: dict(threads=2048, blocks=32, regs=65536, smem=228 * 1024, smem_block=227 * 1024, reserved=1024),
}

LOSS_FILES = ("region.cu", "pixel.cu", "metrics.cu")  # streaming loss and metrics kernels: no spills
# The streaming loss kernels: no block barrier in their tile loops, and 128-bit
# loads of their rows where they are contiguous and aligned (csrc/cuda/vec.cuh).
STREAMING = ("stats_kernel", "stats_wide_kernel", "grad_kernel", "softmax_kernel", "softmax_dense_kernel",
             "sigmoid_kernel")
NO_LOOP_BARRIER = STREAMING
VECTOR_LOADS = STREAMING


@dataclasses.dataclass(frozen=True)
class Launch:
    """How csrc/cuda/<file> launches ``kernel``: the block sizes (source
    constants or numbers) and a C++ expression for the largest dynamic shared
    memory (bytes) it requests, or None for none."""

    file: str
    blocks: tuple
    dynamic_smem: Optional[str] = None
    opt_in: bool = False  # the launch sets cudaFuncAttributeMaxDynamicSharedMemorySize


LAUNCHES = {
    "pairwise_fwd_kernel": Launch("boxes.cu", ("kThreads",)),
    "pairwise_bwd_kernel": Launch("boxes.cu", ("kThreads",)),
    "aligned_kernel": Launch("boxes.cu", ("kThreads",)),
    "iou_max_kernel": Launch("boxes_match.cu", ("kThreads",)),
    "nms_mask_kernel": Launch("boxes_match.cu", ("kNmsWord",)),
    "nms_reduce_kernel": Launch("boxes_match.cu", ("kReduceThreads",), "kNmsReduceMaxSharedBytes"),
    "splat_kernel": Launch("crf.cu", (256,)),
    "blur_kernel": Launch("crf.cu", (256,)),
    "update_kernel": Launch("crf.cu", (256,)),
    "weights_kernel": Launch("lovasz.cu", ("kThreads",)),
    "confusion_kernel": Launch("metrics.cu", ("kConfThreads",), "kConfMaxSharedBytes"),
    "coco_match_kernel": Launch("metrics.cu", ("kCocoThreads",), "kCocoSharedBytes"),
    "softmax_kernel": Launch("pixel.cu", ("kThreads",)),
    "softmax_dense_kernel": Launch("pixel.cu", ("kThreads",)),
    "sigmoid_kernel": Launch("pixel.cu", ("kThreads",)),
    "stats_kernel": Launch("region.cu", ("kStatsThreads",)),
    "stats_wide_kernel": Launch("region.cu", ("kStatsThreads",), "kWideSmem"),
    "grad_kernel": Launch("region.cu", ("kGradThreads",)),
    "finish_kernel": Launch("region.cu", ("kFinishThreads",)),
}


def nvcc() -> Optional[str]:
    return shutil.which("nvcc")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{(r.stderr + r.stdout)[-3000:]}")
    return r




def sass_functions(sass: str) -> dict:
    """``cuobjdump -sass`` text -> {mangled function name: its instructions}."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def sass_counts(text: str) -> dict:
    """Global access widths and barriers of one function's SASS: 128-bit and all
    LDG / STG, BAR.SYNC in all and ``bar_loop``, those inside a loop nested in
    another (``sass_loops``): the kernels loop over images outermost (n +=
    gridDim.y), so a barrier inside any loop within that one runs per tile,
    not once per image."""
    ins, spans = sass_loops(text)
    bars = [addr for addr, op in ins if re.match(r"(?:@!?U?P\w+\s+)?BAR\.SYNC", op)]
    ops = [op for _, op in ins]
    return {"ldg128": sum(bool(re.search(r"\bLDG(?:\.\w+)*\.128\b", o)) for o in ops),
            "ldg": sum(bool(re.search(r"\bLDG\b", o)) for o in ops),
            "stg128": sum(bool(re.search(r"\bSTG(?:\.\w+)*\.128\b", o)) for o in ops),
            "stg": sum(bool(re.search(r"\bSTG\b", o)) for o in ops),
            "bar_sync": len(bars), "bar_loop": sum(loop_depth(spans, a) >= 2 for a in bars)}


def compile_cubin(src: Path, arch: int, include: Path, out_dir: Path) -> dict:
    """-> {mangled kernel name: resources} of ``src`` compiled for sm_<arch>."""
    out = out_dir / f"{src.stem}.sm_{arch}.cubin"
    cuobjdump = tool("cuobjdump")
    cmd = [nvcc(), "-cubin", f"-arch=sm_{arch}", *FLAGS, f"-I{include}", "-Xptxas", "-v", "-o", str(out), str(src)]
    r = _run(cmd)
    log = parse_ptxas_v(r.stderr + r.stdout)  # spill stores: spills land in the stack frame (STACK), not LOCAL
    if cuobjdump is None:
        res = log
    else:
        res = parse_resource_usage(_run([cuobjdump, "--dump-resource-usage", str(out)]).stdout)
    funcs = sass_functions(_run([cuobjdump, "-sass", str(out)]).stdout) if cuobjdump else {}
    for name, row in res.items():
        row["spill_stores"] = log.get(name, {}).get("spill_stores")
        if name in funcs:
            row.update(sass_counts(funcs[name]))
    return res


def demangle(names) -> dict:
    names = list(names)
    filt = shutil.which("cu++filt") or shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    r = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True)
    lines = r.stdout.splitlines()
    return dict(zip(names, lines)) if r.returncode == 0 and len(lines) == len(names) else {n: n for n in names}


def split_name(demangled: str):
    """'void ns::(anonymous namespace)::k<float, true>(args)' -> ('k', 'float, true')."""
    head = demangled.replace("(anonymous namespace)", "anon")
    m = re.match(r"(?:void\s+)?([\w:]+)(?:<(.*?)>)?\s*\(", head)
    if not m:
        return demangled, ""
    return m.group(1).rsplit("::", 1)[-1], m.group(2) or ""


def user_shared(arch: int, shared: int) -> int:
    """Static shared memory the kernel declares. From sm_90 on the cubin's
    figure includes the 1 KiB the system reserves per block (placed in the
    kernel's shared section whenever it uses shared memory); that KiB does
    not count against the 48 KiB / opt-in limits, and is reserved on sm_80
    too (the occupancy adds it back)."""
    return shared - 1024 if arch >= 90 and shared >= 1024 else shared


_CONST = re.compile(r"constexpr\s+(?:int|int64_t|int32_t|unsigned|size_t|long long)\s+(\w+)\s*=\s*([^;]+);")


def source_constants(src: Path, include: Path) -> dict:
    """Integer constants (``constexpr int NAME = expr;``) of ``src`` and the
    project headers it includes, evaluated where they are plain arithmetic."""
    texts = []
    for inc in re.findall(r'#include\s+"([^"]+)"', src.read_text()):
        p = (src.parent / inc).resolve()
        if p.is_file():
            texts.append(p.read_text())
    texts.append(src.read_text())
    env = {}
    for text in texts:
        for name, expr in _CONST.findall(text):
            e = re.sub(r"\bint64_t\((.*?)\)", r"(\1)", expr)
            try:
                env[name] = int(eval(e, {"__builtins__": {}}, dict(env)))  # noqa: S307  (project source)
            except Exception:
                pass
    return env


def probe(src: Path, include: Path, exprs: dict, out_dir: Path) -> dict:
    """Evaluate C++ expressions in the scope of ``src`` (its anonymous
    namespaces included) by compiling and running a host program that
    includes it; -> {name: int}."""
    ns = re.findall(r"^namespace\s+(\w+)\s*\{", src.read_text(), flags=re.M)
    using = "using namespace " + "::".join(ns) + ";" if ns else ""
    lines = [f'#include "{src.resolve()}"', "#include <cstdio>", using, "int main() {"]
    for name, expr in exprs.items():
        lines.append(f'  std::printf("{name}=%lld\\n", (long long)({expr}));')
    lines += ["  return 0;", "}"]
    cu = out_dir / f"probe_{src.stem}.cu"
    cu.write_text("\n".join(lines) + "\n")
    exe = out_dir / f"probe_{src.stem}"
    _run([nvcc(), "-arch=sm_80", *FLAGS, f"-I{include}", "-o", str(exe), str(cu)])
    out = _run([str(exe)]).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)=(-?\d+)$", out, flags=re.M)}


def occupancy(arch: int, block: int, registers: int, smem: int) -> dict:
    """Theoretical occupancy (the CUDA occupancy calculator's rules)."""
    lim = SM[arch]
    warps = -(-block // 32)
    max_warps = lim["threads"] // 32
    by_threads = max_warps // warps
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (lim["regs"] // regs_per_warp) // warps
    per_block = -(-(smem + lim["reserved"]) // 128) * 128
    by_smem = lim["smem"] // per_block if smem > 0 else lim["blocks"]
    blocks = max(0, min(lim["blocks"], by_threads, by_regs, by_smem))
    limiter = min((("blocks", lim["blocks"]), ("threads", by_threads), ("registers", by_regs), ("shared", by_smem)),
                  key=lambda kv: kv[1])[0]
    return {"blocks_per_sm": blocks, "occupancy": round(blocks * warps / max_warps, 3), "limiter": limiter}


def report(source_dir, archs=ARCHS, *, workers: int = 2, work_dir: Optional[str] = None, files=None) -> list:
    """-> one row per (kernel instantiation, arch, block size) of source_dir/*.cu
    (source_dir: the csrc/cuda folder; its parent is the include root; ``files``:
    only these file names)."""
    if nvcc() is None:
        raise RuntimeError("nvcc not found on PATH")
    source_dir = Path(source_dir).resolve()
    include = source_dir.parent
    sources = sorted(p for p in source_dir.glob("*.cu") if files is None or p.name in files)
    with tempfile.TemporaryDirectory(prefix="segfast-cuda-res-") as tmp:
        out_dir = Path(work_dir or tmp)
        tasks = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
            for src in sources:
                for arch in archs:
                    tasks[(src.name, arch)] = ex.submit(compile_cubin, src, arch, include, out_dir)
            probes = {}
            for src in sources:
                exprs = {k: la.dynamic_smem for k, la in LAUNCHES.items() if la.file == src.name and la.dynamic_smem}
                if exprs:
                    probes[src.name] = ex.submit(probe, src, include, exprs, out_dir)
            rows = []
            for src in sources:
                consts = source_constants(src, include)
                dyn = {}
                if src.name in probes:
                    dyn = probes[src.name].result()
                for arch in archs:
                    try:
                        res = tasks[(src.name, arch)].result()
                    except Exception as e:
                        rows.append({"file": src.name, "kernel": "*", "arch": arch, "error": str(e)[-1500:]})
                        continue
                    names = demangle(res)
                    for mangled, r in sorted(res.items(), key=lambda kv: names[kv[0]]):
                        base, targs = split_name(names[mangled])
                        r = dict(r, static_shared=user_shared(arch, r["static_shared"]))
                        la = LAUNCHES.get(base)
                        blocks = [None] if la is None else [consts.get(b, b) for b in la.blocks]
                        for block in blocks:
                            row = {"file": src.name, "kernel": base, "template": targs, "arch": arch,
                                   "block": block, **r, "dynamic_shared": dyn.get(base, 0), "error": None}
                            if la is None:
                                row["error"] = "no LAUNCHES entry (block size unknown)"
                            elif not isinstance(block, int):
                                row["error"] = f"block size {block!r} not found in {src.name}"
                            else:
                                row["opt_in"] = la.opt_in
                                row.update(occupancy(arch, block, r["registers"],
                                                     r["static_shared"] + row["dynamic_shared"]))
                            rows.append(row)
    return rows


def failures(rows: list, spills: bool = True) -> list:
    """-> human-readable failures (``spills``: include spills in the LOSS_FILES kernels)."""
    out = []
    for r in rows:
        what = f"{r['file']}:{r['kernel']}<{r.get('template', '')}> sm_{r['arch']} block {r.get('block')}"
        if r.get("error"):
            out.append(f"{what}: {r['error']}")
            continue
        if spills and r["file"] in LOSS_FILES and (r["local"] > 0 or (r.get("spill_stores") or 0) > 0):
            out.append(f"{what}: spills ({r.get('spill_stores')} B spill stores, {r['local']} B local memory, "
                       f"{r['registers']} registers)")
        if r["file"] in LOSS_FILES and r["kernel"] in NO_LOOP_BARRIER and r.get("bar_loop"):
            out.append(f"{what}: {r['bar_loop']} block barriers inside its tile loop")
        if r["file"] in LOSS_FILES and r["kernel"] in VECTOR_LOADS and r.get("ldg128") == 0:
            out.append(f"{what}: no 128-bit global load (LDG.E.128)")
        total = r["static_shared"] + r["dynamic_shared"]
        if total > DEFAULT_SMEM and not r.get("opt_in"):
            out.append(f"{what}: {r['static_shared']} B static + up to {r['dynamic_shared']} B dynamic shared memory"
                       f" > {DEFAULT_SMEM} B without the opt-in attribute")
        if total > SM[r["arch"]]["smem_block"]:
            out.append(f"{what}: {total} B shared memory > the per-block limit")
    return out


COLUMNS = ("file", "kernel", "template", "arch", "block", "registers", "spill_stores", "local", "stack",
           "static_shared",
           "dynamic_shared", "blocks_per_sm", "occupancy", "limiter", "ldg128", "ldg", "stg128", "stg", "bar_sync",
           "bar_loop")


def format_table(rows: list, columns=COLUMNS) -> str:
    from .triton_aot import format_table as fmt
    return fmt(rows, columns)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m segfast.gpucheck.cuda_resources",
                                 description="Registers, spills, shared memory and occupancy of the CUDA kernels.")
    ap.add_argument("source_dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "csrc" / "cuda"))
    ap.add_argument("--arch", type=int, action="append")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if not os.path.isdir(args.source_dir):
        print(f"no CUDA sources at {args.source_dir}", file=sys.stderr)
        return 2
    rows = report(args.source_dir, tuple(args.arch or ARCHS), workers=args.workers)
    print(format_table(rows))
    bad = failures(rows)
    for f in bad:
        print("FAIL", f)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
