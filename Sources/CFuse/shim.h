/*
 * CFuse: libfuse3's low-level API, pinned to the version Debian 12 ships
 * (libfuse 3.14), plus wrappers for what Swift cannot import: macros that
 * pick a versioned symbol, bitfields in fuse_file_info, FUSE_ARGS_INIT.
 */
#ifndef KMSFS_CFUSE_SHIM_H
#define KMSFS_CFUSE_SHIM_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>

/*
 * kmsfs's request loop: libfuse's multi-threaded loop, except that one
 * worker at a time reads /dev/fuse (the reader) and it first polls for up
 * to `spin_us` microseconds while the requests it answers itself are
 * coming (one in the last millisecond).
 *
 * Why: each FUSE request wakes a worker blocked in read(2), and libfuse's
 * idle workers all block there, so the kernel wakes the one that has
 * waited longest, often on another CPU (an inter-processor interrupt; on a
 * VM a halted vCPU's exit). The requests of one open follow each other
 * within microseconds (open, read, the read at EOF, release), so a reader
 * that is already running takes them without a wake-up.
 *
 * The reader answers itself the requests whose handlers never wait (open,
 * read, release, forget, ...: `kmsfs_loop_answers_inline`). For any other,
 * as in libfuse, it hands the reader's role to an idle worker (or starts
 * one, up to `max_threads`) before processing it, so a request that waits
 * on SOURCE's disk never holds up the others; a worker that then finds
 * `max_idle` others idle ends. Workers block every signal (the daemon's
 * main thread takes them with sigwait). The loop ends when reading fails
 * (ENODEV once the connection is gone) or the session is told to exit;
 * the call returns when every worker has ended, with the error if any.
 */
#include <pthread.h>
#include <poll.h>
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <stdint.h>
struct kmsfs_loop {
    struct fuse_session *se;
    int fd;
    uint64_t spin_ns;
    size_t stack;
    pthread_mutex_t lock;
    pthread_cond_t changed;   /* workers: the reader's role is free, or exit */
    pthread_cond_t ended;     /* the loop's caller: a worker ended */
    int reading, idle, threads, max_threads, max_idle, error;
    uint64_t last_inline_ns;   /* when the reader last answered a request itself */
};
static inline uint64_t kmsfs_mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static void *kmsfs_loop_worker(void *arg);
/* Called with the lock held. */
static inline int kmsfs_loop_start_worker(struct kmsfs_loop *l) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (l->stack) pthread_attr_setstacksize(&attr, l->stack);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, &attr, kmsfs_loop_worker, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) return -1;
    pthread_setname_np(t, "kmsfs-loop");
    l->threads++;
    return 0;
}
/* Requests whose handlers never wait on anything (no SOURCE access, no
 * KMS: a cache-miss open is parked for the open pool): the reader answers
 * these itself and keeps its role. FUSE opcodes: FORGET 2, OPEN 14, READ
 * 15, RELEASE 18, FLUSH 25, INTERRUPT 36, BATCH_FORGET 42. */
static inline int kmsfs_loop_answers_inline(const struct fuse_buf *buf) {
    if ((buf->flags & FUSE_BUF_IS_FD) || buf->mem == NULL || buf->size < 8) return 0;
    uint32_t opcode;
    memcpy(&opcode, (const char *)buf->mem + 4, sizeof opcode);   /* fuse_in_header.opcode */
    switch (opcode) {
    case 2: case 14: case 15: case 18: case 25: case 36: case 42: return 1;
    default: return 0;
    }
}
static void *kmsfs_loop_worker(void *arg) {
    struct kmsfs_loop *l = (struct kmsfs_loop *)arg;
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (l->reading && !fuse_session_exited(l->se)) {
            l->idle++;
            pthread_cond_wait(&l->changed, &l->lock);
            l->idle--;
        }
        if (fuse_session_exited(l->se)) break;
        l->reading = 1;
        int handed_off = 0;
        while (!handed_off) {
            uint64_t now = kmsfs_mono_ns();
            int spin = l->spin_ns > 0 && now - l->last_inline_ns < 1000000u;
            pthread_mutex_unlock(&l->lock);
            if (spin) {
                uint64_t until = now + l->spin_ns;
                struct pollfd p = { .fd = l->fd, .events = POLLIN };
                while (poll(&p, 1, 0) == 0 && kmsfs_mono_ns() < until) { }
            }
            int res = fuse_session_receive_buf(l->se, &buf);
            pthread_mutex_lock(&l->lock);
            if (res == -EINTR || res == -EAGAIN) {
                if (fuse_session_exited(l->se)) break;
                continue;
            }
            if (res <= 0) {
                if (res < 0 && l->error == 0) l->error = res;
                fuse_session_exit(l->se);
                break;
            }
            if (kmsfs_loop_answers_inline(&buf)) {
                l->last_inline_ns = kmsfs_mono_ns();
                pthread_mutex_unlock(&l->lock);
                fuse_session_process_buf(l->se, &buf);
                pthread_mutex_lock(&l->lock);
                if (fuse_session_exited(l->se)) break;
                continue;
            }
            /* Hand the reader's role on before processing. */
            l->reading = 0;
            handed_off = 1;
            if (l->idle > 0) pthread_cond_signal(&l->changed);
            else if (l->threads < l->max_threads) (void)kmsfs_loop_start_worker(l);
            pthread_mutex_unlock(&l->lock);
            fuse_session_process_buf(l->se, &buf);
            pthread_mutex_lock(&l->lock);
        }
        if (!handed_off) {             /* the loop is ending */
            l->reading = 0;
            break;
        }
        /* Enough idle workers, and one reading: this one is not needed. */
        if (l->idle >= l->max_idle && l->reading) break;
    }
    l->threads--;
    pthread_cond_broadcast(&l->changed);   /* the idle see an exit, or take the role */
    pthread_cond_signal(&l->ended);
    pthread_mutex_unlock(&l->lock);
    free(buf.mem);
    return NULL;
}
static inline int kmsfs_fuse_session_loop(struct fuse_session *se, unsigned int max_threads,
                                          unsigned int max_idle, unsigned int spin_us, size_t stack) {
    struct kmsfs_loop l;
    memset(&l, 0, sizeof l);
    l.se = se;
    l.fd = fuse_session_fd(se);
    l.spin_ns = (uint64_t)spin_us * 1000u;
    l.stack = stack;
    l.max_threads = max_threads < 1 ? 1 : (int)max_threads;
    l.max_idle = (int)max_idle;
    if (pthread_mutex_init(&l.lock, NULL) != 0) return -1;
    if (pthread_cond_init(&l.changed, NULL) != 0) { pthread_mutex_destroy(&l.lock); return -1; }
    if (pthread_cond_init(&l.ended, NULL) != 0) {
        pthread_cond_destroy(&l.changed);
        pthread_mutex_destroy(&l.lock);
        return -1;
    }
    pthread_mutex_lock(&l.lock);
    int rc = kmsfs_loop_start_worker(&l);
    /* The reader ends when the connection goes (ENODEV) and wakes the
     * idle, which then see the session has exited. */
    while (rc == 0 && l.threads > 0) pthread_cond_wait(&l.ended, &l.lock);
    int error = rc != 0 ? -1 : l.error;
    pthread_mutex_unlock(&l.lock);
    pthread_cond_destroy(&l.ended);
    pthread_cond_destroy(&l.changed);
    pthread_mutex_destroy(&l.lock);
    fuse_session_reset(se);
    return error;
}

/* fuse_file_info's flags are bitfields. */
static inline void kmsfs_fi_set_open_flags(struct fuse_file_info *fi,
                                           int direct_io, int keep_cache,
                                           int nonseekable) {
    fi->direct_io = direct_io ? 1 : 0;
    fi->keep_cache = keep_cache ? 1 : 0;
    fi->nonseekable = nonseekable ? 1 : 0;
}
static inline void kmsfs_fi_set_cache_readdir(struct fuse_file_info *fi, int on) {
    fi->cache_readdir = on ? 1 : 0;
}

/* FUSE_ARGS_INIT is a macro; argv is copied by fuse_opt_add_arg. */
static inline struct fuse_args kmsfs_fuse_args_empty(void) {
    struct fuse_args a = FUSE_ARGS_INIT(0, NULL);
    return a;
}

/* The connection capability bits are macros. */
static const unsigned KMSFS_FUSE_CAP_READDIRPLUS = FUSE_CAP_READDIRPLUS;
static const unsigned KMSFS_FUSE_CAP_READDIRPLUS_AUTO = FUSE_CAP_READDIRPLUS_AUTO;
static const unsigned KMSFS_FUSE_CAP_ASYNC_READ = FUSE_CAP_ASYNC_READ;
static const unsigned KMSFS_FUSE_CAP_SPLICE_READ = FUSE_CAP_SPLICE_READ;
static const unsigned KMSFS_FUSE_CAP_SPLICE_WRITE = FUSE_CAP_SPLICE_WRITE;
static const unsigned KMSFS_FUSE_CAP_SPLICE_MOVE = FUSE_CAP_SPLICE_MOVE;
static const unsigned KMSFS_FUSE_CAP_EXPORT_SUPPORT = FUSE_CAP_EXPORT_SUPPORT;
static const unsigned KMSFS_FUSE_CAP_AUTO_INVAL_DATA = FUSE_CAP_AUTO_INVAL_DATA;
static const unsigned KMSFS_FUSE_CAP_CACHE_SYMLINKS = FUSE_CAP_CACHE_SYMLINKS;
static const unsigned KMSFS_FUSE_CAP_WRITEBACK_CACHE = FUSE_CAP_WRITEBACK_CACHE;

/*
 * libfuse's own messages (fuse_log: mount errors, and with -d one line per
 * request) go to the daemon's log, so they are escaped, tagged
 * and leveled like every other log line instead of written raw to stderr.
 * fuse_log_func_t takes a va_list, which Swift cannot: format here, one
 * call per line, at most 1 KiB per message (libfuse's are short).
 */
#include <stdarg.h>
#include <stdio.h>
/* Defined in Swift (FUSEBridge, @_cdecl): one escaped log line. */
void kmsfs_fuse_log_line(int level, const char *line);

static inline void kmsfs_fuse_log_trampoline(enum fuse_log_level level,
                                             const char *fmt, va_list ap) {
    char buf[1024];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n < 0) return;
    char *line = buf;
    for (;;) {
        char *nl = strchr(line, '\n');
        if (nl != NULL) *nl = '\0';
        if (*line != '\0') kmsfs_fuse_log_line((int)level, line);
        if (nl == NULL) break;
        line = nl + 1;
    }
}

static inline void kmsfs_fuse_route_log(void) {
    fuse_set_log_func(kmsfs_fuse_log_trampoline);
}

#endif
