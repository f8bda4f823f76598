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

/* fuse_session_loop_mt is a macro selecting fuse_session_loop_mt_312. */
static inline int kmsfs_fuse_session_loop_mt(struct fuse_session *se,
                                             unsigned int max_threads,
                                             unsigned int max_idle) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (cfg == NULL) return -1;
    fuse_loop_cfg_set_max_threads(cfg, max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, max_idle);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    int rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return rc;
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
