/*
 * CFuse's two compiled functions, and a check of its headers: CFuse is
 * otherwise header-only (static inline, so the request loop's calls inline
 * into FUSEBridge), but a C target of its own rather than a system
 * library's module map, so that its headers are compiled with the
 * compiler's diagnostics on (a system module's are silenced) and an edit
 * to them rebuilds what imports them. _GNU_SOURCE here, as in CLinux's
 * shim.c, for pthread_setname_np and statx.
 */
#define _GNU_SOURCE
#include "shim.h"   /* pthread.h and signal.h among its includes */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/openat2.h>

int kmsfs_thread_start(pthread_t *t, void *(*body)(void *), void *arg, size_t stack,
                       int detached, const char *name) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return -1;
    if (detached) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (stack) pthread_attr_setstacksize(&attr, stack);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(t, &attr, body, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) return -1;
    pthread_setname_np(*t, name);
    return 0;
}

int kmsfs_cached_size(const char *path, uint64_t *ino, uint64_t *size) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC | O_NOFOLLOW;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0) return -1;
    struct statx stx;
    int rc = statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_INO | STATX_SIZE, &stx);
    int saved = errno;
    close(fd);
    if (rc != 0) { errno = saved; return -1; }
    *ino = stx.stx_ino;
    *size = stx.stx_size;
    return 0;
}
