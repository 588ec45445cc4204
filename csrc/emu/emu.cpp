// CUDA emulation runtime (see cuda_runtime.h). A launch runs its blocks on
// OpenMP threads; a block runs its CUDA threads as fibers on one OS thread.
// Each fiber runs until it reaches __syncthreads, a warp collective or its
// end; then the scheduler runs the next one. When none can run, it releases
// the barrier (every live thread of the block waits at the same
// __syncthreads) or the warp collectives whose named lanes have all arrived,
// else it reports the fault and abandons the block. Round order: forward,
// reverse or shuffled (SEGFAST_EMU_SCHEDULE, or set_schedule()).
#include "cuda_runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace segfast_emu {

thread_local Fiber* tl_fiber = nullptr;

namespace {

constexpr size_t kStackBytes = size_t(64) << 10;
constexpr size_t kSmemDefault = size_t(48) << 10;   // per block without opt-in
constexpr size_t kSmemOptinMax = size_t(163) << 10;  // sm_80 opt-in maximum
constexpr uint64_t kParallelThreads = 16384;         // CUDA threads a launch needs to use OpenMP

enum Schedule { kForward, kReverse, kShuffle };
const char* const kScheduleNames[] = {"forward", "reverse", "shuffle"};
std::atomic<int> g_schedule{-1};
std::atomic<uint64_t> g_seed{0};

int parse_schedule(const char* s) {
  for (int i = 0; i < 3; ++i)
    if (std::string(s) == kScheduleNames[i]) return i;
  return -1;
}

int schedule() {
  int s = g_schedule.load();
  if (s < 0) {
    const char* env = std::getenv("SEGFAST_EMU_SCHEDULE");
    s = env && *env ? parse_schedule(env) : kForward;
    if (s < 0) {
      std::fprintf(stderr, "segfast._C_emu: SEGFAST_EMU_SCHEDULE=%s is not forward|reverse|shuffle; "
                   "using forward\n", env);
      s = kForward;
    }
    g_schedule.store(s);
  }
  return s;
}

enum State { kRun, kBarrier, kWarp, kExited };

struct FiberX : Fiber {
  State st = kRun;
  int lane = 0;
  const char* file = nullptr;  // the __syncthreads waited at
  int line = 0;
  WarpOp op = kSync;
  unsigned mask = 0;
  uint64_t val = 0, result = 0;
  int arg = 0, width = 32;
  bool sgn = false;
  char* stack = nullptr;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

struct BlockX : Block {
  Body body;
  void* ctx;
  char* dyn;
  size_t dyn_bytes, limit, static_bytes;
  std::vector<void*> statics;
  cudaError_t code;
  std::string error;  // the first fault; the block is abandoned
};

struct Worker {
  std::vector<FiberX> fibers;
  std::vector<char*> stacks;
  std::vector<char> dyn;
  BlockX* blk = nullptr;
#if defined(__x86_64__)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_uc;
#endif
  ~Worker() {
    for (char* s : stacks) munmap(s, kStackBytes + size_t(sysconf(_SC_PAGESIZE)));
  }
};
thread_local Worker tl_worker;

char* new_stack() {  // with a guard page below it
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  mprotect(p, page, PROT_NONE);
  return static_cast<char*>(p);
}

}  // namespace
}  // namespace segfast_emu

using segfast_emu::FiberX;

#if defined(__x86_64__)
extern "C" __attribute__((visibility("hidden"))) void segfast_emu_switch(void** save, void* to);
extern "C" __attribute__((visibility("hidden"))) void segfast_emu_trampoline();
#endif

extern "C" __attribute__((visibility("hidden"), noreturn)) void segfast_emu_fiber_main(FiberX* f) {
  segfast_emu::BlockX* b = segfast_emu::tl_worker.blk;
  b->body(b->ctx);
  f->st = segfast_emu::kExited;
  for (;;) {  // never resumed
#if defined(__x86_64__)
    segfast_emu_switch(&f->sp, segfast_emu::tl_worker.sched_sp);
#else
    swapcontext(&f->uc, &segfast_emu::tl_worker.sched_uc);
#endif
  }
}

#if defined(__x86_64__)
// Callee-saved registers on the old stack, switch stacks, pop them on the new
// one. A new fiber's stack holds zeros, r12 = its FiberX* and the trampoline.
asm(R"(
  .text
  .p2align 4
  .globl segfast_emu_switch
  .hidden segfast_emu_switch
  .type segfast_emu_switch,@function
segfast_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size segfast_emu_switch,.-segfast_emu_switch
  .p2align 4
  .type segfast_emu_trampoline,@function
segfast_emu_trampoline:
  movq %r12, %rdi
  call segfast_emu_fiber_main
  ud2
  .size segfast_emu_trampoline,.-segfast_emu_trampoline
)");
#endif

namespace segfast_emu {
namespace {

void init_fiber(Worker& w, FiberX& f) {
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + size_t(sysconf(_SC_PAGESIZE)) + kStackBytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top - 72);  // after the pops and ret: rsp = top - 16
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  sp[3] = &f;                                         // r12
  sp[6] = reinterpret_cast<void*>(&segfast_emu_trampoline);
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack + sysconf(_SC_PAGESIZE);
  f.uc.uc_stack.ss_size = kStackBytes;
  f.uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.uc, reinterpret_cast<void (*)()>(+[](unsigned hi, unsigned lo) {
                segfast_emu_fiber_main(reinterpret_cast<FiberX*>((uintptr_t(hi) << 32) | lo));
              }), 2, unsigned(p >> 32), unsigned(p));
#endif
  (void)w;
}

void run_fiber(Worker& w, FiberX& f) {
  tl_fiber = &f;
#if defined(__x86_64__)
  segfast_emu_switch(&w.sched_sp, f.sp);
#else
  swapcontext(&w.sched_uc, &f.uc);
#endif
  tl_fiber = nullptr;
}

FiberX& cur() { return *static_cast<FiberX*>(tl_fiber); }

void yield() {  // back to the block's scheduler
  FiberX& f = cur();
  Worker& w = tl_worker;
#if defined(__x86_64__)
  segfast_emu_switch(&f.sp, w.sched_sp);
#else
  swapcontext(&f.uc, &w.sched_uc);
#endif
  tl_fiber = &f;
}

std::string where(const BlockX& b, const FiberX* f) {
  char s[160];
  int n = std::snprintf(s, sizeof s, "block (%u,%u,%u)", b.idx.x, b.idx.y, b.idx.z);
  if (f) std::snprintf(s + n, sizeof s - n, ", thread (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
  return s;
}

void fault(cudaError_t code, const std::string& msg) {  // from a fiber: abandon the block
  BlockX& b = *tl_worker.blk;
  if (b.error.empty()) {
    b.code = code;
    b.error = msg + " (" + where(b, &cur()) + ")";
  }
  cur().st = kExited;
  yield();
  std::abort();  // an abandoned fiber is never resumed
}

// Completes the warp collectives whose named lanes have all arrived. False if none could.
bool resolve_warps(Worker& w, BlockX& b, int n) {
  bool progress = false;
  for (int w0 = 0; w0 < n; w0 += 32) {
    for (int i = w0; i < std::min(n, w0 + 32); ++i) {
      FiberX& f = w.fibers[i];
      if (f.st != kWarp) continue;
      bool complete = true;
      for (int l = 0; l < 32; ++l) {
        if (!((f.mask >> l) & 1u)) continue;
        if (w0 + l >= n || w.fibers[w0 + l].st == kExited) {
          b.code = cudaErrorIllegalInstruction;
          b.error = "warp collective: mask " + std::to_string(f.mask) + " names lane " + std::to_string(l) +
                    ", which has exited (" + where(b, &f) + ")";
          return false;
        }
        const FiberX& g = w.fibers[w0 + l];
        if (g.st != kWarp) { complete = false; break; }
        if (g.mask != f.mask || g.op != f.op || g.width != f.width) {
          b.code = cudaErrorIllegalInstruction;
          b.error = "warp collective: lanes " + std::to_string(f.lane) + " and " + std::to_string(l) +
                    " wait in different collectives or masks (" + where(b, &f) + ")";
          return false;
        }
      }
      if (!complete) continue;
      uint64_t acc = 0;
      bool first = true;
      for (int l = 0; l < 32; ++l) {
        if (!((f.mask >> l) & 1u)) continue;
        const FiberX& g = w.fibers[w0 + l];
        const uint32_t v = uint32_t(g.val);
        switch (f.op) {
          case kBallot: acc |= uint64_t(g.val != 0) << l; break;
          case kAny: acc |= g.val != 0; break;
          case kAll: acc = (first ? 1 : acc) & (g.val != 0); break;
          case kRedAdd: acc = uint32_t(acc + v); break;
          case kRedAnd: acc = first ? v : (acc & v); break;
          case kRedOr: acc |= v; break;
          case kRedXor: acc ^= v; break;
          case kRedMin: acc = first || (f.sgn ? int32_t(v) < int32_t(acc) : v < uint32_t(acc)) ? v : acc; break;
          case kRedMax: acc = first || (f.sgn ? int32_t(v) > int32_t(acc) : v > uint32_t(acc)) ? v : acc; break;
          default: break;
        }
        first = false;
      }
      for (int l = 0; l < 32; ++l) {
        if (!((f.mask >> l) & 1u)) continue;
        FiberX& g = w.fibers[w0 + l];
        int src = l;
        const int base = l & ~(g.width - 1);
        switch (g.op) {
          case kShflIdx: src = base + (g.arg & (g.width - 1)); break;
          case kShflUp: src = l - g.arg < base ? l : l - g.arg; break;
          case kShflDown: src = l + g.arg >= base + g.width ? l : l + g.arg; break;
          case kShflXor: src = (l ^ g.arg) >= base + g.width || (l ^ g.arg) > 31 ? l : (l ^ g.arg); break;
          default: break;
        }
        if (g.op >= kShflIdx && g.op <= kShflXor) {
          if (!((f.mask >> src) & 1u)) {
            b.code = cudaErrorIllegalInstruction;
            b.error = "shuffle: lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                      ", which its mask does not name (" + where(b, &g) + ")";
            return false;
          }
          g.result = w.fibers[w0 + src].val;
        } else {
          g.result = acc;
        }
      }
      for (int l = 0; l < 32; ++l)
        if ((f.mask >> l) & 1u) w.fibers[w0 + l].st = kRun;
      progress = true;
    }
  }
  return progress;
}

bool resolve_barrier(Worker& w, BlockX& b, int n) {
  const FiberX* first = nullptr;
  const FiberX* stuck = nullptr;
  for (int i = 0; i < n; ++i) {
    const FiberX& f = w.fibers[i];
    if (f.st == kBarrier) {
      if (!first) first = &f;
      if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
        b.code = cudaErrorLaunchFailure;
        b.error = "divergent __syncthreads: threads wait at different barriers, " + std::string(first->file) + ":" +
                  std::to_string(first->line) + " and " + f.file + ":" + std::to_string(f.line) + " (" +
                  where(b, first) + " and thread (" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) + "," +
                  std::to_string(f.tid.z) + "))";
        return false;
      }
    } else if (f.st == kWarp && !stuck) {
      stuck = &f;
    }
  }
  if (stuck || !first) {
    b.code = cudaErrorLaunchFailure;
    b.error = std::string("deadlock: ") + (first ? "__syncthreads is not reached by every live thread of the block; " : "") +
              "a warp collective (mask " + std::to_string(stuck ? stuck->mask : 0) +
              ") waits for lanes that never reach it (" + where(b, stuck) + ")";
    return false;
  }
  for (int i = 0; i < n; ++i)
    if (w.fibers[i].st == kBarrier) w.fibers[i].st = kRun;
  return true;
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void run_block(BlockX& b, int sched, uint64_t seed) {
  Worker& w = tl_worker;
  const int n = int(b.dim.x * b.dim.y * b.dim.z);
  while (int(w.stacks.size()) < n) w.stacks.push_back(new_stack());
  w.fibers.resize(std::max<size_t>(w.fibers.size(), size_t(n)));
  w.blk = &b;
  for (int i = 0; i < n; ++i) {
    FiberX& f = w.fibers[i];
    f.tid = {unsigned(i) % b.dim.x, unsigned(i) / b.dim.x % b.dim.y, unsigned(i) / (b.dim.x * b.dim.y)};
    f.blk = &b;
    f.st = kRun;
    f.lane = i & 31;
    f.stack = w.stacks[i];
    init_fiber(w, f);
  }
  std::vector<int> order;
  order.reserve(n);
  uint64_t rng = seed ^ (uint64_t(b.idx.x) * 0x9e3779b1u + uint64_t(b.idx.y) * 0x85ebca77u + b.idx.z);
  for (;;) {
    order.clear();
    for (int i = 0; i < n; ++i)
      if (w.fibers[i].st == kRun) order.push_back(i);
    if (order.empty()) {
      bool live = false;
      for (int i = 0; i < n && !live; ++i) live = w.fibers[i].st != kExited;
      if (!live) break;
      if (!resolve_warps(w, b, n) && b.error.empty()) resolve_barrier(w, b, n);
      if (!b.error.empty()) break;
      continue;
    }
    if (sched == kReverse) std::reverse(order.begin(), order.end());
    if (sched == kShuffle)
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[splitmix(rng) % i]);
    for (int i : order) {
      run_fiber(w, w.fibers[i]);
      if (!b.error.empty()) break;
    }
    if (!b.error.empty()) break;
  }
  w.blk = nullptr;
}

thread_local cudaError_t tl_last = cudaSuccess;
thread_local std::string tl_last_msg;
thread_local std::string tl_reported_msg;
thread_local cudaError_t tl_reported = cudaSuccess;

void set_error(cudaError_t e, const std::string& msg) {
  if (tl_last == cudaSuccess) {
    tl_last = e;
    tl_last_msg = msg;
  }
}

std::mutex g_attr_mutex;
std::unordered_map<const void*, size_t> g_max_dyn_smem;

}  // namespace

void set_schedule(const std::string& name, uint64_t seed) {
  const int s = parse_schedule(name.c_str());
  if (s < 0) throw std::invalid_argument("segfast._C_emu: schedule must be forward, reverse or shuffle, got " + name);
  g_schedule.store(s);
  g_seed.store(seed);
}
std::string schedule_name() { return kScheduleNames[schedule()]; }

void launch_impl(const void* func, Body body, void* ctx, dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    char s[200];
    std::snprintf(s, sizeof s, "invalid configuration argument: grid (%u,%u,%u), block (%u,%u,%u)", grid.x, grid.y,
                  grid.z, block.x, block.y, block.z);
    return set_error(cudaErrorInvalidConfiguration, s);
  }
  size_t limit = kSmemDefault;
  {
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    auto it = g_max_dyn_smem.find(func);
    if (it != g_max_dyn_smem.end()) limit = std::max(limit, it->second);
  }
  if (smem > limit)
    return set_error(cudaErrorInvalidValue, "invalid argument: " + std::to_string(smem) +
                                                " bytes of dynamic shared memory, over the per-block limit of " +
                                                std::to_string(limit));
  const int sched = schedule();
  const uint64_t seed = g_seed.load();
  const int64_t nblocks = int64_t(grid.x) * grid.y * grid.z;
  std::atomic<bool> failed{false};
  std::mutex m;
  cudaError_t code = cudaSuccess;
  std::string msg;
  // OpenMP only for launches with work enough: opening a parallel region on a
  // busy machine can wait out a preempted thread for a scheduler tick.
  const bool parallel = nblocks > 1 && uint64_t(nblocks) * threads >= kParallelThreads;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t i = 0; i < nblocks; ++i) {
    if (failed.load(std::memory_order_relaxed)) continue;
    Worker& w = tl_worker;
    BlockX b;
    b.idx = {unsigned(i % grid.x), unsigned(i / grid.x % grid.y), unsigned(i / (int64_t(grid.x) * grid.y))};
    b.dim = block;
    b.grid = grid;
    b.body = body;
    b.ctx = ctx;
    if (w.dyn.size() < smem) w.dyn.resize(smem);
    std::memset(w.dyn.data(), 0xff, smem);  // uninitialised shared memory reads as NaN / -1
    b.dyn = w.dyn.data();
    b.dyn_bytes = smem;
    b.limit = limit;
    b.static_bytes = 0;
    b.code = cudaSuccess;
    run_block(b, sched, seed);
    if (!b.error.empty()) {
      std::lock_guard<std::mutex> lock(m);
      if (!failed.exchange(true)) {
        code = b.code;
        msg = b.error;
      }
    }
  }
  if (failed) set_error(code, msg);
}

void* dynamic_smem() { return tl_worker.blk->dyn; }

void static_smem(void* addr, size_t bytes) {
  BlockX& b = *tl_worker.blk;
  if (std::find(b.statics.begin(), b.statics.end(), addr) != b.statics.end()) return;
  b.statics.push_back(addr);
  std::memset(addr, 0xff, bytes);
  b.static_bytes += bytes;
  if (b.static_bytes + b.dyn_bytes > b.limit)
    fault(cudaErrorInvalidValue, "too much shared memory: " + std::to_string(b.static_bytes) + " bytes static + " +
                                     std::to_string(b.dyn_bytes) + " dynamic, over the per-block limit of " +
                                     std::to_string(b.limit));
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, bool is_signed) {
  FiberX& f = cur();
  if (!((mask >> f.lane) & 1u))
    fault(cudaErrorIllegalInstruction, "warp collective: mask " + std::to_string(mask) +
                                           " does not name the calling lane " + std::to_string(f.lane));
  if (width < 1 || width > 32 || (width & (width - 1)))
    fault(cudaErrorIllegalInstruction, "shuffle width " + std::to_string(width) + " is not a power of 2 up to 32");
  f.op = op;
  f.mask = mask;
  f.val = value;
  f.arg = arg;
  f.width = width;
  f.sgn = is_signed;
  f.st = kWarp;
  yield();
  return f.result;
}

}  // namespace segfast_emu

void segfast_emu_syncthreads(const char* file, int line) {
  segfast_emu::FiberX& f = segfast_emu::cur();
  f.file = file;
  f.line = line;
  f.st = segfast_emu::kBarrier;
  segfast_emu::yield();
}

unsigned __activemask() {
  segfast_emu::Worker& w = segfast_emu::tl_worker;
  const int n = int(w.blk->dim.x * w.blk->dim.y * w.blk->dim.z);
  const int i = int(&segfast_emu::cur() - w.fibers.data()), w0 = i & ~31;
  unsigned m = 0;
  for (int l = 0; l < 32 && w0 + l < n; ++l)
    if (w.fibers[w0 + l].st != segfast_emu::kExited) m |= 1u << l;
  return m;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = segfast_emu::tl_last;
  segfast_emu::tl_reported = e;
  segfast_emu::tl_reported_msg = segfast_emu::tl_last_msg;
  segfast_emu::tl_last = cudaSuccess;
  segfast_emu::tl_last_msg.clear();
  return e;
}
cudaError_t cudaPeekAtLastError() { return segfast_emu::tl_last; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

const char* cudaGetErrorString(cudaError_t e) {
  if (e != cudaSuccess && e == segfast_emu::tl_reported && !segfast_emu::tl_reported_msg.empty())
    return segfast_emu::tl_reported_msg.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    default: return "unspecified launch failure";
  }
}

cudaError_t cudaFuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || size_t(value) > segfast_emu::kSmemOptinMax) {
    segfast_emu::set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: invalid argument");
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(segfast_emu::g_attr_mutex);
  segfast_emu::g_max_dyn_smem[func] = size_t(value);
  return cudaSuccess;
}
