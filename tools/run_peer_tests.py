#!/usr/bin/env python
"""Run a peer library's own loss / box-op tests against segfast.

    python tools/run_peer_tests.py smp            # the pinned archives below, downloaded once
    python tools/run_peer_tests.py monai
    python tools/run_peer_tests.py torchvision
    python tools/run_peer_tests.py torchvision --src VISION_CHECKOUT   # another version's tests

The peer's test files run unchanged under pytest (in a subprocess, in a
scratch directory). Only the import is swapped: the adapter
(tools/peer_adapters/<peer>.py, installed there as conftest.py) points the
peer's names (``segmentation_models_pytorch.losses.DiceLoss``,
``monai.losses.DiceLoss``, ``torchvision.ops.box_iou``, ...) at segfast's
before the test modules import them. Test bodies and expected values stay
the peer's. For MONAI and smp the plugin tools/peer_adapters/kernels_only.py
runs too: while a compat class runs, every eager path of segfast fails, so a
case passes only on segfast's kernels.

Where the tests come from: a pinned source archive per peer (ARCHIVES),
downloaded into a cache directory ($SEGFAST_PEER_CACHE, default
~/.cache/segfast/peers), its sha256 checked, the test files extracted.
Nothing of it is kept in this repository.
* smp: its release sdist on PyPI holds tests/test_losses.py.
* MONAI: the release sdists from 1.6.0 on have no tests/; the newest archive
  on PyPI that holds tests/losses is the weekly build monai-weekly
  1.6.dev2615 (its helpers import the installed ``monai``).
* torchvision publishes no sdist on PyPI; Debian's archive serves its
  release source (bookworm's pytorch-vision 0.14.1), test/test_ops.py included.

The result is one line per test case and a JSON summary; the exit status
is 0 when every case passes except the documented differences in
ALLOWED_FAILURES (and 1 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADAPTERS = HERE / "peer_adapters"

_MONAI_TESTS = [f"tests/losses/test_{n}.py" for n in
                ("dice_loss", "generalized_dice_loss", "tversky_loss", "focal_loss", "dice_ce_loss",
                 "dice_focal_loss")]
_MONAI_KEEP = ["tests/test_utils.py", "tests/losses/__init__.py"]  # the sdist has no tests/__init__.py

# The pinned peer sources: a PyPI file (project + filename) or a URL, its
# sha256, and the files the run needs from it.
ARCHIVES = {
    "smp": dict(version="0.6.0", project="segmentation-models-pytorch",
                filename="segmentation_models_pytorch-0.6.0.tar.gz",
                sha256="5f90a7a43fac608f85a9dce66f65297d887605da9c2caafb44aa875c30180424",
                files=["tests/test_losses.py"]),
    "monai": dict(version="1.6.dev2615", project="monai-weekly", filename="monai_weekly-1.6.dev2615.tar.gz",
                  sha256="e45503febe4220b4ddd6cc1a12c81279304dc9dcbccde4197c9b4a84e385fbcc",
                  files=_MONAI_TESTS + _MONAI_KEEP),
    "torchvision": dict(version="0.14.1", filename="pytorch-vision_0.14.1.orig.tar.gz",
                        url="http://deb.debian.org/debian/pool/main/p/pytorch-vision/"
                            "pytorch-vision_0.14.1.orig.tar.gz",
                        sha256="ced67e1cf1f97e168cdf271851a4d0b6d382ab7936e7bcbb39aaa87239c324b6",
                        files=["test/test_ops.py"]),
}

# Test files (relative to the peer's checkout / archive root) and a -k selection.
PEERS = {
    "smp": dict(tests=["tests/test_losses.py"], keep=[], select=None),
    "monai": dict(tests=_MONAI_TESTS, keep=_MONAI_KEEP,
                  # a helper the test modules import (MONAI runs them with unittest); pytest would
                  # collect it as a test without its arguments
                  select="not test_script_save"),
    # newer test_ops.py read optests_failures_dict.json beside them at import
    "torchvision": dict(tests=["test/test_ops.py"], keep=[], optional=["test/optests_failures_dict.json"],
                        select="(TestNMS or TestBoxIou or TestGeneralizedBoxIou or TestDistanceBoxIoU or "
                               "TestCompleteBoxIou or TestGeneralizedBoxIouLoss or TestCompleteBoxIouLoss or "
                               "TestDistanceBoxIouLoss) and not test_schema and not test_autograd_registration "
                               "and not test_faketensor and not test_aot_dispatch"),
}

# The documented differences: TorchScript (torch.jit.script) is not
# supported by segfast's losses and box ops (use torch.compile / torch.export).
ALLOWED_FAILURES = {
    "smp": set(),
    "monai": {"test_script"},
    "torchvision": {"test_iou_jit"},
}


def cache_dir() -> Path:
    return Path(os.environ.get("SEGFAST_PEER_CACHE", Path.home() / ".cache" / "segfast" / "peers"))


def _pypi_url(project: str, filename: str) -> str:
    """The file's URL from PyPI's simple index (JSON form, PEP 691)."""
    req = urllib.request.Request(f"https://pypi.org/simple/{project}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    for f in files:
        if f["filename"] == filename:
            return f["url"]
    raise RuntimeError(f"{filename} is not on PyPI's index for {project}")


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)
    tmp.replace(dest)


def fetch_archive(peer: str) -> Path:
    """-> the directory holding the pinned archive's test files (downloaded
    once). Raises OSError where the download is impossible (no network)."""
    spec = ARCHIVES[peer]
    root = cache_dir() / f"{peer}-{spec['version']}"
    if all((root / f).is_file() for f in spec["files"]):
        return root
    root.mkdir(parents=True, exist_ok=True)
    archive = root / spec["filename"]
    if not archive.is_file():
        _download(spec.get("url") or _pypi_url(spec["project"], spec["filename"]), archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != spec["sha256"]:
        archive.unlink()
        raise RuntimeError(f"{spec['filename']}: sha256 {digest} is not the pinned {spec['sha256']}")
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        for f in spec["files"]:
            src = tar.extractfile(f"{top}/{f}")
            if src is None:
                raise RuntimeError(f"{spec['filename']} has no {f}")
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_bytes(src.read())
    archive.unlink()  # the extracted files are what the runs need
    return root


def run(peer: str, src: Path | None = None, timeout: float = 900, swap: bool = True) -> dict:
    """Run the peer's tests against segfast -> {"passed": [...], "failed": [...],
    "skipped": [...], "unexpected": [...], "version": ...}. ``swap=False``
    runs them against the installed peer itself (the baseline)."""
    spec = PEERS[peer]
    version = ARCHIVES[peer]["version"] if src is None else str(src)
    if src is None:
        src = fetch_archive(peer)
    src = Path(src)
    with tempfile.TemporaryDirectory(prefix=f"segfast-peer-{peer}-") as work:
        work = Path(work)
        for f in spec["tests"] + spec["keep"] + [f for f in spec.get("optional", []) if (src / f).is_file()]:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f, work / f)
        plugins = []
        if swap:
            shutil.copyfile(ADAPTERS / f"{peer}.py", work / "conftest.py")
            if peer in ("monai", "smp"):
                shutil.copyfile(ADAPTERS / "kernels_only.py", work / "kernels_only.py")
                plugins = ["-p", "kernels_only"]
        (work / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
        report = work / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *plugins, f"--junitxml={report}",
               "-W", "ignore::DeprecationWarning", *spec["tests"]]
        if spec["select"]:
            cmd += ["-k", spec["select"]]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if not report.is_file():
            raise RuntimeError(f"pytest produced no report:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        out = {"peer": peer, "version": version,
               "passed": [], "failed": [], "skipped": []}
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                out["failed"].append(name)
            elif case.find("skipped") is not None:
                out["skipped"].append(name)
            else:
                out["passed"].append(name)
        allowed = ALLOWED_FAILURES[peer]
        out["unexpected"] = [n for n in out["failed"] if not any(a in n.rsplit("::", 1)[-1] for a in allowed)]
        out["log"] = proc.stdout[-6000:]
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("peer", choices=sorted(PEERS))
    ap.add_argument("--src", type=Path, help="a checkout of the peer's repository instead of the pinned archive")
    ap.add_argument("-v", "--verbose", action="store_true", help="print pytest's output")
    ap.add_argument("--no-swap", action="store_true", help="run against the installed peer itself (baseline)")
    args = ap.parse_args(argv)
    out = run(args.peer, args.src, swap=not args.no_swap)
    if args.verbose:
        print(out["log"])
    for kind in ("failed", "skipped"):
        for n in out[kind]:
            print(f"{kind.upper():8} {n}")
    summary = {k: len(out[k]) for k in ("passed", "failed", "skipped", "unexpected")}
    print(json.dumps({"peer": out["peer"], "version": out["version"], **summary}))
    return 1 if out["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
