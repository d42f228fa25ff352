/* tls.c - TLS contexts, sessions, the PSK key derivation and the cleartext
 * preamble (see tls.h). The I/O on the sessions is in conn.c. */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

static const uint8_t PRE_MAGIC[4] = {'P', 'P', 'C', 'T'};
static const unsigned char PSK_ID[] = "ppc-psk-1";
#define PSK_ID_LEN (sizeof PSK_ID - 1)
/* TLS_AES_128_GCM_SHA256: the PSK's cipher (its hash, SHA-256, is what
 * matters; CHACHA20-POLY1305 shares it and may be negotiated too) */
static const unsigned char PSK_CIPHER[2] = {0x13, 0x01};

int ppc_tls_derive(const uint8_t *secret, size_t secret_len, const uint8_t salt[PPC_TLS_SALT_LEN],
                   uint8_t key[PPC_TLS_KEY_LEN])
{
    uint8_t s[10 + PPC_TLS_SALT_LEN];
    memcpy(s, "ppc-psk-1:", 10);
    memcpy(s + 10, salt, PPC_TLS_SALT_LEN);
    static const char empty[1] = {0};
    return EVP_PBE_scrypt(secret_len ? (const char *)secret : empty, secret_len, s, sizeof s,
                          (uint64_t)1 << PPC_TLS_SCRYPT_LOG2N, PPC_TLS_SCRYPT_R,
                          PPC_TLS_SCRYPT_P, (uint64_t)64 << 20, key, PPC_TLS_KEY_LEN) == 1
               ? 0
               : -1;
}

void ppc_tls_preamble_encode(int mode, const uint8_t salt[PPC_TLS_SALT_LEN],
                             uint8_t out[PPC_TLS_PREAMBLE_LEN])
{
    memcpy(out, PRE_MAGIC, 4);
    out[4] = 1;
    out[5] = (uint8_t)mode;
    out[6] = out[7] = 0;
    if (salt)
        memcpy(out + 8, salt, PPC_TLS_SALT_LEN);
    else
        memset(out + 8, 0, PPC_TLS_SALT_LEN);
}

int ppc_tls_preamble_decode(const uint8_t *p, size_t n, int *mode, uint8_t salt[PPC_TLS_SALT_LEN])
{
    if (n != PPC_TLS_PREAMBLE_LEN || memcmp(p, PRE_MAGIC, 4) != 0 || p[4] != 1 ||
        (p[5] != PPC_TLS_PSK && p[5] != PPC_TLS_CERT && p[5] != PPC_TLS_PLAIN) || p[6] || p[7])
        return -1;
    *mode = p[5];
    memcpy(salt, p + 8, PPC_TLS_SALT_LEN);
    return 0;
}

static SSL_SESSION *psk_session(SSL *ssl)
{
    const uint8_t *key = SSL_get_app_data(ssl);
    const SSL_CIPHER *c = SSL_CIPHER_find(ssl, PSK_CIPHER);
    if (!key || !c)
        return NULL;
    SSL_SESSION *s = SSL_SESSION_new();
    if (!s)
        return NULL;
    if (!SSL_SESSION_set1_master_key(s, key, PPC_TLS_KEY_LEN) || !SSL_SESSION_set_cipher(s, c) ||
        !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return s;
}

static int use_session_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
                          SSL_SESSION **sess)
{
    const SSL_CIPHER *c = SSL_CIPHER_find(ssl, PSK_CIPHER);
    if (md && c && md != SSL_CIPHER_get_handshake_digest(c)) {
        *sess = NULL; /* a retry for another hash: our PSK cannot serve it */
        return 1;
    }
    *sess = psk_session(ssl);
    if (!*sess)
        return 0;
    *id = PSK_ID;
    *idlen = PSK_ID_LEN;
    return 1;
}

static int find_session_cb(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
    if (idlen != PSK_ID_LEN || memcmp(id, PSK_ID, idlen) != 0) {
        *sess = NULL; /* unknown identity: the handshake fails */
        return 1;
    }
    *sess = psk_session(ssl);
    return *sess ? 1 : 0;
}

static void ctx_err(const char *what, char *err, size_t errlen)
{
    char why[200];
    ppc_tls_why(why, sizeof why);
    snprintf(err, errlen, "%s: %s", what, why);
}

SSL_CTX *ppc_tls_ctx_new(int server, const char *certfile, const char *keyfile,
                         const char *cafile, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx) {
        ctx_err("cannot make a TLS context", err, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (server)
        SSL_CTX_set_num_tickets(ctx, 0); /* no resumption: every connection proves itself */
    /* suites with SHA-256, the PSK's hash; the server's order wins, so
     * a peer preferring a SHA-384 suite cannot make the PSK unusable */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256") != 1) {
        ctx_err("TLS cipher suites", err, errlen);
        goto fail;
    }
    if (!certfile) {
        if (server)
            SSL_CTX_set_psk_find_session_callback(ctx, find_session_cb);
        else
            SSL_CTX_set_psk_use_session_callback(ctx, use_session_cb);
        return ctx;
    }
    if (!keyfile || !cafile) {
        snprintf(err, errlen, "certificate mode needs certfile, keyfile and cafile");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1) {
        ctx_err(certfile, err, errlen);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1) {
        ctx_err(keyfile, err, errlen);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ctx_err("the key does not match the certificate", err, errlen);
        goto fail;
    }
    if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
        ctx_err(cafile, err, errlen);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void ppc_tls_ctx_free(SSL_CTX *ctx) { SSL_CTX_free(ctx); }

SSL *ppc_tls_new(SSL_CTX *ctx, int fd, const uint8_t *psk)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_app_data(ssl, (void *)psk);
    SSL_set_read_ahead(ssl, 1);
    SSL_set_default_read_buffer_len(ssl, 256 * 1024);
    return ssl;
}

void ppc_tls_free(SSL *ssl) { SSL_free(ssl); }

void ppc_tls_why(char *out, size_t n)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r)
        snprintf(out, n, "TLS: %s", r);
    else if (e)
        snprintf(out, n, "TLS: error %lx", e);
    else
        snprintf(out, n, "TLS: handshake failed");
    ERR_clear_error();
}
