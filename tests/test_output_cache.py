"""The CPU output cache (csrc/cpu/block_cache.h, backends.empty_output):
large kernel outputs are blocks that return to a cache when their tensor dies."""

from __future__ import annotations

import gc
import pathlib
import subprocess
import sys
import threading

import pytest
import torch

import segfast
from segfast import backends

BIG = (8, 21, 64, 128)  # 5.25 MiB of float32: above CACHE_MIN_BYTES
pytestmark = pytest.mark.skipif(backends.CACHE_LIMIT_MB == 0, reason="SEGFAST_CPU_CACHE_MB=0")


def _stats():
    return backends.cache_stats()


@pytest.fixture(autouse=True)
def _settled():
    gc.collect()  # blocks of earlier tests (tracebacks included) go back first
    yield


def test_large_output_is_a_reused_block():
    backends.empty_cache()
    live0 = _stats()["live_blocks"]
    t = backends.empty_output(BIG, torch.float32, torch.device("cpu"))
    assert t.shape == BIG and t.dtype == torch.float32 and t.is_contiguous()
    assert t.data_ptr() % 4096 == 0
    assert _stats()["live_blocks"] == live0 + 1
    ptr, hits = t.data_ptr(), _stats()["hits"]
    t.fill_(3.0)
    assert float(t.sum()) == 3.0 * t.numel()  # an ordinary, writable tensor
    del t
    assert _stats()["live_blocks"] == live0 and _stats()["cached_blocks"] >= 1
    u = backends.empty_output(BIG, torch.float32, torch.device("cpu"))
    assert u.data_ptr() == ptr and _stats()["hits"] == hits + 1
    del u
    assert backends.empty_cache() >= 4 << 20
    assert _stats()["cached_bytes"] == 0


def test_small_and_empty_outputs_are_plain():
    live0 = _stats()["live_blocks"]
    small = backends.empty_output((3, 5), torch.float32, torch.device("cpu"))
    empty = backends.empty_output((0, 21, 128, 128), torch.float32, torch.device("cpu"))
    assert small.shape == (3, 5) and empty.shape == (0, 21, 128, 128)
    assert _stats()["live_blocks"] == live0


def test_layout_follows_like():
    like = torch.empty(BIG).to(memory_format=torch.channels_last)
    t = backends.empty_output(like.shape, like.dtype, like.device, like=like)
    assert t.stride() == like.stride()
    sliced = torch.empty(8, 21, 64, 256)[..., ::2]  # not dense: contiguous instead
    t2 = backends.empty_output(sliced.shape, sliced.dtype, sliced.device, like=sliced)
    assert t2.is_contiguous()
    half = backends.empty_output(BIG, torch.bfloat16, torch.device("cpu"), like=like.bfloat16())
    assert half.dtype == torch.bfloat16 and half.stride() == like.stride()


def test_dice_gradient_comes_from_the_cache_and_is_reused():
    backends.empty_cache()
    torch.manual_seed(0)
    x = torch.randn(BIG, requires_grad=True)
    y = torch.randint(0, 21, (8, 64, 128))
    segfast.dice_loss(x, y, backend="cpu").backward()
    g1, ptr = x.grad.clone(), x.grad.data_ptr()
    assert ptr % 4096 == 0
    x.grad = None
    segfast.dice_loss(x, y, backend="cpu").backward()
    assert x.grad.data_ptr() == ptr and torch.equal(x.grad, g1)
    ref = x.detach().clone().requires_grad_()
    segfast.dice_loss(ref, y, backend="torch").backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-8)
    x.grad.mul_(2.0)  # usable in place, like any gradient (optimizers do this)
    x.grad = None


def test_released_from_another_thread_and_unconsumed_capsules():
    live0 = _stats()["live_blocks"]
    t = backends.empty_output(BIG, torch.float32, torch.device("cpu"))
    box = [t]
    del t
    th = threading.Thread(target=box.clear)  # the deleter runs on that thread, without the GIL held by us
    th.start()
    th.join()
    cap = backends._C.cpu_block(5 << 20)  # never given to torch: the capsule owns the block
    assert _stats()["live_blocks"] == live0 + 1
    del cap
    gc.collect()
    assert _stats()["live_blocks"] == live0
    with pytest.raises(ValueError):
        backends._C.cpu_block(0)


def test_limit_evicts_oldest():
    backends.empty_cache()
    try:
        backends._C.block_cache_set_limit(6 << 20)  # room for one BIG block
        a = backends.empty_output(BIG, torch.float32, torch.device("cpu"))
        b = backends.empty_output(BIG, torch.float32, torch.device("cpu"))
        del a, b
        s = _stats()
        assert s["cached_blocks"] == 1 and s["cached_bytes"] <= 6 << 20
        huge = backends.empty_output((8, 21, 128, 128), torch.float32, torch.device("cpu"))
        del huge  # larger than the limit: freed at once
        assert _stats()["cached_bytes"] <= 6 << 20
    finally:
        backends._C.block_cache_set_limit(backends.CACHE_LIMIT_MB << 20)
        backends.empty_cache()


def _run(code: str, env_value: str):
    import os

    env = dict(os.environ, SEGFAST_CPU_CACHE_MB=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_env_turns_the_cache_off_or_is_refused():
    code = ("import torch, segfast; from segfast import backends; "
            "t = backends.empty_output((8, 21, 64, 128), torch.float32, torch.device('cpu')); "
            "print(backends.cache_stats()['live_blocks'], backends.CACHE_LIMIT_MB)")
    r = _run(code, "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]
    r = _run(code, "lots")
    assert r.returncode != 0 and "SEGFAST_CPU_CACHE_MB" in r.stderr


def _vma_flags(addr: int) -> dict:
    """The /proc/self/smaps fields of the mapping that holds ``addr``."""
    fields, inside = {}, False
    for line in pathlib.Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
            lo, hi = (int(v, 16) for v in head[0].split("-"))
            inside = lo <= addr < hi
        elif inside and ":" in head[0]:
            fields[head[0].rstrip(":")] = line.split(":", 1)[1].strip()
    return fields


def test_blocks_stay_on_small_pages_and_advise_huge_pages_is_exact():
    """Cached blocks are not advised huge pages (csrc/cpu/block_cache.h); the
    uncached path advises the whole 2 MiB pages inside an output and only those."""
    thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[madvise]" not in thp.read_text():
        pytest.skip("transparent huge pages are not in madvise mode here")
    t = backends.empty_output((3 << 20,), torch.float32, torch.device("cpu"))
    assert "hg" not in _vma_flags(t.data_ptr())["VmFlags"].split()
    u = torch.empty(3 << 20)  # 12 MiB: mmap'ed by malloc, at least four whole huge pages
    assert backends._C.advise_huge_pages(u.data_ptr(), u.numel() * 4) == 0
    inner = (u.data_ptr() + (1 << 21) - 1) & ~((1 << 21) - 1)
    assert "hg" in _vma_flags(inner)["VmFlags"].split()
    small = torch.empty(1000)
    assert backends._C.advise_huge_pages(small.data_ptr(), 0) == 0  # no whole page: nothing to do
    assert backends._C.advise_huge_pages(u.data_ptr() + 4096, (1 << 21) - 8192) == 0


def test_cache_keeps_what_the_workload_lately_had_live():
    """Freed blocks stay while a step of the same size may ask for them again,
    and go once the workload has had less live for the last 32 acquisitions."""
    backends.empty_cache()
    three = [backends.empty_output(BIG, torch.float32, torch.device("cpu")) for _ in range(3)]
    del three
    assert _stats()["cached_blocks"] == 3
    for _ in range(40):  # a steady step with one such output live at a time
        t = backends.empty_output(BIG, torch.float32, torch.device("cpu"))
        del t
    s = _stats()
    assert s["cached_blocks"] == 1 and s["hits"] > 0
    backends.empty_cache()
