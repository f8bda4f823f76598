/*
 * CLinux's definitions (see include/CLinux.h for why each exists), compiled
 * as C with _GNU_SOURCE, so SO_PEERCRED, struct ucred and O_PATH come from
 * the real headers (as swift-nio's CNIOLinux/shim.c does).
 */
#define _GNU_SOURCE
#include "CLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <syslog.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <linux/openat2.h>

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
/* linux/mount.h (not included: it clashes with sys/mount.h on older glibc). */
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef MS_PRIVATE
#define MS_PRIVATE (1 << 18)
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
/* PIDFD_THREAD is O_EXCL (linux/pidfd.h, Linux 6.9; older headers lack it). */
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

/* The mirror of struct ucred in CLinux.h is the kernel's struct. */
_Static_assert(sizeof(struct kmsfs_ucred) == sizeof(struct ucred), "struct ucred size");
_Static_assert(offsetof(struct kmsfs_ucred, pid) == offsetof(struct ucred, pid), "ucred.pid");
_Static_assert(offsetof(struct kmsfs_ucred, uid) == offsetof(struct ucred, uid), "ucred.uid");
_Static_assert(offsetof(struct kmsfs_ucred, gid) == offsetof(struct ucred, gid), "ucred.gid");
_Static_assert(sizeof(((struct ucred *)0)->pid) == sizeof(int32_t), "ucred.pid width");
_Static_assert(sizeof(((struct ucred *)0)->uid) == sizeof(uint32_t), "ucred.uid width");

int kmsfs_memfd_secret(unsigned int flags) {
    return (int)syscall(SYS_memfd_secret, flags);
}

int kmsfs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int kmsfs_open_tree_clone(const char *path) {
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, path,
                          (unsigned int)(OPEN_TREE_CLONE | O_CLOEXEC | AT_RECURSIVE));
    if (fd < 0) return -1;
    /* The copy joins SOURCE's peer group where SOURCE's mount is shared (as
     * systemd makes mounts): mounts and unmounts below SOURCE would then
     * propagate into it, and an unmount below SOURCE would still fail
     * while the daemon has a file open there. Private, it is a snapshot. */
    struct kmsfs_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; } attr;
    memset(&attr, 0, sizeof attr);
    attr.propagation = MS_PRIVATE;
    if (syscall(SYS_mount_setattr, fd, "", (unsigned int)(AT_EMPTY_PATH | AT_RECURSIVE), &attr, sizeof attr) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int kmsfs_unshare_fs(void) {
    return unshare(CLONE_FS);
}

int kmsfs_prctl(int option, unsigned long arg2) {
    return prctl(option, arg2, 0UL, 0UL, 0UL);
}

void kmsfs_syslog(int priority, const char *message) {
    syslog(priority, "%s", message);
}

void kmsfs_wipe(void *p, size_t n) {
    if (p != NULL && n != 0) explicit_bzero(p, n);
}

const uint64_t KMSFS_RESOLVE_BENEATH = RESOLVE_BENEATH;
const uint64_t KMSFS_RESOLVE_NO_SYMLINKS = RESOLVE_NO_SYMLINKS;
const uint64_t KMSFS_RESOLVE_NO_MAGICLINKS = RESOLVE_NO_MAGICLINKS;
const int kmsfs_o_path = O_PATH;
#ifdef MCL_ONFAULT
const int KMSFS_MCL_ONFAULT = MCL_ONFAULT;
#else
const int KMSFS_MCL_ONFAULT = 4;
#endif

int kmsfs_signal_default(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int kmsfs_peer_credentials(int fd, struct kmsfs_ucred *out) {
    struct ucred c;
    socklen_t len = sizeof c;
    int rc = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len);
    if (rc != 0) return rc;
    out->pid = c.pid;
    out->uid = c.uid;
    out->gid = c.gid;
    return 0;
}

void kmsfs_malloc_arena_max(int n) { mallopt(M_ARENA_MAX, n); }
int kmsfs_malloc_trim(void) { return malloc_trim(0); }

int kmsfs_pidfd_open(int pid, int thread) {
    return (int)syscall(SYS_pidfd_open, pid, thread ? (unsigned int)PIDFD_THREAD : 0u);
}
int kmsfs_pidfd_alive(int pidfd) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0);
}

unsigned long long kmsfs_fs_type(int fd) {
    struct statfs s;
    return fstatfs(fd, &s) == 0 ? (unsigned long long)s.f_type : 0;
}

int kmsfs_errno(void) { return errno; }
void kmsfs_set_errno(int e) { errno = e; }

int kmsfs_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int kmsfs_queued_bytes(int fd) {
    int n = 0;
    return ioctl(fd, FIONREAD, &n) == 0 ? n : -1;
}

int kmsfs_thread_stack(uintptr_t *low, size_t *size) {
    pthread_attr_t attr;
    int rc = pthread_getattr_np(pthread_self(), &attr);
    if (rc != 0) return rc;
    void *addr;
    size_t n;
    rc = pthread_attr_getstack(&attr, &addr, &n);
    pthread_attr_destroy(&attr);
    if (rc == 0) { *low = (uintptr_t)addr; *size = n; }
    return rc;
}
