// See block_cache.h.
#include "block_cache.h"

#if !defined(_WIN32)
#include <pthread.h>
#else
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <list>
#include <mutex>
#include <unordered_map>
#include <utility>


namespace segfast {
namespace cpu {
namespace {

// The cache holds no more than the most bytes that were live at once after
// any of the last kWindow acquisitions: a training step's outputs (a loss's
// gradient, the probabilities it keeps for backward) are what the next step
// asks for again, and a workload that shrinks (a smaller batch, evaluation,
// or no segfast call at all) lets the surplus go within kWindow calls instead
// of keeping up to `limit` of freed memory for the rest of the process.
constexpr int kWindow = 32;

struct Cache {
  std::mutex mu;
  std::list<std::pair<void*, uint64_t>> free_blocks;  // oldest first
  std::unordered_map<void*, uint64_t> live;           // block -> size
  uint64_t cached_bytes = 0, live_bytes = 0, hits = 0, misses = 0;
  uint64_t limit = uint64_t(256) << 20;
  // live bytes right after each of the last kWindow acquisitions (a ring)
  uint64_t recent[kWindow] = {};
  uint64_t acquisitions = 0;
  // what the cache may hold now: the limit, and no more than was live at once lately
  uint64_t keep() const {
    uint64_t peak = 0;
    for (uint64_t v : recent) peak = std::max(peak, v);
    return std::min(limit, peak);
  }
  void acquired(void* p, uint64_t n) {
    live.emplace(p, n);
    live_bytes += n;
    recent[acquisitions++ % kWindow] = live_bytes;
  }
};

Cache& cache() {
  static Cache* c = [] {
    auto* p = new Cache;  // never destroyed: deleters may run during interpreter exit
#if !defined(_WIN32)
    // fork() while another thread holds the lock would leave it held in the child
    pthread_atfork([] { cache().mu.lock(); }, [] { cache().mu.unlock(); },
                   [] { cache().mu.unlock(); });
#endif
    return p;
  }();
  return *c;
}

void* aligned_block(uint64_t n, uint64_t align) {
#if defined(_WIN32)
  return _aligned_malloc(n, align);
#else
  void* p = nullptr;
  return posix_memalign(&p, align, n) == 0 ? p : nullptr;
#endif
}

void free_block(void* p) {
#if defined(_WIN32)
  _aligned_free(p);
#else
  std::free(p);
#endif
}

// Frees the oldest cached blocks until at most `keep` bytes stay; mu held.
void shrink_locked(Cache& c, uint64_t keep) {
  while (c.cached_bytes > keep && !c.free_blocks.empty()) {
    auto [p, n] = c.free_blocks.front();
    c.free_blocks.pop_front();
    c.cached_bytes -= n;
    free_block(p);
  }
}

}  // namespace

void* block_acquire(uint64_t nbytes) {
  Cache& c = cache();
  const uint64_t n = std::max<uint64_t>(64, (nbytes + 4095) & ~uint64_t(4095));
  {
    std::lock_guard<std::mutex> g(c.mu);
    // the smallest fit, the most recently freed among equals (warmest in cache and TLB)
    auto best = c.free_blocks.rend();
    for (auto it = c.free_blocks.rbegin(); it != c.free_blocks.rend(); ++it)
      if (it->second >= n && it->second <= n + n / 4 &&
          (best == c.free_blocks.rend() || it->second < best->second))
        best = it;
    if (best != c.free_blocks.rend()) {
      auto [p, size] = *best;
      c.free_blocks.erase(std::next(best).base());
      c.cached_bytes -= size;
      c.acquired(p, size);
      ++c.hits;
      shrink_locked(c, c.keep());
      return p;
    }
    ++c.misses;
  }
  void* p = aligned_block(n, 4096);
  if (p == nullptr) return nullptr;
  std::lock_guard<std::mutex> g(c.mu);
  c.acquired(p, n);
  shrink_locked(c, c.keep());
  return p;
}

void block_release(void* p) noexcept {
  if (p == nullptr) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  auto it = c.live.find(p);
  if (it == c.live.end()) return;  // not ours: never happens through the DLPack deleter
  const uint64_t n = it->second;
  c.live.erase(it);
  c.live_bytes -= n;
  const uint64_t keep = c.keep();
  if (n > keep) {
    free_block(p);
    return;
  }
  shrink_locked(c, keep - n);
  c.free_blocks.emplace_back(p, n);
  c.cached_bytes += n;
}

uint64_t block_cache_trim() noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  const uint64_t had = c.cached_bytes;
  shrink_locked(c, 0);
  return had;
}

void block_cache_set_limit(uint64_t bytes) noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  c.limit = bytes;
  shrink_locked(c, bytes);
}

BlockCacheStats block_cache_stats() noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  return {c.cached_bytes, uint64_t(c.free_blocks.size()), c.live_bytes, uint64_t(c.live.size()),
          c.hits, c.misses, c.limit};
}

}  // namespace cpu
}  // namespace segfast
