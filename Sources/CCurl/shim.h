/*
 * CCurl: libcurl, with typed setters for the variadic curl_easy_setopt and
 * curl_easy_getinfo (after swift-corelibs-foundation's
 * CFURLSessionInterface). Each setter takes exactly the type its option
 * family expects, so a wrong argument type is a compile error, not UB.
 */
#ifndef KMSFS_CCURL_SHIM_H
#define KMSFS_CCURL_SHIM_H

#include <curl/curl.h>

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

#endif
