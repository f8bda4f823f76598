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

/* ECDSA for the AWS Encryption SDK's signed algorithm suites (P-256 and
 * P-384). Key construction goes through OSSL_PARAM (macro-named keys) and
 * EVP_EC_gen is a macro over the variadic EVP_PKEY_Q_keygen, so these live
 * here; signing and verifying themselves use the EVP_DigestSign/Verify
 * functions directly from Swift. */

/* An EC public key on `group` ("P-256", "P-384") from an encoded point
 * (SEC 1 compressed 0x02/0x03 || X, or uncompressed). OpenSSL decodes the
 * point and refuses one that is not on the curve. NULL on any failure. */
static inline EVP_PKEY *kmsfs_ec_public_key(const char *group, const unsigned char *point, size_t len) {
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL) return NULL;
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point, len);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_PKEY_fromdata_init(ctx) != 1 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/* A fresh EC key pair on `group` (EVP_EC_gen is a variadic macro). */
static inline EVP_PKEY *kmsfs_ec_generate(const char *group) {
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", group);
}

/* The SEC 1 compressed encoding of `pkey`'s public point into out[cap];
 * returns its length, or 0 on failure. OpenSSL 3.0 writes "encoded-pub-key"
 * uncompressed whatever the point format; "pub" follows the format. */
static inline size_t kmsfs_ec_compressed_public_key(EVP_PKEY *pkey, unsigned char *out, size_t cap) {
    if (EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                       OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_COMPRESSED) != 1)
        return 0;
    size_t len = 0;
    if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, out, cap, &len) != 1)
        return 0;
    return len;
}

#endif
