/*
 * CFuse: libfuse3's low-level API at the version Debian 12 ships (libfuse
 * 3.14; the same source builds against Debian 13's 3.17), plus wrappers
 * for what Swift cannot import: macros that pick a versioned symbol,
 * bitfields in fuse_file_info, FUSE_ARGS_INIT.
 */
#ifndef KMSFS_CFUSE_SHIM_H
#define KMSFS_CFUSE_SHIM_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>

/*
 * kmsfs's request loop: libfuse's multi-threaded loop reshaped so that the
 * requests of one open (open, read, the read at EOF, release: microseconds
 * apart) never wait for a thread to wake up.
 *
 * libfuse leaves every idle worker blocked in read(2) on /dev/fuse, so each
 * request wakes the one that has waited longest, often on another CPU (an
 * inter-processor interrupt; on a VM, a halted vCPU's exit). Here one
 * worker at a time reads (the reader), answers what it reads itself, and
 * after answering polls for up to `spin_us` microseconds before blocking
 * again, while requests keep coming (one answered in the last millisecond).
 *
 * A request that may wait (lookup, getattr, readdir: they stat SOURCE,
 * whose disk may hang) arms a watchdog timer first. If it takes longer
 * than `watch_us`, the standby worker (blocked on the timer) becomes the
 * reader and a new standby starts, up to `max_threads`; the slow worker,
 * when done, goes idle. Requests whose handlers never wait (open: a
 * cache-miss open is parked for the open pool; read, release, flush,
 * forget, interrupt: `kmsfs_loop_never_waits`) arm nothing. A worker that
 * finds `max_idle` others idle ends. Workers block every signal (the
 * daemon's main thread takes them with sigwait). The loop ends when
 * reading fails (ENODEV once the connection is gone) or the session is
 * told to exit; the call returns when every worker has ended, with the
 * error if any. `on_gone(gone_arg)` runs once, on the reader that first
 * reads ENODEV (the mount is gone), with the loop's lock held: short work
 * that must not wait for the rest of the loop (nor call into it).
 */
#include <pthread.h>
#include <poll.h>
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/timerfd.h>
struct kmsfs_uring;
struct kmsfs_loop {
    struct fuse_session *se;
    int fd, timer;
    uint64_t spin_ns, watch_ns;
    size_t stack;
    pthread_mutex_t lock;
    pthread_cond_t changed;   /* workers: the reader's role is free, or exit */
    pthread_cond_t ended;     /* the loop's caller: a worker ended */
    int reading, idle, threads, max_threads, max_idle, error;
    int processing;           /* the reader is answering a request that may wait */
    uint64_t tenure;          /* bumped when a new worker becomes the reader */
    uint64_t last_answer_ns;  /* when the reader last answered a request */
    struct kmsfs_uring *uring; /* FUSE over io_uring beside /dev/fuse, or NULL */
    void (*on_gone)(void *);  /* the connection is gone: called once, lock held */
    void *gone_arg;
};
static inline uint64_t kmsfs_mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static inline void kmsfs_loop_timer(struct kmsfs_loop *l, uint64_t ns) {
    struct itimerspec t;
    memset(&t, 0, sizeof t);
    t.it_value.tv_sec = (time_t)(ns / 1000000000u);
    t.it_value.tv_nsec = (long)(ns % 1000000000u);
    timerfd_settime(l->timer, 0, &t, NULL);      /* 0: disarm */
}
static void *kmsfs_loop_worker(void *arg);
static void *kmsfs_loop_standby(void *arg);
/* A thread with every signal blocked (the daemon's main thread takes them
 * with sigwait), `stack` bytes of stack (0: the default) and a name; for
 * the loop's workers and the io_uring queues and helpers. Defined in
 * shim.c, whose _GNU_SOURCE declares pthread_setname_np (this header must
 * not define it: it would change glibc's types under Swift's Glibc). */
int kmsfs_thread_start(pthread_t *t, void *(*body)(void *), void *arg, size_t stack,
                       int detached, const char *name);
/* Called with the lock held. */
static inline int kmsfs_loop_start(struct kmsfs_loop *l, void *(*body)(void *)) {
    pthread_t t;
    if (kmsfs_thread_start(&t, body, l, l->stack, 1, "kmsfs-loop") != 0) return -1;
    l->threads++;
    return 0;
}
/* Requests whose handlers never wait (no SOURCE access, no KMS: a
 * cache-miss open is parked for the open pool). FUSE opcodes: FORGET 2,
 * OPEN 14, READ 15, RELEASE 18, FLUSH 25, INTERRUPT 36, BATCH_FORGET 42. */
static inline int kmsfs_loop_never_waits(const struct fuse_buf *buf) {
    if ((buf->flags & FUSE_BUF_IS_FD) || buf->mem == NULL || buf->size < 8) return 0;
    uint32_t opcode;
    memcpy(&opcode, (const char *)buf->mem + 4, sizeof opcode);   /* fuse_in_header.opcode */
    switch (opcode) {
    case 2: case 14: case 15: case 18: case 25: case 36: case 42: return 1;
    default: return 0;
    }
}
#include "uring.h"
/* The reader's tenure, entered and left with the lock held: reads and
 * answers until the loop ends (returns 1) or another worker took the
 * reader's role while this one answered a slow request (returns 0). */
static inline int kmsfs_loop_read(struct kmsfs_loop *l, struct fuse_buf *buf) {
    uint64_t mine = l->tenure;
    for (;;) {
        uint64_t now = kmsfs_mono_ns();
        int spin = l->spin_ns > 0 && now - l->last_answer_ns < 1000000u;
        pthread_mutex_unlock(&l->lock);
        if (spin) {
            uint64_t until = now + l->spin_ns;
            struct pollfd p = { .fd = l->fd, .events = POLLIN };
            while (poll(&p, 1, 0) == 0 && kmsfs_mono_ns() < until) { }
        }
        int res = fuse_session_receive_buf(l->se, buf);
        pthread_mutex_lock(&l->lock);
        if (res == -EINTR || res == -EAGAIN) {
            if (fuse_session_exited(l->se)) return 1;
            continue;
        }
        if (res <= 0) {
            if (res < 0 && l->error == 0) l->error = res;
            if ((res == 0 || res == -ENODEV) && l->on_gone) {
                /* The mount is gone (libfuse answers ENODEV with 0 and
                 * the session exited): say so now, not once every worker
                 * and the ring's queues have ended (what lets go of
                 * SOURCE, for SOURCE's own unmount right after). */
                void (*gone)(void *) = l->on_gone;
                l->on_gone = NULL;
                gone(l->gone_arg);
            }
            fuse_session_exit(l->se);
            return 1;
        }
        kmsfs_uring_note(l->uring, buf);
        int may_wait = !kmsfs_loop_never_waits(buf);
        if (may_wait) {
            l->processing = 1;
            kmsfs_loop_timer(l, l->watch_ns);
        }
        pthread_mutex_unlock(&l->lock);
        fuse_session_process_buf(l->se, buf);
        pthread_mutex_lock(&l->lock);
        l->last_answer_ns = kmsfs_mono_ns();
        if (may_wait) {
            if (l->tenure != mine) return 0;   /* taken over: the timer is the new reader's */
            l->processing = 0;
            kmsfs_loop_timer(l, 0);
        }
        if (fuse_session_exited(l->se)) return 1;
    }
}
/* The end of the loop, with the lock held: wake everyone to see it. */
static inline void kmsfs_loop_ending(struct kmsfs_loop *l) {
    l->reading = 0;
    pthread_cond_broadcast(&l->changed);
    kmsfs_loop_timer(l, 1);                /* the standby */
}
static inline void *kmsfs_loop_leave(struct kmsfs_loop *l, struct fuse_buf *buf) {
    l->threads--;
    pthread_cond_signal(&l->ended);
    pthread_mutex_unlock(&l->lock);
    free(buf->mem);
    return NULL;
}
/* A worker: waits for the reader's role (or starts with it). */
static inline void *kmsfs_loop_work(struct kmsfs_loop *l, int reader) {
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    for (;;) {
        if (!reader) {
            if (l->idle >= l->max_idle && l->reading) break;   /* enough idle workers */
            while (l->reading && !fuse_session_exited(l->se)) {
                l->idle++;
                pthread_cond_wait(&l->changed, &l->lock);
                l->idle--;
            }
            if (fuse_session_exited(l->se)) break;
            l->reading = 1;
            l->tenure++;
        }
        reader = 0;
        if (kmsfs_loop_read(l, &buf)) {
            kmsfs_loop_ending(l);
            break;
        }
    }
    return kmsfs_loop_leave(l, &buf);
}
static void *kmsfs_loop_worker(void *arg) {
    struct kmsfs_loop *l = (struct kmsfs_loop *)arg;
    pthread_mutex_lock(&l->lock);
    return kmsfs_loop_work(l, 0);
}
/* The standby: sleeps on the watchdog timer; when the reader has spent
 * longer than `watch_us` on one request, takes the reader's role (and
 * starts the next standby). */
static void *kmsfs_loop_standby(void *arg) {
    struct kmsfs_loop *l = (struct kmsfs_loop *)arg;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        pthread_mutex_unlock(&l->lock);
        struct pollfd p = { .fd = l->timer, .events = POLLIN };
        (void)poll(&p, 1, -1);
        uint64_t expirations;
        (void)read(l->timer, &expirations, sizeof expirations);
        pthread_mutex_lock(&l->lock);
        if (fuse_session_exited(l->se)) {
            struct fuse_buf none;
            memset(&none, 0, sizeof none);
            return kmsfs_loop_leave(l, &none);
        }
        if (l->processing && l->idle > 0) {
            /* A worker a takeover left idle takes the reader's role (it
             * waits for `reading` to drop); this thread stays the standby.
             * Without this, idle workers were never used again, yet
             * counted against the cap. */
            l->processing = 0;
            l->tenure++;                      /* the slow worker goes idle when done */
            l->reading = 0;
            pthread_cond_signal(&l->changed);
            continue;
        }
        if (l->processing && l->threads >= l->max_threads + 1) {
            /* At the cap: look again a little later. The timer has fired
             * and nothing else re-arms it while the reader is held up, so
             * once slow requests end and threads are free (or idle), the
             * reader's role must still be taken over. */
            kmsfs_loop_timer(l, l->watch_ns > 10000000u ? l->watch_ns : 10000000u);
            continue;
        }
        if (l->processing) {                  /* below the cap: the case above went on */
            l->processing = 0;
            l->tenure++;                      /* the slow worker goes idle when done */
            if (kmsfs_loop_start(l, kmsfs_loop_standby) != 0) {
                /* No new standby: stay one, leave the reader as it is, and
                 * try again after another watch period (the timer has
                 * fired; nothing else would wake this thread until the
                 * next request that may wait). */
                l->tenure--;
                l->processing = 1;
                kmsfs_loop_timer(l, l->watch_ns);
                continue;
            }
            return kmsfs_loop_work(l, 1);
        }
    }
}
/* `on_uring_failure(arg)`: see kmsfs_uring_start; neither it nor `on_gone`
 * is called once this has returned. */
static inline int kmsfs_fuse_session_loop(struct fuse_session *se, unsigned int max_threads,
                                          unsigned int max_idle, unsigned int spin_us,
                                          unsigned int watch_us, size_t stack,
                                          unsigned int uring_depth, size_t max_read,
                                          void (*on_uring_failure)(void *), void *arg,
                                          void (*on_gone)(void *), void *gone_arg) {
    struct kmsfs_loop l;
    memset(&l, 0, sizeof l);
    l.se = se;
    l.on_gone = on_gone;
    l.gone_arg = gone_arg;
    l.fd = fuse_session_fd(se);
    l.spin_ns = (uint64_t)spin_us * 1000u;
    l.watch_ns = (uint64_t)(watch_us ? watch_us : 1) * 1000u;
    l.stack = stack;
    l.max_threads = max_threads < 1 ? 1 : (int)max_threads;
    l.max_idle = (int)max_idle;
    l.timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (l.timer < 0) return -1;
    if (pthread_mutex_init(&l.lock, NULL) != 0) { close(l.timer); return -1; }
    if (pthread_cond_init(&l.changed, NULL) != 0) { pthread_mutex_destroy(&l.lock); close(l.timer); return -1; }
    if (pthread_cond_init(&l.ended, NULL) != 0) {
        pthread_cond_destroy(&l.changed);
        pthread_mutex_destroy(&l.lock);
        close(l.timer);
        return -1;
    }
    /* Before INIT is read: the ring's queues set themselves up. */
    if (uring_depth > 0) l.uring = kmsfs_uring_start(se, (int)uring_depth, max_read, (int)max_threads, stack,
                                                    on_uring_failure, arg);
    pthread_mutex_lock(&l.lock);
    /* A worker, which takes the reader's role, and the standby. */
    int rc = kmsfs_loop_start(&l, kmsfs_loop_worker);
    if (rc == 0) {
        if (kmsfs_loop_start(&l, kmsfs_loop_standby) != 0) {
            fuse_session_exit(se);
            kmsfs_loop_ending(&l);
        }
    }
    /* The reader ends when the connection goes (ENODEV) and wakes the rest,
     * which then see the session has exited. */
    while (rc == 0 && l.threads > 0) pthread_cond_wait(&l.ended, &l.lock);
    int error = rc != 0 ? -1 : l.error;
    pthread_mutex_unlock(&l.lock);
    pthread_cond_destroy(&l.ended);
    pthread_cond_destroy(&l.changed);
    pthread_mutex_destroy(&l.lock);
    close(l.timer);
    kmsfs_uring_stop(l.uring);
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

/*
 * fuse_session_new: a function from libfuse 3.0 to 3.16, a function-like
 * macro (which passes the headers' version) from 3.17 on. Called through
 * here, it builds against either.
 */
static inline struct fuse_session *kmsfs_session_new(struct fuse_args *args,
                                                     const struct fuse_lowlevel_ops *op,
                                                     size_t op_size, void *userdata) {
    return fuse_session_new(args, op, op_size, userdata);
}

/*
 * fuse_lowlevel_notify_expire_entry took the flags (FUSE_LL_EXPIRE_ONLY) as
 * a fifth argument when it came (libfuse 3.12, Debian 12's 3.14); later
 * releases (3.17 in Debian 13) take four and fail with -ENOSYS where the
 * kernel cannot expire. The call is chosen by the function's declared
 * type, so the same source builds against either header; only the branch
 * that matches the declaration ever runs. The other branch's cast goes
 * through void (*)(void), C's way of saying the mismatch is intended
 * (-Wcast-function-type stays quiet for it).
 */
typedef int (*kmsfs_expire_entry4)(struct fuse_session *, fuse_ino_t, const char *, size_t);
/* The flags' enum type is 3.14's only; its values fit, and pass, as an unsigned int. */
typedef int (*kmsfs_expire_entry5)(struct fuse_session *, fuse_ino_t, const char *, size_t,
                                   unsigned int);
static inline int kmsfs_notify_expire_entry(struct fuse_session *se, fuse_ino_t parent,
                                            const char *name, size_t namelen) {
    return _Generic(&fuse_lowlevel_notify_expire_entry,
        kmsfs_expire_entry4: ((kmsfs_expire_entry4)(void (*)(void))&fuse_lowlevel_notify_expire_entry)(
            se, parent, name, namelen),
        default: ((kmsfs_expire_entry5)(void (*)(void))&fuse_lowlevel_notify_expire_entry)(
            se, parent, name, namelen, FUSE_LL_EXPIRE_ONLY));
}

/* What the kernel holds for the file at `path` (absolute, no symbolic
 * link anywhere in it: openat2's RESOLVE_NO_SYMLINKS), read as any user
 * can without asking the file system (statx AT_STATX_DONT_SYNC): its inode
 * number and size. Walking the path sends a lookup for every name whose
 * entry has expired, and that lookup's reply is stored in the inode. An
 * O_PATH descriptor: no open request is sent. 0, or -1 with errno. In
 * shim.c (_GNU_SOURCE declares statx). */
int kmsfs_cached_size(const char *path, uint64_t *ino, uint64_t *size);

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
