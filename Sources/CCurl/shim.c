/*
 * CCurl's compiled functions, and a check of its header: a C target of its
 * own rather than a system library's module map, so that the header is
 * compiled with the compiler's diagnostics on (a system module's are
 * silenced) and an edit to it rebuilds what imports it. _GNU_SOURCE here,
 * as in CLinux's shim.c, for glibc's prototypes of pipe2 and
 * posix_spawn_file_actions_addclosefrom_np.
 */
#define _GNU_SOURCE
#include "shim.h"
#include <fcntl.h>
#include <malloc.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void kmsfs_curl_free(void *p) {
    if (p) {
        explicit_bzero(p, malloc_usable_size(p));
        free(p);
    }
}
static void *kmsfs_curl_malloc(size_t n) { return malloc(n); }
static void *kmsfs_curl_calloc(size_t n, size_t size) { return calloc(n, size); }
static void *kmsfs_curl_realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    size_t old = malloc_usable_size(p);
    if (n <= old && n > 0) return p;   /* fits: stays where it is */
    void *q = malloc(n ? n : 1);
    if (!q) return NULL;
    memcpy(q, p, old < n ? old : n);
    kmsfs_curl_free(p);                /* never realloc: it would free the old block unwiped */
    return q;
}
static char *kmsfs_curl_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

CURLcode kmsfs_curl_global_init_wiping(long flags) {
    return curl_global_init_mem(flags, kmsfs_curl_malloc, kmsfs_curl_free, kmsfs_curl_realloc,
                                kmsfs_curl_strdup, kmsfs_curl_calloc);
}

int kmsfs_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int kmsfs_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}
