/* tests/unit/test_smtpd.c: the SMTP server session, fed like the worker does.
 *
 * Real memory throughout: an rm_pool with 4 KiB chunks (bodies span several),
 * a real rm_buf for tx, an arena of SMTPD_ARENA_BYTES. The harness keeps an
 * rx buffer like a connection slot: unconsumed bytes stay and more are
 * appended. Replies are checked by code AND enhanced status.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
/* cmocka.h needs stdarg.h, stddef.h, setjmp.h and stdint.h before it. */
#include <cmocka.h>

#include "mta/smtpd.h"

#define HOST        "mx.example.net"
#define PEER_ADDR   "192.0.2.7"
#define NOW_MS      1700000000123ull /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define DATE_TEXT   "Tue, 14 Nov 2023 22:13:20 +0000"
#define IDGEN_SEED  0x1234567u
#define CHUNK_BYTES 4096u
#define POOL_CHUNKS 256u
#define RX_CAP      (64u * 1024u)
#define OUT_CAP     (256u * 1024u)
#define BODY_CAP    (512u * 1024u)
#define STORES_MAX  8u

struct stored {
    uint8_t *body;
    size_t len;
    char id[Q_ID_STR_LEN + 1];
    char sender[300];
    char rcpts[4096]; /* "addr|notify|orcpt" per recipient, ";" between */
    uint32_t rcpt_count;
    uint32_t flags;
    uint8_t ret;
    char envid[128];
    char client[64];
    char helo[300];
    char listener[64];
    char auth_user[300];
    uint64_t arrival_ms;
    uint64_t next_attempt_ms;
    uint64_t size;
};

struct h {
    struct smtpd_cfg cfg;
    struct smtpd_peer peer;
    size_t tx_cap;
    bool manual_store;     /* leave STORE outstanding for the test to answer */
    int store_status;      /* what auto-answered stores get */
    bool manual_tls;       /* leave EV_STARTTLS for the test (else: discard rx, tls_started) */
    const char *good_user; /* EV_AUTH succeeds for these credentials */
    const char *good_password;

    struct rm_pool pool;
    uint8_t *txmem;
    struct rm_buf tx;
    uint8_t *arena;
    struct q_rcpt *rcpts;
    struct q_idgen idgen;
    struct smtpd s;
    bool started;

    uint8_t rx[RX_CAP];
    size_t rx_len;
    char out[OUT_CAP];
    size_t out_len;
    size_t out_pos;
    bool closed;
    unsigned stores;
    struct stored st[STORES_MAX];
    unsigned starttls_events;
    size_t rx_discarded; /* octets dropped after STARTTLS, as the worker must */
    unsigned auth_events;
    char cred_user[300];
    char cred_password[600];
};

static struct h *h_new(void)
{
    struct h *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    h->cfg.hostname = HOST;
    h->cfg.listener = "submission";
    h->cfg.message_size_max = 1u << 20;
    h->cfg.rcpt_max = 10;
    h->cfg.command_line_max = SMTPD_COMMAND_LINE_MAX_DEFAULT;
    h->cfg.text_line_max = SMTPD_TEXT_LINE_MAX_DEFAULT;
    h->cfg.errors_max = SMTPD_ERRORS_MAX_DEFAULT;
    h->peer.addr = PEER_ADDR;
    h->peer.relay_ok = true;
    h->tx_cap = 16384;
    for (unsigned i = 0; i < STORES_MAX; i++) {
        h->st[i].body = malloc(BODY_CAP);
        assert_non_null(h->st[i].body);
    }
    return h;
}

static void h_collect(struct h *h)
{
    size_t n = rm_buf_len(&h->tx);
    assert_true(h->out_len + n < OUT_CAP);
    memcpy(h->out + h->out_len, rm_buf_rptr(&h->tx), n);
    h->out_len += n;
    h->out[h->out_len] = '\0';
    rm_buf_consume(&h->tx, n);
}

static void h_start_pool(struct h *h, size_t chunks)
{
    assert_int_equal(rm_pool_init(&h->pool, CHUNK_BYTES, chunks), 0);
    h->txmem = malloc(h->tx_cap);
    assert_non_null(h->txmem);
    rm_buf_init(&h->tx, h->txmem, h->tx_cap);
    h->arena = malloc(SMTPD_ARENA_BYTES(h->cfg.rcpt_max));
    /* more records than rcpt_max, so the limit tested is cfg's */
    h->rcpts = calloc(h->cfg.rcpt_max + 4, sizeof(*h->rcpts));
    assert_non_null(h->arena);
    assert_non_null(h->rcpts);
    q_idgen_init(&h->idgen, 3, IDGEN_SEED);
    struct smtpd_mem mem = {
        .tx = &h->tx,
        .pool = &h->pool,
        .arena = h->arena,
        .arena_cap = SMTPD_ARENA_BYTES(h->cfg.rcpt_max),
        .rcpts = h->rcpts,
        .rcpt_cap = h->cfg.rcpt_max + 4,
        .idgen = &h->idgen,
    };
    smtpd_init(&h->s, &h->cfg, &mem, &h->peer, NOW_MS);
    h->started = true;
    h_collect(h);
}

static void h_start(struct h *h)
{
    h_start_pool(h, POOL_CHUNKS);
}

/* Stops the session and checks that every chunk came home. */
static void h_stop(struct h *h)
{
    if (!h->started)
        return;
    if (!smtpd_storing(&h->s))
        assert_int_equal(h->pool.free_count, h->pool.count);
    rm_pool_fini(&h->pool);
    free(h->txmem);
    free(h->arena);
    free(h->rcpts);
    h->started = false;
}

static void h_free(struct h *h)
{
    h_stop(h);
    for (unsigned i = 0; i < STORES_MAX; i++)
        free(h->st[i].body);
    free(h);
}

static void copy_span(char *dst, size_t cap, struct rm_span s)
{
    assert_true(s.len < cap);
    if (s.len > 0)
        memcpy(dst, s.p, s.len);
    dst[s.len] = '\0';
}

/* Takes the message from the session, checking what smtpd.h promises:
 * CRLF line ends only, the envelope's size, strings outside the rx buffer. */
static void h_capture(struct h *h)
{
    assert_true(smtpd_storing(&h->s));
    assert_true(h->stores < STORES_MAX);
    struct stored *st = &h->st[h->stores++];
    struct q_id id;
    const struct q_env *env;
    const struct rm_chunk *body;
    smtpd_message(&h->s, &id, &env, &body);
    q_id_format(&id, st->id);
    st->len = 0;
    for (const struct rm_chunk *c = body; c; c = c->next) {
        assert_true(c->len <= c->cap);
        assert_true(st->len + c->len <= BODY_CAP);
        memcpy(st->body + st->len, c->data, c->len);
        st->len += c->len;
    }
    assert_int_equal(env->size, st->len);
    for (size_t i = 0; i < st->len; i++) {
        if (st->body[i] == '\r')
            assert_true(i + 1 < st->len && st->body[i + 1] == '\n');
        if (st->body[i] == '\n')
            assert_true(i > 0 && st->body[i - 1] == '\r');
    }
    assert_true(st->len >= 2 && memcmp(st->body + st->len - 2, "\r\n", 2) == 0);
    copy_span(st->sender, sizeof(st->sender), env->sender);
    copy_span(st->envid, sizeof(st->envid), env->envid);
    copy_span(st->client, sizeof(st->client), env->client);
    copy_span(st->helo, sizeof(st->helo), env->helo);
    copy_span(st->listener, sizeof(st->listener), env->listener);
    copy_span(st->auth_user, sizeof(st->auth_user), env->auth_user);
    if (!smtpd_authenticated(&h->s))
        assert_int_equal(env->auth_user.len, 0);
    st->rcpt_count = env->rcpt_count;
    st->flags = env->flags;
    st->ret = env->ret;
    st->arrival_ms = env->arrival_ms;
    st->next_attempt_ms = env->next_attempt_ms;
    st->size = env->size;
    size_t n = 0;
    st->rcpts[0] = '\0';
    for (uint32_t i = 0; i < env->rcpt_count; i++) {
        const struct q_rcpt *r = &env->rcpts[i];
        assert_int_equal(r->state, Q_RCPT_PENDING);
        assert_int_equal(r->attempts, 0);
        int k = snprintf(st->rcpts + n, sizeof(st->rcpts) - n, "%s%.*s|%u|%.*s", i ? ";" : "",
                         (int)r->addr.len, (const char *)r->addr.p, (unsigned)r->notify,
                         (int)r->orcpt.len, (const char *)r->orcpt.p);
        assert_true(k > 0 && (size_t)k < sizeof(st->rcpts) - n);
        n += (size_t)k;
    }
    /* The envelope must not point into the rx buffer, which is reused. */
    const uint8_t *rx_lo = h->rx, *rx_hi = h->rx + RX_CAP;
    assert_false(env->sender.p >= rx_lo && env->sender.p < rx_hi);
    for (uint32_t i = 0; i < env->rcpt_count; i++)
        assert_false(env->rcpts[i].addr.p >= rx_lo && env->rcpts[i].addr.p < rx_hi);
}

/* Feeds what rx holds, like the worker: STORE is captured and answered
 * (unless manual_store), replies go to out. */
static void h_pump(struct h *h)
{
    for (unsigned guard = 0; guard < 10u * RX_CAP + 100; guard++) {
        h_collect(h);
        if (h->closed || smtpd_storing(&h->s))
            return;
        enum smtpd_ev ev;
        size_t n = smtpd_feed(&h->s, h->rx, h->rx_len, NOW_MS, &ev);
        assert_true(n <= h->rx_len);
        memmove(h->rx, h->rx + n, h->rx_len - n);
        h->rx_len -= n;
        h_collect(h);
        switch (ev) {
        case SMTPD_EV_NONE:
            if (n == 0)
                return;
            break;
        case SMTPD_EV_STORE:
            h_capture(h);
            if (h->manual_store)
                return;
            smtpd_stored(&h->s, h->store_status, NOW_MS);
            break;
        case SMTPD_EV_CLOSE:
            assert_true(smtpd_closing(&h->s));
            h->closed = true;
            return;
        case SMTPD_EV_STARTTLS:
            h->starttls_events++;
            if (h->manual_tls)
                return;
            /* The worker's duty: what followed STARTTLS came in clear, drop it. */
            h->rx_discarded += h->rx_len;
            h->rx_len = 0;
            smtpd_tls_started(&h->s, NOW_MS);
            break;
        case SMTPD_EV_AUTH: {
            h->auth_events++;
            struct rm_span u, pw;
            smtpd_auth_credentials(&h->s, &u, &pw);
            copy_span(h->cred_user, sizeof(h->cred_user), u);
            copy_span(h->cred_password, sizeof(h->cred_password), pw);
            bool ok = h->good_user && strcmp(h->cred_user, h->good_user) == 0 &&
                      strcmp(h->cred_password, h->good_password) == 0;
            smtpd_auth_result(&h->s, ok, NOW_MS);
            break;
        }
        }
    }
    fail_msg("the session does not settle");
}

static void h_send_n(struct h *h, const void *p, size_t n)
{
    assert_true(h->rx_len + n <= RX_CAP);
    memcpy(h->rx + h->rx_len, p, n);
    h->rx_len += n;
    h_pump(h);
}

static void h_send(struct h *h, const char *s)
{
    h_send_n(h, s, strlen(s));
}

/* The next reply line (without CRLF), or NULL. */
static const char *h_line(struct h *h)
{
    static char line[SMTP_REPLY_LINE_MAX + 1];
    if (h->out_pos >= h->out_len)
        return NULL;
    const char *start = h->out + h->out_pos;
    const char *end = strstr(start, "\r\n");
    assert_non_null(end);
    size_t n = (size_t)(end - start);
    assert_true(n < sizeof(line));
    memcpy(line, start, n);
    line[n] = '\0';
    h->out_pos += n + 2;
    return line;
}

/* The next reply line starts with want (e.g. "501 5.1.7 "). */
static void h_expect(struct h *h, const char *want)
{
    const char *line = h_line(h);
    if (line == NULL)
        fail_msg("expected \"%s\", got nothing", want);
    if (strncmp(line, want, strlen(want)) != 0)
        fail_msg("expected \"%s\", got \"%s\"", want, line);
}

static void h_expect_nothing(struct h *h)
{
    const char *line = h_line(h);
    if (line != NULL)
        fail_msg("expected no reply, got \"%s\"", line);
}

static void h_skip_ehlo(struct h *h)
{
    for (unsigned i = 0; i < 7; i++)
        h_expect(h, "250-");
    h_expect(h, "250 CHUNKING");
}

/* Started, greeted, EHLO done: the common start. */
static struct h *h_ready(struct h *h)
{
    h_start(h);
    h_expect(h, "220 " HOST " ESMTP ringmta");
    h_send(h, "EHLO client.example\r\n");
    h_skip_ehlo(h);
    return h;
}

/* ...plus MAIL and one RCPT. */
static struct h *h_in_tx(struct h *h)
{
    h_ready(h);
    h_send(h, "MAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    return h;
}

static int setup(void **state)
{
    *state = h_new();
    return 0;
}

static int teardown(void **state)
{
    h_free(*state);
    return 0;
}

static void expected_id(char out[Q_ID_STR_LEN + 1], unsigned nth)
{
    struct q_idgen g;
    q_idgen_init(&g, 3, IDGEN_SEED);
    struct q_id id;
    for (unsigned i = 0; i <= nth; i++)
        q_id_make(&g, NOW_MS, &id);
    q_id_format(&id, out);
}

static size_t received_len(const struct stored *st)
{
    const char *b = (const char *)st->body;
    assert_true(st->len > 10 && memcmp(b, "Received: ", 10) == 0);
    for (size_t i = 0; i + 1 < st->len; i++) {
        if (b[i] == '\r' && b[i + 1] == '\n' && (i + 2 == st->len || b[i + 2] != '\t'))
            return i + 2;
    }
    fail_msg("no end of Received:");
    return 0;
}

static void assert_body_after_received(const struct stored *st, const char *want)
{
    size_t r = received_len(st);
    size_t n = strlen(want);
    if (st->len - r != n || memcmp(st->body + r, want, n) != 0)
        fail_msg("body \"%.*s\" != \"%s\"", (int)(st->len - r), (const char *)st->body + r, want);
}

/* ---- greeting, EHLO, HELO ------------------------------------------------- */

static void greeting_is_220_with_hostname(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 " HOST " ESMTP ringmta");
    h_expect_nothing(h);
}

static void ehlo_advertises_exactly_the_extensions(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    const char *want[] = {"250-" HOST,    "250-PIPELINING", "250-SIZE 1048576",
                          "250-8BITMIME", "250-SMTPUTF8",   "250-ENHANCEDSTATUSCODES",
                          "250-DSN",      "250 CHUNKING"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const char *line = h_line(h);
        assert_non_null(line);
        assert_string_equal(line, want[i]);
    }
    h_expect_nothing(h);
}

static void ehlo_and_helo_without_argument_get_501(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO\r\nHELO\r\nEHLO   \r\n");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
    assert_int_equal(h->s.stats.errors, 3);
    assert_int_equal(h->s.stats.last_error.code, 501);
}

static void ehlo_argument_of_255_ok_256_gets_501(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    char line[300];
    memcpy(line, "EHLO ", 5);
    memset(line + 5, 'h', 256);
    memcpy(line + 5 + 256, "\r\n", 3);
    h_send(h, line);
    h_expect(h, "501 5.5.4 ");
    memcpy(line + 5 + 255, "\r\n", 3);
    h_send(h, line);
    h_skip_ehlo(h);
}

static void ehlo_argument_with_control_octet_gets_501(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO a\rb\r\nEHLO a\x01\r\nHELO \xc3\xa9t\xc3\xa9\r\n");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
}

static void helo_replies_250_hostname(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "HELO client.example\r\n");
    const char *line = h_line(h);
    assert_string_equal(line, "250 " HOST);
    h_expect_nothing(h);
}

static void helo_then_esmtp_parameters_get_555(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "HELO client.example\r\n");
    h_expect(h, "250 " HOST);
    h_send(h, "MAIL FROM:<a@example.org> SIZE=10\r\n");
    h_expect(h, "555 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_send(h, "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n");
    h_expect(h, "555 5.5.4 ");
    h_send(h, "RCPT TO:<b@example.com>\r\n");
    h_expect(h, "250 2.1.5 ");
}

static void ehlo_resets_the_transaction(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "EHLO again.example\r\n");
    h_skip_ehlo(h);
    h_send(h, "RCPT TO:<x@example.com>\r\nDATA\r\n");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "503 5.5.1 ");
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "250 2.1.0 ");
}

/* ---- MAIL ----------------------------------------------------------------- */

static void mail_before_ehlo_gets_503(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "503 5.5.1 ");
}

static void nested_mail_gets_503(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nMAIL FROM:<b@example.org>\r\n");
    h_expect(h, "250 2.1.0 Ok");
    h_expect(h, "503 5.5.1 ");
    h_send(h, "RCPT TO:<c@example.com>\r\nMAIL FROM:<b@example.org>\r\n");
    h_expect(h, "250 2.1.5 Ok");
    h_expect(h, "503 5.5.1 ");
}

static void mail_accepts_one_space_after_colon_and_any_case(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "mail from: <a@example.org> size=100 body=8bitmime\r\nRSET\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.0.0 ");
    h_send(h, "MaIl FrOm:<>\r\nRSET\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.0.0 ");
    h_send(h, "MAIL FROM:  <a@example.org>\r\n");
    h_expect(h, "501 5.1.7 ");
    h_send(h, "MAIL FROM <a@example.org>\r\nMAIL TO:<a@example.org>\r\nMAIL\r\n");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
}

static void mail_bad_path_gets_501_517(void **state)
{
    struct h *h = *state;
    h_ready(h);
    const char *bad[] = {
        "MAIL FROM:\r\n",
        "MAIL FROM:a@example.org\r\n",
        "MAIL FROM:<a@example.org\r\n",
        "MAIL FROM:<a@@example.org>\r\n",
        "MAIL FROM:<a@example.org>junk\r\n",
        "MAIL FROM:<postmaster>\r\n",
        "MAIL FROM:<a\xc3@example.org> SMTPUTF8\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h_send(h, bad[i]);
        h_expect(h, "501 5.1.7 ");
    }
}

static void mail_source_route_gets_501_517(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<@relay.example:a@example.org>\r\n");
    h_expect(h, "501 5.1.7 ");
}

static void mail_non_ascii_without_smtputf8_gets_553(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<j\xc3\xb6rg@example.org>\r\n");
    h_expect(h, "553 5.6.7 ");
    h_send(h, "MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8\r\n");
    h_expect(h, "250 2.1.0 ");
    h_send(h, "RCPT TO:<m\xc3\xbc@b\xc3\xbc\x63her.example>\r\n");
    h_expect(h, "250 2.1.5 ");
}

static void mail_size_param_checks_value_and_limit(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> SIZE=x\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> SIZE=\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> SIZE\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> SIZE=99999999999999999999999\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> SIZE=1048577\r\n");
    h_expect(h, "552 5.3.4 ");
    h_send(h, "MAIL FROM:<a@example.org> SIZE=1048576\r\n");
    h_expect(h, "250 2.1.0 ");
}

static void mail_body_param_takes_7bit_and_8bitmime_only(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n");
    h_expect(h, "555 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> BODY=9BIT\r\n");
    h_expect(h, "555 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> BODY=7BIT\r\nRSET\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.0.0 ");
    h_send(h, "MAIL FROM:<a@example.org> BODY=8BITMIME\r\n");
    h_expect(h, "250 2.1.0 ");
    assert_true(h->s.env.flags & Q_ENV_8BITMIME);
}

static void mail_smtputf8_with_value_gets_501(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n");
    h_expect(h, "501 5.5.4 ");
}

static void mail_ret_param_takes_full_or_hdrs(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> RET=ALL\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> RET=\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> RET=hdrs\r\n");
    h_expect(h, "250 2.1.0 ");
    assert_int_equal(h->s.env.ret, Q_RET_HDRS);
    h_send(h, "RSET\r\nMAIL FROM:<a@example.org> RET=FULL\r\n");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "250 2.1.0 ");
    assert_int_equal(h->s.env.ret, Q_RET_FULL);
}

static void mail_envid_param_is_xtext_up_to_100(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> ENVID=a+2b\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> ENVID=a\xc3\xa9\r\n");
    h_expect(h, "501 5.5.4 ");
    char line[300];
    int n = snprintf(line, sizeof(line), "MAIL FROM:<a@example.org> ENVID=%0101d\r\n", 0);
    assert_true(n > 0);
    h_send(h, line);
    h_expect(h, "501 5.5.4 ");
    snprintf(line, sizeof(line), "MAIL FROM:<a@example.org> ENVID=%0100d\r\n", 0);
    h_send(h, line);
    h_expect(h, "250 2.1.0 ");
    assert_int_equal(h->s.env.envid.len, 100);
    h_send(h, "RSET\r\nMAIL FROM:<a@example.org> ENVID=QQ+2B314\r\n");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "250 2.1.0 ");
}

static void mail_duplicate_param_gets_501(void **state)
{
    struct h *h = *state;
    h_ready(h);
    const char *dups[] = {
        "MAIL FROM:<a@example.org> SIZE=1 SIZE=1\r\n",
        "MAIL FROM:<a@example.org> BODY=7BIT body=7bit\r\n",
        "MAIL FROM:<a@example.org> SMTPUTF8 SMTPUTF8\r\n",
        "MAIL FROM:<a@example.org> RET=FULL RET=HDRS\r\n",
        "MAIL FROM:<a@example.org> ENVID=x ENVID=y\r\n",
    };
    for (size_t i = 0; i < sizeof(dups) / sizeof(dups[0]); i++) {
        h_send(h, dups[i]);
        h_expect(h, "501 5.5.4 ");
    }
}

static void mail_unknown_param_gets_555(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> AUTH=<>\r\n");
    h_expect(h, "555 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> X-FOO\r\n");
    h_expect(h, "555 5.5.4 ");
    h_send(h, "MAIL FROM:<a@example.org> =x\r\n");
    h_expect(h, "501 5.5.4 ");
}

/* ---- RCPT ----------------------------------------------------------------- */

static void rcpt_before_mail_gets_503(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "RCPT TO:<a@example.com>\r\n");
    h_expect(h, "503 5.5.1 ");
    h_send(h, "EHLO c.example\r\n");
    h_skip_ehlo(h);
    h_send(h, "RCPT TO:<a@example.com>\r\n");
    h_expect(h, "503 5.5.1 ");
}

static void rcpt_bad_path_or_null_gets_501_513(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<>\r\n");
    h_expect(h, "250 2.1.0 ");
    const char *bad[] = {
        "RCPT TO:<>\r\n",
        "RCPT TO:\r\n",
        "RCPT TO:b@example.com\r\n",
        "RCPT TO:<b@example.com\r\n",
        "RCPT TO:<b@example.com>junk\r\n",
        "RCPT TO:<@r.example:b@example.com>\r\n",
        "RCPT TO:<b@exa mple.com>\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h_send(h, bad[i]);
        h_expect(h, "501 5.1.3 ");
    }
    h_send(h, "RCPT FOR:<b@example.com>\r\n");
    h_expect(h, "501 5.5.4 ");
}

static void rcpt_without_domain_gets_501_513(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<Postmaster>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "501 5.1.3 ");
    h_expect(h, "501 5.1.3 ");
}

static void rcpt_non_ascii_without_smtputf8_gets_553(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<m\xc3\xbc@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "553 5.6.7 ");
}

static void rcpt_notify_param(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "250 2.1.0 ");
    const char *bad[] = {
        "RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS\r\n",
        "RCPT TO:<b@example.com> NOTIFY=SUCCESS,SUCCESS\r\n",
        "RCPT TO:<b@example.com> NOTIFY=SOMETIMES\r\n",
        "RCPT TO:<b@example.com> NOTIFY=\r\n",
        "RCPT TO:<b@example.com> NOTIFY=SUCCESS,\r\n",
        "RCPT TO:<b@example.com> NOTIFY=,DELAY\r\n",
        "RCPT TO:<b@example.com> NOTIFY\r\n",
        "RCPT TO:<b@example.com> NOTIFY=NEVER NOTIFY=NEVER\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h_send(h, bad[i]);
        h_expect(h, "501 5.5.4 ");
    }
    h_send(h, "RCPT TO:<b@example.com> NOTIFY=never\r\n"
              "RCPT TO:<c@example.com> NOTIFY=SUCCESS,FAILURE,DELAY\r\n"
              "RCPT TO:<d@example.com> NOTIFY=delay\r\n"
              "RCPT TO:<e@example.com>\r\n");
    for (int i = 0; i < 4; i++)
        h_expect(h, "250 2.1.5 ");
    assert_int_equal(h->s.env.rcpt_count, 4);
    assert_int_equal(h->rcpts[0].notify, Q_NOTIFY_NEVER);
    assert_int_equal(h->rcpts[1].notify, Q_NOTIFY_SUCCESS | Q_NOTIFY_FAILURE | Q_NOTIFY_DELAY);
    assert_int_equal(h->rcpts[2].notify, Q_NOTIFY_DELAY);
    assert_int_equal(h->rcpts[3].notify, 0);
}

static void rcpt_orcpt_param(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "250 2.1.0 ");
    const char *bad[] = {
        "RCPT TO:<b@example.com> ORCPT=rfc822\r\n",
        "RCPT TO:<b@example.com> ORCPT=;b@example.com\r\n",
        "RCPT TO:<b@example.com> ORCPT=rfc822;\r\n",
        "RCPT TO:<b@example.com> ORCPT=rfc(822);b@example.com\r\n",
        "RCPT TO:<b@example.com> ORCPT=rfc822;b+2c@example.com\r\n",
        "RCPT TO:<b@example.com> ORCPT=rfc822;x ORCPT=rfc822;y\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h_send(h, bad[i]);
        h_expect(h, "501 5.5.4 ");
    }
    /* 500 octets ok, 501 not */
    char line[700];
    char val[520];
    memcpy(val, "rfc822;", 7);
    memset(val + 7, 'x', 494);
    val[501] = '\0';
    snprintf(line, sizeof(line), "RCPT TO:<b@example.com> ORCPT=%s\r\n", val);
    h_send(h, line);
    h_expect(h, "501 5.5.4 ");
    val[500] = '\0';
    snprintf(line, sizeof(line), "RCPT TO:<b@example.com> ORCPT=%s\r\n", val);
    h_send(h, line);
    h_expect(h, "250 2.1.5 ");
    assert_int_equal(h->rcpts[0].orcpt.len, 500);
    h_send(h, "RCPT TO:<c@example.com> ORCPT=rfc822;c+2Bx@example.com NOTIFY=FAILURE\r\n");
    h_expect(h, "250 2.1.5 ");
    assert_int_equal(h->rcpts[1].orcpt.len, strlen("rfc822;c+2Bx@example.com"));
    assert_memory_equal(h->rcpts[1].orcpt.p, "rfc822;c+2Bx@example.com", h->rcpts[1].orcpt.len);
}

static void rcpt_unknown_param_gets_555(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com> FOO=bar\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "555 5.5.4 ");
}

static void rcpt_max_n_ok_n_plus_1_gets_452(void **state)
{
    struct h *h = *state;
    h->cfg.rcpt_max = 3;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\n"
              "RCPT TO:<b1@example.com>\r\nRCPT TO:<b2@example.com>\r\n"
              "RCPT TO:<b3@example.com>\r\nRCPT TO:<b4@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "452 4.5.3 ");
    h_send(h, "DATA\r\nhi\r\n.\r\n");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    assert_int_equal(h->stores, 1);
    assert_int_equal(h->st[0].rcpt_count, 3);
    assert_string_equal(h->st[0].rcpts, "b1@example.com|0|;b2@example.com|0|;b3@example.com|0|");
}

static void relay_denied_gets_554(void **state)
{
    struct h *h = *state;
    h->peer.relay_ok = false;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "554 5.7.1 ");
    h_expect(h, "503 5.5.1 ");
    h_expect_nothing(h);
}

/* ---- DATA ----------------------------------------------------------------- */

static void data_before_mail_or_rcpt_gets_503(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "DATA\r\nEHLO c.example\r\n");
    h_expect(h, "503 5.5.1 ");
    h_skip_ehlo(h);
    h_send(h, "DATA\r\nMAIL FROM:<a@example.org>\r\nDATA\r\n");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "503 5.5.1 ");
}

static void data_with_argument_gets_501(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "DATA now\r\n");
    h_expect(h, "501 5.5.4 ");
    h_send(h, "DATA\r\n.\r\n");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 Ok: queued as ");
}

static void data_without_a_pool_chunk_gets_452(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    struct rm_chunk *held = NULL;
    for (;;) {
        struct rm_chunk *c = rm_pool_get(&h->pool);
        if (c == NULL)
            break;
        c->next = held;
        held = c;
    }
    h_send(h, "DATA\r\n");
    h_expect(h, "452 4.3.1 ");
    rm_pool_put_chain(&h->pool, held);
    h_send(h, "DATA\r\nx\r\n.\r\n");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 Ok: queued as ");
}

static void full_transaction_stores_the_exact_body(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<sender@example.org> RET=HDRS ENVID=env+2B1\r\n"
              "RCPT TO:<rcpt@example.com> NOTIFY=SUCCESS ORCPT=rfc822;rcpt@example.com\r\n"
              "DATA\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    assert_int_equal(h->stores, 0);
    h_send(h, "Subject: test\r\n"
              "\r\n"
              "line one\r\n"
              "..leading dot\r\n"
              "...two dots\r\n"
              ".x\r\n"
              " .not at start\r\n"
              "\r\n"
              "last\r\n"
              ".\r\n");
    char id[Q_ID_STR_LEN + 1];
    expected_id(id, 0);
    char want[128];
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s", id);
    h_expect(h, want);
    h_expect_nothing(h);
    assert_int_equal(h->stores, 1);
    assert_int_equal(h->s.stats.messages, 1);

    const struct stored *st = &h->st[0];
    char body[1024];
    int n = snprintf(body, sizeof(body),
                     "Received: from client.example (" PEER_ADDR ")\r\n"
                     "\tby " HOST " (ringmta) with ESMTP id %s\r\n"
                     "\tfor <rcpt@example.com>; " DATE_TEXT "\r\n"
                     "Subject: test\r\n"
                     "\r\n"
                     "line one\r\n"
                     ".leading dot\r\n"
                     "..two dots\r\n"
                     "x\r\n"
                     " .not at start\r\n"
                     "\r\n"
                     "last\r\n",
                     id);
    assert_int_equal(st->len, (size_t)n);
    assert_memory_equal(st->body, body, st->len);
    assert_string_equal(st->id, id);
    assert_string_equal(st->sender, "sender@example.org");
    assert_string_equal(st->rcpts, "rcpt@example.com|2|rfc822;rcpt@example.com");
    assert_string_equal(st->envid, "env+2B1");
    assert_int_equal(st->ret, Q_RET_HDRS);
    assert_string_equal(st->client, PEER_ADDR);
    assert_string_equal(st->helo, "client.example");
    assert_string_equal(st->listener, "submission");
    assert_int_equal(st->arrival_ms, NOW_MS);
    assert_int_equal(st->next_attempt_ms, NOW_MS);
    assert_int_equal(st->flags, 0);
    assert_int_equal(st->size, st->len);

    /* the session goes on: a second message, with the next id */
    h_send(h, "MAIL FROM:<>\r\nRCPT TO:<r2@example.com>\r\nDATA\r\nSubject: 2\r\n\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    expected_id(id, 1);
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s", id);
    h_expect(h, want);
    assert_string_equal(h->st[1].sender, "");
    assert_body_after_received(&h->st[1], "Subject: 2\r\n\r\n");
}

static void received_has_no_for_clause_with_two_recipients(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
              "RCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    char id[Q_ID_STR_LEN + 1];
    expected_id(id, 0);
    char want[512];
    int n = snprintf(want, sizeof(want),
                     "Received: from client.example (" PEER_ADDR ")\r\n"
                     "\tby " HOST " (ringmta) with ESMTP id %s;\r\n"
                     "\t" DATE_TEXT "\r\nx\r\n",
                     id);
    assert_int_equal(h->st[0].len, (size_t)n);
    assert_memory_equal(h->st[0].body, want, (size_t)n);
}

static void helo_transaction_is_received_with_smtp(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "HELO old.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
              "DATA\r\nx\r\n.\r\n");
    h_expect(h, "250 " HOST);
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_non_null(strstr((const char *)h->st[0].body, "from old.example (" PEER_ADDR ")\r\n"));
    assert_non_null(strstr((const char *)h->st[0].body, " with SMTP id "));
}

static void smtputf8_transaction_is_received_with_utf8smtp(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<m\xc3\xbc@example.com>\r\n"
              "DATA\r\nx\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_non_null(strstr((const char *)h->st[0].body, " with UTF8SMTP id "));
    assert_non_null(strstr((const char *)h->st[0].body, "\tfor <m\xc3\xbc@example.com>; "));
    assert_int_equal(h->st[0].flags, Q_ENV_SMTPUTF8 | Q_ENV_8BIT);
}

static void eight_bit_content_is_flagged_not_refused(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "DATA\r\nSubject: caf\xc3\xa9\r\n\r\n\xff\xfe\r\n.\r\n");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_int_equal(h->st[0].flags, Q_ENV_8BIT);
    h_send(h, "MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@example.com>\r\n"
              "DATA\r\nplain\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_int_equal(h->st[1].flags, Q_ENV_8BITMIME);
}

static void body_spanning_several_chunks_is_stored_whole(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "DATA\r\n");
    h_expect(h, "354 ");
    static char content[40000];
    size_t n = 0;
    for (int i = 0; n < sizeof(content) - 200; i++)
        n += (size_t)snprintf(content + n, sizeof(content) - n, "%sline %05d of the body\r\n",
                              i % 7 == 0 ? "." : "", i);
    h_send_n(h, content, n);
    h_send(h, ".\r\n");
    h_expect(h, "250 2.0.0 ");
    /* what was sent, unstuffed */
    static char want[40000];
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (content[i] == '.' && (i == 0 || content[i - 1] == '\n'))
            continue;
        want[w++] = content[i];
    }
    want[w] = '\0';
    assert_true(h->st[0].len > 3 * CHUNK_BYTES);
    assert_body_after_received(&h->st[0], want);
}

/* ---- content errors ------------------------------------------------------- */

/* A transaction whose content holds seq; everything after seq looks like a
 * new transaction and must stay content. */
static void smuggle(struct h *h, const char *seq)
{
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    char buf[512];
    snprintf(buf, sizeof(buf),
             "Subject: hi\r\n\r\nhello%sMAIL FROM:<evil@example.net>\r\n"
             "RCPT TO:<victim@example.com>\r\nDATA\r\nFrom: ceo@example.org\r\n\r\nsmuggled",
             seq);
    h_send(h, buf);
    h_expect_nothing(h);
    assert_int_equal(h->stores, 0);
    h_send(h, "\r\n.\r\nNOOP\r\n");
    h_expect(h, "550 5.5.2 ");
    h_expect(h, "250 2.0.0 ");
    h_expect_nothing(h);
    assert_int_equal(h->stores, 0);
}

static void smuggled_ends_of_data_never_end_the_message(void **state)
{
    struct h *h = *state;
    h_ready(h);
    const char *seqs[] = {
        "\n.\r\n", "\r.\r",       "\n.\n",     "\r\n.\n",     "\r\n.\r",     "\n.\r",
        "\r.\r\n", "\r\n\n.\r\n", "\n\r\n.\n", "\r\n.\r\r\n", "\r\n.\n\r\n",
    };
    for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++)
        smuggle(h, seqs[i]);
    /* and the session still works */
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nok\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_int_equal(h->stores, 1);
}

static void smuggling_split_at_every_offset_is_still_refused(void **state)
{
    struct h *h = *state;
    const char *in = "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                     "DATA\r\nhello\n.\r\nMAIL FROM:<e@example.net>\r\nRCPT TO:<v@example.com>\r\n"
                     "DATA\r\nevil\r\n.\r\nQUIT\r\n";
    size_t len = strlen(in);
    for (size_t k = 0; k <= len; k++) {
        h_stop(h);
        h->rx_len = 0;
        h->out_len = 0;
        h->out_pos = 0;
        h->closed = false;
        h->stores = 0;
        h_start(h);
        h_send_n(h, in, k);
        h_send_n(h, in + k, len - k);
        assert_true(h->closed);
        assert_int_equal(h->stores, 0);
        assert_non_null(strstr(h->out, "\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                                       "550 5.5.2 "));
        assert_non_null(strstr(h->out, "\r\n221 2.0.0 "));
    }
}

static void nul_in_content_gets_554(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "DATA\r\n");
    h_expect(h, "354 ");
    h_send_n(h, "a\0b\r\n.\r\n", 8);
    h_expect(h, "554 5.6.0 ");
    assert_int_equal(h->stores, 0);
    h_send(h, "RCPT TO:<b@example.com>\r\n"); /* the transaction was reset */
    h_expect(h, "503 5.5.1 ");
}

static void text_line_n_ok_n_plus_1_gets_554(void **state)
{
    struct h *h = *state;
    h->cfg.text_line_max = 998;
    h_in_tx(h);
    static char buf[2100];
    /* 998 octets: taken */
    memcpy(buf, "DATA\r\n", 6);
    memset(buf + 6, 'a', 998);
    memcpy(buf + 6 + 998, "\r\n.\r\n", 6);
    h_send(h, buf);
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    /* 999 octets: refused */
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    memset(buf + 6, 'a', 999);
    memcpy(buf + 6 + 999, "\r\n.\r\n", 6);
    h_send(h, buf);
    h_expect(h, "354 ");
    h_expect(h, "554 5.6.0 ");
    /* 998 after unstuffing (999 on the wire with the dot): taken */
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    buf[6] = '.';
    memset(buf + 7, 'a', 998);
    memcpy(buf + 7 + 998, "\r\n.\r\n", 6);
    h_send(h, buf);
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_int_equal(h->stores, 2);
}

static void size_limit_n_ok_n_plus_1_gets_552(void **state)
{
    struct h *h = *state;
    /* first learn the Received: length, which is fixed for this setup */
    h_in_tx(h);
    h_send(h, "DATA\r\n.\r\n");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    size_t received = h->st[0].len;
    h_stop(h);

    const char *content = "Subject: size\r\n\r\n0123456789\r\n";
    size_t n = strlen(content);
    for (int extra = 0; extra < 2; extra++) {
        h->cfg.message_size_max = received + n - (size_t)extra;
        h->rx_len = 0;
        h->out_len = 0;
        h->out_pos = 0;
        h->stores = 0;
        h_in_tx(h);
        h_send(h, "DATA\r\n");
        h_expect(h, "354 ");
        h_send(h, content);
        h_send(h, ".\r\n");
        if (extra == 0) {
            h_expect(h, "250 2.0.0 ");
            assert_int_equal(h->st[0].len, h->cfg.message_size_max);
        } else {
            h_expect(h, "552 5.3.4 ");
            assert_int_equal(h->stores, 0);
        }
        h_stop(h);
    }
}

static void oversize_message_is_read_to_the_end(void **state)
{
    struct h *h = *state;
    h->cfg.message_size_max = 2000;
    h_in_tx(h);
    h_send(h, "DATA\r\n");
    h_expect(h, "354 ");
    static char line[102];
    memset(line, 'z', 100);
    memcpy(line + 100, "\r\n", 2);
    for (int i = 0; i < 200; i++)
        h_send_n(h, line, sizeof(line));
    h_expect_nothing(h);
    assert_int_equal(h->pool.free_count, h->pool.count); /* nothing held while reading on */
    h_send(h, ".\r\nNOOP\r\n");
    h_expect(h, "552 5.3.4 ");
    h_expect(h, "250 2.0.0 ");
}

static void pool_exhausted_mid_message_gets_452(void **state)
{
    struct h *h = *state;
    h_start_pool(h, 3);
    h_expect(h, "220 ");
    h_send(h, "EHLO c.example\r\n");
    h_skip_ehlo(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    static char big[20000];
    for (size_t i = 0; i < sizeof(big); i += 100) {
        memset(big + i, 'q', 98);
        memcpy(big + i + 98, "\r\n", 2);
    }
    h_send_n(h, big, sizeof(big));
    h_send(h, ".\r\n");
    h_expect(h, "452 4.3.1 ");
    assert_int_equal(h->stores, 0);
    assert_int_equal(h->pool.free_count, h->pool.count);
    /* a small one fits again */
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nsmall\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
}

/* ---- BDAT ----------------------------------------------------------------- */

static void bdat_chunks_are_stored_in_order(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    /* the first chunk ends with CR, the second starts with LF */
    h_send(h, "BDAT 13\r\nSubject: x\r\n\r");
    h_expect(h, "250 2.0.0 13 octets received");
    static char mid[9000];
    for (size_t i = 0; i < sizeof(mid); i += 10)
        memcpy(mid + i, "\n.chunk\r\n\r", 10);
    char cmd[32];
    snprintf(cmd, sizeof(cmd), "BDAT %zu\r\n", sizeof(mid));
    h_send(h, cmd);
    h_send_n(h, mid, sizeof(mid));
    h_expect(h, "250 2.0.0 9000 octets received");
    h_send(h, "BDAT 6 LAST\r\n\nend\r\n");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    assert_int_equal(h->stores, 1);
    assert_int_equal(h->st[0].flags, Q_ENV_BDAT);
    static char want[10000];
    size_t w = 0;
    memcpy(want, "Subject: x\r\n\r", 13);
    w = 13;
    memcpy(want + w, mid, sizeof(mid));
    w += sizeof(mid);
    memcpy(want + w, "\nend\r\n", 7);
    assert_body_after_received(&h->st[0], want);
}

static void bdat_0_last_ends_the_message(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "BDAT 12\r\nSubject: y\r\nBDAT 0 LAST\r\n");
    h_expect(h, "250 2.0.0 12 octets received");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    assert_body_after_received(&h->st[0], "Subject: y\r\n");
    /* and as the only chunk: an empty message */
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nbdat 0 last\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    assert_int_equal(h->st[1].len, received_len(&h->st[1]));
}

static void bdat_last_line_without_crlf_is_completed(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "BDAT 16 LAST\r\nSubject: z\r\n\r\nab");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    assert_body_after_received(&h->st[0], "Subject: z\r\n\r\nab\r\n");
}

static void bdat_before_mail_or_rcpt_gets_503_and_skips_octets(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "BDAT 6\r\nNOOP\r\nBDAT 6 LAST\r\nQUIT\r\n");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "503 5.5.1 ");
    h_expect_nothing(h);
    assert_false(h->closed);
    h_send(h, "MAIL FROM:<a@example.org>\r\nBDAT 12 LAST\r\nRSET\r\nQUIT\r\n"
              "RCPT TO:<b@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "250 2.1.5 "); /* the transaction survived the refused BDAT */
    h_expect_nothing(h);
}

static void bdat_bad_size_gets_501_and_stays_in_command_mode(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "BDAT\r\nBDAT x\r\nBDAT -1\r\nBDAT 5 NOTLAST\r\nBDAT 99999999999999999999999\r\n"
              "NOOP\r\n");
    for (int i = 0; i < 5; i++)
        h_expect(h, "501 5.5.4 ");
    h_expect(h, "250 2.0.0 ");
}

static void data_after_bdat_gets_503(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "BDAT 4\r\nab\r\nDATA\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.com>\r\n");
    h_expect(h, "250 2.0.0 4 octets received");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "503 5.5.1 ");
    h_send(h, "BDAT 3 LAST\r\ncd\n");
    h_expect(h, "550 5.5.2 "); /* a bare LF */
    assert_int_equal(h->stores, 0);
}

static void bdat_content_errors_are_answered_at_the_chunk_end(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send_n(h, "BDAT 4\r\na\0b\n", 12);
    h_expect(h, "554 5.6.0 ");
    h_send(h, "BDAT 3 LAST\r\nxyz");
    h_expect(h, "503 5.5.1 "); /* reset: its octets are dropped */
    h_expect_nothing(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nBDAT 3 LAST\r\nab\r");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "550 5.5.2 "); /* a CR at the very end is bare */
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nBDAT 4 LAST\r\na\rb\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "550 5.5.2 ");
    assert_int_equal(h->stores, 0);
}

static void bdat_over_size_gets_552(void **state)
{
    struct h *h = *state;
    h->cfg.message_size_max = 1000;
    h_in_tx(h);
    static char chunk[1200];
    memset(chunk, 'x', sizeof(chunk));
    for (size_t i = 98; i < sizeof(chunk); i += 100) {
        chunk[i] = '\r';
        chunk[i + 1] = '\n';
    }
    h_send(h, "BDAT 1200 LAST\r\n");
    h_send_n(h, chunk, sizeof(chunk));
    h_expect(h, "552 5.3.4 ");
    assert_int_equal(h->stores, 0);
}

/* ---- other commands ------------------------------------------------------- */

static void simple_commands_reply_as_specified(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "RSET\r\nNOOP\r\nnoop with args\r\nVRFY postmaster\r\nVRFY\r\nEXPN list\r\nHELP\r\n"
              "STARTTLS\r\nAUTH PLAIN AGFAAGI=\r\nFOO\r\n\r\n   \r\nRSET now\r\n");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "252 2.5.2 ");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "502 5.5.1 ");
    h_expect(h, "214 2.0.0 ");
    h_expect(h, "502 5.5.1 ");
    h_expect(h, "502 5.5.1 ");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "501 5.5.4 ");
    h_expect_nothing(h);
}

static void rset_ends_the_transaction(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "RSET\r\nDATA\r\nRSET\r\n");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "503 5.5.1 ");
    h_expect(h, "250 2.0.0 ");
    assert_int_equal(h->s.env.rcpt_count, 0);
}

static void quit_replies_221_and_closes(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send(h, "QUIT\r\nNOOP\r\n");
    h_expect(h, "221 2.0.0 ");
    h_expect_nothing(h);
    assert_true(h->closed);
    assert_true(smtpd_closing(&h->s));
    enum smtpd_ev ev;
    assert_int_equal(smtpd_feed(&h->s, (const uint8_t *)"NOOP\r\n", 6, NOW_MS, &ev), 0);
    assert_int_equal(ev, SMTPD_EV_CLOSE);
    assert_int_equal(h->rx_len, 6); /* the NOOP after QUIT was never taken */
}

static void close_with_mid_transaction_returns_the_chunks(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    h_send(h, "DATA\r\npartial content\r\n");
    h_expect(h, "354 ");
    assert_true(h->pool.free_count < h->pool.count);
    smtpd_close_with(&h->s, &(struct smtp_reply){421, {4, 4, 2}, "Idle timeout"});
    h_collect(h);
    h_expect(h, "421 4.4.2 Idle timeout");
    assert_int_equal(h->pool.free_count, h->pool.count);
    assert_true(smtpd_closing(&h->s));
    assert_int_equal(h->s.stats.last_error.code, 421);
}

static void command_line_with_nul_gets_500(void **state)
{
    struct h *h = *state;
    h_ready(h);
    h_send_n(h, "NOOP\0\r\nMAIL FROM:<a\0@b>\r\nNOOP\r\n", 31);
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "250 2.0.0 ");
}

static void command_line_of_max_ok_max_plus_1_gets_500(void **state)
{
    struct h *h = *state;
    h->cfg.command_line_max = 512;
    h_ready(h);
    static char line[600];
    memcpy(line, "NOOP ", 5);
    memset(line + 5, 'x', 505);
    memcpy(line + 510, "\r\n", 3); /* 512 with CRLF */
    h_send(h, line);
    h_expect(h, "250 2.0.0 ");
    memset(line + 5, 'x', 506);
    memcpy(line + 511, "\r\n", 3); /* 513 */
    h_send(h, line);
    h_expect(h, "500 5.5.2 ");
    h_expect_nothing(h);
}

static void over_long_line_over_many_feeds_gets_one_500(void **state)
{
    struct h *h = *state;
    h->cfg.command_line_max = 512;
    h_ready(h);
    static char junk[300];
    memset(junk, 'j', sizeof(junk));
    h_send(h, "MAIL FROM:<");
    for (int i = 0; i < 20; i++)
        h_send_n(h, junk, sizeof(junk));
    h_send(h, "@example.org>\r\nNOOP\r\n");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "250 2.0.0 ");
    h_expect_nothing(h);
    assert_int_equal(h->s.stats.errors, 1);
}

static void bare_lf_ends_a_command_line(void **state)
{
    struct h *h = *state;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO c.example\nNOOP\n");
    h_skip_ehlo(h);
    h_expect(h, "250 2.0.0 ");
}

/* ---- limits, drain, store outcomes ---------------------------------------- */

static void errors_max_closes_with_421(void **state)
{
    struct h *h = *state;
    h->cfg.errors_max = 3;
    h_ready(h);
    h_send(h, "FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "500 5.5.2 ");
    h_expect(h, "421 4.7.0 " HOST " Error: too many errors");
    h_expect_nothing(h);
    assert_true(h->closed);
    assert_int_equal(h->rx_len, strlen("NOOP\r\n"));
    assert_int_equal(h->s.stats.last_error.code, 421);
}

static void drain_when_idle_closes_at_once(void **state)
{
    struct h *h = *state;
    h_ready(h);
    assert_true(smtpd_drain(&h->s));
    h_collect(h);
    h_expect(h, "421 4.3.2 " HOST " Service shutting down");
    assert_true(smtpd_closing(&h->s));
    assert_true(smtpd_drain(&h->s));
    h_collect(h);
    h_expect_nothing(h);
    enum smtpd_ev ev;
    assert_int_equal(smtpd_feed(&h->s, (const uint8_t *)"NOOP\r\n", 6, NOW_MS, &ev), 0);
    assert_int_equal(ev, SMTPD_EV_CLOSE);
}

static void drain_mid_transaction_closes_after_it(void **state)
{
    struct h *h = *state;
    h->manual_store = true;
    h_in_tx(h);
    assert_false(smtpd_drain(&h->s));
    h_collect(h);
    h_expect_nothing(h);
    h_send(h, "DATA\r\nbody\r\n.\r\nNOOP\r\n");
    h_expect(h, "354 ");
    assert_true(smtpd_storing(&h->s));
    assert_false(smtpd_drain(&h->s));
    smtpd_stored(&h->s, 0, NOW_MS);
    h_collect(h);
    h_expect(h, "250 2.0.0 Ok: queued as ");
    h_expect(h, "421 4.3.2 " HOST " ");
    assert_true(smtpd_closing(&h->s));
    h_pump(h);
    assert_true(h->closed);
    assert_int_equal(h->rx_len, strlen("NOOP\r\n"));
}

static void drain_ends_after_rset_or_refused_data(void **state)
{
    struct h *h = *state;
    h_in_tx(h);
    assert_false(smtpd_drain(&h->s));
    h_send(h, "RSET\r\nNOOP\r\n");
    h_expect(h, "250 2.0.0 ");
    h_expect(h, "421 4.3.2 ");
    assert_true(h->closed);
    h_stop(h);

    h->rx_len = 0;
    h->closed = false;
    h->out_len = h->out_pos = 0;
    h_in_tx(h);
    h_send(h, "DATA\r\nbare\nlf\r\n");
    assert_false(smtpd_drain(&h->s));
    h_send(h, ".\r\n");
    h_expect(h, "354 ");
    h_expect(h, "550 5.5.2 ");
    h_expect(h, "421 4.3.2 ");
    assert_true(h->closed);
}

static void stored_with_errors_gives_452_or_451(void **state)
{
    struct h *h = *state;
    h->manual_store = true;
    h_in_tx(h);
    h_send(h, "DATA\r\nx\r\n.\r\n");
    h_expect(h, "354 ");
    assert_true(smtpd_storing(&h->s));
    smtpd_stored(&h->s, Q_ERR_MAP_FULL, NOW_MS);
    h_collect(h);
    h_expect(h, "452 4.3.1 ");
    assert_false(smtpd_storing(&h->s));
    assert_int_equal(h->pool.free_count, h->pool.count);
    assert_int_equal(h->s.stats.messages, 0);

    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    smtpd_stored(&h->s, Q_ERR_IO, NOW_MS);
    h_collect(h);
    h_expect(h, "451 4.3.0 ");
    assert_int_equal(h->pool.free_count, h->pool.count);

    /* the next transaction starts clean */
    h_send(h, "RCPT TO:<b@example.com>\r\n");
    h_expect(h, "503 5.5.1 ");
}

static void feed_never_consumes_past_a_store(void **state)
{
    struct h *h = *state;
    h->manual_store = true;
    h_in_tx(h);
    const char *in = "DATA\r\nx\r\n.\r\nNOOP\r\n";
    h_send(h, in);
    h_expect(h, "354 ");
    h_expect_nothing(h);
    assert_int_equal(h->rx_len, strlen("NOOP\r\n"));
    enum smtpd_ev ev;
    assert_int_equal(smtpd_feed(&h->s, h->rx, h->rx_len, NOW_MS, &ev), 0);
    assert_int_equal(ev, SMTPD_EV_NONE);
    smtpd_stored(&h->s, 0, NOW_MS);
    h_pump(h);
    h_expect(h, "250 2.0.0 Ok: queued as ");
    h_expect(h, "250 2.0.0 Ok");
    assert_int_equal(h->rx_len, 0);
}

static void close_while_storing_keeps_the_body_until_stored(void **state)
{
    struct h *h = *state;
    h->manual_store = true;
    h_in_tx(h);
    h_send(h, "DATA\r\nx\r\n.\r\n");
    h_expect(h, "354 ");
    smtpd_close_with(&h->s, &(struct smtp_reply){421, {4, 3, 2}, "Service shutting down"});
    h_collect(h);
    h_expect(h, "421 4.3.2 ");
    assert_true(smtpd_closing(&h->s));
    assert_true(smtpd_storing(&h->s));
    struct q_id id;
    const struct q_env *env;
    const struct rm_chunk *body;
    smtpd_message(&h->s, &id, &env, &body); /* still intact for the writer */
    assert_int_equal(env->rcpt_count, 1);
    assert_non_null(body);
    smtpd_stored(&h->s, 0, NOW_MS);
    h_collect(h);
    h_expect_nothing(h);
    assert_false(smtpd_storing(&h->s));
    assert_int_equal(h->pool.free_count, h->pool.count);
}

/* ---- pipelining ----------------------------------------------------------- */

struct transcript {
    char out[OUT_CAP];
    size_t out_len;
    uint8_t body[BODY_CAP];
    size_t body_len;
    unsigned stores;
};

static const char *pipeline_input(size_t *len)
{
    static char buf[12000];
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                          "EHLO client.example\r\n"
                          "MAIL FROM:<sender@example.org> BODY=8BITMIME\r\n"
                          "RCPT TO:<one@example.com>\r\n"
                          "RCPT TO:<two@example.com> NOTIFY=NEVER\r\n"
                          "RCPT TO:<three@example.net>\r\n"
                          "DATA\r\n"
                          "Subject: pipelined\r\n\r\n");
    for (int i = 0; n < 9000; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%sline %d\r\n%s", i % 5 == 0 ? ".." : "",
                              i, i % 11 == 0 ? "\r\n" : "");
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, ".\r\nQUIT\r\n");
    *len = n;
    return buf;
}

static void run_pipeline(struct h *h, const char *in, size_t len, size_t split, bool bytewise,
                         struct transcript *t)
{
    h_stop(h);
    h->rx_len = 0;
    h->out_len = h->out_pos = 0;
    h->closed = false;
    h->stores = 0;
    h_start(h);
    if (bytewise) {
        for (size_t i = 0; i < len; i++)
            h_send_n(h, in + i, 1);
    } else {
        h_send_n(h, in, split);
        h_send_n(h, in + split, len - split);
    }
    assert_true(h->closed);
    assert_int_equal(h->rx_len, 0);
    memcpy(t->out, h->out, h->out_len);
    t->out_len = h->out_len;
    t->stores = h->stores;
    t->body_len = h->stores ? h->st[0].len : 0;
    if (t->body_len)
        memcpy(t->body, h->st[0].body, t->body_len);
}

static void assert_same(const struct transcript *a, const struct transcript *b, size_t split)
{
    if (a->out_len != b->out_len || memcmp(a->out, b->out, a->out_len) != 0)
        fail_msg("replies differ at split %zu:\n%.*s\n---\n%.*s", split, (int)a->out_len, a->out,
                 (int)b->out_len, b->out);
    assert_int_equal(a->stores, b->stores);
    if (a->body_len != b->body_len || memcmp(a->body, b->body, a->body_len) != 0)
        fail_msg("bodies differ at split %zu", split);
}

static void pipelined_transaction_is_the_same_whole_bytewise_and_split(void **state)
{
    struct h *h = *state;
    size_t len;
    const char *in = pipeline_input(&len);
    struct transcript *ref = calloc(1, sizeof(*ref));
    struct transcript *t = calloc(1, sizeof(*t));
    assert_non_null(ref);
    assert_non_null(t);

    run_pipeline(h, in, len, len, false, ref);
    /* the reference itself is right */
    h->out_pos = 0;
    h_expect(h, "220 ");
    h_skip_ehlo(h);
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    h_expect(h, "221 2.0.0 ");
    h_expect_nothing(h);
    assert_int_equal(ref->stores, 1);
    assert_int_equal(h->st[0].rcpt_count, 3);
    assert_string_equal(h->st[0].rcpts,
                        "one@example.com|0|;two@example.com|1|;three@example.net|0|");
    assert_int_equal(h->st[0].flags, Q_ENV_8BITMIME);
    assert_true(ref->body_len > 2 * CHUNK_BYTES);
    assert_non_null(strstr((const char *)ref->body, "\r\n.line 0\r\n\r\nline 1\r\n"));

    run_pipeline(h, in, len, 0, true, t);
    assert_same(ref, t, 0);
    for (size_t k = 0; k <= len; k++) {
        run_pipeline(h, in, len, k, false, t);
        assert_same(ref, t, k);
    }
    free(ref);
    free(t);
}

static void tx_backpressure_stops_pipelined_noops(void **state)
{
    struct h *h = *state;
    h->tx_cap = 2 * SMTPD_TX_RESERVE;
    h_ready(h);
    const unsigned count = 500;
    static char in[500 * 6];
    for (unsigned i = 0; i < count; i++)
        memcpy(in + i * 6, "NOOP\r\n", 6);
    size_t len = sizeof(in), off = 0;
    unsigned rounds = 0, replies = 0;
    while (off < len) {
        enum smtpd_ev ev;
        size_t n = smtpd_feed(&h->s, (const uint8_t *)in + off, len - off, NOW_MS, &ev);
        assert_int_equal(ev, SMTPD_EV_NONE);
        off += n;
        if (off < len) {
            /* stopped early: tx is nearly full, and stays so until sent */
            assert_true(rm_buf_space(&h->tx) < SMTPD_TX_RESERVE);
            assert_int_equal(smtpd_feed(&h->s, (const uint8_t *)in + off, len - off, NOW_MS, &ev),
                             0);
        }
        assert_true(rm_buf_len(&h->tx) <= h->tx_cap);
        /* "send" half of what is queued, like a partial send completion */
        size_t sent = rm_buf_len(&h->tx) / 2 + 1;
        if (sent > rm_buf_len(&h->tx))
            sent = rm_buf_len(&h->tx);
        memcpy(h->out + h->out_len, rm_buf_rptr(&h->tx), sent);
        h->out_len += sent;
        rm_buf_consume(&h->tx, sent);
        rounds++;
        assert_true(rounds < 10000);
    }
    h_collect(h);
    while (h_line(h) != NULL)
        replies++;
    h->out_pos = 0;
    assert_int_equal(replies, count);
    assert_true(rounds > 5);
    for (unsigned i = 0; i < 9; i++)
        (void)h_line(h);
    for (unsigned i = 0; i < count; i++)
        h_expect(h, "250 2.0.0 Ok");
}

/* The worker may have a send in flight that points at tx->data + head:
 * smtpd appends after tail and never moves what is queued. */
static void queued_replies_are_never_moved(void **state)
{
    struct h *h = *state;
    h->tx_cap = 2 * SMTPD_TX_RESERVE;
    h_ready(h);
    static char in[300 * 6];
    for (unsigned i = 0; i < 300; i++)
        memcpy(in + i * 6, "NOOP\r\n", 6);
    size_t off = 0;
    for (unsigned round = 0; off < sizeof(in); round++) {
        assert_true(round < 1000);
        /* "send" all but the last 20 octets, as a partial send would leave them */
        size_t keep = RM_MIN(rm_buf_len(&h->tx), (size_t)20);
        size_t sent = rm_buf_len(&h->tx) - keep;
        memcpy(h->out + h->out_len, rm_buf_rptr(&h->tx), sent);
        h->out_len += sent;
        rm_buf_consume(&h->tx, sent);
        size_t head = h->tx.head;
        uint8_t pending[32];
        memcpy(pending, rm_buf_rptr(&h->tx), keep);
        enum smtpd_ev ev;
        off += smtpd_feed(&h->s, (const uint8_t *)in + off, sizeof(in) - off, NOW_MS, &ev);
        assert_int_equal(h->tx.head, head);
        assert_memory_equal(h->tx.data + head, pending, keep);
        if (round % 3 == 0) {
            /* the worker compacts only with no send in flight */
            rm_buf_compact(&h->tx);
        }
    }
    h_collect(h);
    for (unsigned i = 0; i < 300; i++)
        h_expect(h, "250 2.0.0 Ok");
    h_expect_nothing(h);
}

/* ---- STARTTLS and AUTH ---------------------------------------------------- */

#define PLAIN_ALICE_SECRET "AGFsaWNlAHNlY3JldA==" /* "\0alice\0secret" */
#define PLAIN_ALICE_WRONG  "AGFsaWNlAHdyb25n"     /* "\0alice\0wrong" */

/* A submission-like listener: STARTTLS offered, AUTH optional, no relay by IP. */
static void h_submission(struct h *h, enum smtpd_auth auth)
{
    h->cfg.tls = SMTPD_TLS_STARTTLS;
    h->cfg.auth = auth;
    h->peer.relay_ok = false;
    h->good_user = "alice";
    h->good_password = "secret";
}

/* Reads one EHLO reply; returns its keyword lines joined by "|". */
static const char *h_ehlo_keywords(struct h *h)
{
    static char all[1024];
    size_t n = 0;
    all[0] = '\0';
    const char *line = h_line(h);
    assert_non_null(line);
    assert_true(strncmp(line, "250-" HOST, 4 + strlen(HOST)) == 0);
    for (;;) {
        line = h_line(h);
        assert_non_null(line);
        assert_true(strncmp(line, "250", 3) == 0);
        int k = snprintf(all + n, sizeof(all) - n, "%s%s", n ? "|" : "", line + 4);
        assert_true(k > 0 && (size_t)k < sizeof(all) - n);
        n += (size_t)k;
        if (line[3] == ' ')
            return all;
    }
}

/* Greeted, EHLO, STARTTLS done, EHLO again under TLS. */
static void h_tls_ready(struct h *h)
{
    h_start(h);
    h_expect(h, "220 " HOST " ESMTP ringmta");
    h_send(h, "EHLO client.example\r\n");
    (void)h_ehlo_keywords(h);
    h_send(h, "STARTTLS\r\n");
    h_expect(h, "220 2.0.0 Ready to start TLS");
    assert_int_equal(h->starttls_events, 1);
    h_send(h, "EHLO client.example\r\n");
    (void)h_ehlo_keywords(h);
}

static void ehlo_offers_starttls_in_clear_and_not_under_tls(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_NONE);
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    assert_string_equal(h_ehlo_keywords(h), "PIPELINING|SIZE 1048576|8BITMIME|SMTPUTF8|"
                                            "ENHANCEDSTATUSCODES|DSN|STARTTLS|CHUNKING");
    h_send(h, "STARTTLS\r\n");
    h_expect(h, "220 2.0.0 Ready to start TLS");
    h_expect_nothing(h); /* no new greeting after the handshake (RFC 3207 4.2) */
    h_send(h, "EHLO client.example\r\n");
    assert_string_equal(h_ehlo_keywords(h), "PIPELINING|SIZE 1048576|8BITMIME|SMTPUTF8|"
                                            "ENHANCEDSTATUSCODES|DSN|CHUNKING");
    h_send(h, "STARTTLS\r\n");
    h_expect(h, "503 5.5.1 ");
}

static void auth_is_offered_only_under_tls(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    assert_null(strstr(h_ehlo_keywords(h), "AUTH"));
    h_send(h, "STARTTLS\r\n");
    h_expect(h, "220 2.0.0 ");
    h_send(h, "EHLO client.example\r\n");
    assert_string_equal(h_ehlo_keywords(h), "PIPELINING|SIZE 1048576|8BITMIME|SMTPUTF8|"
                                            "ENHANCEDSTATUSCODES|DSN|AUTH PLAIN LOGIN|CHUNKING");
}

static void implicit_tls_offers_auth_and_refuses_starttls(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h->cfg.tls = SMTPD_TLS_IMPLICIT;
    h->peer.tls_active = true;
    h_start(h);
    h_expect(h, "220 " HOST " ESMTP ringmta");
    h_send(h, "EHLO client.example\r\n");
    assert_string_equal(h_ehlo_keywords(h), "PIPELINING|SIZE 1048576|8BITMIME|SMTPUTF8|"
                                            "ENHANCEDSTATUSCODES|DSN|AUTH PLAIN LOGIN|CHUNKING");
    h_send(h, "STARTTLS\r\n");
    h_expect(h, "503 5.5.1 ");
    assert_int_equal(h->starttls_events, 0);
}

static void starttls_refusals(void **state)
{
    struct h *h = *state;
    h_ready(h); /* tls NONE: as before, not implemented */
    h_send(h, "STARTTLS\r\n");
    h_expect(h, "502 5.5.1 ");
    h_stop(h);
    h->out_pos = h->out_len;
    h_submission(h, SMTPD_AUTH_NONE);
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    (void)h_ehlo_keywords(h);
    h_send(h, "STARTTLS now\r\n");
    h_expect(h, "501 5.5.4 ");
    h->peer.relay_ok = true;
    h_send(h, "MAIL FROM:<a@example.org>\r\nSTARTTLS\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "503 5.5.1 ");
    h_expect_nothing(h);
    assert_int_equal(h->starttls_events, 0);
}

static void starttls_consumes_exactly_its_line_and_never_runs_what_follows(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_NONE);
    h->peer.relay_ok = true;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    (void)h_ehlo_keywords(h);
    static const char in[] = "STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n"
                             "RCPT TO:<victim@example.com>\r\n";
    enum smtpd_ev ev;
    size_t n = smtpd_feed(&h->s, (const uint8_t *)in, strlen(in), NOW_MS, &ev);
    assert_int_equal(ev, SMTPD_EV_STARTTLS);
    assert_int_equal(n, strlen("STARTTLS\r\n"));
    /* Fed again before the handshake: still nothing taken. */
    n = smtpd_feed(&h->s, (const uint8_t *)in + n, strlen(in) - n, NOW_MS, &ev);
    assert_int_equal(ev, SMTPD_EV_STARTTLS);
    assert_int_equal(n, 0);
    h_collect(h);
    h_expect(h, "220 2.0.0 Ready to start TLS");
    h_expect_nothing(h);
    smtpd_tls_started(&h->s, NOW_MS);
    h_collect(h);
    h_expect_nothing(h);
    /* The old EHLO is forgotten: MAIL needs a new one. */
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "503 5.5.1 ");
    h_send(h, "EHLO client.example\r\n");
    (void)h_ehlo_keywords(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "250 2.1.0 ");
}

static void pumped_starttls_drops_the_pipelined_bytes(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_NONE);
    h->peer.relay_ok = true;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n");
    (void)h_ehlo_keywords(h);
    h_expect(h, "220 2.0.0 ");
    h_expect_nothing(h);
    assert_int_equal(h->rx_discarded,
                     strlen("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"));
}

static void auth_in_clear_gets_538(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    (void)h_ehlo_keywords(h);
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "538 5.7.11 Encryption required for requested authentication mechanism");
    assert_int_equal(h->auth_events, 0);
    assert_false(smtpd_authenticated(&h->s));
}

static void auth_without_tls_when_allowed_is_offered_and_taken(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h->cfg.auth_ok_without_tls = true;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "EHLO client.example\r\n");
    assert_non_null(strstr(h_ehlo_keywords(h), "AUTH PLAIN LOGIN"));
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "235 2.7.0 ");
}

static void auth_plain_with_initial_response_authenticates_and_relays(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    assert_int_equal(h->auth_events, 1);
    assert_string_equal(h->cred_user, "alice");
    assert_string_equal(h->cred_password, "secret");
    h_expect(h, "235 2.7.0 Authentication successful");
    assert_true(smtpd_authenticated(&h->s));
    /* The password is gone from the session's memory. */
    assert_null(memmem(&h->s, sizeof(h->s), "secret", 6));
    h_send(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
              "Subject: hi\r\n\r\nbody\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 Ok: queued as ");
    assert_int_equal(h->stores, 1);
    assert_string_equal(h->st[0].auth_user, "alice");
    assert_non_null(strstr((const char *)h->st[0].body, "(ringmta) with ESMTPSA id "));
    assert_body_after_received(&h->st[0], "Subject: hi\r\n\r\nbody\r\n");
    /* Kept across transactions. */
    h_send(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
}

static void received_says_esmtps_under_tls_without_auth(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_NONE);
    h->peer.relay_ok = true;
    h_tls_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_non_null(strstr((const char *)h->st[0].body, "(ringmta) with ESMTPS id "));
    assert_string_equal(h->st[0].auth_user, "");
}

static void received_says_utf8smtpsa_for_smtputf8_authenticated(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_REQUIRED);
    h_tls_ready(h);
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "235 2.7.0 ");
    h_send(h, "MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
              "x\r\n.\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "250 2.1.5 ");
    h_expect(h, "354 ");
    h_expect(h, "250 2.0.0 ");
    assert_non_null(strstr((const char *)h->st[0].body, "(ringmta) with UTF8SMTPSA id "));
}

static void auth_login_takes_two_steps(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH LOGIN\r\n");
    h_expect(h, "334 VXNlcm5hbWU6");
    h_send(h, "YWxpY2U=\r\n");
    h_expect(h, "334 UGFzc3dvcmQ6");
    assert_int_equal(h->auth_events, 0);
    h_send(h, "c2VjcmV0\r\n");
    assert_int_equal(h->auth_events, 1);
    h_expect(h, "235 2.7.0 ");
    h_expect_nothing(h);
    assert_true(smtpd_authenticated(&h->s));
}

static void auth_plain_without_initial_response_gets_empty_334(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH PLAIN\r\n");
    h_expect(h, "334 ");
    /* a command now is a (bad) SASL response, never a command */
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "501 5.5.2 ");
    h_send(h, "AUTH PLAIN\r\n" PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "334 ");
    h_expect(h, "235 2.7.0 ");
}

static void wrong_password_gets_535_and_mail_then_gets_530(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_REQUIRED);
    h_tls_ready(h);
    uint32_t errors = h->s.stats.errors;
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_WRONG "\r\n");
    h_expect(h, "535 5.7.8 Authentication credentials invalid");
    assert_int_equal(h->s.stats.errors, errors + 1);
    assert_false(smtpd_authenticated(&h->s));
    assert_null(memmem(&h->s, sizeof(h->s), "wrong", 5));
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "530 5.7.0 Authentication required");
    /* a second try is allowed */
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "235 2.7.0 ");
}

static void mail_without_auth_on_required_listener_gets_530(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_REQUIRED);
    h->peer.relay_ok = true; /* trusted networks do not replace AUTH where it is required */
    h_tls_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\n");
    h_expect(h, "530 5.7.0 ");
}

static void relay_without_auth_or_relay_ok_gets_554(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "554 5.7.1 ");
}

static void auth_twice_gets_503(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "235 2.7.0 ");
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "503 5.5.1 ");
    assert_int_equal(h->auth_events, 1);
}

static void auth_during_a_transaction_gets_503(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "MAIL FROM:<a@example.org>\r\nAUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "250 2.1.0 ");
    h_expect(h, "503 5.5.1 ");
    assert_int_equal(h->auth_events, 0);
}

static void auth_refusals_before_the_exchange(void **state)
{
    struct h *h = *state;
    h_ready(h); /* auth NONE: as before, not implemented */
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "502 5.5.1 ");
    h_stop(h);
    h->out_pos = h->out_len;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h->cfg.tls = SMTPD_TLS_IMPLICIT;
    h->peer.tls_active = true;
    h_start(h);
    h_expect(h, "220 ");
    h_send(h, "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "503 5.5.1 "); /* before EHLO */
    h_send(h, "HELO c\r\nAUTH PLAIN " PLAIN_ALICE_SECRET "\r\n");
    h_expect(h, "250 ");
    h_expect(h, "503 5.5.1 "); /* AUTH is an extension: EHLO first */
    h_send(h, "EHLO c\r\n");
    (void)h_ehlo_keywords(h);
    h_send(h, "AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n");
    h_expect(h, "504 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
    h_expect(h, "501 5.5.4 ");
    assert_int_equal(h->auth_events, 0);
}

static void auth_cancel_gets_501_570(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH LOGIN\r\n");
    h_expect(h, "334 ");
    h_send(h, "*\r\nNOOP\r\n");
    h_expect(h, "501 5.7.0 ");
    h_expect(h, "250 2.0.0 ");
    assert_false(smtpd_authenticated(&h->s));
}

static void over_long_sasl_response_gets_500_556_and_resyncs(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH PLAIN\r\n");
    h_expect(h, "334 ");
    static char line[3 * SMTPD_COMMAND_LINE_MAX_DEFAULT];
    memset(line, 'A', sizeof(line) - 3);
    memcpy(line + sizeof(line) - 3, "\r\n", 3);
    h_send(h, line);
    h_send(h, "NOOP\r\n");
    h_expect(h, "500 5.5.6 ");
    h_expect(h, "250 2.0.0 ");
    h_expect_nothing(h);
}

static void drain_during_auth_exchange_closes_with_421(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    h_send(h, "AUTH LOGIN\r\n");
    h_expect(h, "334 ");
    h_send(h, "YWxpY2U=\r\n");
    h_expect(h, "334 ");
    assert_true(smtpd_drain(&h->s));
    h_collect(h);
    h_expect(h, "421 4.3.2 ");
    h_send(h, "c2VjcmV0\r\n");
    assert_true(h->closed);
    assert_int_equal(h->auth_events, 0);
    assert_null(memmem(&h->s, sizeof(h->s), "alice", 5));
}

static void close_while_credentials_are_out_wipes_them(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_OPTIONAL);
    h_tls_ready(h);
    static const char in[] = "AUTH PLAIN " PLAIN_ALICE_SECRET "\r\n";
    enum smtpd_ev ev;
    size_t n = smtpd_feed(&h->s, (const uint8_t *)in, strlen(in), NOW_MS, &ev);
    assert_int_equal(n, strlen(in));
    assert_int_equal(ev, SMTPD_EV_AUTH);
    static const struct smtp_reply bye = {421, {4, 4, 2}, "Idle timeout"};
    smtpd_close_with(&h->s, &bye);
    smtpd_auth_result(&h->s, true, NOW_MS);
    h_collect(h);
    h_expect(h, "421 4.4.2 ");
    h_expect_nothing(h);
    assert_false(smtpd_authenticated(&h->s));
    assert_null(memmem(&h->s, sizeof(h->s), "secret", 6));
}

/* The whole conversation, as one feed and byte by byte: same replies. */
static const char tls_auth_conversation[] = "EHLO client.example\r\nSTARTTLS\r\n";
static const char tls_auth_after_handshake[] =
    "EHLO client.example\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n"
    "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
    "Subject: x\r\n\r\n.. dot\r\nbody\r\n.\r\nQUIT\r\n";

static void starttls_auth_conversation_is_the_same_bytewise(void **state)
{
    struct h *h = *state;
    h_submission(h, SMTPD_AUTH_REQUIRED);
    h_start(h);
    h_send(h, tls_auth_conversation);
    h_send(h, tls_auth_after_handshake);
    assert_true(h->closed);
    assert_int_equal(h->stores, 1);
    char whole[4096];
    assert_true(h->out_len < sizeof(whole));
    memcpy(whole, h->out, h->out_len + 1);
    char body[1024];
    assert_true(h->st[0].len < sizeof(body));
    memcpy(body, h->st[0].body, h->st[0].len);
    size_t body_len = h->st[0].len;
    assert_non_null(strstr(whole, "\r\n235 2.7.0 "));
    assert_non_null(strstr(whole, "\r\n221 2.0.0 "));
    assert_string_equal(h->st[0].auth_user, "alice");
    h_stop(h);

    h->out_len = 0;
    h->out_pos = 0;
    h->out[0] = '\0';
    h->closed = false;
    h->stores = 0;
    h->starttls_events = 0;
    h->auth_events = 0;
    h_start(h);
    for (size_t i = 0; tls_auth_conversation[i]; i++)
        h_send_n(h, tls_auth_conversation + i, 1);
    for (size_t i = 0; tls_auth_after_handshake[i]; i++)
        h_send_n(h, tls_auth_after_handshake + i, 1);
    assert_true(h->closed);
    assert_int_equal(h->starttls_events, 1);
    assert_int_equal(h->auth_events, 1);
    assert_int_equal(h->stores, 1);
    assert_string_equal(h->out, whole);
    assert_int_equal(h->st[0].len, body_len);
    /* the ids differ in nothing either: same idgen seed */
    assert_memory_equal(h->st[0].body, body, body_len);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(greeting_is_220_with_hostname),
        T(ehlo_advertises_exactly_the_extensions),
        T(ehlo_and_helo_without_argument_get_501),
        T(ehlo_argument_of_255_ok_256_gets_501),
        T(ehlo_argument_with_control_octet_gets_501),
        T(helo_replies_250_hostname),
        T(helo_then_esmtp_parameters_get_555),
        T(ehlo_resets_the_transaction),
        T(mail_before_ehlo_gets_503),
        T(nested_mail_gets_503),
        T(mail_accepts_one_space_after_colon_and_any_case),
        T(mail_bad_path_gets_501_517),
        T(mail_source_route_gets_501_517),
        T(mail_non_ascii_without_smtputf8_gets_553),
        T(mail_size_param_checks_value_and_limit),
        T(mail_body_param_takes_7bit_and_8bitmime_only),
        T(mail_smtputf8_with_value_gets_501),
        T(mail_ret_param_takes_full_or_hdrs),
        T(mail_envid_param_is_xtext_up_to_100),
        T(mail_duplicate_param_gets_501),
        T(mail_unknown_param_gets_555),
        T(rcpt_before_mail_gets_503),
        T(rcpt_bad_path_or_null_gets_501_513),
        T(rcpt_without_domain_gets_501_513),
        T(rcpt_non_ascii_without_smtputf8_gets_553),
        T(rcpt_notify_param),
        T(rcpt_orcpt_param),
        T(rcpt_unknown_param_gets_555),
        T(rcpt_max_n_ok_n_plus_1_gets_452),
        T(relay_denied_gets_554),
        T(data_before_mail_or_rcpt_gets_503),
        T(data_with_argument_gets_501),
        T(data_without_a_pool_chunk_gets_452),
        T(full_transaction_stores_the_exact_body),
        T(received_has_no_for_clause_with_two_recipients),
        T(helo_transaction_is_received_with_smtp),
        T(smtputf8_transaction_is_received_with_utf8smtp),
        T(eight_bit_content_is_flagged_not_refused),
        T(body_spanning_several_chunks_is_stored_whole),
        T(smuggled_ends_of_data_never_end_the_message),
        T(smuggling_split_at_every_offset_is_still_refused),
        T(nul_in_content_gets_554),
        T(text_line_n_ok_n_plus_1_gets_554),
        T(size_limit_n_ok_n_plus_1_gets_552),
        T(oversize_message_is_read_to_the_end),
        T(pool_exhausted_mid_message_gets_452),
        T(bdat_chunks_are_stored_in_order),
        T(bdat_0_last_ends_the_message),
        T(bdat_last_line_without_crlf_is_completed),
        T(bdat_before_mail_or_rcpt_gets_503_and_skips_octets),
        T(bdat_bad_size_gets_501_and_stays_in_command_mode),
        T(data_after_bdat_gets_503),
        T(bdat_content_errors_are_answered_at_the_chunk_end),
        T(bdat_over_size_gets_552),
        T(simple_commands_reply_as_specified),
        T(rset_ends_the_transaction),
        T(quit_replies_221_and_closes),
        T(close_with_mid_transaction_returns_the_chunks),
        T(command_line_with_nul_gets_500),
        T(command_line_of_max_ok_max_plus_1_gets_500),
        T(over_long_line_over_many_feeds_gets_one_500),
        T(bare_lf_ends_a_command_line),
        T(errors_max_closes_with_421),
        T(drain_when_idle_closes_at_once),
        T(drain_mid_transaction_closes_after_it),
        T(drain_ends_after_rset_or_refused_data),
        T(stored_with_errors_gives_452_or_451),
        T(feed_never_consumes_past_a_store),
        T(close_while_storing_keeps_the_body_until_stored),
        T(pipelined_transaction_is_the_same_whole_bytewise_and_split),
        T(tx_backpressure_stops_pipelined_noops),
        T(queued_replies_are_never_moved),
        T(ehlo_offers_starttls_in_clear_and_not_under_tls),
        T(auth_is_offered_only_under_tls),
        T(implicit_tls_offers_auth_and_refuses_starttls),
        T(starttls_refusals),
        T(starttls_consumes_exactly_its_line_and_never_runs_what_follows),
        T(pumped_starttls_drops_the_pipelined_bytes),
        T(auth_in_clear_gets_538),
        T(auth_without_tls_when_allowed_is_offered_and_taken),
        T(auth_plain_with_initial_response_authenticates_and_relays),
        T(received_says_esmtps_under_tls_without_auth),
        T(received_says_utf8smtpsa_for_smtputf8_authenticated),
        T(auth_login_takes_two_steps),
        T(auth_plain_without_initial_response_gets_empty_334),
        T(wrong_password_gets_535_and_mail_then_gets_530),
        T(mail_without_auth_on_required_listener_gets_530),
        T(relay_without_auth_or_relay_ok_gets_554),
        T(auth_twice_gets_503),
        T(auth_during_a_transaction_gets_503),
        T(auth_refusals_before_the_exchange),
        T(auth_cancel_gets_501_570),
        T(over_long_sasl_response_gets_500_556_and_resyncs),
        T(drain_during_auth_exchange_closes_with_421),
        T(close_while_credentials_are_out_wipes_them),
        T(starttls_auth_conversation_is_the_same_bytewise),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
