"""What the PTX of a compiled streaming kernel says about its tile loop.

Read by ``triton_aot.vector_counts`` into every resource row (and so into the
static performance report, ``perf.py``):

* ``bar_loop``: block barriers (bar.sync / barrier.sync) inside a loop;
* ``cp_async`` / ``cp_async_loop``: asynchronous global -> shared copies (the
  software pipeline of ``tl.range(num_stages=)`` on sm_80 / sm_90), in all and
  inside a loop, and ``cp_async_bytes``, the widest such copy;
* ``ld_stream_128`` / ``ld_stream_narrow``: global loads (and the pipeline's
  cp.async copies) from the kernel's streaming inputs (the first
  ``STREAM_PARAMS`` pointer parameters: logits and targets in every streaming
  loss kernel) that move 128 bits per thread, and those that move less. A
  load counts as from an input when its address is computed from that
  parameter (register data flow in the PTX; a loaded value does not carry it,
  so a gather through a label is not one).

And from the SASS of a function (``cuobjdump -sass``): its loops
(``sass_loops``, also read by ``cuda_resources``) and ``local_loop``, the
local-memory loads and stores (spill traffic) inside one of them.
"""

from __future__ import annotations

import re

# The streaming loss kernels take their logits and targets as their first two parameters.
STREAM_PARAMS = (0, 1)

_LABEL = re.compile(r"\s*(\$?[\w$]+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$?[\w$]+)\s*;")
_BARRIER = re.compile(r"\b(?:bar|barrier)\.sync\b")
_REG = re.compile(r"%\w+")
_LD_GLOBAL = re.compile(r"\bld\.global((?:\.\w+)*)\s+(\{[^}]*\}|%\w+)\s*,\s*\[\s*(%\w+)")
_CP_ASYNC = re.compile(r"\bcp\.async\.(?:ca|cg)\.shared\.global(?:\.\w+)*\s+\[[^\]]*\]\s*,\s*\[\s*(%\w+)[^\]]*\]"
                       r"\s*,\s*(0x[0-9a-fA-F]+|\d+)")
_PARAM = re.compile(r"\bld\.param(?:\.\w+)*\s+(%\w+)\s*,\s*\[\s*\w+_param_(\d+)\s*\]")
_TYPE_BITS = re.compile(r"\.[bsuf](8|16|32|64)\b")


def loop_lines(lines: list) -> list:
    """-> (first, last) line spans of the loops: a label and a later branch back to it."""
    labels, spans = {}, []
    for i, line in enumerate(lines):
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = i
        m = _BRANCH.search(line)
        if m and m.group(1) in labels:
            spans.append((labels[m.group(1)], i))
    return spans


def _in_loop(spans, i) -> bool:
    return any(a <= i <= b for a, b in spans)


def loop_barriers(ptx: str) -> int:
    """Barriers (bar.sync / barrier.sync) inside a loop of the PTX."""
    lines = ptx.splitlines()
    spans = loop_lines(lines)
    return sum(_in_loop(spans, i) for i, line in enumerate(lines) if _BARRIER.search(line))


def _derived(lines: list, params) -> set:
    """Registers whose value is computed from the given pointer parameters
    (not through a load), to a fixed point over the PTX's data flow."""
    seeds, defs = set(), []
    for line in lines:
        code = line.split("//")[0].strip()
        m = _PARAM.search(code)
        if m:
            if int(m.group(2)) in params:
                seeds.add(m.group(1))
            continue
        if not code or code.endswith(":") or code.startswith((".", "{", "}")):
            continue
        code = re.sub(r"^@!?%\w+\s+", "", code)
        op = code.split(None, 1)
        if len(op) < 2 or op[0].startswith(("ld.", "st.", "atom", "red", "bra", "cp.", "bar", "ret")):
            continue
        regs = _REG.findall(op[1])
        if regs:
            defs.append((regs[0], regs[1:]))
    tainted = set(seeds)
    changed = True
    while changed:
        changed = False
        for dst, srcs in defs:
            if dst not in tainted and any(s in tainted for s in srcs):
                tainted.add(dst)
                changed = True
    return tainted


def loop_facts(ptx: str, params=STREAM_PARAMS) -> dict:
    """The loop facts of the module doc, from a kernel's PTX."""
    lines = ptx.splitlines()
    spans = loop_lines(lines)
    tainted = _derived(lines, params)
    c = {"bar_loop": 0, "cp_async": 0, "cp_async_loop": 0, "cp_async_bytes": 0,
         "ld_stream_128": 0, "ld_stream_narrow": 0}
    for i, line in enumerate(lines):
        inside = _in_loop(spans, i)
        if _BARRIER.search(line):
            c["bar_loop"] += inside
        m = _CP_ASYNC.search(line)
        if m:
            size = int(m.group(2), 0)
            c["cp_async"] += 1
            c["cp_async_loop"] += inside
            c["cp_async_bytes"] = max(c["cp_async_bytes"], size)
            if m.group(1) in tainted:  # a pipelined load of an input
                c["ld_stream_128" if size >= 16 else "ld_stream_narrow"] += 1
        m = _LD_GLOBAL.search(line)
        if m and m.group(3) in tainted:
            mods, dst = m.group(1), m.group(2)
            width = len(_REG.findall(dst)) if dst.startswith("{") else 1
            bits = _TYPE_BITS.findall(mods)
            total = width * int(bits[-1]) if bits else 0
            c["ld_stream_128" if total >= 128 else "ld_stream_narrow"] += 1
    return c


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def sass_loops(text: str) -> tuple:
    """(instructions as (address, text), loop spans as (first, last) address)
    of one function's SASS: a span runs from a branch target to a later
    branch back to it. The jump back from a ``BRA.DIV`` handler (the
    out-of-line code a warp collective runs when the warp may have diverged,
    ended by its first unconditional BRA) resumes the body after the
    collective: not a loop."""
    ins = [(int(a, 16), op) for a, op in _SASS_LINE.findall(text)]
    target = re.compile(r"\bBRA(?:\.\w+)*\s+(?:~?U?R\w+,\s*)?(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")
    handlers = set()
    for addr, op in ins:
        m = target.search(op)
        if "BRA.DIV" in op and m and m.group(1) is not None:
            handlers.add(int(m.group(1), 16))
    resumes = set()
    for start in handlers:
        for addr, op in ins:
            if addr >= start and re.match(r"BRA\s", op):  # unpredicated
                resumes.add(addr)
                break
    spans = []
    for addr, op in ins:
        m = target.search(op)
        if "BRA.DIV" in op or addr in resumes:
            continue
        if m and m.group(1) is not None and int(m.group(1), 16) <= addr:
            spans.append((int(m.group(1), 16), addr))
    return ins, spans


def loop_depth(spans, addr: int) -> int:
    return sum(lo <= addr <= hi for lo, hi in spans)


_LOCAL = re.compile(r"(?:@!?U?P\w+\s+)?(?:LDL|STL)\b")


def local_in_loops(text: str, depth: int = 1) -> int:
    """Local-memory loads and stores (spill traffic) inside a loop of one
    function's SASS, at least ``depth`` loops deep."""
    ins, spans = sass_loops(text)
    return sum(loop_depth(spans, a) >= depth for a, op in ins if _LOCAL.match(op))
