/*
 * FUSE over io_uring (Linux 6.14+, the fuse module's `enable_uring=Y`),
 * beside kmsfs's /dev/fuse loop, for libfuse 3.14, which predates it.
 *
 * Why: a request read from /dev/fuse is answered by whichever worker the
 * kernel wakes, often on the other CPU, and the answer wakes the caller
 * back across CPUs (two inter-processor interrupts per request; on a VM,
 * halted vCPUs' exits). Over io_uring the kernel keeps one queue per CPU:
 * a caller's request goes to its own CPU's queue, whose thread (pinned
 * there) takes it and answers it on the same CPU.
 *
 * How it fits libfuse 3.14:
 * - Replies: the session's custom I/O (`fuse_session_custom_io`) takes
 *   every reply libfuse writes. A reply to a request that came over the
 *   ring is copied into that request's ring entry, which its queue's thread
 *   then commits (COMMIT_AND_FETCH); everything else (answers to requests
 *   read from /dev/fuse, notifications) is written to /dev/fuse as before.
 * - INIT: the /dev/fuse loop still reads INIT (and, later, FORGET and
 *   INTERRUPT, which the kernel never sends over the ring). When the kernel
 *   offers FUSE_OVER_IO_URING and every queue's ring was set up, the INIT
 *   reply gains that flag on its way out; right after it, each queue
 *   registers its entries. If anything fails first, the reply goes out
 *   unchanged and /dev/fuse serves everything. The kernel holds new
 *   requests until every queue has an entry, and falls back to /dev/fuse
 *   by itself if a registration fails.
 * - Requests: a ring entry's request (header, per-opcode header, payload in
 *   three places) is laid out as /dev/fuse would give it and passed to
 *   `fuse_session_process_buf`. Requests whose handlers never wait (open,
 *   read, release, flush: `kmsfs_loop_never_waits`) are answered on the
 *   queue's thread; the rest (lookup, getattr, readdir: they stat SOURCE,
 *   whose disk may hang) go to a pool of helper threads, so a hung SOURCE
 *   holds up only the requests that need it.
 * - An entry stays with its request until the reply is committed, so a
 *   cold open parked for KMS holds one, and a queue out of entries holds
 *   up its CPU's callers. Each queue has `depth` entries (the daemon asks
 *   for max(max_inflight, 256) + 64), in one mapping per queue that is
 *   locked as it is touched (MLOCK_ONFAULT): an entry never used costs
 *   address space, not memory.
 *
 * Plaintext: a read's reply is copied from kmsfs's locked scratch into the
 * entry's payload (locked, never dumped, wiped on fork). The ring is set up
 * with DEFER_TASKRUN, so the kernel writes a new request into an entry
 * only inside this thread's io_uring_enter: the thread commits without
 * waiting, then wipes what the reply left, all of it if no new request
 * arrived in the entry during that call (its commit_id is still 0), else
 * the part past the new request's payload when it takes that request;
 * only then does it wait for more. A commit that call left in the
 * submission ring (cut short: EAGAIN, EBUSY, EINTR) goes in with the next
 * call, which then does not wait either, and is wiped the same way right
 * after it returns, before the requests it brought are taken.
 *
 * Failure: a queue whose ring breaks (io_uring_enter fails otherwise than
 * EINTR, EAGAIN, EBUSY, ETIME; a commit fails otherwise than because the
 * connection is gone) would leave its CPU's callers waiting on a queue
 * nobody reads. Its thread says so in one line, ends the session and tells
 * the daemon (`on_failure`), which aborts the connection (every caller's
 * request fails) and exits with a failure status, for the service manager
 * to start it again.
 */
#ifndef KMSFS_CFUSE_URING_H
#define KMSFS_CFUSE_URING_H

#include <sched.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/io_uring.h>

#define KU_FLAGS2_OVER_IO_URING (1u << 9)   /* FUSE_OVER_IO_URING, 1ULL << 41 */
#define KU_INIT_EXT (1u << 30)
#define KU_MAX_PAGES (1u << 22)
#define KU_CMD_REGISTER 1
#define KU_CMD_COMMIT_AND_FETCH 2
#define KU_PREFIX 8192          /* per entry: registered headers, then room to lay out a request */
#define KU_LAYOUT_AT 512
#define KU_EVENTFD_TAG 1ull

/* struct fuse_uring_req_header (include/uapi/linux/fuse.h, 7.42) */
struct ku_header {
    uint8_t in_out[128];
    uint8_t op_in[128];
    uint64_t flags, commit_id;
    uint32_t payload_sz, padding;
    uint64_t reserved;
};
/* struct fuse_in_header, fuse_out_header (linux/fuse.h, which libfuse's
 * headers do not include) */
struct ku_in_header {
    uint32_t len, opcode;
    uint64_t unique, nodeid;
    uint32_t uid, gid, pid;
    uint16_t total_extlen, padding;
};
struct ku_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};
/* struct fuse_uring_cmd_req, in the SQE's command area */
struct ku_cmd {
    uint64_t flags, commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

struct ku_queue;
struct ku_ent {
    struct ku_queue *q;
    uint8_t *region;            /* KU_PREFIX + payload_cap bytes */
    struct ku_header *hdr;
    uint8_t *payload;
    struct iovec iov[2];
    uint64_t unique;
    size_t dirty;               /* payload bytes a reply may have written */
    int live;                   /* registered and not failed */
    int fetched;                /* has taken a request: its command out is a COMMIT_AND_FETCH */
    unsigned committed_at;      /* the SQ index its last commit went into */
    struct ku_ent *unwiped_next; /* on its queue's `unwiped` list */
    int keep_resident;          /* its pages could not be locked again: never unlock them */
    int processing, replied;    /* under the queue's lock */
    uint8_t *req;               /* the request as /dev/fuse would give it */
    size_t req_len;
    void *big;                  /* a request too large for the prefix */
    struct ku_ent *next;        /* ready list or helper queue */
    struct ku_ent *map_next;
};
struct kmsfs_uring;
struct ku_queue {
    struct kmsfs_uring *u;
    int qid, ring, efd, live;
    int setup_error;
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_len, cq_len, sqe_len;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    unsigned sq_entries;
    uint8_t *sqes;
    struct io_uring_cqe *cqes;
    struct ku_ent *ents;
    pthread_mutex_t lock;
    struct ku_ent *ready, *ready_tail;   /* answered, to commit, in the order answered */
    struct ku_ent *work_head, *work_tail;   /* for this queue's helpers */
    int helpers, idle;
    pthread_cond_t work;        /* helpers: work or stop; stop: a helper ended */
    uint64_t efd_value;
    int efd_armed;
    pthread_t thread;
    int started;
    struct ku_ent *unwiped;     /* committed, reply not wiped yet (the queue's thread's own) */
};
struct kmsfs_uring {
    struct fuse_session *se;
    int fd, nq, depth;
    size_t stack, payload_cap, max_read;
    struct ku_queue *qs;
    pthread_mutex_t lock;
    pthread_cond_t cond;        /* queues: set up / go / stop; helpers: work */
    int prepared, go, stopping, offered, serving;
    int writers;                /* replies between their `serving` check and their end */
    uint64_t init_unique;
    /* unique -> entry, for replies */
    struct ku_ent **map;
    size_t map_mask;
    pthread_mutex_t map_lock;
    int max_helpers, max_idle;  /* per queue; max_helpers also caps all queues' helpers past their first */
    int helpers_all;            /* helpers of every queue (atomic) */
    int stranded;               /* a queue may hold a request none of its helpers can take (atomic; ku_steal) */
    int failed;                 /* a queue's ring broke (atomic) */
    void (*on_failure)(void *); /* then called once, from that queue's thread */
    void *on_failure_arg;
};

/* Process-wide state lives in function-local statics: Swift's importer
 * emits a header's static functions, not its file-scope variables. */
static inline struct kmsfs_uring **ku_current(void) {
    static struct kmsfs_uring *current;          /* the session's, for the custom I/O */
    return &current;
}
/* Whether FUSE over io_uring carries the requests now (the kernel took
 * the ring at INIT), as opposed to asked for and not offered. */
static inline int kmsfs_uring_serving(void) {
    struct kmsfs_uring *u = __atomic_load_n(ku_current(), __ATOMIC_ACQUIRE);
    return u != NULL && __atomic_load_n(&u->serving, __ATOMIC_ACQUIRE) != 0;
}
static inline struct ku_queue **ku_this_queue(void) {
    static __thread struct ku_queue *mine;       /* the queue whose thread this is */
    return &mine;
}

static inline int ku_enter(int ring, unsigned submit, unsigned wait, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, ring, submit, wait, flags, NULL, 0);
}

/* ---- the unique -> entry map ---- */
static inline size_t ku_slot(struct kmsfs_uring *u, uint64_t unique) {
    return (size_t)((unique >> 1) ^ (unique >> 17)) & u->map_mask;
}
static inline void ku_map_put(struct kmsfs_uring *u, struct ku_ent *e) {
    pthread_mutex_lock(&u->map_lock);
    size_t s = ku_slot(u, e->unique);
    e->map_next = u->map[s];
    u->map[s] = e;
    pthread_mutex_unlock(&u->map_lock);
}
static inline struct ku_ent *ku_map_take(struct kmsfs_uring *u, uint64_t unique) {
    pthread_mutex_lock(&u->map_lock);
    struct ku_ent **p = &u->map[ku_slot(u, unique)];
    while (*p && (*p)->unique != unique) p = &(*p)->map_next;
    struct ku_ent *e = *p;
    if (e) *p = e->map_next;
    pthread_mutex_unlock(&u->map_lock);
    return e;
}

/* ---- rings ---- */
static inline int ku_ring_setup(struct ku_queue *q, unsigned entries) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
              IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 2;
    int fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0) return -errno;
    q->ring = fd;
    q->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    q->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (q->cq_len > q->sq_len) q->sq_len = q->cq_len;
        q->cq_len = 0;
    }
    q->sq_map = mmap(NULL, q->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (q->sq_map == MAP_FAILED) { q->sq_map = NULL; return -errno; }
    if (q->cq_len) {
        q->cq_map = mmap(NULL, q->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (q->cq_map == MAP_FAILED) { q->cq_map = NULL; return -errno; }
    }
    uint8_t *cq = (uint8_t *)(q->cq_map ? q->cq_map : q->sq_map);
    q->sqe_len = (size_t)p.sq_entries * 128;
    q->sqe_map = mmap(NULL, q->sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (q->sqe_map == MAP_FAILED) { q->sqe_map = NULL; return -errno; }
    uint8_t *sq = (uint8_t *)q->sq_map;
    q->sq_head = (unsigned *)(sq + p.sq_off.head);
    q->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    q->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    q->sq_array = (unsigned *)(sq + p.sq_off.array);
    q->sq_entries = p.sq_entries;
    q->cq_head = (unsigned *)(cq + p.cq_off.head);
    q->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    q->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    q->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    q->sqes = (uint8_t *)q->sqe_map;
    return 0;
}
/* Submits what is queued when the submission ring is full. NULL (errno
 * set) when that fails otherwise than EINTR, EAGAIN, EBUSY: the ring is broken. */
static inline struct io_uring_sqe *ku_sqe(struct ku_queue *q) {
    unsigned tail = *q->sq_tail;
    while (tail - __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE) >= q->sq_entries) {
        if (ku_enter(q->ring, tail - *q->sq_head, 0, 0) < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY)
            return NULL;
    }
    unsigned idx = tail & *q->sq_mask;
    struct io_uring_sqe *s = (struct io_uring_sqe *)(q->sqes + (size_t)idx * 128);
    memset(s, 0, 128);
    q->sq_array[idx] = idx;
    __atomic_store_n(q->sq_tail, tail + 1, __ATOMIC_RELEASE);
    return s;
}
static inline int ku_fuse_cmd(struct ku_queue *q, struct ku_ent *e, uint32_t op) {
    struct io_uring_sqe *s = ku_sqe(q);
    if (!s) return -1;
    s->opcode = IORING_OP_URING_CMD;
    s->fd = q->u->fd;
    s->cmd_op = op;
    s->user_data = (uint64_t)(uintptr_t)e;
    if (op == KU_CMD_REGISTER) {
        s->addr = (uint64_t)(uintptr_t)e->iov;
        s->len = 2;
    }
    struct ku_cmd c;
    memset(&c, 0, sizeof c);
    c.commit_id = e->unique;
    c.qid = (uint16_t)q->qid;
    memcpy((uint8_t *)s + 48, &c, sizeof c);      /* the SQE's command area */
    return 0;
}
/* -1 (errno set) when no SQE can be had: the ring is broken. */
static inline int ku_arm_eventfd(struct ku_queue *q) {
    if (q->efd_armed) return 0;
    struct io_uring_sqe *s = ku_sqe(q);
    if (!s) return -1;
    s->opcode = IORING_OP_READ;
    s->fd = q->efd;
    s->addr = (uint64_t)(uintptr_t)&q->efd_value;
    s->len = sizeof q->efd_value;
    s->user_data = KU_EVENTFD_TAG;
    q->efd_armed = 1;
    return 0;
}

/* ---- entries ---- */
static inline void ku_free_entries(struct kmsfs_uring *u) {
    size_t stride = KU_PREFIX + u->payload_cap;
    for (int i = 0; i < u->nq; i++) {
        struct ku_queue *q = &u->qs[i];
        if (!q->ents) continue;
        for (int j = 0; j < u->depth; j++) {
            struct ku_ent *e = &q->ents[j];
            if (e->region && e->dirty) explicit_bzero(e->payload, e->dirty);   /* unmapped next */
            free(e->big);
        }
        if (q->ents[0].region) munmap(q->ents[0].region, stride * (size_t)u->depth);
        free(q->ents);
        q->ents = NULL;
    }
}
/* One mapping per queue, `depth` entries of KU_PREFIX + payload_cap bytes:
 * address space only until an entry is used. */
static inline int ku_alloc_entries(struct kmsfs_uring *u) {
    size_t stride = KU_PREFIX + u->payload_cap;
    size_t len = stride * (size_t)u->depth;
    for (int i = 0; i < u->nq; i++) {
        struct ku_queue *q = &u->qs[i];
        q->ents = (struct ku_ent *)calloc((size_t)u->depth, sizeof(struct ku_ent));
        if (!q->ents) return -1;
        void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return -1;
        q->ents[0].region = (uint8_t *)m;
        /* Locked as touched, never in a core file, wiped in a child. */
        if (syscall(SYS_mlock2, m, len, 1 /* MLOCK_ONFAULT */) != 0) return -1;
        if (madvise(m, len, MADV_DONTDUMP) != 0) return -1;
        (void)madvise(m, len, 18 /* MADV_WIPEONFORK */);
        for (int j = 0; j < u->depth; j++) {
            struct ku_ent *e = &q->ents[j];
            e->q = q;
            e->region = (uint8_t *)m + stride * (size_t)j;
            e->hdr = (struct ku_header *)e->region;
            e->payload = e->region + KU_PREFIX;
            e->iov[0].iov_base = e->hdr;
            e->iov[0].iov_len = sizeof(struct ku_header);
            e->iov[1].iov_base = e->payload;
            e->iov[1].iov_len = u->payload_cap;
        }
    }
    return 0;
}

/* Wipes payload bytes [from, to) a reply left. Whole pages of a large
 * reply also go back to the kernel (unlocked, discarded, locked again as
 * touched), so an entry that once carried a 128 KiB read does not keep
 * 128 KiB resident: the ring's memory follows what is in flight, not the
 * largest burst it ever served. */
#define KU_KEEP_RESIDENT (16 * 1024)
static inline void ku_scrub(struct ku_ent *e, size_t from, size_t to) {
    if (to <= from) return;
    explicit_bzero(e->payload + from, to - from);
    if (to - from <= KU_KEEP_RESIDENT || e->keep_resident) return;
    uintptr_t a = ((uintptr_t)(e->payload + from) + 4095) & ~(uintptr_t)4095;
    uintptr_t b = (uintptr_t)(e->payload + to) & ~(uintptr_t)4095;
    if (b <= a) return;
    void *p = (void *)a;
    size_t n = (size_t)(b - a);
    if (munlock(p, n) == 0) {
        (void)madvise(p, n, MADV_DONTNEED);
        if (syscall(SYS_mlock2, p, n, 1 /* MLOCK_ONFAULT */) != 0 && mlock(p, n) != 0) {
            /* These pages would carry later replies unlocked (mlockall's
             * MCL_FUTURE covers new mappings only): say so, and never
             * unlock this entry's pages again. */
            e->keep_resident = 1;
            fuse_log(FUSE_LOG_ERR, "io_uring: cannot lock a ring entry's pages again (%s); they may be swapped\n", strerror(errno));
        }
    }
}

/* Right after each io_uring_enter of a queue's thread, before the
 * completions it brought are read: wipes what the replies left in the
 * entries whose commit the kernel has now taken (the SQ's head is past it)
 * and that it has not refilled during the call (commit_id still 0; a
 * refilled one is wiped past its new request when ku_request takes it).
 * A commit still in the SQ (the call was cut short: EAGAIN, EBUSY, EINTR)
 * has not had its reply copied yet: wiping it would answer zeros, so it
 * stays on the list for the next call, which must not wait while the list
 * holds one (on an idle CPU that wait may never end). Not after the
 * completions are read: by then ku_request has set the new request's
 * commit_id to 0, and this would wipe its reply. */
static inline void ku_wipe_committed(struct ku_queue *q) {
    unsigned consumed = __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE);
    struct ku_ent **p = &q->unwiped;
    while (*p) {
        struct ku_ent *e = *p;
        if ((int)(consumed - e->committed_at) <= 0) { p = &e->unwiped_next; continue; }
        *p = e->unwiped_next;
        e->unwiped_next = NULL;
        if (e->hdr->commit_id == 0 && e->dirty) {
            ku_scrub(e, 0, e->dirty);
            e->dirty = 0;
        }
    }
}

/* A ring error this queue cannot go on after: its CPU's requests would
 * wait for a thread that no longer reads them, while the daemon looks
 * healthy. Says so (once for all queues), ends the session and tells the
 * daemon, which aborts the connection and exits with a failure status;
 * the caller's thread then ends. Nothing to say once the stop has begun. */
static inline void ku_fail(struct ku_queue *q, const char *what, int err) {
    struct kmsfs_uring *u = q->u;
    if (__atomic_load_n(&u->stopping, __ATOMIC_ACQUIRE)) return;
    if (__atomic_exchange_n(&u->failed, 1, __ATOMIC_SEQ_CST) != 0) return;
    fuse_log(FUSE_LOG_ERR, "io_uring: queue %d: %s: %s; requests made on CPU %d can no longer be answered: "
             "ending the session\n", q->qid, what, strerror(err), q->qid);
    fuse_session_exit(u->se);
    if (u->on_failure) u->on_failure(u->on_failure_arg);
}

/* ---- answering ---- */
static inline void ku_wake(struct ku_queue *q) {
    if (*ku_this_queue() == q) return;              /* its own thread commits before it waits */
    uint64_t one = 1;
    ssize_t w = write(q->efd, &one, sizeof one);
    (void)w;
}
/* With the queue's lock: the entry has its reply and nobody is using its
 * request. Queued in the order answered, which for a queue's own requests
 * (answered on its thread, as they came) is the order they came in: the
 * kernel applies replies in the order they are committed, and a short
 * read through the page cache sets the file's size only if no other reply
 * changed that file's attributes since the read was sent. Replies
 * committed newest first put an empty readahead past the end (size: its
 * offset) before the read that holds the end, whose size the kernel then
 * refused, so sendfile(2) gave the plaintext and zeros up to the next
 * 128 KiB. */
static inline void ku_ready_locked(struct ku_queue *q, struct ku_ent *e) {
    e->next = NULL;
    if (q->ready_tail) q->ready_tail->next = e;
    else q->ready = e;
    q->ready_tail = e;
}
static inline void ku_process(struct kmsfs_uring *u, struct ku_ent *e) {
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    buf.mem = e->req;
    buf.size = e->req_len;
    fuse_session_process_buf(u->se, &buf);
    struct ku_queue *q = e->q;
    pthread_mutex_lock(&q->lock);
    e->processing = 0;
    free(e->big);
    e->big = NULL;
    int ready = e->replied;
    if (ready) ku_ready_locked(q, e);
    pthread_mutex_unlock(&q->lock);
    if (ready) ku_wake(q);
}
/* A reply to a request that came over the ring, from any thread. */
static inline ssize_t ku_answer(struct kmsfs_uring *u, struct ku_ent *e, struct iovec *iov, int count) {
    size_t total = 0;
    for (int i = 0; i < count; i++) total += iov[i].iov_len;
    struct ku_out_header oh;
    memcpy(&oh, iov[0].iov_base, sizeof oh);
    size_t body = total - sizeof oh;
    if (body > u->payload_cap) {                 /* cannot happen: max_pages bounds replies */
        oh.error = -EIO;
        body = 0;
    } else {
        size_t at = 0;
        size_t skip = sizeof oh;
        for (int i = 0; i < count; i++) {
            size_t n = iov[i].iov_len;
            const uint8_t *p = (const uint8_t *)iov[i].iov_base;
            if (skip >= n) { skip -= n; continue; }
            memcpy(e->payload + at, p + skip, n - skip);
            at += n - skip;
            skip = 0;
        }
    }
    oh.len = (uint32_t)(sizeof oh + body);
    memcpy(e->hdr->in_out, &oh, sizeof oh);
    e->hdr->payload_sz = (uint32_t)body;
    if (body > e->dirty) e->dirty = body;
    struct ku_queue *q = e->q;
    pthread_mutex_lock(&q->lock);
    e->replied = 1;
    int ready = !e->processing;
    if (ready) ku_ready_locked(q, e);
    pthread_mutex_unlock(&q->lock);
    if (ready) ku_wake(q);
    return (ssize_t)total;
}
/* The INIT reply, when the kernel offered the ring and every queue is set
 * up: adds FUSE_OVER_IO_URING and bounds requests to the entries' size. */
static inline ssize_t ku_answer_init(struct kmsfs_uring *u, int fd, struct iovec *iov, int count) {
    uint8_t out[256];
    if (count != 2 || iov[1].iov_len < 40 || iov[1].iov_len > sizeof out) return writev(fd, iov, count);
    pthread_mutex_lock(&u->lock);
    while (u->prepared < u->nq) pthread_cond_wait(&u->cond, &u->lock);
    int ok = __atomic_load_n(&u->offered, __ATOMIC_ACQUIRE);
    for (int i = 0; ok && i < u->nq; i++) ok = u->qs[i].setup_error == 0;
    pthread_mutex_unlock(&u->lock);
    if (!ok) return writev(fd, iov, count);
    memcpy(out, iov[1].iov_base, iov[1].iov_len);
    uint32_t flags, flags2, max_write;
    uint16_t max_pages;
    memcpy(&flags, out + 12, 4);
    memcpy(&max_write, out + 20, 4);
    memcpy(&max_pages, out + 28, 2);
    memcpy(&flags2, out + 32, 4);
    /* Requests and replies fit an entry's payload: the kernel's bound is
     * max(8 KiB, max_write, max_pages pages), max_pages 32 unless set. */
    if (max_write > u->max_read) max_write = (uint32_t)u->max_read;
    if (flags & KU_MAX_PAGES) {
        max_pages = (uint16_t)(u->max_read / 4096);
        u->payload_cap = u->max_read;
    } else {
        u->payload_cap = u->max_read > 32 * 4096 ? u->max_read : 32 * 4096;
    }
    if (ku_alloc_entries(u) != 0) {
        ku_free_entries(u);
        fuse_log(FUSE_LOG_NOTICE, "io_uring: cannot map the ring entries' buffers: %s; serving through /dev/fuse\n",
                 strerror(errno));
        return writev(fd, iov, count);
    }
    flags |= KU_INIT_EXT;
    flags2 |= KU_FLAGS2_OVER_IO_URING;
    memcpy(out + 12, &flags, 4);
    memcpy(out + 20, &max_write, 4);
    memcpy(out + 28, &max_pages, 2);
    memcpy(out + 32, &flags2, 4);
    struct iovec v[2] = { iov[0], { out, iov[1].iov_len } };
    ssize_t res = writev(fd, v, 2);
    pthread_mutex_lock(&u->lock);
    u->go = res >= 0 ? 1 : -1;
    pthread_cond_broadcast(&u->cond);
    pthread_mutex_unlock(&u->lock);
    if (res < 0) return res;
    fuse_log(FUSE_LOG_INFO, "io_uring: serving through FUSE over io_uring: %d queues of %d entries\n",
             u->nq, u->depth);
    return res;
}
static ssize_t ku_io_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    struct kmsfs_uring *u = __atomic_load_n(ku_current(), __ATOMIC_ACQUIRE);
    if (u && count >= 1 && iov[0].iov_len >= sizeof(struct ku_out_header)) {
        struct ku_out_header oh;
        memcpy(&oh, iov[0].iov_base, sizeof oh);
        if (oh.unique != 0) {
            /* Only a reply that may use the map and the rings counts
             * itself (one shared counter: not on every /dev/fuse reply).
             * Counted before `serving` is read again: the stop turns
             * `serving` off, then waits for the count to drain before it
             * frees them (a parked open's reply may come from a pool thread
             * at any moment). */
            int serving = __atomic_load_n(&u->serving, __ATOMIC_SEQ_CST);
            if (serving) {
                __atomic_add_fetch(&u->writers, 1, __ATOMIC_SEQ_CST);
                serving = __atomic_load_n(&u->serving, __ATOMIC_SEQ_CST);
                struct ku_ent *e = serving ? ku_map_take(u, oh.unique) : NULL;
                if (e) {
                    ssize_t r = ku_answer(u, e, iov, count);
                    __atomic_sub_fetch(&u->writers, 1, __ATOMIC_SEQ_CST);
                    return r;
                }
                __atomic_sub_fetch(&u->writers, 1, __ATOMIC_SEQ_CST);
            }
            if (!serving && oh.unique == __atomic_load_n(&u->init_unique, __ATOMIC_ACQUIRE) && oh.error == 0) {
                __atomic_store_n(&u->init_unique, 0, __ATOMIC_RELEASE);
                return ku_answer_init(u, fd, iov, count);
            }
        }
    }
    return writev(fd, iov, count);
}
static ssize_t ku_io_read(int fd, void *buf, size_t len, void *userdata) {
    (void)userdata;
    return read(fd, buf, len);
}
/* Called by the /dev/fuse loop for each request it reads: notes INIT, and
 * whether the kernel offers the ring. */
static inline void kmsfs_uring_note(struct kmsfs_uring *u, const struct fuse_buf *buf) {
    if (!u || (buf->flags & FUSE_BUF_IS_FD) || buf->mem == NULL || buf->size < 40 + 20) return;
    const uint8_t *m = (const uint8_t *)buf->mem;
    uint32_t opcode, minor, flags, flags2 = 0;
    memcpy(&opcode, m + 4, 4);
    if (opcode != 26) return;                    /* FUSE_INIT */
    memcpy(&minor, m + 40 + 4, 4);
    memcpy(&flags, m + 40 + 12, 4);
    if ((flags & KU_INIT_EXT) && minor >= 36) memcpy(&flags2, m + 40 + 16, 4);
    int offered = (flags2 & KU_FLAGS2_OVER_IO_URING) != 0;
    uint64_t unique;
    memcpy(&unique, m + 8, 8);
    __atomic_store_n(&u->offered, offered, __ATOMIC_RELEASE);
    __atomic_store_n(&u->init_unique, unique, __ATOMIC_RELEASE);
    if (!offered)
        fuse_log(FUSE_LOG_NOTICE, "io_uring: the kernel does not offer FUSE over io_uring "
                 "(/sys/module/fuse/parameters/enable_uring is N, or a kernel before 6.14); serving through /dev/fuse\n");
}

/* ---- helpers: requests that may wait ---- */
/* The most queues (possible CPUs) kmsfs sets up; past it, /dev/fuse. A
 * queue's id is its CPU, so it also sizes ku_pin's mask. */
#define KU_MAX_QUEUES 1024
/* Each queue has its own helpers, on its CPU like its thread: handing a
 * request over and taking its answer back are then wake-ups on one CPU,
 * not across CPUs. */
static inline void ku_pin(int cpu) {
    unsigned long cpus[KU_MAX_QUEUES / (8 * sizeof(unsigned long))];
    if (cpu < 0 || cpu >= KU_MAX_QUEUES) return;   /* not in the mask: run anywhere */
    memset(cpus, 0, sizeof cpus);
    cpus[cpu / (8 * sizeof(unsigned long))] = 1ul << (cpu % (8 * sizeof(unsigned long)));
    (void)syscall(SYS_sched_setaffinity, 0, sizeof cpus, cpus);   /* an offline CPU: run anywhere */
}
/* A request another queue could not staff: queued there while none of its
 * helpers was idle and threads= let it start none (its helpers wait, say,
 * on a hung SOURCE directory), taken by an idle helper of this queue. Its
 * answer goes to its own queue's entry from here as from any thread.
 * Otherwise it would wait for one of its own queue's helpers to end what
 * it waits for, though the helpers holding the cap's other slots idle.
 * `stranded` says that some queue may hold such a request: cleared
 * before the scan, so a request stranded during it sets it again; set
 * again after a take, as another may be left. Taken only where the queue
 * has no idle helper of its own (one woken for it counts as idle until it
 * runs). Never called with a queue's lock held. */
static inline struct ku_ent *ku_steal(struct kmsfs_uring *u, struct ku_queue *self) {
    if (!__atomic_exchange_n(&u->stranded, 0, __ATOMIC_ACQ_REL)) return NULL;
    for (int i = 1; i < u->nq; i++) {
        struct ku_queue *o = &u->qs[(self->qid + i) % u->nq];
        pthread_mutex_lock(&o->lock);
        struct ku_ent *e = NULL;
        if (o->work_head && o->idle == 0) {
            e = o->work_head;
            o->work_head = e->next;
            if (!o->work_head) o->work_tail = NULL;
        }
        pthread_mutex_unlock(&o->lock);
        if (e) {
            __atomic_store_n(&u->stranded, 1, __ATOMIC_RELEASE);
            return e;
        }
    }
    return NULL;
}
/* After `stranded` is set: wakes one idle helper of a queue other than
 * `q`, to take what `q` could not staff. Reads each queue's `idle` under
 * its lock: a helper about to wait either saw `stranded` set (under its
 * lock, which this takes after setting it) or counted itself idle before
 * this looked. */
static inline void ku_wake_other(struct kmsfs_uring *u, struct ku_queue *q) {
    for (int i = 1; i < u->nq; i++) {
        struct ku_queue *o = &u->qs[(q->qid + i) % u->nq];
        pthread_mutex_lock(&o->lock);
        int idle = o->idle > 0;
        if (idle) pthread_cond_signal(&o->work);
        pthread_mutex_unlock(&o->lock);
        if (idle) return;
    }
}
static void *ku_helper(void *arg) {
    struct ku_queue *q = (struct ku_queue *)arg;
    struct kmsfs_uring *u = q->u;
    ku_pin(q->qid);
    pthread_mutex_lock(&q->lock);
    for (;;) {
        struct ku_ent *e = q->work_head;
        if (e) {
            q->work_head = e->next;
            if (!q->work_head) q->work_tail = NULL;
        } else if (__atomic_load_n(&u->stranded, __ATOMIC_ACQUIRE)) {
            pthread_mutex_unlock(&q->lock);
            e = ku_steal(u, q);
            pthread_mutex_lock(&q->lock);
            if (!e) continue;
        } else {
            /* `stranded` read under this lock, then counted idle before
             * waiting: ku_wake_other, which sets it first and then takes
             * this lock to look for idle helpers, cannot miss this one. */
            if (__atomic_load_n(&u->stopping, __ATOMIC_ACQUIRE) || q->idle >= u->max_idle) break;
            q->idle++;
            pthread_cond_wait(&q->work, &q->lock);
            q->idle--;
            continue;
        }
        pthread_mutex_unlock(&q->lock);
        ku_process(u, e);
        pthread_mutex_lock(&q->lock);
    }
    q->helpers--;
    __atomic_sub_fetch(&u->helpers_all, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&q->work);
    pthread_mutex_unlock(&q->lock);
    return NULL;
}
/* A request that may wait: to a helper; on the queue's thread if none can start. */
static inline void ku_hand_off(struct kmsfs_uring *u, struct ku_ent *e) {
    struct ku_queue *q = e->q;
    pthread_mutex_lock(&q->lock);
    e->next = NULL;
    if (q->work_tail) q->work_tail->next = e; else q->work_head = e;
    q->work_tail = e;
    int queued = 1, stranded = 0;
    if (q->idle == 0) {
        pthread_t t;
        /* threads= bounds the helpers of all queues together, not each
         * queue's: a user pinning a thread to every CPU would otherwise
         * get threads= helpers per CPU. A queue's first helper is always
         * allowed: idle helpers of busy CPUs keep their slots, and a queue
         * with none would answer lookups on its ring thread, where a slow
         * SOURCE would hold up every read on that CPU. */
        int started = 0;
        if (q->helpers < u->max_helpers) {
            int all = __atomic_add_fetch(&u->helpers_all, 1, __ATOMIC_RELAXED);
            if ((q->helpers == 0 || all <= u->max_helpers)
                && kmsfs_thread_start(&t, ku_helper, q, u->stack, 1, "kmsfs-uring-io") == 0) {
                q->helpers++;
                started = 1;
            } else {
                __atomic_sub_fetch(&u->helpers_all, 1, __ATOMIC_RELAXED);
            }
        }
        if (!started && q->helpers == 0) {
            /* Nobody to take it: answer it here. */
            q->work_head = e->next;
            if (!q->work_head) q->work_tail = NULL;
            queued = 0;
        } else if (!started) {
            stranded = 1;           /* every helper of this queue busy, and no room for another */
        }
    } else {
        pthread_cond_signal(&q->work);
    }
    pthread_mutex_unlock(&q->lock);
    if (stranded) {
        __atomic_store_n(&u->stranded, 1, __ATOMIC_RELEASE);
        ku_wake_other(u, q);
    }
    if (!queued) ku_process(u, e);
}

/* ---- a queue's thread ---- */
/* A request arrived in entry `e`: lay it out as /dev/fuse would and answer it. */
static inline void ku_request(struct kmsfs_uring *u, struct ku_ent *e) {
    struct ku_in_header in;
    memcpy(&in, e->hdr->in_out, sizeof in);
    size_t psz = e->hdr->payload_sz, sent = psz;
    e->hdr->commit_id = 0;
    /* A payload larger than the buffer the kernel was given is no request
     * this layout knows: answered EIO below, never processed cut short. */
    int oversize = psz > u->payload_cap;
    if (oversize) psz = u->payload_cap;
    if (e->dirty > psz) ku_scrub(e, psz, e->dirty);
    e->dirty = psz;
    e->unique = in.unique;
    size_t op = 0;
    int bad = oversize || in.len < sizeof in + psz || (op = in.len - sizeof in - psz) > sizeof e->hdr->op_in;
    size_t len = sizeof in + op + psz;
    uint8_t *at = e->region + KU_LAYOUT_AT;
    /* One byte more than the request: a NUL after it, so that libfuse's
     * strlen over a name ends inside the copy whatever the ring held. */
    if (!bad && len + 1 > KU_PREFIX - KU_LAYOUT_AT) {
        e->big = malloc(len + 1);
        at = (uint8_t *)e->big;
        bad = at == NULL;
    }
    if (bad) {
        /* Not a request this layout knows: answer EIO, never guess. */
        fuse_log(FUSE_LOG_ERR, "io_uring: request %u of %u bytes with a %zu-byte payload: answered EIO\n",
                 in.opcode, in.len, sent);
        struct ku_out_header oh = { .len = sizeof oh, .error = -EIO, .unique = in.unique };
        struct iovec v = { &oh, sizeof oh };
        ku_answer(u, e, &v, 1);                  /* not processing: straight to the ready list */
        return;
    }
    struct ku_queue *q = e->q;
    pthread_mutex_lock(&q->lock);
    e->processing = 1;
    e->replied = 0;
    pthread_mutex_unlock(&q->lock);
    ku_map_put(u, e);
    in.len = (uint32_t)len;
    memcpy(at, &in, sizeof in);
    memcpy(at + sizeof in, e->hdr->op_in, op);
    memcpy(at + sizeof in + op, e->payload, psz);
    at[len] = 0;
    e->req = at;
    e->req_len = len;
    struct fuse_buf probe;
    memset(&probe, 0, sizeof probe);
    probe.mem = at;
    probe.size = len;
    if (kmsfs_loop_never_waits(&probe)) ku_process(u, e);
    else ku_hand_off(u, e);
}
static void *ku_queue_thread(void *arg) {
    struct ku_queue *q = (struct ku_queue *)arg;
    struct kmsfs_uring *u = q->u;
    *ku_this_queue() = q;
    ku_pin(q->qid);
    int rc = ku_ring_setup(q, (unsigned)u->depth + 8);
    if (rc == 0) {
        q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (q->efd < 0) rc = -errno;
    }
    pthread_mutex_lock(&u->lock);
    q->setup_error = rc;
    u->prepared++;
    pthread_cond_broadcast(&u->cond);
    while (u->go == 0 && !__atomic_load_n(&u->stopping, __ATOMIC_ACQUIRE)) pthread_cond_wait(&u->cond, &u->lock);
    int go = u->go > 0 && !__atomic_load_n(&u->stopping, __ATOMIC_ACQUIRE) && rc == 0;
    pthread_mutex_unlock(&u->lock);
    if (rc != 0 && __atomic_load_n(&u->offered, __ATOMIC_ACQUIRE))
        fuse_log(FUSE_LOG_NOTICE, "io_uring: queue %d: cannot set up a ring: %s; serving through /dev/fuse\n",
                 q->qid, strerror(-rc));
    if (!go) return NULL;

    __atomic_store_n(&u->serving, 1, __ATOMIC_RELEASE);
    /* The kernel holds every request until each queue has an entry: a
     * queue that cannot register would hold them all. */
    for (int j = 0; j < u->depth; j++) {
        if (ku_fuse_cmd(q, &q->ents[j], KU_CMD_REGISTER) != 0) {
            ku_fail(q, "cannot register its entries (io_uring_enter)", errno);
            return NULL;
        }
        q->ents[j].live = 1, q->live++;
    }
    int reported = 0;
    struct ku_ent *committed[64];
    while (q->live > 0) {
        /* Commit the answered entries (a batch at a time). */
        int n = 0;
        pthread_mutex_lock(&q->lock);
        while (q->ready && n < 64) {
            struct ku_ent *e = q->ready;
            q->ready = e->next;
            if (q->ready == NULL) q->ready_tail = NULL;
            committed[n++] = e;
        }
        int more = q->ready != NULL;
        pthread_mutex_unlock(&q->lock);
        for (int i = 0; i < n; i++) {
            /* Its commit_id is 0 since ku_request took the request. */
            struct ku_ent *e = committed[i];
            e->committed_at = *q->sq_tail;
            if (ku_fuse_cmd(q, e, KU_CMD_COMMIT_AND_FETCH) != 0) {
                ku_fail(q, "cannot commit a reply (io_uring_enter)", errno);
                return NULL;
            }
            e->unwiped_next = q->unwiped;
            q->unwiped = e;
        }
        if (ku_arm_eventfd(q) != 0) {
            ku_fail(q, "cannot watch for replies (io_uring_enter)", errno);
            return NULL;
        }
        unsigned pending = *q->sq_tail - __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE);
        if (n > 0) {
            /* Commit first, without waiting: the replies' plaintext must
             * be wiped now, not whenever this queue next gets a request
             * (its caller may have moved to another CPU's queue). */
            int r = ku_enter(q->ring, pending, 0, 0);
            if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
                ku_fail(q, "io_uring_enter", errno);
                return NULL;
            }
            pending = *q->sq_tail - __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE);
            ku_wipe_committed(q);
        }
        /* Waits only once every reply sent is wiped: a commit the call
         * above left goes in now, and is wiped right after. */
        int r = ku_enter(q->ring, pending, more || q->unwiped ? 0 : 1, IORING_ENTER_GETEVENTS);
        if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY && errno != ETIME) {
            ku_fail(q, "io_uring_enter", errno);
            return NULL;
        }
        /* The kernel short of memory, or its completion queue full, while
         * a commit waits to go in: this thread does not block (above), so
         * it pauses rather than spin until the kernel takes the commit. */
        if (r < 0 && (errno == EAGAIN || errno == EBUSY) && q->unwiped) usleep(1000);
        ku_wipe_committed(q);
        unsigned head = *q->cq_head;
        unsigned tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *c = &q->cqes[head & *q->cq_mask];
            uint64_t tag = c->user_data;
            int res = c->res;
            __atomic_store_n(q->cq_head, head + 1, __ATOMIC_RELEASE);
            if (tag == KU_EVENTFD_TAG) { q->efd_armed = 0; continue; }
            struct ku_ent *e = (struct ku_ent *)(uintptr_t)tag;
            if (res < 0) {
                if (e->live) e->live = 0, q->live--;
                if (e->dirty) { ku_scrub(e, 0, e->dirty); e->dirty = 0; }
                if (res == -ENOTCONN || res == -ECONNABORTED || res == -ECANCELED) continue;   /* the connection is going */
                if (e->fetched) {
                    /* A commit the kernel refused: this entry is lost to
                     * the queue, and with it, one by one, the queue. */
                    ku_fail(q, "a reply's commit failed", -res);
                    return NULL;
                }
                /* A registration the kernel refused: it serves through
                 * /dev/fuse by itself. */
                if (!reported) {
                    reported = 1;
                    fuse_log(FUSE_LOG_ERR, "io_uring: queue %d: a ring entry failed: %s\n", q->qid, strerror(-res));
                }
                continue;
            }
            e->fetched = 1;
            ku_request(u, e);
        }
        if (__atomic_load_n(&u->stopping, __ATOMIC_ACQUIRE)) break;
    }
    return NULL;
}

/* Before the loop starts: the custom I/O, and a thread per possible CPU,
 * each setting up its ring. Returns NULL (and leaves /dev/fuse alone) on
 * any failure. `on_failure(arg)`, if not NULL, is called once if a queue's
 * ring breaks (`ku_fail`), on that queue's thread, every signal blocked:
 * the session has been told to exit, and the connection must be aborted
 * for the loop (blocked reading /dev/fuse) and the CPU's callers to end. */
/* The kernel's count of possible CPUs (num_possible_cpus(): the CPUs that
 * /sys/devices/system/cpu/possible lists), which is how many queues it
 * makes and waits for: until every one has an entry registered it holds
 * every request, the daemon's own included. sysconf(_SC_NPROCESSORS_CONF)
 * is not that: where /sys cannot be read (a chroot, a sandbox) glibc
 * counts the online CPUs of /proc/stat, fewer than the possible ones on a
 * machine with CPUs offline or hot-pluggable, and the mount hung for good.
 * -1 when the file cannot be read or parsed: then no ring at all. */
static inline long ku_possible_cpus(void) {
    char buf[4096];
    int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n;
    do { n = read(fd, buf, sizeof buf - 1); } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    /* Ranges "a-b" and single CPUs "c", comma-separated. */
    long count = 0, value = -1, first = -1;
    for (ssize_t i = 0; i <= n; i++) {
        char c = buf[i];
        if (c >= '0' && c <= '9') {
            value = (value < 0 ? 0 : value) * 10 + (c - '0');
            if (value > 1 << 20) return -1;
        } else if (c == '-') {
            if (value < 0 || first >= 0) return -1;
            first = value;
            value = -1;
        } else if (c == ',' || c == '\n' || c == 0) {
            if (value < 0) return -1;
            long from = first >= 0 ? first : value;
            if (value < from) return -1;
            count += value - from + 1;
            if (count > 1 << 20) return -1;
            first = value = -1;
            if (c == '\n' || c == 0) break;
        } else {
            return -1;
        }
    }
    return count > 0 ? count : -1;
}

static inline struct kmsfs_uring *kmsfs_uring_start(struct fuse_session *se, int depth, size_t max_read,
                                                    int max_helpers, size_t stack,
                                                    void (*on_failure)(void *), void *arg) {
    long ncpu = ku_possible_cpus();
    if (ncpu < 1) {
        fuse_log(FUSE_LOG_NOTICE, "io_uring: cannot read how many CPUs are possible (/sys/devices/system/cpu/possible), "
                 "and the kernel waits for a queue on each; serving through /dev/fuse\n");
        return NULL;
    }
    if (ncpu > KU_MAX_QUEUES) {
        fuse_log(FUSE_LOG_NOTICE, "io_uring: %ld possible CPUs, more than the %d queues kmsfs sets up; serving through /dev/fuse\n",
                 ncpu, KU_MAX_QUEUES);
        return NULL;
    }
    if (depth < 1 || depth > 8192 || max_read < 8192) return NULL;
    struct kmsfs_uring *u = (struct kmsfs_uring *)calloc(1, sizeof *u);
    if (!u) return NULL;
    u->se = se;
    u->fd = fuse_session_fd(se);
    u->nq = (int)ncpu;
    u->depth = depth;
    u->stack = stack;
    u->max_read = max_read & ~(size_t)4095;
    u->payload_cap = u->max_read;
    u->max_helpers = max_helpers < 1 ? 1 : max_helpers;
    u->max_idle = 4;
    u->on_failure = on_failure;
    u->on_failure_arg = arg;
    size_t slots = 1;
    while (slots < (size_t)u->nq * (size_t)depth * 2) slots <<= 1;
    u->map = (struct ku_ent **)calloc(slots, sizeof *u->map);
    u->map_mask = slots - 1;
    u->qs = (struct ku_queue *)calloc((size_t)u->nq, sizeof *u->qs);
    if (!u->map || !u->qs) { free(u->map); free(u->qs); free(u); return NULL; }
    pthread_mutex_init(&u->lock, NULL);
    pthread_mutex_init(&u->map_lock, NULL);
    pthread_cond_init(&u->cond, NULL);
    struct fuse_custom_io io = { .writev = ku_io_writev, .read = ku_io_read };
    __atomic_store_n(ku_current(), u, __ATOMIC_RELEASE);
    if (fuse_session_custom_io(se, &io, u->fd) != 0) {
        __atomic_store_n(ku_current(), NULL, __ATOMIC_RELEASE);
        free(u->map); free(u->qs); free(u);
        return NULL;
    }
    for (int i = 0; i < u->nq; i++) {
        struct ku_queue *q = &u->qs[i];
        q->u = u;
        q->qid = i;
        q->ring = -1;
        q->efd = -1;
        pthread_mutex_init(&q->lock, NULL);
        pthread_cond_init(&q->work, NULL);
        if (kmsfs_thread_start(&q->thread, ku_queue_thread, q, u->stack, 0, "kmsfs-uring") == 0) {
            q->started = 1;
        } else {
            pthread_mutex_lock(&u->lock);
            q->setup_error = -EAGAIN;
            u->prepared++;
            pthread_mutex_unlock(&u->lock);
        }
    }
    return u;
}
/* After the loop has ended: stops the queues and helpers and frees all. */
static inline void kmsfs_uring_stop(struct kmsfs_uring *u) {
    if (!u) return;
    pthread_mutex_lock(&u->lock);
    __atomic_store_n(&u->stopping, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&u->cond);
    pthread_mutex_unlock(&u->lock);
    for (int i = 0; i < u->nq; i++) {
        struct ku_queue *q = &u->qs[i];
        if (q->efd >= 0) { uint64_t one = 1; ssize_t w = write(q->efd, &one, sizeof one); (void)w; }
    }
    for (int i = 0; i < u->nq; i++) if (u->qs[i].started) pthread_join(u->qs[i].thread, NULL);
    for (int i = 0; i < u->nq; i++) {
        struct ku_queue *q = &u->qs[i];
        pthread_mutex_lock(&q->lock);
        pthread_cond_broadcast(&q->work);
        while (q->helpers > 0) pthread_cond_wait(&q->work, &q->lock);
        pthread_mutex_unlock(&q->lock);
    }
    /* No queue is left to take answers: replies from here on (a parked
     * open answered by the pool) go to /dev/fuse. Those that already saw
     * `serving` on get up to 2 s to end before the map and the rings they
     * use are freed; past that, all of it is left allocated (the process
     * is stopping) rather than freed under them. */
    __atomic_store_n(&u->serving, 0, __ATOMIC_SEQ_CST);
    for (int waited = 0; __atomic_load_n(&u->writers, __ATOMIC_SEQ_CST) > 0; waited++) {
        if (waited >= 20000) {
            fuse_log(FUSE_LOG_WARNING, "io_uring: a reply still in flight at stop; leaving the rings mapped\n");
            /* Mapped, but not holding plaintext: what replies wrote into
             * the entries is wiped (a late reply's copy racing this only
             * leaves its own bytes, which it wipes after its commit). */
            for (int i = 0; i < u->nq; i++) {
                struct ku_queue *q = &u->qs[i];
                if (!q->ents) continue;
                for (int j = 0; j < u->depth; j++) {
                    struct ku_ent *e = &q->ents[j];
                    if (e->region && e->dirty) explicit_bzero(e->payload, e->dirty);
                }
            }
            return;
        }
        usleep(100);
    }
    for (int i = 0; i < u->nq; i++) {
        struct ku_queue *q = &u->qs[i];
        if (q->ring >= 0) close(q->ring);        /* cancels what is still registered */
        if (q->sqe_map) munmap(q->sqe_map, q->sqe_len);
        if (q->cq_map) munmap(q->cq_map, q->cq_len);
        if (q->sq_map) munmap(q->sq_map, q->sq_len);
        if (q->efd >= 0) close(q->efd);
        pthread_cond_destroy(&q->work);
        pthread_mutex_destroy(&q->lock);
    }
    ku_free_entries(u);
    pthread_cond_destroy(&u->cond);
    pthread_mutex_destroy(&u->map_lock);
    pthread_mutex_destroy(&u->lock);
    free(u->map);
    free(u->qs);
    /* The custom I/O stays: libfuse may still write notifications
     * through the custom I/O; with `serving` off they go to /dev/fuse. */
    static struct kmsfs_uring spent;
    memset(&spent, 0, sizeof spent);
    __atomic_store_n(ku_current(), &spent, __ATOMIC_RELEASE);
    /* `u` itself is not freed: a reply that read the pointer just before
     * the swap still counts itself in `u->writers` and reads
     * `u->init_unique` (with `serving` off it touches nothing else). */
}

#endif
