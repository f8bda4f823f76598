/*
 * fsloop: the timing loops of `make bench`, in C so that no interpreter sits
 * between the clock and the system calls. Compiled at bench time
 * (gcc -O2 -pthread); bench.py drives it and does the statistics.
 *
 * Every timed operation is open(O_RDONLY) + read + close of one file, timed
 * with clock_gettime(CLOCK_MONOTONIC) around the three calls. "read" is one
 * read(2) of up to 4 KiB (the figure the brief asks for), or with `eof`
 * reads until read(2) returns 0, as cat(1) does.
 *
 *   fsloop hot ROUNDS BLOCK WARMUP MODE:FILE... every round runs BLOCK ops on
 *                                               each target in turn; one line
 *                                               per op: "target round ns"
 *   fsloop once read1|eof FILE...               one line per file: nanoseconds
 *   fsloop storm THREADS LISTFILE               THREADS readers share the list,
 *                                               each file read once; prints
 *                                               "wall_ns W ok N failed F" then
 *                                               one latency (ns) per file
 *   fsloop soak THREADS SECONDS LISTFILE        THREADS readers pick files at
 *                                               random until SECONDS pass; prints
 *                                               "ops N failed F p50_ns A p99_ns B max_ns C"
 *   fsloop fleet RETRY_MS LISTFILE              one reader, as a service at boot: reads
 *                                               every file in turn to EOF; an open or read
 *                                               failing with EIO is counted and that file
 *                                               tried again RETRY_MS later (any other
 *                                               error ends the reader); prints
 *                                               "ok N failed F wall_ns W"
 *
 * A failed open or read is counted (storm, soak) or is fatal (hot, once):
 * a benchmark of failing calls would be meaningless.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* open + read + close; returns bytes read, or -errno. */
static long read_file(const char *path, int to_eof, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        total += n;
        if (n == 0 || !to_eof)
            break;
    }
    close(fd);
    return total;
}

static int parse_mode(const char *s)
{
    if (strcmp(s, "eof") == 0)
        return 1;
    if (strcmp(s, "read1") == 0)
        return 0;
    fprintf(stderr, "fsloop: mode must be read1 or eof, not %s\n", s);
    exit(2);
}

/* hot: the targets take turns, BLOCK iterations each, in every round (in
 * a random order each round), so that a slow minute on a shared machine
 * falls on all of them alike. */
static int cmd_hot(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: fsloop hot ROUNDS BLOCK WARMUP read1|eof:FILE...\n");
        return 2;
    }
    long rounds = atol(argv[1]), block = atol(argv[2]), warmup = atol(argv[3]);
    int n = argc - 4;
    const char **path = calloc((size_t)n, sizeof *path);
    int *to_eof = calloc((size_t)n, sizeof *to_eof);
    long *expect = calloc((size_t)n, sizeof *expect);
    for (int k = 0; k < n; k++) {
        char *spec = argv[4 + k], *colon = strchr(spec, ':');
        if (!colon) {
            fprintf(stderr, "fsloop: target must be read1:FILE or eof:FILE, not %s\n", spec);
            return 2;
        }
        *colon = 0;
        to_eof[k] = parse_mode(spec);
        path[k] = colon + 1;
        expect[k] = -1;
    }
    char buf[4096];
    uint64_t *t = calloc((size_t)(rounds * block * n), sizeof *t);
    if (!t)
        return 1;
    /* Each round runs the series in a fresh random order (fixed seed): what
     * ran just before a block sets where the scheduler left the threads
     * it wakes, so a fixed rotation would tie one series to one history. */
    int *order = calloc((size_t)n, sizeof *order);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (long r = -1; r < rounds; r++) {
        for (int j = 0; j < n; j++)
            order[j] = j;
        for (int j = n - 1; j > 0; j--) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            int x = (int)(seed % (uint64_t)(j + 1)), tmp = order[j];
            order[j] = order[x];
            order[x] = tmp;
        }
        for (int j = 0; j < n; j++) {
            int k = order[j];
            long iters = r < 0 ? warmup : block;
            for (long i = 0; i < iters; i++) {
                uint64_t a = now_ns();
                long got = read_file(path[k], to_eof[k], buf, sizeof buf);
                uint64_t b = now_ns();
                if (got <= 0) {
                    fprintf(stderr, "fsloop: %s: %s\n", path[k], got < 0 ? strerror((int)-got) : "empty read");
                    return 1;
                }
                if (expect[k] < 0)
                    expect[k] = got;
                else if (got != expect[k]) {
                    fprintf(stderr, "fsloop: %s: read %ld bytes, then %ld\n", path[k], expect[k], got);
                    return 1;
                }
                if (r >= 0)
                    t[(r * n + k) * block + i] = b - a;
            }
        }
    }
    for (long r = 0; r < rounds; r++)
        for (int k = 0; k < n; k++)
            for (long i = 0; i < block; i++)
                printf("%d %ld %llu\n", k, r, (unsigned long long)t[(r * n + k) * block + i]);
    free(t);
    free(order);
    return 0;
}

static int cmd_once(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: fsloop once read1|eof FILE...\n");
        return 2;
    }
    int to_eof = parse_mode(argv[1]);
    char buf[65536];
    for (int i = 2; i < argc; i++) {
        uint64_t a = now_ns();
        long n = read_file(argv[i], to_eof, buf, sizeof buf);
        uint64_t b = now_ns();
        if (n <= 0) {
            fprintf(stderr, "fsloop: %s: %s\n", argv[i], n < 0 ? strerror((int)-n) : "empty read");
            return 1;
        }
        printf("%llu\n", (unsigned long long)(b - a));
    }
    return 0;
}

/* ---- list-driven modes (storm, soak) ---------------------------------- */

static char **paths;
static long npaths;

static void load_list(const char *listfile)
{
    FILE *f = fopen(listfile, "r");
    if (!f) {
        perror(listfile);
        exit(1);
    }
    long cap = 1024;
    paths = malloc((size_t)cap * sizeof *paths);
    char *line = NULL;
    size_t len = 0;
    ssize_t n;
    while ((n = getline(&line, &len, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = 0;
        if (n == 0)
            continue;
        if (npaths == cap)
            paths = realloc(paths, (size_t)(cap *= 2) * sizeof *paths);
        paths[npaths++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (npaths == 0) {
        fprintf(stderr, "fsloop: %s: no paths\n", listfile);
        exit(1);
    }
}

static atomic_long next_index;
static atomic_long failures;
static uint64_t *latency;

static void *storm_reader(void *arg)
{
    (void)arg;
    char buf[65536];
    for (;;) {
        long i = atomic_fetch_add(&next_index, 1);
        if (i >= npaths)
            return NULL;
        uint64_t a = now_ns();
        long n = read_file(paths[i], 1, buf, sizeof buf);
        latency[i] = now_ns() - a;
        if (n <= 0) {
            atomic_fetch_add(&failures, 1);
            fprintf(stderr, "fsloop: %s: %s\n", paths[i], n < 0 ? strerror((int)-n) : "empty read");
        }
    }
}

static int run_threads(int threads, void *(*fn)(void *), void **args)
{
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (int i = 0; i < threads; i++)
        if (pthread_create(&tid[i], &attr, fn, args ? args[i] : NULL) != 0) {
            fprintf(stderr, "fsloop: pthread_create failed\n");
            exit(1);
        }
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    free(tid);
    return 0;
}

static int cmd_storm(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fsloop storm THREADS LISTFILE\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    load_list(argv[2]);
    latency = calloc((size_t)npaths, sizeof *latency);
    uint64_t a = now_ns();
    run_threads(threads, storm_reader, NULL);
    uint64_t wall = now_ns() - a;
    long failed = atomic_load(&failures);
    printf("wall_ns %llu ok %ld failed %ld\n", (unsigned long long)wall, npaths - failed, failed);
    for (long i = 0; i < npaths; i++)
        printf("%llu\n", (unsigned long long)latency[i]);
    return 0;
}

/* Soak: a histogram per thread, 1 us buckets up to 1 s, so minutes of load
 * cost constant memory. */
#define BUCKETS 1000000
struct soak_state {
    uint64_t deadline;
    unsigned seed;
    long ops, failed;
    uint64_t max;
    uint32_t *hist;
};

static void *soak_reader(void *arg)
{
    struct soak_state *s = arg;
    char buf[65536];
    while (now_ns() < s->deadline) {
        long i = (long)(rand_r(&s->seed) % (unsigned)npaths);
        uint64_t a = now_ns();
        long n = read_file(paths[i], 1, buf, sizeof buf);
        uint64_t d = now_ns() - a;
        s->ops++;
        if (n <= 0) {
            if (s->failed++ < 5)
                fprintf(stderr, "fsloop: %s: %s\n", paths[i], n < 0 ? strerror((int)-n) : "empty read");
        }
        uint64_t us = d / 1000;
        s->hist[us < BUCKETS ? us : BUCKETS - 1]++;
        if (d > s->max)
            s->max = d;
    }
    return NULL;
}

static uint64_t percentile(const uint64_t *h, long total, double p)
{
    long want = (long)(p * (double)total), seen = 0;
    for (long i = 0; i < BUCKETS; i++) {
        seen += (long)h[i];
        if (seen > want)
            return (uint64_t)i * 1000 + 500;
    }
    return (uint64_t)BUCKETS * 1000;
}

static int cmd_soak(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: fsloop soak THREADS SECONDS LISTFILE\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    double seconds = atof(argv[2]);
    load_list(argv[3]);
    uint64_t deadline = now_ns() + (uint64_t)(seconds * 1e9);
    struct soak_state *st = calloc((size_t)threads, sizeof *st);
    void **args = calloc((size_t)threads, sizeof *args);
    for (int i = 0; i < threads; i++) {
        st[i].deadline = deadline;
        st[i].seed = 0x9e3779b9u * (unsigned)(i + 1);
        st[i].hist = calloc(BUCKETS, sizeof *st[i].hist);
        args[i] = &st[i];
    }
    run_threads(threads, soak_reader, args);
    uint64_t *h = calloc(BUCKETS, sizeof *h);
    long ops = 0, failed = 0;
    uint64_t max = 0;
    for (int i = 0; i < threads; i++) {
        for (long b = 0; b < BUCKETS; b++)
            h[b] += st[i].hist[b];
        ops += st[i].ops;
        failed += st[i].failed;
        if (st[i].max > max)
            max = st[i].max;
    }
    printf("ops %ld failed %ld p50_ns %llu p99_ns %llu max_ns %llu\n", ops, failed,
           (unsigned long long)percentile(h, ops, 0.50), (unsigned long long)percentile(h, ops, 0.99),
           (unsigned long long)max);
    return 0;
}

/* fleet: one host's services reading their secrets right after boot. */
static int cmd_fleet(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fsloop fleet RETRY_MS LISTFILE\n");
        return 2;
    }
    long retry_ms = atol(argv[1]);
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        fprintf(stderr, "fsloop: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    char line[4096], buf[4096];
    long ok = 0, failed = 0;
    uint64_t t0 = now_ns();
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        long got;
        while ((got = read_file(line, 1, buf, sizeof buf)) <= 0) {
            /* EIO is kmsfs's answer when KMS failed; anything else (the
             * mount gone: ENOENT, ENOTCONN) ends the reader. */
            if (got != -EIO) {
                fprintf(stderr, "fsloop: %s: %s\n", line, got < 0 ? strerror((int)-got) : "empty read");
                return 1;
            }
            failed++;
            struct timespec ts = { retry_ms / 1000, (retry_ms % 1000) * 1000000L };
            nanosleep(&ts, NULL);
        }
        ok++;
    }
    fclose(f);
    printf("ok %ld failed %ld wall_ns %llu\n", ok, failed, (unsigned long long)(now_ns() - t0));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "fleet") == 0)
        return cmd_fleet(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "hot") == 0)
        return cmd_hot(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "once") == 0)
        return cmd_once(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "storm") == 0)
        return cmd_storm(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "soak") == 0)
        return cmd_soak(argc - 1, argv + 1);
    fprintf(stderr, "usage: fsloop hot|once|storm|soak|fleet ...\n");
    return 2;
}
