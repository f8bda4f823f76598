/*
 * CLinux: the Linux system calls and variadic libc functions kmsfs needs that
 * Swift cannot import directly. Each wrapper exists for one reason, given
 * beside it. Header-only: nothing to link.
 */
#ifndef KMSFS_CLINUX_SHIM_H
#define KMSFS_CLINUX_SHIM_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <linux/openat2.h>
#include <malloc.h>

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif

/* memfd_secret(2) has no glibc wrapper; syscall(2) is variadic. */
static inline int kmsfs_memfd_secret(unsigned int flags) {
    return (int)syscall(SYS_memfd_secret, flags);
}

/* openat2(2) has no glibc wrapper in Debian 12; syscall(2) is variadic.
 * resolve is a mask of RESOLVE_* flags. */
static inline int kmsfs_openat2(int dirfd, const char *path, uint64_t flags,
                                uint64_t mode, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

/* prctl(2) is variadic. */
static inline int kmsfs_prctl(int option, unsigned long arg2) {
    return prctl(option, arg2, 0UL, 0UL, 0UL);
}

/* syslog(3) is variadic; always log through "%s" so a message can never be
 * read as a format string. */
static inline void kmsfs_syslog(int priority, const char *message) {
    syslog(priority, "%s", message);
}

/* explicit_bzero(3): a wipe the compiler may not elide. */
static inline void kmsfs_wipe(void *p, size_t n) {
    if (p != NULL && n != 0) explicit_bzero(p, n);
}

/* The RESOLVE_* and MCL_* values are macros in kernel headers that Swift
 * may import with the wrong width; expose them as typed constants. */
static const uint64_t KMSFS_RESOLVE_BENEATH = RESOLVE_BENEATH;
static const uint64_t KMSFS_RESOLVE_NO_SYMLINKS = RESOLVE_NO_SYMLINKS;
static const uint64_t KMSFS_RESOLVE_NO_MAGICLINKS = RESOLVE_NO_MAGICLINKS;
static const uint64_t KMSFS_RESOLVE_NO_XDEV = RESOLVE_NO_XDEV;
/* O_PATH needs _GNU_SOURCE, which this module must not define (it would
 * change glibc's types under Swift's own Glibc module). */
static const int KMSFS_O_PATH = __O_PATH;

#ifdef MCL_ONFAULT
static const int KMSFS_MCL_ONFAULT = MCL_ONFAULT;
#else
static const int KMSFS_MCL_ONFAULT = 4;
#endif

/* sigaction's handler lives in a union behind a macro (sa_handler). */
static inline int kmsfs_signal_default(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}
static inline int kmsfs_signal_ignore(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

/* struct ucred needs _GNU_SOURCE; mirror it (the layout is the kernel's). */
struct kmsfs_ucred { int32_t pid; uint32_t uid; uint32_t gid; };
static inline int kmsfs_peer_credentials(int fd, struct kmsfs_ucred *out) {
    socklen_t len = sizeof *out;
    return getsockopt(fd, SOL_SOCKET, 17 /* SO_PEERCRED */, out, &len);
}

/* malloc.h's tuning (M_ARENA_MAX is a macro constant). */
static inline void kmsfs_malloc_arena_max(int n) { mallopt(M_ARENA_MAX, n); }
static inline int kmsfs_malloc_trim(void) { return malloc_trim(0); }

/* pidfd_open(2) and pidfd_send_signal(2) have no glibc wrapper in
 * Debian 12: through syscall(2), which is variadic. A pidfd pins the
 * process it names, so a check made through it cannot be fooled by the PID
 * being reused. PIDFD_THREAD (Linux 6.9) names one thread, as FUSE's
 * request PID does. */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
static inline int kmsfs_pidfd_open(int pid, int thread) {
    return (int)syscall(SYS_pidfd_open, pid, thread ? (unsigned int)O_EXCL /* PIDFD_THREAD */ : 0u);
}
static inline int kmsfs_pidfd_alive(int pidfd) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0);
}

/* errno is a macro over a thread-local function. */
static inline int kmsfs_errno(void) { return errno; }
static inline void kmsfs_set_errno(int e) { errno = e; }

#endif
