/*
 * CCrypto: OpenSSL 3 (libcrypto, and libssl for one TLS option), with
 * wrappers for the function-like macros Swift cannot import.
 */
#ifndef KMSFS_CCRYPTO_SHIM_H
#define KMSFS_CCRYPTO_SHIM_H

#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED 1
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/ec.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>

/* SSL_OP_CLEANSE_PLAINTEXT is a macro built from SSL_OP_BIT(): it makes
 * OpenSSL wipe decrypted TLS records once the application has read them. */
static inline void kmsfs_ssl_ctx_cleanse_plaintext(void *ssl_ctx) {
    SSL_CTX_set_options((SSL_CTX *)ssl_ctx, SSL_OP_CLEANSE_PLAINTEXT);
}

/* EVP_CIPHER_CTX_ctrl takes a void* for a macro-named control. */
static inline int kmsfs_gcm_set_ivlen(EVP_CIPHER_CTX *c, int len) {
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, len, NULL);
}
static inline int kmsfs_gcm_get_tag(EVP_CIPHER_CTX *c, unsigned char *tag, int len) {
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, len, tag);
}
static inline int kmsfs_gcm_set_tag(EVP_CIPHER_CTX *c, const unsigned char *tag, int len) {
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, len, (void *)tag);
}

/* OSSL_PARAM construction uses macro-named keys; build an HKDF derivation
 * in one call. mode: 0 = extract-and-expand, 2 = expand only. */
static inline int kmsfs_hkdf(const char *digest, int mode,
                             const unsigned char *salt, size_t saltlen,
                             const unsigned char *ikm, size_t ikmlen,
                             const unsigned char *info, size_t infolen,
                             unsigned char *out, size_t outlen) {
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (kdf == NULL) return 0;
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (ctx == NULL) return 0;
    OSSL_PARAM params[6];
    int n = 0;
    int m = mode;
    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0);
    params[n++] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &m);
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
    if (salt != NULL && saltlen > 0)
        params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
    params[n] = OSSL_PARAM_construct_end();
    int ok = EVP_KDF_derive(ctx, out, outlen, params);
    EVP_KDF_CTX_free(ctx);
    return ok == 1;
}

/* OPENSSL_free is a macro over CRYPTO_free. */
static inline void kmsfs_openssl_free(void *p) { OPENSSL_free(p); }

#endif
