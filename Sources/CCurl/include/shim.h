/*
 * CCurl: libcurl, with typed setters for the variadic curl_easy_setopt and
 * curl_easy_getinfo (after swift-corelibs-foundation's
 * CFURLSessionInterface). Each setter takes exactly the type its option
 * family expects, so a wrong argument type is a compile error, not UB.
 */
#ifndef KMSFS_CCURL_SHIM_H
#define KMSFS_CCURL_SHIM_H

#include <curl/curl.h>
#include <sys/socket.h>
#include <spawn.h>
#include <string.h>

typedef size_t (*kmsfs_curl_write_fn)(char *ptr, size_t size, size_t nmemb, void *userdata);
typedef size_t (*kmsfs_curl_read_fn)(char *buffer, size_t size, size_t nitems, void *userdata);
typedef CURLcode (*kmsfs_curl_ssl_ctx_fn)(CURL *curl, void *ssl_ctx, void *userdata);
typedef int (*kmsfs_curl_sockopt_fn)(void *clientp, curl_socket_t curlfd, curlsocktype purpose);

static inline CURLcode kmsfs_curl_set_long(CURL *h, CURLoption o, long v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode kmsfs_curl_set_string(CURL *h, CURLoption o, const char *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode kmsfs_curl_set_pointer(CURL *h, CURLoption o, void *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode kmsfs_curl_set_slist(CURL *h, CURLoption o, struct curl_slist *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode kmsfs_curl_set_off_t(CURL *h, CURLoption o, curl_off_t v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode kmsfs_curl_set_write_fn(CURL *h, kmsfs_curl_write_fn f) {
    return curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, f);
}
static inline CURLcode kmsfs_curl_set_header_fn(CURL *h, kmsfs_curl_write_fn f) {
    return curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, f);
}
static inline CURLcode kmsfs_curl_set_ssl_ctx_fn(CURL *h, kmsfs_curl_ssl_ctx_fn f) {
    return curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, f);
}
static inline CURLcode kmsfs_curl_get_long(CURL *h, CURLINFO i, long *out) {
    return curl_easy_getinfo(h, i, out);
}
static inline CURLcode kmsfs_curl_get_double(CURL *h, CURLINFO i, double *out) {
    return curl_easy_getinfo(h, i, out);
}
static inline CURLcode kmsfs_curl_get_off_t(CURL *h, CURLINFO i, curl_off_t *out) {
    return curl_easy_getinfo(h, i, out);
}

/*
 * curl's allocator, wiping every block it frees: curl copies request
 * headers (the session token) into its own buffers (header lists, the
 * request it assembles before sending) and frees them without clearing,
 * which would leave the token in the free heap. curl_global_init_mem with
 * the allocator in shim.c.
 */
CURLcode kmsfs_curl_global_init_wiping(long flags);
/* Wipes the strings of a header list (before curl_slist_free_all). */
static inline void kmsfs_curl_slist_wipe(struct curl_slist *l) {
    for (; l; l = l->next) if (l->data) explicit_bzero(l->data, strlen(l->data));
}

/*
 * Every socket curl opens for a transfer is close-on-exec, created so
 * atomically (no window for a concurrent posix_spawn to inherit it): a
 * credential_process must not inherit the pooled connection to KMS.
 */
static inline curl_socket_t kmsfs_curl_open_cloexec_socket(void *clientp, curlsocktype purpose,
                                                           struct curl_sockaddr *address) {
    (void)clientp; (void)purpose;
    return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}
static inline CURLcode kmsfs_curl_use_cloexec_sockets(CURL *h) {
    return curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, kmsfs_curl_open_cloexec_socket);
}

/*
 * Process helpers for the AWS module's credential_process runner, in
 * shim.c: glibc declares posix_spawn_file_actions_addclosefrom_np and pipe2
 * only under _GNU_SOURCE, which Swift's Glibc module is not built with (and
 * which this header cannot define without changing glibc's types under
 * that module). shim.c is compiled with it, so both calls are checked
 * against glibc's own prototypes (Debian 12's glibc 2.36; addclosefrom_np
 * since 2.34, pipe2 since 2.9). curl 7.88's own wakeup socketpair is not
 * close-on-exec and cannot be made so: the child closes every descriptor
 * from 3 up instead.
 */
int kmsfs_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);
int kmsfs_pipe_cloexec(int fds[2]);

#endif
