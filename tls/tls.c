/* tls/tls.c: wolfSSL contexts and the buffer-driven session wrapper.
 *
 * wolfSSL is driven through its I/O callbacks: the recv callback copies
 * from the session's rx rm_buf and answers WOLFSSL_CBIO_ERR_WANT_READ when
 * it is empty; the send callback appends to tx and answers
 * WOLFSSL_CBIO_ERR_WANT_WRITE when it is full (TESTING.md: this works in
 * Debian's 5.5.4). wolfSSL keeps partial records in its own input buffer,
 * so the callbacks may hand over any number of bytes.
 *
 * SNI: every certificate entry gets its own WOLFSSL_CTX. A server session
 * creates its WOLFSSL only once the first record (the ClientHello) is whole
 * in rx: wolfSSL_SNI_GetFromBuffer reads the name, and the WOLFSSL is made
 * on the entry that serves it. Switching later, in the servername callback
 * (wolfSSL_set_SSL_CTX), keeps the cipher suites of the first entry's key
 * type, so under TLS 1.2 a switch between RSA and ECDSA certificates fails
 * (TESTING.md); choosing before wolfSSL_new avoids that for any mix.
 */
#include "tls/tls.h"

#include <wolfssl/options.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/sha512.h>

static_assert(TLS_VERSION_1_2 == TLS1_2_VERSION, "wire values are wolfSSL's");
static_assert(TLS_VERSION_1_3 == TLS1_3_VERSION, "wire values are wolfSSL's");
static_assert(TLS_RECORD_PLAIN_MAX <= INT_MAX, "wolfSSL_write takes an int");

struct tls_entry {
    WOLFSSL_CTX *ctx;               /* owned */
    char *names[TLS_SNI_NAMES_MAX]; /* owned copies */
    size_t name_count;
};

struct tls_server_ctx {
    /* One per owner (the config) and one per session; the last drop frees.
     * acq_rel on the decrement pairs the frees with every session's use. */
    _Atomic uint32_t refs;
    size_t count;
    struct tls_entry e[TLS_CERTS_MAX];
};

struct tls_client_ctx {
    _Atomic uint32_t refs; /* as in tls_server_ctx */
    enum tls_verify verify;
    WOLFSSL_CTX *ctx;
};

struct tls_sess {
    WOLFSSL *ssl;
    struct tls_server_ctx *sctx; /* one reference, or NULL */
    struct tls_client_ctx *cctx; /* one reference, or NULL */
    struct rm_buf *rx;           /* borrowed: ciphertext in, consumed with rm_buf_skip */
    struct rm_buf *tx;           /* borrowed: ciphertext out, appended after tail */
    int err;                     /* sticky fatal error, 0 if none */
    const char *reason;          /* static text for err */
    bool is_client;              /* wolfSSL_connect, else wolfSSL_accept */
    bool done;                   /* handshake complete */
    bool closed;                 /* peer's close_notify seen */
    bool has_sni;
    size_t write_pending; /* plaintext octets of a record wolfSSL holds in its output */
    char sni[TLS_NAME_MAX + 1];
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_init_rc;

static void lib_init(void)
{
    g_init_rc = wolfSSL_Init() == WOLFSSL_SUCCESS ? 0 : TLS_ERR_LIB;
}

static int init_once(void)
{
    pthread_once(&g_once, lib_init);
    return g_init_rc;
}

const char *tls_strerror(int err)
{
    switch (err) {
    case TLS_OK:
        return "ok";
    case TLS_WANT_READ:
        return "need more input";
    case TLS_WANT_WRITE:
        return "output buffer full";
    case TLS_CLOSED:
        return "peer closed the TLS session";
    case TLS_ERR_LIB:
        return "TLS library failure";
    case TLS_ERR_CERT:
        return "cannot load certificate or key";
    case TLS_ERR_KEY_MISMATCH:
        return "private key does not match the certificate";
    case TLS_ERR_CONFIG:
        return "bad TLS configuration";
    case TLS_ERR_HANDSHAKE:
        return "TLS handshake failed";
    case TLS_ERR_VERSION:
        return "no common TLS version";
    case TLS_ERR_VERIFY:
        return "peer certificate did not verify";
    case TLS_ERR_NAME:
        return "peer certificate does not match the host name";
    case TLS_ERR_PROTO:
        return "bad TLS record";
    case TLS_ERR_STATE:
        return "TLS call in the wrong state";
    case TLS_ERR_DANE_UNUSABLE:
        return "no usable TLSA record";
    case TLS_ERR_DANE_NOMATCH:
        return "no TLSA record matches the peer";
    case TLS_ERR_GEN:
        return "certificate generation failed";
    }
    if (err < 0 && err > -4096) {
        const char *s = strerrordesc_np(-err);
        if (s)
            return s;
    }
    return "unknown error";
}

/* ---- I/O callbacks ------------------------------------------------------- */

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    (void)ssl;
    struct tls_sess *s = arg;
    size_t n = rm_buf_len(s->rx);
    if (n == 0)
        return WOLFSSL_CBIO_ERR_WANT_READ;
    if (sz >= 0 && n > (size_t)sz)
        n = (size_t)sz;
    memcpy(buf, rm_buf_rptr(s->rx), n);
    rm_buf_skip(s->rx, n); /* a recv may be in flight at tail: never move it */
    return (int)n;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    (void)ssl;
    struct tls_sess *s = arg;
    size_t n = rm_buf_space(s->tx);
    if (n == 0)
        return WOLFSSL_CBIO_ERR_WANT_WRITE;
    if (sz >= 0 && n > (size_t)sz)
        n = (size_t)sz;
    /* Only after tail: a send may be in flight over [head, tail). */
    memcpy(rm_buf_wptr(s->tx), buf, n);
    rm_buf_produce(s->tx, n);
    return (int)n;
}

static int set_versions(WOLFSSL_CTX *ctx, uint16_t vmin, uint16_t vmax)
{
    if (wolfSSL_CTX_set_min_proto_version(ctx, vmin) != WOLFSSL_SUCCESS)
        return TLS_ERR_LIB;
    if (wolfSSL_CTX_set_max_proto_version(ctx, vmax) != WOLFSSL_SUCCESS)
        return TLS_ERR_LIB;
    return 0;
}

static bool versions_ok(uint16_t vmin, uint16_t vmax)
{
    bool min_ok = vmin == TLS_VERSION_1_2 || vmin == TLS_VERSION_1_3;
    bool max_ok = vmax == TLS_VERSION_1_2 || vmax == TLS_VERSION_1_3;
    return min_ok && max_ok && vmin <= vmax;
}

static WOLFSSL_CTX *ctx_new(bool server)
{
    WOLFSSL_CTX *ctx =
        wolfSSL_CTX_new(server ? wolfSSLv23_server_method() : wolfSSLv23_client_method());
    if (!ctx)
        return NULL;
    wolfSSL_CTX_SetIORecv(ctx, io_recv);
    wolfSSL_CTX_SetIOSend(ctx, io_send);
    return ctx;
}

/* ---- Server contexts ------------------------------------------------------ */

/* RFC 6125 6.4.3, simplified: exact (case-insensitive), or "*.rest" for one
 * left-most label. */
static bool name_matches(const char *pattern, const char *name)
{
    if (strcasecmp(pattern, name) == 0)
        return true;
    if (pattern[0] != '*' || pattern[1] != '.')
        return false;
    const char *dot = strchr(name, '.');
    return dot && dot != name && strcasecmp(pattern + 1, dot) == 0;
}

/* The entry that serves name: the first whose names match, else entry 0. */
static struct tls_entry *entry_for(struct tls_server_ctx *c, const char *name)
{
    for (size_t i = 1; name && i < c->count; i++)
        for (size_t k = 0; k < c->e[i].name_count; k++)
            if (name_matches(c->e[i].names[k], name))
                return &c->e[i];
    return &c->e[0];
}

static void server_ctx_destroy(struct tls_server_ctx *c)
{
    for (size_t i = 0; i < TLS_CERTS_MAX; i++) {
        wolfSSL_CTX_free(c->e[i].ctx);
        for (size_t k = 0; k < c->e[i].name_count; k++)
            free(c->e[i].names[k]);
    }
    free(c);
}

static int sess_new(WOLFSSL_CTX *wctx, struct rm_buf *rx, struct rm_buf *tx, struct tls_sess **out);

/* Runs one handshake in memory between a throwaway client and sctx. */
static int pair_check(WOLFSSL_CTX *sctx, uint16_t version)
{
    int rc = TLS_ERR_KEY_MISMATCH;
    uint8_t *mem = malloc(4 * TLS_TX_MIN);
    WOLFSSL_CTX *cctx = ctx_new(false);
    struct tls_sess *c = NULL, *sv = NULL;
    struct rm_buf b[4];
    if (!mem || !cctx) {
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < 4; i++)
        rm_buf_init(&b[i], mem + (size_t)i * TLS_TX_MIN, TLS_TX_MIN);
    wolfSSL_CTX_set_verify(cctx, WOLFSSL_VERIFY_NONE, NULL);
    if (set_versions(cctx, version, version) != 0 || sess_new(cctx, &b[0], &b[1], &c) != 0 ||
        sess_new(sctx, &b[2], &b[3], &sv) != 0) {
        rc = TLS_ERR_LIB;
        goto out;
    }
    c->is_client = true;
    /* A handshake takes 2-4 flights; each pass moves one either way. */
    for (int round = 0; round < 16; round++) {
        int rc_c = tls_handshake(c), rc_s = tls_handshake(sv);
        if (rc_c == TLS_OK && rc_s == TLS_OK) {
            rc = 0;
            break;
        }
        if (rc_c < 0 || rc_s < 0)
            break;
        for (int d = 0; d < 2; d++) {
            struct rm_buf *from = d ? &b[3] : &b[1], *to = d ? &b[0] : &b[2];
            size_t n = rm_buf_len(from);
            rm_buf_compact(to);
            if (n > rm_buf_space(to))
                n = rm_buf_space(to);
            memcpy(rm_buf_wptr(to), rm_buf_rptr(from), n);
            rm_buf_produce(to, n);
            rm_buf_consume(from, n);
        }
    }
out:
    tls_sess_free(c);
    tls_sess_free(sv);
    wolfSSL_CTX_free(cctx);
    free(mem);
    return rc;
}

static int entry_load(struct tls_entry *e, const struct tls_cert_cfg *cc,
                      const struct tls_server_cfg *cfg)
{
    if (!cc->cert_file || !cc->key_file || cc->name_count > TLS_SNI_NAMES_MAX)
        return TLS_ERR_CONFIG;
    for (size_t k = 0; k < cc->name_count; k++) {
        if (!cc->names[k] || strlen(cc->names[k]) > TLS_NAME_MAX)
            return TLS_ERR_CONFIG;
        e->names[k] = strdup(cc->names[k]);
        if (!e->names[k])
            return -ENOMEM;
        e->name_count = k + 1;
    }
    e->ctx = ctx_new(true);
    if (!e->ctx)
        return -ENOMEM;
    int rc = set_versions(e->ctx, cfg->version_min, cfg->version_max);
    if (rc)
        return rc;
    wolfSSL_CTX_set_verify(e->ctx, WOLFSSL_VERIFY_NONE, NULL); /* no client certificates */
    if (wolfSSL_CTX_use_certificate_chain_file(e->ctx, cc->cert_file) != WOLFSSL_SUCCESS)
        return TLS_ERR_CERT;
    if (wolfSSL_CTX_use_PrivateKey_file(e->ctx, cc->key_file, WOLFSSL_FILETYPE_PEM) !=
        WOLFSSL_SUCCESS)
        return TLS_ERR_CERT;
    if (wolfSSL_CTX_check_private_key(e->ctx) != WOLFSSL_SUCCESS)
        return TLS_ERR_KEY_MISMATCH;
    /* XXX: Debian's wolfSSL_CTX_check_private_key passes an ECDSA key of
     * another certificate; a handshake in memory proves the pair (the
     * client checks the server's signature even without verification). */
    return pair_check(e->ctx, cfg->version_max);
}

int tls_server_ctx_new(const struct tls_server_cfg *cfg, struct tls_server_ctx **out)
{
    RM_ASSERT(cfg && out);
    *out = NULL;
    if (!cfg->certs || cfg->cert_count == 0 || cfg->cert_count > TLS_CERTS_MAX ||
        !versions_ok(cfg->version_min, cfg->version_max))
        return TLS_ERR_CONFIG;
    int rc = init_once();
    if (rc)
        return rc;
    struct tls_server_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    atomic_init(&c->refs, 1);
    c->count = cfg->cert_count;
    for (size_t i = 0; i < cfg->cert_count; i++) {
        rc = entry_load(&c->e[i], &cfg->certs[i], cfg);
        if (rc)
            goto out_destroy;
    }
    *out = c;
    return 0;
out_destroy:
    server_ctx_destroy(c);
    return rc;
}

static void server_ctx_put(struct tls_server_ctx *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        server_ctx_destroy(c);
}

void tls_server_ctx_free(struct tls_server_ctx *ctx)
{
    server_ctx_put(ctx);
}

/* ---- Client contexts ------------------------------------------------------ */

int tls_client_ctx_new(const struct tls_client_cfg *cfg, struct tls_client_ctx **out)
{
    RM_ASSERT(cfg && out);
    *out = NULL;
    if (!versions_ok(cfg->version_min, cfg->version_max) ||
        (cfg->verify != TLS_VERIFY_NONE && cfg->verify != TLS_VERIFY_CA))
        return TLS_ERR_CONFIG;
    int rc = init_once();
    if (rc)
        return rc;
    struct tls_client_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    atomic_init(&c->refs, 1);
    c->verify = cfg->verify;
    c->ctx = ctx_new(false);
    if (!c->ctx) {
        rc = -ENOMEM;
        goto out_free;
    }
    rc = set_versions(c->ctx, cfg->version_min, cfg->version_max);
    if (rc)
        goto out_free;
    if (cfg->verify == TLS_VERIFY_CA) {
        const char *file = cfg->ca_file;
        const char *dir = file ? NULL : cfg->ca_dir ? cfg->ca_dir : TLS_CA_DIR_DEFAULT;
        if (wolfSSL_CTX_load_verify_locations(c->ctx, file, dir) != WOLFSSL_SUCCESS) {
            rc = TLS_ERR_CERT;
            goto out_free;
        }
        wolfSSL_CTX_set_verify(c->ctx, WOLFSSL_VERIFY_PEER, NULL);
    } else {
        /* Opportunistic (RFC 7435): take any certificate; the chain is kept
         * (SESSION_CERTS) for tls_dane_verify. */
        wolfSSL_CTX_set_verify(c->ctx, WOLFSSL_VERIFY_NONE, NULL);
    }
    *out = c;
    return 0;
out_free:
    wolfSSL_CTX_free(c->ctx);
    free(c);
    return rc;
}

static void client_ctx_put(struct tls_client_ctx *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        wolfSSL_CTX_free(c->ctx);
        free(c);
    }
}

void tls_client_ctx_free(struct tls_client_ctx *ctx)
{
    client_ctx_put(ctx);
}

/* ---- Sessions ------------------------------------------------------------- */

static int sess_attach(struct tls_sess *s, WOLFSSL_CTX *wctx)
{
    s->ssl = wolfSSL_new(wctx);
    if (!s->ssl)
        return -ENOMEM;
    wolfSSL_SetIOReadCtx(s->ssl, s);
    wolfSSL_SetIOWriteCtx(s->ssl, s);
    return 0;
}

static int sess_new(WOLFSSL_CTX *wctx, struct rm_buf *rx, struct rm_buf *tx, struct tls_sess **out)
{
    RM_ASSERT(rx && tx && out);
    RM_ASSERT(rm_buf_valid(rx) && rm_buf_valid(tx));
    RM_ASSERT(tx->cap >= TLS_TX_MIN);
    struct tls_sess *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->rx = rx;
    s->tx = tx;
    s->reason = "";
    if (wctx) {
        int rc = sess_attach(s, wctx);
        if (rc) {
            free(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

int tls_server_new(struct tls_server_ctx *ctx, struct rm_buf *rx, struct rm_buf *tx,
                   struct tls_sess **out)
{
    RM_ASSERT(ctx);
    *out = NULL;
    /* The WOLFSSL comes with the ClientHello (see the top). */
    int rc = sess_new(NULL, rx, tx, out);
    if (rc)
        return rc;
    /* relaxed: the caller already holds a reference (the owner's or a
     * session's), so the count cannot reach 0 under us. */
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    (*out)->sctx = ctx;
    return 0;
}

int tls_client_new(struct tls_client_ctx *ctx, const char *sni, struct rm_buf *rx,
                   struct rm_buf *tx, struct tls_sess **out)
{
    RM_ASSERT(ctx);
    *out = NULL;
    size_t len = sni ? strlen(sni) : 0;
    if (len > TLS_NAME_MAX || (ctx->verify == TLS_VERIFY_CA && len == 0))
        return TLS_ERR_CONFIG;
    struct tls_sess *s = NULL;
    int rc = sess_new(ctx->ctx, rx, tx, &s);
    if (rc)
        return rc;
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed); /* as tls_server_new */
    s->cctx = ctx;
    s->is_client = true;
    if (len) {
        memcpy(s->sni, sni, len + 1);
        s->has_sni = true;
        if (wolfSSL_UseSNI(s->ssl, WOLFSSL_SNI_HOST_NAME, sni, (unsigned short)len) !=
            WOLFSSL_SUCCESS) {
            tls_sess_free(s);
            return TLS_ERR_LIB;
        }
        if (ctx->verify == TLS_VERIFY_CA &&
            wolfSSL_check_domain_name(s->ssl, sni) != WOLFSSL_SUCCESS) {
            tls_sess_free(s);
            return TLS_ERR_LIB;
        }
    }
    *out = s;
    return 0;
}

void tls_sess_free(struct tls_sess *s)
{
    if (!s)
        return;
    wolfSSL_free(s->ssl);
    server_ctx_put(s->sctx);
    client_ctx_put(s->cctx);
    free(s);
}

static const char *reason_of(int e)
{
    const char *r = wolfSSL_ERR_reason_error_string((unsigned long)(long)e);
    return r && r[0] ? r : "TLS error";
}

/* Records a fatal error; later calls return it again. */
static int fatal(struct tls_sess *s, int code, int wolf_err)
{
    s->err = code;
    s->reason = reason_of(wolf_err);
    return code;
}

static int handshake_code(int e)
{
    switch (e) {
    case VERSION_ERROR:
        return TLS_ERR_VERSION;
    case DOMAIN_NAME_MISMATCH:
        return TLS_ERR_NAME;
    case ASN_NO_SIGNER_E:
    case ASN_AFTER_DATE_E:
    case ASN_BEFORE_DATE_E:
    case ASN_SIG_CONFIRM_E:
    case ASN_SELF_SIGNED_E:
    case ASN_PATHLEN_INV_E:
    case VERIFY_CERT_ERROR:
        return TLS_ERR_VERIFY;
    default:
        return TLS_ERR_HANDSHAKE;
    }
}

#define REC_HDR 5u /* TLS record header: type, version, length (RFC 8446 5.1) */

/* Server, before wolfSSL_new: waits for the first record whole (or as much
 * of it as rx can ever hold), reads the SNI from it, and attaches the
 * session to the entry serving that name. */
static int server_pick(struct tls_sess *s)
{
    const uint8_t *p = rm_buf_rptr(s->rx);
    size_t have = rm_buf_len(s->rx);
    if (have < REC_HDR)
        return TLS_WANT_READ;
    size_t total = REC_HDR + ((size_t)p[3] << 8 | p[4]);
    if (have < total && s->rx->cap - s->rx->head >= total && p[0] == 0x16)
        return TLS_WANT_READ;
    const char *name = NULL;
    unsigned char buf[TLS_NAME_MAX + 1];
    unsigned int sz = TLS_NAME_MAX;
    if (have >= total && p[0] == 0x16 &&
        wolfSSL_SNI_GetFromBuffer(p, (unsigned int)total, WOLFSSL_SNI_HOST_NAME, buf, &sz) ==
            WOLFSSL_SUCCESS &&
        sz > 0 && sz <= TLS_NAME_MAX && !memchr(buf, 0, sz)) {
        memcpy(s->sni, buf, sz);
        s->sni[sz] = '\0';
        s->has_sni = true;
        name = s->sni;
    }
    /* Junk, a record rx cannot hold, no SNI: the default, and wolfSSL
     * judges the bytes. */
    return sess_attach(s, entry_for(s->sctx, name)->ctx);
}

int tls_handshake(struct tls_sess *s)
{
    RM_ASSERT(s);
    if (s->err)
        return s->err;
    if (s->done)
        return TLS_OK;
    if (!s->ssl) {
        int rc = server_pick(s);
        if (rc)
            return rc;
    }
    int r = s->is_client ? wolfSSL_connect(s->ssl) : wolfSSL_accept(s->ssl);
    if (r == WOLFSSL_SUCCESS) {
        s->done = true;
        return TLS_OK;
    }
    int e = wolfSSL_get_error(s->ssl, r);
    if (e == WOLFSSL_ERROR_WANT_READ)
        return TLS_WANT_READ;
    if (e == WOLFSSL_ERROR_WANT_WRITE)
        return TLS_WANT_WRITE;
    return fatal(s, handshake_code(e), e);
}

int tls_read(struct tls_sess *s, uint8_t *out, size_t cap, size_t *n)
{
    RM_ASSERT(s && out && n && cap > 0);
    *n = 0;
    if (s->err)
        return s->err;
    if (!s->done)
        return TLS_ERR_STATE;
    if (s->closed)
        return TLS_CLOSED;
    int want = cap > INT_MAX ? INT_MAX : (int)cap;
    int r = wolfSSL_read(s->ssl, out, want);
    if (r > 0) {
        *n = (size_t)r;
        return TLS_OK;
    }
    int e = wolfSSL_get_error(s->ssl, r);
    switch (e) {
    case WOLFSSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case WOLFSSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case WOLFSSL_ERROR_ZERO_RETURN:
        s->closed = true;
        return TLS_CLOSED;
    default:
        return fatal(s, TLS_ERR_PROTO, e);
    }
}

int tls_write(struct tls_sess *s, const uint8_t *in, size_t len, size_t *n)
{
    RM_ASSERT(s && n && (in || len == 0));
    *n = 0;
    if (s->err)
        return s->err;
    if (!s->done)
        return TLS_ERR_STATE;
    size_t off = 0;
    while (off < len) {
        size_t chunk;
        if (s->write_pending) {
            /* wolfSSL holds an encrypted record of the first write_pending
             * octets the caller gives again: the same call must finish it. */
            RM_ASSERT(len >= s->write_pending);
            chunk = s->write_pending;
        } else {
            size_t space = rm_buf_space(s->tx);
            if (space <= TLS_RECORD_OVERHEAD_MAX)
                return TLS_WANT_WRITE;
            chunk = len - off;
            if (chunk > space - TLS_RECORD_OVERHEAD_MAX)
                chunk = space - TLS_RECORD_OVERHEAD_MAX;
            if (chunk > TLS_RECORD_PLAIN_MAX)
                chunk = TLS_RECORD_PLAIN_MAX;
        }
        int r = wolfSSL_write(s->ssl, in + off, (int)chunk);
        if (r > 0) {
            s->write_pending = 0;
            off += (size_t)r;
            *n = off;
            continue;
        }
        int e = wolfSSL_get_error(s->ssl, r);
        if (e == WOLFSSL_ERROR_WANT_WRITE) {
            s->write_pending = chunk;
            return TLS_WANT_WRITE;
        }
        return fatal(s, TLS_ERR_PROTO, e);
    }
    return TLS_OK;
}

int tls_close(struct tls_sess *s)
{
    RM_ASSERT(s);
    if (s->err)
        return s->err;
    if (!s->ssl)
        return TLS_OK; /* no ClientHello yet: nothing to close */
    int r = wolfSSL_shutdown(s->ssl);
    if (r == WOLFSSL_SUCCESS || r == WOLFSSL_SHUTDOWN_NOT_DONE)
        return TLS_OK;
    int e = wolfSSL_get_error(s->ssl, r);
    if (e == WOLFSSL_ERROR_WANT_WRITE)
        return TLS_WANT_WRITE;
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_ZERO_RETURN)
        return TLS_OK; /* ours is queued; we do not wait for the peer's */
    return fatal(s, TLS_ERR_PROTO, e);
}

const char *tls_sess_version(const struct tls_sess *s)
{
    return s->done ? wolfSSL_get_version(s->ssl) : "";
}

const char *tls_sess_cipher(const struct tls_sess *s)
{
    const char *c = s->done ? wolfSSL_get_cipher_name(s->ssl) : NULL;
    return c ? c : "";
}

const char *tls_sess_sni(const struct tls_sess *s)
{
    return s->has_sni ? s->sni : NULL;
}

bool tls_sess_done(const struct tls_sess *s)
{
    return s->done;
}

const char *tls_sess_reason(const struct tls_sess *s)
{
    return s->reason;
}

/* ---- DANE ----------------------------------------------------------------- */

static bool tlsa_usable(const struct tls_tlsa *t)
{
    if (t->usage != 2 && t->usage != 3)
        return false; /* PKIX-TA/EE: not for SMTP, RFC 7672 3.1.3 */
    if (t->selector > 1 || !t->data)
        return false;
    switch (t->mtype) {
    case 0:
        return t->len > 0 && t->len <= TLS_TLSA_FULL_MAX;
    case 1:
        return t->len == WC_SHA256_DIGEST_SIZE;
    case 2:
        return t->len == WC_SHA512_DIGEST_SIZE;
    default:
        return false;
    }
}

/* Does chain[idx] match t? <0 on allocation failure. */
static int tlsa_match(WOLFSSL_X509_CHAIN *ch, int idx, const struct tls_tlsa *t)
{
    const uint8_t *data = wolfSSL_get_chain_cert(ch, idx);
    int len = wolfSSL_get_chain_length(ch, idx);
    uint8_t *spki = NULL;
    if (!data || len <= 0)
        return 0;
    if (t->selector == 1) {
        /* TESTING.md: wolfSSL_i2d_PUBKEY gives PKCS#1 for RSA here. */
        WOLFSSL_X509 *x = wolfSSL_get_chain_X509(ch, idx);
        if (!x)
            return -ENOMEM;
        int sz = 0;
        if (wolfSSL_X509_get_pubkey_buffer(x, NULL, &sz) != WOLFSSL_SUCCESS || sz <= 0 ||
            !(spki = malloc((size_t)sz)) ||
            wolfSSL_X509_get_pubkey_buffer(x, spki, &sz) != WOLFSSL_SUCCESS) {
            wolfSSL_X509_free(x);
            free(spki);
            return spki ? 0 : -ENOMEM;
        }
        wolfSSL_X509_free(x);
        data = spki;
        len = sz;
    }
    uint8_t h[WC_SHA512_DIGEST_SIZE];
    bool ok = false;
    switch (t->mtype) {
    case 0:
        ok = (size_t)len == t->len && memcmp(data, t->data, t->len) == 0;
        break;
    case 1:
        ok = wc_Sha256Hash(data, (word32)len, h) == 0 && memcmp(h, t->data, t->len) == 0;
        break;
    case 2:
        ok = wc_Sha512Hash(data, (word32)len, h) == 0 && memcmp(h, t->data, t->len) == 0;
        break;
    }
    free(spki);
    return ok;
}

/* Verifies chain[ta-1 .. 0] down from the trust anchor chain[ta]: each
 * intermediate is checked before it may sign the next. */
static bool chain_verifies(WOLFSSL_X509_CHAIN *ch, int ta)
{
    WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
    if (!cm)
        return false;
    bool ok = wolfSSL_CertManagerLoadCABuffer(cm, wolfSSL_get_chain_cert(ch, ta),
                                              wolfSSL_get_chain_length(ch, ta),
                                              WOLFSSL_FILETYPE_ASN1) == WOLFSSL_SUCCESS;
    for (int i = ta - 1; ok && i >= 0; i--) {
        const uint8_t *der = wolfSSL_get_chain_cert(ch, i);
        long len = wolfSSL_get_chain_length(ch, i);
        ok =
            wolfSSL_CertManagerVerifyBuffer(cm, der, len, WOLFSSL_FILETYPE_ASN1) == WOLFSSL_SUCCESS;
        if (ok && i > 0)
            ok = wolfSSL_CertManagerLoadCABuffer(cm, der, len, WOLFSSL_FILETYPE_ASN1) ==
                 WOLFSSL_SUCCESS;
    }
    wolfSSL_CertManagerFree(cm);
    return ok;
}

static bool leaf_names_one(WOLFSSL_X509_CHAIN *ch, const char *const *names, size_t count)
{
    WOLFSSL_X509 *x = wolfSSL_get_chain_X509(ch, 0);
    bool ok = false;
    for (size_t i = 0; x && !ok && i < count; i++)
        ok = names[i] &&
             wolfSSL_X509_check_host(x, names[i], strlen(names[i]), 0, NULL) == WOLFSSL_SUCCESS;
    wolfSSL_X509_free(x);
    return ok;
}

int tls_dane_verify(struct tls_sess *s, const struct tls_tlsa *recs, size_t count,
                    const char *const *names, size_t name_count, int *matched_usage)
{
    RM_ASSERT(s && (recs || count == 0));
    if (!s->cctx || !s->done || s->err)
        return TLS_ERR_STATE;
    WOLFSSL_X509_CHAIN *ch = wolfSSL_get_peer_chain(s->ssl);
    int n = ch ? wolfSSL_get_chain_count(ch) : 0;
    bool usable = false;
    /* DANE-EE first: one hash of the leaf, no other checks (RFC 7672 3.1.1). */
    for (size_t i = 0; i < count; i++) {
        if (!tlsa_usable(&recs[i]))
            continue;
        usable = true;
        if (recs[i].usage != 3 || n < 1)
            continue;
        int m = tlsa_match(ch, 0, &recs[i]);
        if (m < 0)
            return m;
        if (m) {
            if (matched_usage)
                *matched_usage = 3;
            return 0;
        }
    }
    /* DANE-TA (RFC 7672 3.1.2): an issuer the server sent, the chain below
     * it, and the name (3.2.2). */
    bool named = n > 1 && leaf_names_one(ch, names, name_count);
    for (size_t i = 0; named && i < count; i++) {
        if (!tlsa_usable(&recs[i]) || recs[i].usage != 2)
            continue;
        for (int k = 1; k < n; k++) {
            int m = tlsa_match(ch, k, &recs[i]);
            if (m < 0)
                return m;
            if (m && chain_verifies(ch, k)) {
                if (matched_usage)
                    *matched_usage = 2;
                return 0;
            }
        }
    }
    return usable ? TLS_ERR_DANE_NOMATCH : TLS_ERR_DANE_UNUSABLE;
}

/* ---- Self-signed certificates ------------------------------------------- */

/* Appends a DER length; returns octets written. */
static size_t der_len(uint8_t *p, size_t len)
{
    if (len < 0x80) {
        p[0] = (uint8_t)len;
        return 1;
    }
    if (len <= 0xff) {
        p[0] = 0x81;
        p[1] = (uint8_t)len;
        return 2;
    }
    p[0] = 0x82;
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    return 3;
}

/* GeneralNames (RFC 5280 4.2.1.6) from "DNS:x" / "IP:a" entries, as
 * wolfSSL's Cert.altNames wants it (the whole SEQUENCE). */
static int san_encode(const char *const *san, size_t count, uint8_t *out, size_t cap,
                      size_t *out_len)
{
    /* Each entry <= 3 + TLS_NAME_MAX octets; TLS_SAN_MAX of them fit. */
    uint8_t body[TLS_SAN_MAX * (TLS_NAME_MAX + 3)];
    size_t b = 0;
    if (count == 0 || count > TLS_SAN_MAX)
        return TLS_ERR_CONFIG;
    for (size_t i = 0; i < count; i++) {
        const char *e = san[i];
        if (!e)
            return TLS_ERR_CONFIG;
        if (strncmp(e, "DNS:", 4) == 0) {
            size_t len = strlen(e + 4);
            if (len == 0 || len > TLS_NAME_MAX)
                return TLS_ERR_CONFIG;
            body[b++] = 0x82; /* [2] dNSName */
            b += der_len(body + b, len);
            memcpy(body + b, e + 4, len);
            b += len;
        } else if (strncmp(e, "IP:", 3) == 0) {
            uint8_t a[16];
            size_t len = 16;
            if (inet_pton(AF_INET, e + 3, a) == 1)
                len = 4;
            else if (inet_pton(AF_INET6, e + 3, a) != 1)
                return TLS_ERR_CONFIG;
            body[b++] = 0x87; /* [7] iPAddress */
            body[b++] = (uint8_t)len;
            memcpy(body + b, a, len);
            b += len;
        } else {
            return TLS_ERR_CONFIG;
        }
    }
    if (b + 4 > cap)
        return TLS_ERR_CONFIG;
    out[0] = 0x30;
    size_t h = 1 + der_len(out + 1, b);
    memcpy(out + h, body, b);
    *out_len = h + b;
    return 0;
}

/* Writes data to path through path.tmp (mode 0600) and a rename. */
static int write_private(const char *path, const uint8_t *data, size_t len)
{
    char tmp[PATH_MAX];
    int k = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (k < 0 || (size_t)k >= sizeof tmp)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fchmod(fd, 0600) != 0) /* an older tmp file may have had other bits */
        rc = -errno;
    for (size_t off = 0; !rc && off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            rc = -errno;
        else
            off += (size_t)w;
    }
    if (!rc && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && !rc)
        rc = -errno;
    if (!rc && rename(tmp, path) != 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
    return rc;
}

#define GEN_DER_MAX 4096u /* a P-256 certificate with TLS_SAN_MAX long names: < 4.5 KiB PEM */
#define GEN_PEM_MAX 8192u

int tls_selfsigned_write(const char *cert_path, const char *key_path, const char *cn,
                         const char *const *san, size_t san_count, int days)
{
    RM_ASSERT(cert_path && key_path && cn);
    if (strlen(cn) == 0 || strlen(cn) >= CTC_NAME_SIZE || days <= 0)
        return TLS_ERR_CONFIG;
    int rc = init_once();
    if (rc)
        return rc;
    Cert *cert = calloc(1, sizeof *cert); /* ~17 KiB with altNames */
    uint8_t *der = malloc(GEN_DER_MAX);
    uint8_t *pem = malloc(GEN_PEM_MAX);
    if (!cert || !der || !pem) {
        rc = -ENOMEM;
        goto out_free;
    }
    size_t alt_len = 0;
    rc = wc_InitCert(cert) == 0 ? 0 : TLS_ERR_GEN;
    if (!rc)
        rc = san_encode(san, san_count, cert->altNames, sizeof cert->altNames, &alt_len);
    if (rc)
        goto out_free;
    cert->altNamesSz = (int)alt_len;
    memcpy(cert->subject.commonName, cn, strlen(cn) + 1);
    cert->sigType = CTC_SHA256wECDSA;
    cert->daysValid = days;
    cert->isCA = 0;

    WC_RNG rng;
    ecc_key key;
    if (wc_InitRng(&rng) != 0) {
        rc = TLS_ERR_GEN;
        goto out_free;
    }
    if (wc_ecc_init(&key) != 0) {
        rc = TLS_ERR_GEN;
        goto out_rng;
    }
    rc = TLS_ERR_GEN;
    if (wc_ecc_make_key_ex(&rng, 32, &key, ECC_SECP256R1) != 0)
        goto out_key;
    if (wc_MakeCert(cert, der, GEN_DER_MAX, NULL, &key, &rng) < 0)
        goto out_key;
    int der_sz = wc_SignCert(cert->bodySz, cert->sigType, der, GEN_DER_MAX, NULL, &key, &rng);
    if (der_sz <= 0)
        goto out_key;
    int pem_sz = wc_DerToPem(der, (word32)der_sz, pem, GEN_PEM_MAX, CERT_TYPE);
    if (pem_sz <= 0)
        goto out_key;
    /* The key first: a certificate without its key is worse than neither. */
    int key_der = wc_EccKeyToDer(&key, der, GEN_DER_MAX);
    if (key_der <= 0)
        goto out_key;
    uint8_t key_pem[1024];
    int key_pem_sz =
        wc_DerToPem(der, (word32)key_der, key_pem, sizeof key_pem, ECC_PRIVATEKEY_TYPE);
    memset(der, 0, GEN_DER_MAX); /* the private key */
    if (key_pem_sz <= 0)
        goto out_key;
    rc = write_private(key_path, key_pem, (size_t)key_pem_sz);
    memset(key_pem, 0, sizeof key_pem);
    if (!rc)
        rc = write_private(cert_path, pem, (size_t)pem_sz);
out_key:
    wc_ecc_free(&key);
out_rng:
    wc_FreeRng(&rng);
out_free:
    free(cert);
    free(der);
    free(pem);
    return rc;
}
