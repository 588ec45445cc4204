// glibc symbols for manylinux_2_28 (CMakeLists.txt, SEGFAST_MANYLINUX=ON).
//
// A build machine with a newer glibc binds some references to symbol versions
// newer than 2.28: libm's exp/log/pow/exp2/log2 (GLIBC_2.29, without the SVID
// error handling), the pthread_*, dl* and sem_* functions that moved into libc
// (GLIBC_2.34), libstdc++.a's __libc_single_threaded (GLIBC_2.32) and
// arc4random (GLIBC_2.36). The link
// redirects each reference, ours and the static archives' alike, to
// __wrap_<name> (`-Wl,--wrap=<name>`, one per SEGFAST_WRAP* line: CMakeLists.txt
// reads them from this file), defined here as a jump to the old version of
// the same function, which every glibc since 2.2.5 exports with the same
// arguments. The wrappers are hidden: the module exports nothing new.

// A tail jump: the arguments pass untouched whatever the function's signature.
#define SEGFAST_WRAP(name, version)                                   \
  __asm__(".symver segfast_old_" #name ", " #name "@" version "\n"    \
          ".pushsection .text\n"                                      \
          ".globl __wrap_" #name "\n"                                 \
          ".hidden __wrap_" #name "\n"                                \
          ".type __wrap_" #name ", @function\n"                       \
          "__wrap_" #name ":\n"                                       \
          "  jmp segfast_old_" #name "@PLT\n"                         \
          ".size __wrap_" #name ", .-__wrap_" #name "\n"              \
          ".popsection\n");

#if defined(__x86_64__)
SEGFAST_WRAP(exp, "GLIBC_2.2.5")
SEGFAST_WRAP(log, "GLIBC_2.2.5")
SEGFAST_WRAP(pow, "GLIBC_2.2.5")
SEGFAST_WRAP(exp2, "GLIBC_2.2.5")
SEGFAST_WRAP(log2, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_create, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_join, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_detach, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_once, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_key_create, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_key_delete, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_getspecific, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_setspecific, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_mutex_trylock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_mutexattr_init, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_mutexattr_settype, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_mutexattr_destroy, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_attr_setstacksize, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_getattr_np, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_kill, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_sigmask, "GLIBC_2.2.5")
SEGFAST_WRAP(dlopen, "GLIBC_2.2.5")
SEGFAST_WRAP(dlsym, "GLIBC_2.2.5")
SEGFAST_WRAP(dlclose, "GLIBC_2.2.5")
SEGFAST_WRAP(dlerror, "GLIBC_2.2.5")
SEGFAST_WRAP(dladdr, "GLIBC_2.2.5")
SEGFAST_WRAP(dlvsym, "GLIBC_2.2.5")
SEGFAST_WRAP(sem_init, "GLIBC_2.2.5")
SEGFAST_WRAP(sem_destroy, "GLIBC_2.2.5")
SEGFAST_WRAP(sem_wait, "GLIBC_2.2.5")
SEGFAST_WRAP(sem_post, "GLIBC_2.2.5")
SEGFAST_WRAP(sem_timedwait, "GLIBC_2.2.5")
SEGFAST_WRAP(sem_trywait, "GLIBC_2.2.5")
SEGFAST_WRAP(shm_open, "GLIBC_2.2.5")
SEGFAST_WRAP(shm_unlink, "GLIBC_2.2.5")
// referenced by libcudart_static.a
SEGFAST_WRAP(dlmopen, "GLIBC_2.3.4")
SEGFAST_WRAP(pthread_rwlock_init, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_destroy, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_rdlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_wrlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_tryrdlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_trywrlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_timedrdlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_timedwrlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlock_unlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlockattr_init, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlockattr_destroy, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_rwlockattr_setpshared, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_spin_init, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_spin_destroy, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_spin_lock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_spin_trylock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_spin_unlock, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_mutexattr_setpshared, "GLIBC_2.2.5")
SEGFAST_WRAP(pthread_condattr_setpshared, "GLIBC_2.2.5")

// libstdc++ skips atomic reference counting while this is nonzero; glibc sets
// it in single-threaded processes. Always 0 here: always atomic, as before
// glibc 2.32. (A variable: --wrap renames the references, no jump needed.)
extern "C" {
__attribute__((visibility("hidden"))) char __wrap___libc_single_threaded = 0;
}
#define SEGFAST_WRAP_VARIABLE(name)
SEGFAST_WRAP_VARIABLE(__libc_single_threaded)

// libstdc++.a's std::random_device calls arc4random (GLIBC_2.36, no older
// version): the same bytes from getrandom (GLIBC_2.25).
#include <sys/random.h>
#define SEGFAST_WRAP_FUNCTION(name)
SEGFAST_WRAP_FUNCTION(arc4random)
extern "C" __attribute__((visibility("hidden"))) unsigned int __wrap_arc4random() {
  unsigned int r = 0;
  while (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) {
  }
  return r;
}
#endif
