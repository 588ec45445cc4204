"""Turn a .cu file into C++ for the CUDA emulation layer (csrc/emu/cuda_runtime.h).

The only rewrites: ``kernel<<<grid, block[, smem[, stream]]>>>(args);`` becomes
``::segfast_emu::launch(&kernel, [&] { kernel(args); }, grid, block, ...);``,
``extern __shared__ T name[];`` a pointer to the block's dynamic shared memory,
and ``__shared__ T a[..], b;`` thread-local storage of the block being run
(a block runs on one OS thread) plus a ``static_smem`` call per variable that
counts it against the per-block limit. Line numbers are kept.

usage: python rewrite.py in.cu out.cpp
"""

import re
import sys


def _match_back(src: str, i: int, open_: str, close: str) -> int:
    """Index of the bracket opening the one that closes at src[i]."""
    depth = 0
    while i >= 0:
        if src[i] == close:
            depth += 1
        elif src[i] == open_:
            depth -= 1
            if depth == 0:
                return i
        i -= 1
    raise ValueError("unbalanced brackets before a launch")


def _match_fwd(src: str, i: int, open_: str, close: str) -> int:
    depth = 0
    while i < len(src):
        if src[i] == open_:
            depth += 1
        elif src[i] == close:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced brackets after a launch")


def rewrite_launches(src: str) -> str:
    out = []
    pos = 0
    while True:
        k = src.find("<<<", pos)
        if k < 0:
            out.append(src[pos:])
            return "".join(out)
        j = k - 1
        while src[j].isspace():
            j -= 1
        if src[j] == ">":  # template arguments
            j = _match_back(src, j, "<", ">") - 1
        m = re.search(r"[\w:]+$", src[: j + 1])
        if m is None:
            raise ValueError(f"no kernel name before <<< at offset {k}")
        start = m.start()
        kernel = src[start:k].strip()
        e = src.index(">>>", k)
        cfg = src[k + 3 : e]
        p0 = src.index("(", e)
        p1 = _match_fwd(src, p0, "(", ")")
        args = src[p0 + 1 : p1]
        out.append(src[pos:start])
        out.append(
            f"::segfast_emu::launch(reinterpret_cast<const void*>(&{kernel}), [&] {{ {kernel}({args}); }}, {cfg})"
        )
        pos = p1 + 1


_DYNAMIC = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:<>\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC = re.compile(r"__shared__\s+([^;]+);")


def _split_top(s: str):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _static(m: re.Match) -> str:
    decl = m.group(1)
    # "T a[N], b[M], c": the names are the identifiers before each '[' / end of declarator
    parts = _split_top(decl)
    names = []
    for i, p in enumerate(parts):
        p = re.sub(r"\[.*", "", p).strip()
        names.append(re.findall(r"\w+", p)[-1])
    counts = " ".join(f"::segfast_emu::static_smem(&{n}, sizeof({n}));" for n in names)
    return f"static thread_local {decl}; {counts}"


def rewrite(src: str) -> str:
    src = rewrite_launches(src)
    lines = []
    for line in src.split("\n"):
        if not line.lstrip().startswith("//"):
            line = _DYNAMIC.sub(lambda m: f"{m.group(1)}* {m.group(2)} = "
                                f"reinterpret_cast<{m.group(1)}*>(::segfast_emu::dynamic_smem());", line)
            line = _STATIC.sub(_static, line)
        lines.append(line)
    return "\n".join(lines)


def main(argv):
    src_path, out_path = argv[1], argv[2]
    with open(src_path) as f:
        src = f.read()
    text = f'#line 1 "{src_path}"\n' + rewrite(src)
    with open(out_path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv)
