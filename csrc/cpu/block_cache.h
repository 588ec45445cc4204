// A cache of large CPU blocks for kernel outputs (the gradients of the loss
// families), handed to PyTorch as DLPack tensors whose deleter returns the
// block here instead of to malloc.
//
// Why: a training step frees its gradient and allocates one of the same size
// on the next step. glibc serves such blocks from mmap or from a heap top that
// it trims once twice the block is free, so the next block is faulted in and
// zeroed by the kernel again: for the 11 MiB Dice gradient of an
// 8 x 21 x 128 x 128 batch that costs about a millisecond, as much as the
// loss's kernels. (On CUDA, PyTorch's caching allocator does this.)
//
// Blocks are page-aligned, on ordinary 4 KiB pages: a reused block faults no
// more, and small pages scatter the C class rows of an [N, C, H, W] gradient
// over L2 sets, where 2 MiB pages put rows 64 KiB apart in two sets (the
// region grad pass runs up to 20% slower on huge pages).
// A released block is kept (most recent last) while the cache holds at most
// the smaller of `limit` (SEGFAST_CPU_CACHE_MB, default 256) and the most
// bytes that were live at once after any of the last 32 acquisitions, the
// oldest freed first: enough for a training step's outputs to come back on
// the next step, and no more than the workload lately had in use (see
// block_cache.cpp). acquire takes the smallest cached
// block of at least n and at most n + n/4 bytes, the most recently freed among
// equals. Thread-safe (deleters run on any thread, without the GIL) and
// fork-safe (the lock is held across fork()).
#pragma once

#include <cstddef>
#include <cstdint>

namespace segfast {
namespace cpu {

struct BlockCacheStats {
  uint64_t cached_bytes, cached_blocks, live_bytes, live_blocks, hits, misses, limit;
};

void* block_acquire(uint64_t nbytes);  // nullptr when out of memory
void block_release(void* p) noexcept;  // p from block_acquire
uint64_t block_cache_trim() noexcept;  // frees every cached block; returns their bytes
void block_cache_set_limit(uint64_t bytes) noexcept;  // trims down to it
BlockCacheStats block_cache_stats() noexcept;

}  // namespace cpu
}  // namespace segfast
