"""Checks of a built segfast._C (a wheel, or the .so itself) for release wheels.

    python tools/check_wheel.py dist/segfast-*.whl [--cuda]

- symbol versions: GLIBC <= 2.28, GLIBCXX <= 3.4.22, CXXABI <= 1.3.11 (what
  manylinux_2_28 and torch's own wheels require);
- NEEDED: no libcuda (the driver is loaded at run time by cudart), no
  libcudart (static), no libstdc++ (static in the release build; libgcc_s.so.1
  stays, as manylinux allows), no libgomp (the OpenMP runtime is the one
  torch's process has loaded: segfast/backends.py);
- with --cuda: the fatbin's architectures (cuobjdump --list-elf / --list-ptx),
  its size, the toolkit versions of the ptxas that assembled each SASS image
  and the PTX ISA version; --sass 75,80,... fails when an architecture's
  SASS is missing, --toolkit-major 12 when an image comes from another major
  CUDA version (a CUDA 12 driver loads only CUDA 12 images).
Reads the ELF with pyelftools (pip install pyelftools). Exit status 1 on a failed check.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

from elftools.elf.elffile import ELFFile
from elftools.elf.dynamic import DynamicSection
from elftools.elf.gnuversions import GNUVerNeedSection

CEILINGS = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 22), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}
FORBIDDEN_NEEDED = ("libcuda.so", "libcudart.so", "libstdc++.so", "libgomp.so", "libomp.so", "libiomp5.so")


def _version(s):
    return tuple(int(p) for p in s.split("."))


def elf_requirements(path):
    """(NEEDED sonames, {library: sorted required version names}) of a shared object."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        needed = []
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                needed += [t.needed for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        versions = {}
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerNeedSection):
                for verneed, vernaux in sec.iter_versions():
                    versions.setdefault(verneed.name, set()).update(a.name for a in vernaux)
        return needed, {k: sorted(v) for k, v in versions.items()}


def too_new(versions):
    """Required version names above CEILINGS, e.g. ['GLIBC_2.34 (libc.so.6)']."""
    bad = []
    for lib, names in versions.items():
        for name in names:
            m = re.fullmatch(r"([A-Z]+)_([0-9.]+)", name)
            if m and m.group(1) in CEILINGS and _version(m.group(2)) > CEILINGS[m.group(1)]:
                bad.append(f"{name} ({lib})")
    return bad


def max_versions(versions):
    out = {}
    for names in versions.values():
        for name in names:
            m = re.fullmatch(r"([A-Z]+)_([0-9.]+)", name)
            if m and (m.group(1) not in out or _version(m.group(2)) > _version(out[m.group(1)])):
                out[m.group(1)] = m.group(2)
    return out


def forbidden_needed(needed):
    return [n for n in needed if n.startswith(FORBIDDEN_NEEDED)]


def _cuobjdump():
    """cuobjdump: CUOBJDUMP, PATH, CUDA_HOME/bin, else the copy in Triton's wheel."""
    exe = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if exe is None and d and os.path.isfile(os.path.join(d, "bin", "cuobjdump")):
            exe = os.path.join(d, "bin", "cuobjdump")
    if exe is None:
        import importlib.util

        spec = importlib.util.find_spec("triton")
        if spec is not None and spec.submodule_search_locations:
            cand = os.path.join(spec.submodule_search_locations[0], "backends", "nvidia", "bin", "cuobjdump")
            exe = cand if os.path.isfile(cand) else None
    return exe


def fatbin(path):
    """(SASS architectures, PTX architectures, .nv_fatbin bytes) of the module."""
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".nv_fatbin")
        size = sec.data_size if sec is not None else 0
    exe = _cuobjdump()
    if exe is None:
        raise RuntimeError("cuobjdump not found (CUOBJDUMP, the CUDA toolkit's bin/ on PATH, CUDA_HOME, or triton)")
    elf = subprocess.run([exe, "--list-elf", path], capture_output=True, text=True).stdout
    ptx = subprocess.run([exe, "--list-ptx", path], capture_output=True, text=True).stdout
    sass = sorted(set(re.findall(r"\.(sm_[0-9]+a?)\.cubin", elf)), key=lambda s: int(re.sub(r"\D", "", s)))
    ptxs = sorted(set(re.findall(r"\.(sm_[0-9]+a?)\.ptx", ptx)), key=lambda s: int(re.sub(r"\D", "", s)))
    return sass, ptxs, size


def toolchain(path):
    """({toolkit versions of the ptxas runs that made the SASS}, {PTX ISA versions})."""
    exe = _cuobjdump()
    notes = subprocess.run([exe, "-elf", path], capture_output=True, text=True).stdout
    text = subprocess.run([exe, "-ptx", path], capture_output=True, text=True).stdout
    return (sorted(set(re.findall(r"Tool Kit Version: ([0-9.]+)", notes))),
            sorted(set(re.findall(r"^\.version ([0-9.]+)", text, re.M))))


def module_paths(arg, tmp):
    if arg.endswith(".whl"):
        with zipfile.ZipFile(arg) as z:
            names = [n for n in z.namelist() if re.fullmatch(r"segfast/_C[^/]*\.so", n)]
            z.extractall(tmp, names)
        return [os.path.join(tmp, n) for n in names]
    return [arg]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="wheels or .so files")
    ap.add_argument("--cuda", action="store_true", help="also list the fatbin (the module must carry CUDA kernels)")
    ap.add_argument("--sass", default="", help="with --cuda: architectures whose SASS must be present, e.g. 75,80,90")
    ap.add_argument("--toolkit-major", type=int, default=None,
                    help="with --cuda: the CUDA major version every SASS image must come from")
    args = ap.parse_args(argv)
    ok = True
    for arg in args.paths:
        with tempfile.TemporaryDirectory() as tmp:
            sos = module_paths(arg, tmp)
            if not sos:
                print(f"FAIL {arg}: no segfast/_C*.so inside")
                ok = False
            for so in sos:
                needed, versions = elf_requirements(so)
                print(f"{os.path.basename(arg)}: {os.path.basename(so)}")
                print(f"  NEEDED: {', '.join(needed)}")
                print(f"  newest versions required: {max_versions(versions)}")
                bad, nb = too_new(versions), forbidden_needed(needed)
                print(f"  {'FAIL' if bad else 'ok  '} symbol versions <= GLIBC_2.28, GLIBCXX_3.4.22"
                      + (f": too new {bad}" if bad else ""))
                print(f"  {'FAIL' if nb else 'ok  '} no libcuda/libcudart/libstdc++ in NEEDED"
                      + (f": {nb}" if nb else ""))
                ok = ok and not bad and not nb
                if args.cuda:
                    sass, ptx, size = fatbin(so)
                    print(f"  fatbin: {size / 2**20:.2f} MiB, SASS {', '.join(sass) or '-'}; "
                          f"PTX {', '.join(ptx) or '-'}")
                    if not sass:
                        print("  FAIL no CUDA code in the module")
                        ok = False
                    kits, isas = toolchain(so)
                    print(f"  SASS assembled by CUDA {', '.join(kits) or '?'}; PTX ISA {', '.join(isas) or '-'}")
                    want = {f"sm_{a.strip()}" for a in args.sass.split(",") if a.strip()}
                    missing = sorted(want - set(sass), key=lambda a: int(re.sub(r"\D", "", a)))
                    if want:
                        print(f"  {'FAIL' if missing else 'ok  '} SASS for {args.sass}"
                              + (f": missing {', '.join(missing)}" if missing else ""))
                    other = [k for k in kits if args.toolkit_major is not None
                             and int(k.split(".")[0]) != args.toolkit_major]
                    if args.toolkit_major is not None:
                        print(f"  {'FAIL' if other or not kits else 'ok  '} SASS from CUDA {args.toolkit_major}.x only"
                              + (f": found {', '.join(other)}" if other else ""))
                    ok = ok and not missing and not other and (args.toolkit_major is None or bool(kits))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
