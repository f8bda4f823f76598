/*
 * CLinux: the Linux system calls, macros and variadic libc functions kmsfs
 * needs that Swift cannot import directly. Each wrapper exists for one
 * reason, given beside it; the definitions are in shim.c, compiled with
 * _GNU_SOURCE (which this header must not define: it would change glibc's
 * types under Swift's own Glibc module). Structures mirrored here are
 * checked against the real ones there with _Static_assert.
 */
#ifndef KMSFS_CLINUX_H
#define KMSFS_CLINUX_H

#include <stddef.h>
#include <stdint.h>
/* What importers use beside the wrappers (PR_*, MCL_*, RLIMIT_*, LOG_*). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>

/* memfd_secret(2) has no glibc wrapper; syscall(2) is variadic. */
int kmsfs_memfd_secret(unsigned int flags);

/* accept4(2) is a GNU extension, hidden from Swift without _GNU_SOURCE.
 * Accepts with SOCK_CLOEXEC, so that no program spawned meanwhile
 * inherits the connection (accept, then fcntl, leaves a window). */
int kmsfs_accept_cloexec(int fd);

/* openat2(2) has no glibc wrapper in Debian 12; syscall(2) is variadic.
 * resolve is a mask of RESOLVE_* flags. */
int kmsfs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);

/* open_tree(path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE): an
 * O_PATH descriptor of a detached copy of the mounts at and below path,
 * made private (mount_setattr, MS_PRIVATE) so nothing propagates into or
 * out of it; -1 and errno when either call is refused (CAP_SYS_ADMIN;
 * Linux 5.12). No glibc wrappers in Debian 12. */
int kmsfs_open_tree_clone(const char *path);

/* unshare(CLONE_FS): this thread's own umask, cwd and root (unshare needs
 * _GNU_SOURCE, which Swift's Glibc module is not built with). */
int kmsfs_unshare_fs(void);

/* prctl(2) is variadic. */
int kmsfs_prctl(int option, unsigned long arg2);

/* syslog(3) is variadic; always logs through "%s" so a message can never
 * be read as a format string. */
void kmsfs_syslog(int priority, const char *message);

/* explicit_bzero(3): a wipe the compiler may not elide. */
void kmsfs_wipe(void *p, size_t n);

/* The RESOLVE_* and MCL_* values are macros in kernel headers that Swift
 * may import with the wrong width, and O_PATH is declared only under
 * _GNU_SOURCE: typed constants, from the real headers. */
extern const uint64_t KMSFS_RESOLVE_BENEATH;
extern const uint64_t KMSFS_RESOLVE_NO_SYMLINKS;
extern const uint64_t KMSFS_RESOLVE_NO_MAGICLINKS;
extern const int kmsfs_o_path;
extern const int KMSFS_MCL_ONFAULT;

/* sigaction's handler lives in a union behind a macro (sa_handler). */
int kmsfs_signal_default(int sig);

/* struct ucred is declared only under _GNU_SOURCE: mirrored (the layout is
 * the kernel's; shim.c asserts it), filled by getsockopt(SO_PEERCRED). */
struct kmsfs_ucred { int32_t pid; uint32_t uid; uint32_t gid; };
int kmsfs_peer_credentials(int fd, struct kmsfs_ucred *out);

/* malloc.h's tuning (M_ARENA_MAX is a macro constant). */
void kmsfs_malloc_arena_max(int n);
int kmsfs_malloc_trim(void);

/* pidfd_open(2) and pidfd_send_signal(2) have no glibc wrapper in
 * Debian 12: through syscall(2), which is variadic. A pidfd pins the
 * process it names, so a check made through it cannot be fooled by the PID
 * being reused. thread != 0 asks for PIDFD_THREAD (Linux 6.9): one thread,
 * as FUSE's request PID is. */
int kmsfs_pidfd_open(int pid, int thread);
/* statfs(2)'s f_type of the file system holding fd (sys/vfs.h is not in
   Swift's Glibc module); 0 on failure. */
unsigned long long kmsfs_fs_type(int fd);

/* Bytes waiting to be read on fd (ioctl FIONREAD, which is variadic);
   -1 on error. */
int kmsfs_queued_bytes(int fd);
int kmsfs_pidfd_alive(int pidfd);

/* pthread_getattr_np(3) is a GNU extension: the calling thread's stack,
 * [*low, *low + *size), as pthread_attr_getstack reports it (glibc 2.27
 * and later leave out the guard below it); 0, or an error number. */
int kmsfs_thread_stack(uintptr_t *low, size_t *size);

/* errno is a macro over a thread-local function. */
int kmsfs_errno(void);
void kmsfs_set_errno(int e);

#endif
