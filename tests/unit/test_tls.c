/* tests/unit/test_tls.c: real client and server sessions pumped against each
 * other in memory (no sockets): the harness plays both workers, moving
 * ciphertext from one side's tx to the other's rx.
 *
 * Certificates are made at start-up in a mkdtemp directory: ECDSA ones by
 * tls_selfsigned_write (the code under test), an RSA one, a CA and a leaf
 * it signed by the openssl CLI. DANE expectations come from the openssl CLI
 * too, so the hashes are checked by an independent implementation.
 * TLS_BENCH=1 in the environment also prints full handshakes per second.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the headers above */
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls.h"

#define BUF_BYTES   (64u * 1024u)
#define PUMP_ROUNDS 100000 /* byte-by-byte handshakes take a few thousand */

static char g_dir[64];
static char g_path[16][128];
enum {
    P_EC_CRT,
    P_EC_KEY,
    P_EC2_CRT,
    P_EC2_KEY,
    P_RSA_CRT,
    P_RSA_KEY,
    P_CA_CRT,
    P_LEAF_CHAIN,
    P_LEAF_KEY,
};

struct side {
    uint8_t rxd[BUF_BYTES];
    uint8_t txd[BUF_BYTES];
    struct rm_buf rx;
    struct rm_buf tx;
    struct tls_sess *s;
    int hs; /* last tls_handshake result */
};

static struct side g_c, g_s;

static void side_init(struct side *sd)
{
    rm_buf_init(&sd->rx, sd->rxd, sizeof sd->rxd);
    rm_buf_init(&sd->tx, sd->txd, sizeof sd->txd);
    sd->s = NULL;
    sd->hs = TLS_WANT_READ;
}

/* Moves up to max bytes (0: all) from a's tx to b's rx. */
static size_t move(struct side *a, struct side *b, size_t max)
{
    size_t n = rm_buf_len(&a->tx);
    if (max && n > max)
        n = max;
    rm_buf_recv_prep(&b->rx);
    if (n > rm_buf_space(&b->rx))
        n = rm_buf_space(&b->rx);
    memcpy(rm_buf_wptr(&b->rx), rm_buf_rptr(&a->tx), n);
    rm_buf_produce(&b->rx, n);
    rm_buf_consume(&a->tx, n);
    return n;
}

/* Runs both handshakes to the end (or an error); step bytes per move (0: all). */
static void pump_handshake(size_t step)
{
    for (int i = 0; i < PUMP_ROUNDS; i++) {
        if (g_c.hs > 0)
            g_c.hs = tls_handshake(g_c.s);
        if (g_s.hs > 0)
            g_s.hs = tls_handshake(g_s.s);
        size_t m = move(&g_c, &g_s, step) + move(&g_s, &g_c, step);
        if (g_c.hs <= 0 && g_s.hs <= 0 && m == 0)
            return;
        if ((g_c.hs < 0 || g_s.hs < 0) && m == 0)
            return;
    }
    fail_msg("handshake did not finish");
}

static struct tls_server_ctx *server_ctx(uint16_t vmin, uint16_t vmax)
{
    static const char *const ec_names[] = {"mx.example.org", "localhost"};
    static const char *const ec2_names[] = {"other.example.org"};
    static const char *const rsa_names[] = {"rsa.example.org"};
    struct tls_cert_cfg certs[3] = {
        {g_path[P_EC_CRT], g_path[P_EC_KEY], ec_names, 2},
        {g_path[P_EC2_CRT], g_path[P_EC2_KEY], ec2_names, 1},
        {g_path[P_RSA_CRT], g_path[P_RSA_KEY], rsa_names, 1},
    };
    struct tls_server_cfg cfg = {certs, 3, vmin, vmax};
    struct tls_server_ctx *ctx = NULL;
    assert_int_equal(tls_server_ctx_new(&cfg, &ctx), 0);
    return ctx;
}

static struct tls_client_ctx *client_ctx(enum tls_verify v, const char *ca, uint16_t vmin,
                                         uint16_t vmax)
{
    struct tls_client_cfg cfg = {v, ca, NULL, vmin, vmax};
    struct tls_client_ctx *ctx = NULL;
    assert_int_equal(tls_client_ctx_new(&cfg, &ctx), 0);
    return ctx;
}

static void start(struct tls_server_ctx *sctx, struct tls_client_ctx *cctx, const char *sni)
{
    side_init(&g_c);
    side_init(&g_s);
    assert_int_equal(tls_server_new(sctx, &g_s.rx, &g_s.tx, &g_s.s), 0);
    assert_int_equal(tls_client_new(cctx, sni, &g_c.rx, &g_c.tx, &g_c.s), 0);
}

static void stop(void)
{
    tls_sess_free(g_c.s);
    tls_sess_free(g_s.s);
    g_c.s = g_s.s = NULL;
}

/* Sends msg from a to b and checks it arrives whole. */
static void send_recv(struct side *a, struct side *b, const char *msg)
{
    size_t n = 0, len = strlen(msg);
    assert_int_equal(tls_write(a->s, (const uint8_t *)msg, len, &n), TLS_OK);
    assert_int_equal(n, len);
    move(a, b, 0);
    uint8_t got[256];
    size_t have = 0;
    while (have < len) {
        size_t k = 0;
        int r = tls_read(b->s, got + have, sizeof got - have, &k);
        assert_int_equal(r, TLS_OK);
        have += k;
    }
    assert_int_equal(have, len);
    assert_memory_equal(got, msg, len);
    size_t k = 0;
    assert_int_equal(tls_read(b->s, got, sizeof got, &k), TLS_WANT_READ);
}

static void tls13_handshake_and_data_both_ways(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    start(sctx, cctx, "mx.example.org");
    assert_false(tls_sess_done(g_s.s));
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_OK);
    assert_int_equal(g_s.hs, TLS_OK);
    assert_true(tls_sess_done(g_c.s));
    assert_string_equal(tls_sess_version(g_s.s), "TLSv1.3");
    assert_string_equal(tls_sess_version(g_c.s), "TLSv1.3");
    assert_string_equal(tls_sess_sni(g_s.s), "mx.example.org");
    assert_true(strlen(tls_sess_cipher(g_s.s)) > 0);
    send_recv(&g_c, &g_s, "EHLO client.example\r\n");
    send_recv(&g_s, &g_c, "250 mx.example.org\r\n");
    /* A long message crosses several records. */
    static uint8_t big[100000], got[100000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    size_t off = 0, have = 0;
    while (have < sizeof big) {
        size_t n = 0;
        int r = tls_write(g_c.s, big + off, sizeof big - off, &n);
        assert_true(r == TLS_OK || r == TLS_WANT_WRITE);
        off += n;
        move(&g_c, &g_s, 0);
        while (have < sizeof got) {
            size_t k = 0;
            r = tls_read(g_s.s, got + have, sizeof got - have, &k);
            if (r == TLS_WANT_READ)
                break;
            assert_int_equal(r, TLS_OK);
            have += k;
        }
    }
    assert_memory_equal(got, big, sizeof big);
    /* Clean close both ways. */
    assert_int_equal(tls_close(g_c.s), TLS_OK);
    move(&g_c, &g_s, 0);
    size_t k = 0;
    assert_int_equal(tls_read(g_s.s, got, 16, &k), TLS_CLOSED);
    assert_int_equal(tls_close(g_s.s), TLS_OK);
    move(&g_s, &g_c, 0);
    assert_int_equal(tls_read(g_c.s, got, 16, &k), TLS_CLOSED);
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void tls12_forced_completes(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_2);
    start(sctx, cctx, "mx.example.org");
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_OK);
    assert_int_equal(g_s.hs, TLS_OK);
    assert_string_equal(tls_sess_version(g_s.s), "TLSv1.2");
    assert_string_equal(tls_sess_sni(g_s.s), "mx.example.org");
    send_recv(&g_c, &g_s, "hello over 1.2");
    send_recv(&g_s, &g_c, "and back");
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

/* A hand-made TLS 1.1 ClientHello (legacy_version 0x0302, no
 * supported_versions): the server must refuse it with an alert. */
static void tls11_client_hello_is_refused(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    side_init(&g_s);
    assert_int_equal(tls_server_new(sctx, &g_s.rx, &g_s.tx, &g_s.s), 0);
    static const uint8_t hello[] = {
        0x16, 0x03, 0x01, 0x00, 0x2d, /* record: handshake, 45 */
        0x01, 0x00, 0x00, 0x29,       /* client_hello, 41 */
        0x03, 0x02,                   /* TLS 1.1 */
        1,    2,    3,    4,    5,    6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
        17,   18,   19,   20,   21,   22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, /* random */
        0x00,                                                                     /* session id */
        0x00, 0x02, 0xc0, 0x13, /* ECDHE-RSA-AES128-SHA */
        0x01, 0x00,             /* null compression */
    };
    assert_true(rm_buf_append(&g_s.rx, hello, sizeof hello));
    int r = tls_handshake(g_s.s);
    assert_int_equal(r, TLS_ERR_VERSION);
    assert_true(strlen(tls_sess_reason(g_s.s)) > 0);
    tls_sess_free(g_s.s);
    g_s.s = NULL;
    tls_server_ctx_free(sctx);
}

/* A client limited to TLS 1.3 against a server limited to 1.2 fails too. */
static void version_mismatch_fails_both_sides(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_2);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_3, TLS_VERSION_1_3);
    start(sctx, cctx, NULL);
    pump_handshake(0);
    /* The client gives up on the 1.2 ServerHello without an alert wolfSSL
     * sends, so the server may still be waiting: it never completes. */
    assert_int_equal(g_c.hs, TLS_ERR_VERSION);
    assert_true(g_s.hs != TLS_OK);
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void read_file(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
}

/* Runs cmd and parses its first hex word into out; returns the length. */
static size_t run_hex(const char *cmd, uint8_t *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[2 * 8192 + 8];
    char *got = fgets(line, sizeof line, p);
    assert_int_equal(pclose(p), 0);
    assert_non_null(got);
    size_t n = 0;
    for (const char *c = line; c[0] && c[1] && c[0] != ' ' && c[0] != '\n' && n < cap; c += 2) {
        unsigned v = 0;
        assert_int_equal(sscanf(c, "%2x", &v), 1);
        out[n++] = (uint8_t)v;
    }
    return n;
}

static void sni_picks_the_certificate(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    /* Each name gets its certificate: DANE-EE 3 0 1 on the full cert tells which. */
    static const struct {
        const char *sni;
        int path;
        uint16_t vmax;
    } cases[] = {
        {"mx.example.org", P_EC_CRT, TLS_VERSION_1_3},
        {"OTHER.example.org", P_EC2_CRT, TLS_VERSION_1_3},
        {"rsa.example.org", P_RSA_CRT, TLS_VERSION_1_3},
        {"unknown.example.org", P_EC_CRT, TLS_VERSION_1_3},
        {NULL, P_EC_CRT, TLS_VERSION_1_3},
        /* 1.2 too, across key types (chosen before wolfSSL_new, see tls.c). */
        {"other.example.org", P_EC2_CRT, TLS_VERSION_1_2},
        {"rsa.example.org", P_RSA_CRT, TLS_VERSION_1_2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "openssl x509 -in %s -outform DER | sha256sum",
                 g_path[cases[i].path]);
        uint8_t h[32];
        assert_int_equal(run_hex(cmd, h, sizeof h), 32);
        struct tls_client_ctx *c = cctx;
        if (cases[i].vmax == TLS_VERSION_1_2)
            c = client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_2);
        start(sctx, c, cases[i].sni);
        pump_handshake(0);
        assert_int_equal(g_c.hs, TLS_OK);
        assert_int_equal(g_s.hs, TLS_OK);
        if (cases[i].sni)
            assert_string_equal(tls_sess_sni(g_s.s), cases[i].sni);
        else
            assert_null(tls_sess_sni(g_s.s));
        struct tls_tlsa t = {3, 0, 1, h, 32};
        int u = 0;
        assert_int_equal(tls_dane_verify(g_c.s, &t, 1, NULL, 0, &u), 0);
        assert_int_equal(u, 3);
        stop();
        if (c != cctx)
            tls_client_ctx_free(c);
    }
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

/* TESTING.md: switching RSA -> ECDSA in wolfSSL's SNI callback fails under
 * 1.2; choosing the context before wolfSSL_new does not. */
static void sni_rsa_default_to_ecdsa_under_tls12(void **state)
{
    (void)state;
    static const char *const ec_names[] = {"mx.example.org"};
    struct tls_cert_cfg certs[2] = {
        {g_path[P_RSA_CRT], g_path[P_RSA_KEY], NULL, 0},
        {g_path[P_EC_CRT], g_path[P_EC_KEY], ec_names, 1},
    };
    struct tls_server_cfg cfg = {certs, 2, TLS_VERSION_1_2, TLS_VERSION_1_3};
    struct tls_server_ctx *sctx = NULL;
    assert_int_equal(tls_server_ctx_new(&cfg, &sctx), 0);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_2);
    start(sctx, cctx, "mx.example.org");
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_OK);
    assert_int_equal(g_s.hs, TLS_OK);
    assert_string_equal(tls_sess_version(g_c.s), "TLSv1.2");
    assert_non_null(strstr(tls_sess_cipher(g_c.s), "ECDSA"));
    send_recv(&g_s, &g_c, "220 ecdsa");
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void reload_keeps_an_existing_session(void **state)
{
    (void)state;
    struct tls_server_ctx *old = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    start(old, cctx, "mx.example.org");
    pump_handshake(0);
    assert_int_equal(g_s.hs, TLS_OK);
    /* SIGHUP: a new context replaces the old, whose owner reference goes. */
    struct tls_server_ctx *fresh = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    tls_server_ctx_free(old);
    send_recv(&g_c, &g_s, "still here");
    send_recv(&g_s, &g_c, "yes");
    stop(); /* the old context is released here (ASan would see a leak otherwise) */
    start(fresh, cctx, "other.example.org");
    pump_handshake(0);
    assert_int_equal(g_s.hs, TLS_OK);
    send_recv(&g_c, &g_s, "new context");
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(fresh);
}

/* A handshake half-way when the context is dropped still completes. */
static void reload_during_handshake(void **state)
{
    (void)state;
    struct tls_server_ctx *old = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    start(old, cctx, "other.example.org");
    tls_server_ctx_free(old);
    tls_client_ctx_free(cctx);
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_OK);
    assert_int_equal(g_s.hs, TLS_OK);
    send_recv(&g_c, &g_s, "ok");
    stop();
}

static void corrupted_record_is_fatal(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    for (int v = 0; v < 2; v++) {
        struct tls_client_ctx *c =
            v ? client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_2) : cctx;
        start(sctx, c, NULL);
        pump_handshake(0);
        assert_int_equal(g_s.hs, TLS_OK);
        size_t n = 0;
        assert_int_equal(tls_write(g_c.s, (const uint8_t *)"secret data", 11, &n), TLS_OK);
        g_c.tx.data[g_c.tx.tail - 3] ^= 0x40; /* flip a bit in the tag */
        move(&g_c, &g_s, 0);
        uint8_t got[64];
        assert_int_equal(tls_read(g_s.s, got, sizeof got, &n), TLS_ERR_PROTO);
        assert_true(strlen(tls_sess_reason(g_s.s)) > 0);
        /* Sticky: the session stays dead. */
        assert_int_equal(tls_read(g_s.s, got, sizeof got, &n), TLS_ERR_PROTO);
        stop();
        if (c != cctx)
            tls_client_ctx_free(c);
    }
    /* Junk instead of a ClientHello. */
    side_init(&g_s);
    assert_int_equal(tls_server_new(sctx, &g_s.rx, &g_s.tx, &g_s.s), 0);
    assert_true(rm_buf_append(&g_s.rx, "EHLO x\r\nMAIL FROM:<>\r\n", 22));
    assert_true(tls_handshake(g_s.s) < 0);
    tls_sess_free(g_s.s);
    g_s.s = NULL;
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void read_before_handshake_is_a_state_error(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    side_init(&g_s);
    assert_int_equal(tls_server_new(sctx, &g_s.rx, &g_s.tx, &g_s.s), 0);
    uint8_t b[8];
    size_t n = 0;
    assert_int_equal(tls_read(g_s.s, b, sizeof b, &n), TLS_ERR_STATE);
    assert_int_equal(tls_write(g_s.s, b, sizeof b, &n), TLS_ERR_STATE);
    assert_int_equal(tls_handshake(g_s.s), TLS_WANT_READ);
    tls_sess_free(g_s.s);
    g_s.s = NULL;
    tls_server_ctx_free(sctx);
}

static void byte_by_byte_handshake(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    for (int v = 0; v < 2; v++) {
        struct tls_client_ctx *cctx = client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2,
                                                 v ? TLS_VERSION_1_2 : TLS_VERSION_1_3);
        start(sctx, cctx, "rsa.example.org");
        pump_handshake(1);
        assert_int_equal(g_c.hs, TLS_OK);
        assert_int_equal(g_s.hs, TLS_OK);
        send_recv(&g_c, &g_s, "byte by byte");
        stop();
        tls_client_ctx_free(cctx);
    }
    tls_server_ctx_free(sctx);
}

/* A small tx: the handshake and writes wait for it to drain. */
static void small_tx_is_back_pressure(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    start(sctx, cctx, "rsa.example.org");
    g_s.tx.cap = TLS_TX_MIN;
    g_c.tx.cap = TLS_TX_MIN;
    pump_handshake(0);
    assert_int_equal(g_s.hs, TLS_OK);
    static uint8_t big[3 * TLS_TX_MIN];
    size_t n = 0;
    assert_int_equal(tls_write(g_s.s, big, sizeof big, &n), TLS_WANT_WRITE);
    assert_true(n > 0 && n < sizeof big);
    assert_true(rm_buf_len(&g_s.tx) <= TLS_TX_MIN);
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void spki_cmd(char *cmd, size_t cap, const char *crt, const char *hash)
{
    snprintf(cmd, cap, "openssl x509 -in %s -noout -pubkey | openssl pkey -pubin -outform DER | %s",
             crt, hash);
}

static void dane_ee(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    static const struct {
        const char *sni;
        int path;
    } who[] = {{"mx.example.org", P_EC_CRT}, {"rsa.example.org", P_RSA_CRT}};
    for (size_t w = 0; w < 2; w++) {
        char cmd[512];
        uint8_t spki256[32], spki512[64], cert256[32], other[32];
        static uint8_t spki_full[4096], cert_full[4096];
        spki_cmd(cmd, sizeof cmd, g_path[who[w].path], "sha256sum");
        assert_int_equal(run_hex(cmd, spki256, sizeof spki256), 32);
        spki_cmd(cmd, sizeof cmd, g_path[who[w].path], "sha512sum");
        assert_int_equal(run_hex(cmd, spki512, sizeof spki512), 64);
        spki_cmd(cmd, sizeof cmd, g_path[who[w].path], "xxd -p -c 100000");
        size_t spki_len = run_hex(cmd, spki_full, sizeof spki_full);
        snprintf(cmd, sizeof cmd, "openssl x509 -in %s -outform DER | sha256sum",
                 g_path[who[w].path]);
        assert_int_equal(run_hex(cmd, cert256, sizeof cert256), 32);
        snprintf(cmd, sizeof cmd, "openssl x509 -in %s -outform DER | xxd -p -c 100000",
                 g_path[who[w].path]);
        size_t cert_len = run_hex(cmd, cert_full, sizeof cert_full);
        spki_cmd(cmd, sizeof cmd, g_path[P_EC2_CRT], "sha256sum");
        assert_int_equal(run_hex(cmd, other, sizeof other), 32);

        start(sctx, cctx, who[w].sni);
        pump_handshake(0);
        assert_int_equal(g_c.hs, TLS_OK);
        int u = 0;
        struct tls_tlsa t311 = {3, 1, 1, spki256, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &t311, 1, NULL, 0, &u), 0);
        assert_int_equal(u, 3);
        struct tls_tlsa t312 = {3, 1, 2, spki512, 64};
        assert_int_equal(tls_dane_verify(g_c.s, &t312, 1, NULL, 0, NULL), 0);
        struct tls_tlsa t310 = {3, 1, 0, spki_full, spki_len};
        assert_int_equal(tls_dane_verify(g_c.s, &t310, 1, NULL, 0, NULL), 0);
        struct tls_tlsa t301 = {3, 0, 1, cert256, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &t301, 1, NULL, 0, NULL), 0);
        struct tls_tlsa t300 = {3, 0, 0, cert_full, cert_len};
        assert_int_equal(tls_dane_verify(g_c.s, &t300, 1, NULL, 0, NULL), 0);
        /* Mismatch: another key's hash, a flipped bit, a short hash. */
        struct tls_tlsa bad = {3, 1, 1, other, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &bad, 1, NULL, 0, NULL), TLS_ERR_DANE_NOMATCH);
        spki256[5] ^= 1;
        assert_int_equal(tls_dane_verify(g_c.s, &t311, 1, NULL, 0, NULL), TLS_ERR_DANE_NOMATCH);
        spki256[5] ^= 1;
        /* Unusable: PKIX usages, unknown selector/mtype, wrong length. */
        struct tls_tlsa unusable[] = {
            {1, 1, 1, spki256, 32}, {3, 2, 1, spki256, 32}, {3, 1, 3, spki256, 32},
            {3, 1, 1, spki256, 31}, {0, 0, 1, cert256, 32},
        };
        assert_int_equal(tls_dane_verify(g_c.s, unusable, 5, NULL, 0, NULL), TLS_ERR_DANE_UNUSABLE);
        /* One match among mismatches and unusable ones is enough. */
        struct tls_tlsa mixed[] = {unusable[0], bad, t311};
        assert_int_equal(tls_dane_verify(g_c.s, mixed, 3, NULL, 0, NULL), 0);
        /* DANE-TA does not take a self-signed leaf alone (not a chain). */
        struct tls_tlsa ta = {2, 0, 1, cert256, 32};
        const char *names[] = {who[w].sni};
        assert_int_equal(tls_dane_verify(g_c.s, &ta, 1, names, 1, NULL), TLS_ERR_DANE_NOMATCH);
        stop();
    }
    /* Not after a handshake, and not on a server session. */
    start(sctx, cctx, NULL);
    uint8_t h[32] = {0};
    struct tls_tlsa t = {3, 1, 1, h, 32};
    assert_int_equal(tls_dane_verify(g_c.s, &t, 1, NULL, 0, NULL), TLS_ERR_STATE);
    pump_handshake(0);
    assert_int_equal(tls_dane_verify(g_s.s, &t, 1, NULL, 0, NULL), TLS_ERR_STATE);
    stop();
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static struct tls_server_ctx *ca_server_ctx(void)
{
    struct tls_cert_cfg certs[1] = {{g_path[P_LEAF_CHAIN], g_path[P_LEAF_KEY], NULL, 0}};
    struct tls_server_cfg cfg = {certs, 1, TLS_VERSION_1_2, TLS_VERSION_1_3};
    struct tls_server_ctx *ctx = NULL;
    assert_int_equal(tls_server_ctx_new(&cfg, &ctx), 0);
    return ctx;
}

static void dane_ta(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = ca_server_ctx();
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_3);
    char cmd[512];
    uint8_t ca256[32], caspki[32], leaf256[32];
    snprintf(cmd, sizeof cmd, "openssl x509 -in %s -outform DER | sha256sum", g_path[P_CA_CRT]);
    assert_int_equal(run_hex(cmd, ca256, sizeof ca256), 32);
    spki_cmd(cmd, sizeof cmd, g_path[P_CA_CRT], "sha256sum");
    assert_int_equal(run_hex(cmd, caspki, sizeof caspki), 32);
    snprintf(cmd, sizeof cmd, "openssl x509 -in %s -outform DER | sha256sum", g_path[P_LEAF_CHAIN]);
    assert_int_equal(run_hex(cmd, leaf256, sizeof leaf256), 32);
    for (int v = 0; v < 2; v++) {
        struct tls_client_ctx *c =
            v ? client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2, TLS_VERSION_1_2) : cctx;
        start(sctx, c, "mx.ca.example");
        pump_handshake(0);
        assert_int_equal(g_c.hs, TLS_OK);
        const char *good[] = {"ca.example", "mx.ca.example"};
        const char *wrong[] = {"ca.example", "mx.elsewhere.example"};
        int u = 0;
        struct tls_tlsa t201 = {2, 0, 1, ca256, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &t201, 1, good, 2, &u), 0);
        assert_int_equal(u, 2);
        struct tls_tlsa t211 = {2, 1, 1, caspki, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &t211, 1, good, 2, &u), 0);
        /* The name check. */
        assert_int_equal(tls_dane_verify(g_c.s, &t211, 1, wrong, 2, NULL), TLS_ERR_DANE_NOMATCH);
        assert_int_equal(tls_dane_verify(g_c.s, &t211, 1, NULL, 0, NULL), TLS_ERR_DANE_NOMATCH);
        /* The leaf as "TA" does not count as DANE-TA; as DANE-EE it does. */
        struct tls_tlsa t201leaf = {2, 0, 1, leaf256, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &t201leaf, 1, good, 2, NULL), TLS_ERR_DANE_NOMATCH);
        struct tls_tlsa t301 = {3, 0, 1, leaf256, 32};
        assert_int_equal(tls_dane_verify(g_c.s, &t301, 1, wrong, 2, &u), 0);
        assert_int_equal(u, 3);
        caspki[0] ^= 1;
        assert_int_equal(tls_dane_verify(g_c.s, &t211, 1, good, 2, NULL), TLS_ERR_DANE_NOMATCH);
        caspki[0] ^= 1;
        stop();
        if (c != cctx)
            tls_client_ctx_free(c);
    }
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void client_verify_against_a_ca(void **state)
{
    (void)state;
    struct tls_server_ctx *sctx = ca_server_ctx();
    struct tls_client_ctx *cctx =
        client_ctx(TLS_VERIFY_CA, g_path[P_CA_CRT], TLS_VERSION_1_2, TLS_VERSION_1_3);
    start(sctx, cctx, "mx.ca.example");
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_OK);
    assert_int_equal(g_s.hs, TLS_OK);
    stop();
    /* Host name mismatch. */
    start(sctx, cctx, "mx.elsewhere.example");
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_ERR_NAME);
    assert_true(strlen(tls_sess_reason(g_c.s)) > 0);
    stop();
    /* The self-signed certificate does not chain to the CA. */
    struct tls_server_ctx *ss = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    start(ss, cctx, "mx.example.org");
    pump_handshake(0);
    assert_int_equal(g_c.hs, TLS_ERR_VERIFY);
    stop();
    /* No name with TLS_VERIFY_CA is a config error. */
    side_init(&g_c);
    assert_int_equal(tls_client_new(cctx, NULL, &g_c.rx, &g_c.tx, &g_c.s), TLS_ERR_CONFIG);
    tls_server_ctx_free(ss);
    tls_client_ctx_free(cctx);
    tls_server_ctx_free(sctx);
}

static void bad_config_is_refused(void **state)
{
    (void)state;
    struct tls_server_ctx *ctx = NULL;
    /* Key of another certificate. */
    struct tls_cert_cfg mism[1] = {{g_path[P_EC_CRT], g_path[P_EC2_KEY], NULL, 0}};
    struct tls_server_cfg cfg = {mism, 1, TLS_VERSION_1_2, TLS_VERSION_1_3};
    assert_int_equal(tls_server_ctx_new(&cfg, &ctx), TLS_ERR_KEY_MISMATCH);
    struct tls_cert_cfg missing[1] = {{"/nonexistent.pem", g_path[P_EC_KEY], NULL, 0}};
    cfg.certs = missing;
    assert_int_equal(tls_server_ctx_new(&cfg, &ctx), TLS_ERR_CERT);
    cfg.certs = mism;
    cfg.cert_count = 0;
    assert_int_equal(tls_server_ctx_new(&cfg, &ctx), TLS_ERR_CONFIG);
    struct tls_cert_cfg ok[1] = {{g_path[P_EC_CRT], g_path[P_EC_KEY], NULL, 0}};
    struct tls_server_cfg v = {ok, 1, 0x0302, TLS_VERSION_1_3};
    assert_int_equal(tls_server_ctx_new(&v, &ctx), TLS_ERR_CONFIG);
    struct tls_client_cfg cc = {TLS_VERIFY_CA, "/nonexistent.pem", NULL, TLS_VERSION_1_2,
                                TLS_VERSION_1_3};
    struct tls_client_ctx *c = NULL;
    assert_int_equal(tls_client_ctx_new(&cc, &c), TLS_ERR_CERT);
    assert_string_equal(tls_strerror(TLS_ERR_KEY_MISMATCH),
                        "private key does not match the certificate");
    assert_string_equal(tls_strerror(-ENOENT), "No such file or directory");
    tls_server_ctx_free(NULL);
    tls_client_ctx_free(NULL);
    tls_sess_free(NULL);
}

static void selfsigned_files_are_private_and_name_the_host(void **state)
{
    (void)state;
    struct stat st;
    assert_int_equal(stat(g_path[P_EC_KEY], &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(g_path[P_EC_CRT], &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char cmd[512], text[16384];
    char out[128];
    snprintf(out, sizeof out, "%s/x509.txt", g_dir);
    snprintf(cmd, sizeof cmd, "openssl x509 -in %s -noout -text > %s", g_path[P_EC_CRT], out);
    assert_int_equal(system(cmd), 0);
    read_file(out, text, sizeof text);
    assert_non_null(strstr(text, "CN = mx.example.org"));
    assert_non_null(strstr(text, "DNS:mx.example.org"));
    assert_non_null(strstr(text, "DNS:localhost"));
    assert_non_null(strstr(text, "IP Address:127.0.0.1"));
    assert_non_null(strstr(text, "ecdsa-with-SHA256"));
    assert_non_null(strstr(text, "prime256v1"));
    /* openssl agrees the key and the certificate pair up, and that it verifies. */
    snprintf(cmd, sizeof cmd, "openssl verify -CAfile %s %s >/dev/null 2>&1", g_path[P_EC_CRT],
             g_path[P_EC_CRT]);
    assert_int_equal(system(cmd), 0);
    /* Bad SAN entries. */
    const char *bad[] = {"URI:x"};
    char c2[128], k2[128];
    snprintf(c2, sizeof c2, "%s/bad.crt", g_dir);
    snprintf(k2, sizeof k2, "%s/bad.key", g_dir);
    assert_int_equal(tls_selfsigned_write(c2, k2, "x", bad, 1, 1), TLS_ERR_CONFIG);
    const char *bad_ip[] = {"IP:300.1.1.1"};
    assert_int_equal(tls_selfsigned_write(c2, k2, "x", bad_ip, 1, 1), TLS_ERR_CONFIG);
    const char *ok[] = {"DNS:x"};
    char nodir[160];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir.crt", g_dir);
    assert_int_equal(tls_selfsigned_write(nodir, k2, "x", ok, 1, 1), -ENOENT);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench_handshakes(void **state)
{
    (void)state;
    if (!getenv("TLS_BENCH"))
        skip();
    struct tls_server_ctx *sctx = server_ctx(TLS_VERSION_1_2, TLS_VERSION_1_3);
    static const char *const names[] = {"mx.example.org", "rsa.example.org"};
    for (int v = 0; v < 2; v++) {
        struct tls_client_ctx *cctx = client_ctx(TLS_VERIFY_NONE, NULL, TLS_VERSION_1_2,
                                                 v ? TLS_VERSION_1_2 : TLS_VERSION_1_3);
        for (int k = 0; k < 2; k++) {
            int n = 0;
            double t0 = now_s();
            while (now_s() - t0 < 2.0) {
                start(sctx, cctx, names[k]);
                pump_handshake(0);
                assert_int_equal(g_s.hs, TLS_OK);
                stop();
                n++;
            }
            printf("bench: %s %s: %.0f full handshakes/s\n", v ? "TLSv1.2" : "TLSv1.3",
                   k ? "RSA-2048" : "ECDSA-P256", n / (now_s() - t0));
        }
        tls_client_ctx_free(cctx);
    }
    tls_server_ctx_free(sctx);
}

static int sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/test_tls.XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    static const char *const files[] = {"ec.crt",  "ec.key", "ec2.crt",  "ec2.key", "rsa.crt",
                                        "rsa.key", "ca.crt", "leaf.pem", "leaf.key"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        snprintf(g_path[i], sizeof g_path[i], "%s/%s", g_dir, files[i]);
    const char *san[] = {"DNS:mx.example.org", "DNS:localhost", "IP:127.0.0.1", "IP:::1"};
    if (tls_selfsigned_write(g_path[P_EC_CRT], g_path[P_EC_KEY], "mx.example.org", san, 4, 30))
        return -1;
    const char *san2[] = {"DNS:other.example.org"};
    if (tls_selfsigned_write(g_path[P_EC2_CRT], g_path[P_EC2_KEY], "other.example.org", san2, 1,
                             30))
        return -1;
    if (sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 30 "
           "-subj /CN=rsa.example.org -addext subjectAltName=DNS:rsa.example.org 2>/dev/null",
           g_path[P_RSA_KEY], g_path[P_RSA_CRT]))
        return -1;
    if (sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
           "-keyout ca.key -out ca.crt -days 30 -subj '/CN=Test CA' "
           "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign "
           "2>/dev/null && "
           "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key "
           "-out leaf.csr -subj /CN=mx.ca.example -addext subjectAltName=DNS:mx.ca.example "
           "2>/dev/null && "
           "openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
           "-copy_extensions copy -days 30 -out leaf.crt 2>/dev/null && "
           "cat leaf.crt ca.crt > leaf.pem",
           g_dir))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return sh("rm -rf %s", g_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(selfsigned_files_are_private_and_name_the_host),
        cmocka_unit_test(tls13_handshake_and_data_both_ways),
        cmocka_unit_test(tls12_forced_completes),
        cmocka_unit_test(tls11_client_hello_is_refused),
        cmocka_unit_test(version_mismatch_fails_both_sides),
        cmocka_unit_test(sni_picks_the_certificate),
        cmocka_unit_test(sni_rsa_default_to_ecdsa_under_tls12),
        cmocka_unit_test(reload_keeps_an_existing_session),
        cmocka_unit_test(reload_during_handshake),
        cmocka_unit_test(corrupted_record_is_fatal),
        cmocka_unit_test(read_before_handshake_is_a_state_error),
        cmocka_unit_test(byte_by_byte_handshake),
        cmocka_unit_test(small_tx_is_back_pressure),
        cmocka_unit_test(dane_ee),
        cmocka_unit_test(dane_ta),
        cmocka_unit_test(client_verify_against_a_ca),
        cmocka_unit_test(bad_config_is_refused),
        cmocka_unit_test(bench_handshakes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
