/*
 * A check of CCrypto's header: CCrypto is header-only (static inline
 * wrappers for OpenSSL's macros) but a C target of its own rather than a
 * system library's module map, so that the header is compiled with the
 * compiler's diagnostics on (a system module's are silenced) and an edit
 * to it rebuilds what imports it.
 */
#include "shim.h"
