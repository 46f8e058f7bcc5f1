/* tests/unit/test_smtpc.c: the SMTP client session against a scripted server.
 *
 * The harness plays the worker: it keeps an rx buffer (unconsumed bytes stay
 * and more are appended), hands each feed its input ending right before a
 * PROT_NONE page, drains smtpc_output() through smtpc_sent() into a
 * transcript of what the client wrote, and records the events. Tests feed
 * server replies and check exactly what the client wrote, the events and
 * every recipient's outcome, code, enhanced status and text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
/* cmocka.h needs the headers above */
#include <cmocka.h>

#include "mta/smtpc.h"

#define HELO_NAME "client.example.org"
#define PEER      "mx.example.net[192.0.2.25]"
#define T0        1700000000000ull
#define RX_PAGES  4u
#define RX_CAP    16384u
#define OUT_CAP   262144u
#define TEXT_CAP  4096u
#define RCPT_N    64u
#define CHUNKS_N  64u
#define EV_MAX    32u
#define STR_CAP   8192u
#define GREETING  "220 mx.example.net ESMTP\r\n"
#define EHLO_CMD  "EHLO " HELO_NAME "\r\n"
#define BODY      "Received: from x\r\n\r\nHello\r\n"

enum feed_mode { FEED_WHOLE, FEED_BYTES, FEED_SPLIT };

struct h {
    struct smtpc_cfg cfg;
    size_t tx_cap;
    size_t iov_max;  /* spans asked for per smtpc_output() */
    size_t send_max; /* octets a "send" takes: partial sends below the total */
    bool hold;       /* leave the output alone (the test drains it) */
    enum feed_mode mode;
    size_t split_at;
    uint32_t rcpt_cap;

    uint8_t *txmem;
    struct rm_buf tx;
    uint8_t *arena;
    struct smtpc_result *results;
    struct smtpc s;
    bool started;
    uint64_t now;

    uint8_t rx[RX_CAP];
    size_t rx_len;
    uint8_t *guard_base; /* RX_PAGES readable pages, then one PROT_NONE page */
    uint8_t *guard_end;
    size_t guard_bytes;

    char out[OUT_CAP];
    size_t out_len;
    enum smtpc_ev ev[EV_MAX];
    unsigned nev;

    struct q_env env;
    struct q_rcpt rcpts[RCPT_N];
    uint32_t idx[RCPT_N];
    char strs[STR_CAP]; /* envelope strings */
    size_t strs_len;
    struct rm_chunk *chunks[CHUNKS_N];
    unsigned nchunks;
    struct smtpc_msg msg;

    char buf[TEXT_CAP]; /* h_results / h_text / h_events output */
};

static struct h *h_new(void)
{
    struct h *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    smtpc_cfg_defaults(&h->cfg, HELO_NAME);
    h->tx_cap = 8192;
    h->iov_max = 16;
    h->send_max = SIZE_MAX;
    h->rcpt_cap = 16;
    h->now = T0;
    long page = sysconf(_SC_PAGESIZE);
    assert_true(page > 0);
    size_t pg = (size_t)page;
    h->guard_bytes = RX_PAGES * pg;
    assert_true(h->guard_bytes >= RX_CAP);
    void *m =
        mmap(NULL, h->guard_bytes + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    h->guard_base = m;
    h->guard_end = h->guard_base + h->guard_bytes;
    assert_int_equal(mprotect(h->guard_end, pg, PROT_NONE), 0);
    return h;
}

static void h_free_chunks(struct h *h)
{
    for (unsigned i = 0; i < h->nchunks; i++)
        free(h->chunks[i]);
    h->nchunks = 0;
}

static void h_free(struct h *h)
{
    long page = sysconf(_SC_PAGESIZE);
    munmap(h->guard_base, h->guard_bytes + (size_t)page);
    free(h->txmem);
    free(h->arena);
    free(h->results);
    h_free_chunks(h);
    free(h);
}

static void h_start(struct h *h)
{
    h->txmem = malloc(h->tx_cap);
    assert_non_null(h->txmem);
    rm_buf_init(&h->tx, h->txmem, h->tx_cap);
    h->arena = malloc(SMTPC_ARENA_BYTES(h->rcpt_cap));
    h->results = calloc(h->rcpt_cap, sizeof(*h->results));
    assert_non_null(h->arena);
    assert_non_null(h->results);
    struct smtpc_mem mem = {
        .tx = &h->tx,
        .arena = h->arena,
        .arena_cap = SMTPC_ARENA_BYTES(h->rcpt_cap),
        .results = h->results,
        .rcpt_cap = h->rcpt_cap,
    };
    smtpc_init(&h->s, &h->cfg, &mem, PEER, h->now);
    h->started = true;
}

static void h_record(struct h *h, enum smtpc_ev ev)
{
    if (ev == SMTPC_EV_NONE)
        return;
    assert_true(h->nev < EV_MAX);
    h->ev[h->nev++] = ev;
}

/* Sends everything smtpc_output() gives, send_max octets per "send". */
static void h_drain(struct h *h)
{
    for (unsigned round = 0; round < 10000000u; round++) {
        struct rm_span iov[64];
        struct rm_span again[64];
        RM_ASSERT(h->iov_max <= RM_ARRAY_LEN(iov));
        size_t k = smtpc_output(&h->s, iov, h->iov_max);
        if (k == 0)
            return;
        /* The call changes nothing: the same spans come back. */
        assert_int_equal(smtpc_output(&h->s, again, h->iov_max), k);
        size_t total = 0;
        for (size_t i = 0; i < k; i++) {
            assert_true(iov[i].len > 0);
            assert_ptr_equal(iov[i].p, again[i].p);
            assert_int_equal(iov[i].len, again[i].len);
            total += iov[i].len;
        }
        size_t n = RM_MIN(total, h->send_max);
        size_t left = n;
        for (size_t i = 0; i < k && left > 0; i++) {
            size_t take = RM_MIN(left, iov[i].len);
            assert_true(h->out_len + take < OUT_CAP);
            memcpy(h->out + h->out_len, iov[i].p, take);
            h->out_len += take;
            left -= take;
        }
        h->out[h->out_len] = '\0';
        smtpc_sent(&h->s, n, h->now);
    }
    fail_msg("output never ends");
}

/* Feeds rx like the worker: input ends at the guard page; what is consumed
 * goes, the rest stays for more. */
static void h_pump(struct h *h)
{
    for (;;) {
        if (!h->hold)
            h_drain(h);
        if (h->rx_len == 0)
            return;
        uint8_t *p = h->guard_end - h->rx_len;
        memcpy(p, h->rx, h->rx_len);
        enum smtpc_ev ev = SMTPC_EV_NONE;
        size_t n = smtpc_feed(&h->s, p, h->rx_len, h->now, &ev);
        assert_true(n <= h->rx_len);
        memmove(h->rx, h->rx + n, h->rx_len - n);
        h->rx_len -= n;
        if (n > 0) {
            h_record(h, ev);
            continue;
        }
        if (h->hold)
            return;
        size_t before = h->out_len;
        h_drain(h); /* a reply may wait for the body to be sent */
        if (h->out_len == before)
            return;
    }
}

static void h_append(struct h *h, const char *p, size_t n)
{
    assert_true(h->rx_len + n <= RX_CAP);
    memcpy(h->rx + h->rx_len, p, n);
    h->rx_len += n;
}

static void h_server_n(struct h *h, const char *text, size_t len)
{
    switch (h->mode) {
    case FEED_WHOLE:
        h_append(h, text, len);
        h_pump(h);
        break;
    case FEED_BYTES:
        for (size_t i = 0; i < len; i++) {
            h_append(h, text + i, 1);
            h_pump(h);
        }
        break;
    case FEED_SPLIT: {
        size_t k = RM_MIN(h->split_at, len);
        h_append(h, text, k);
        h_pump(h);
        h_append(h, text + k, len - k);
        h_pump(h);
        break;
    }
    }
}

static void h_server(struct h *h, const char *text)
{
    h_server_n(h, text, strlen(text));
}

static void h_expect(struct h *h, const char *want)
{
    assert_string_equal(h->out, want);
    h->out_len = 0;
    h->out[0] = '\0';
}

static const char *ev_name(enum smtpc_ev ev)
{
    switch (ev) {
    case SMTPC_EV_NONE:
        return "NONE";
    case SMTPC_EV_READY:
        return "READY";
    case SMTPC_EV_DONE:
        return "DONE";
    case SMTPC_EV_FAILED:
        return "FAILED";
    case SMTPC_EV_CLOSE:
        return "CLOSE";
    }
    return "?";
}

/* The events since the last call, comma-separated. */
static const char *h_events(struct h *h)
{
    size_t n = 0;
    h->buf[0] = '\0';
    for (unsigned i = 0; i < h->nev; i++)
        n += (size_t)snprintf(h->buf + n, sizeof(h->buf) - n, "%s%s", i ? "," : "",
                              ev_name(h->ev[i]));
    h->nev = 0;
    return h->buf;
}

static void h_expect_ev(struct h *h, const char *want)
{
    assert_string_equal(h_events(h), want);
}

static const char *outcome_name(enum smtpc_outcome o)
{
    switch (o) {
    case SMTPC_PENDING:
        return "PENDING";
    case SMTPC_OK:
        return "OK";
    case SMTPC_TEMP:
        return "TEMP";
    case SMTPC_PERM:
        return "PERM";
    }
    return "?";
}

static size_t fmt_result(char *out, size_t cap, const struct smtpc_result *r)
{
    return (size_t)snprintf(out, cap, "%s %u %u.%u.%u %s", outcome_name(r->outcome),
                            (unsigned)r->code, r->esc[0], r->esc[1], r->esc[2],
                            smtpc_cmd_name(r->cmd));
}

/* "OUTCOME code x.y.z cmd" per recipient, ";" between. */
static const char *h_results(struct h *h)
{
    size_t n = 0;
    h->buf[0] = '\0';
    for (uint32_t i = 0; i < h->msg.rcpt_count; i++) {
        if (i > 0)
            n += (size_t)snprintf(h->buf + n, sizeof(h->buf) - n, ";");
        n += fmt_result(h->buf + n, sizeof(h->buf) - n, smtpc_result(&h->s, i));
    }
    return h->buf;
}

static const char *span_str(struct h *h, struct rm_span s)
{
    assert_true(s.len < sizeof(h->buf));
    if (s.len > 0)
        memcpy(h->buf, s.p, s.len);
    h->buf[s.len] = '\0';
    return h->buf;
}

static const char *h_text(struct h *h, uint32_t i)
{
    return span_str(h, smtpc_result(&h->s, i)->text);
}

static const char *h_failure(struct h *h)
{
    fmt_result(h->buf, sizeof(h->buf), smtpc_failure(&h->s));
    return h->buf;
}

static const char *h_failure_text(struct h *h)
{
    return span_str(h, smtpc_failure(&h->s)->text);
}

/* Starts and runs greeting + EHLO; the EHLO reply offers the keywords
 * given (NULL-terminated list). */
static void h_connect(struct h *h, ...)
{
    h_start(h);
    h_server(h, GREETING);
    h_expect(h, EHLO_CMD);
    char reply[1024];
    size_t n = (size_t)snprintf(reply, sizeof(reply), "250");
    va_list ap;
    va_start(ap, h);
    const char *kw = va_arg(ap, const char *);
    if (kw == NULL) {
        n += (size_t)snprintf(reply + n, sizeof(reply) - n, " mx.example.net\r\n");
    } else {
        n += (size_t)snprintf(reply + n, sizeof(reply) - n, "-mx.example.net\r\n");
        while (kw != NULL) {
            const char *next = va_arg(ap, const char *);
            n +=
                (size_t)snprintf(reply + n, sizeof(reply) - n, "250%c%s\r\n", next ? '-' : ' ', kw);
            kw = next;
        }
    }
    va_end(ap);
    assert_true(n < sizeof(reply));
    h_server(h, reply);
    h_expect_ev(h, "READY");
    h_expect(h, "");
}

static struct rm_span h_str(struct h *h, const char *s)
{
    size_t n = strlen(s);
    assert_true(h->strs_len + n <= STR_CAP);
    memcpy(h->strs + h->strs_len, s, n);
    struct rm_span sp = rm_span_make(h->strs + h->strs_len, n);
    h->strs_len += n;
    return sp;
}

/* A message from sender to the comma-separated recipients, body BODY. */
static void h_msg(struct h *h, const char *sender, const char *rcpts)
{
    memset(&h->env, 0, sizeof(h->env));
    memset(h->rcpts, 0, sizeof(h->rcpts));
    h->strs_len = 0;
    h->env.sender = h_str(h, sender);
    h->env.envid = rm_span_make(h->strs, 0);
    h->env.rcpts = h->rcpts;
    uint32_t n = 0;
    const char *p = rcpts;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char one[300];
        assert_true(len < sizeof(one) && n < RCPT_N);
        memcpy(one, p, len);
        one[len] = '\0';
        h->rcpts[n].addr = h_str(h, one);
        h->rcpts[n].orcpt = rm_span_make(h->strs, 0);
        h->idx[n] = n;
        n++;
        p += len + (comma ? 1 : 0);
    }
    h->env.rcpt_count = n;
    memset(&h->msg, 0, sizeof(h->msg));
    h->msg.env = &h->env;
    h->msg.rcpt_idx = h->idx;
    h->msg.rcpt_count = n;
    h_free_chunks(h);
}

static struct rm_chunk *chunk_new(const void *p, size_t n)
{
    struct rm_chunk *c = calloc(1, sizeof(*c) + n + 1);
    assert_non_null(c);
    memcpy(c->data, p, n);
    c->len = (uint32_t)n;
    c->cap = (uint32_t)n + 1;
    return c;
}

/* The body as chunks with these contents (NULL-terminated); env.size is
 * set to its length. */
static void h_body(struct h *h, ...)
{
    h_free_chunks(h);
    va_list ap;
    va_start(ap, h);
    uint64_t size = 0;
    struct rm_chunk *prev = NULL;
    for (const char *part = va_arg(ap, const char *); part; part = va_arg(ap, const char *)) {
        assert_true(h->nchunks < CHUNKS_N);
        struct rm_chunk *c = chunk_new(part, strlen(part));
        h->chunks[h->nchunks++] = c;
        if (prev)
            prev->next = c;
        prev = c;
        size += c->len;
    }
    va_end(ap);
    h->msg.body = h->nchunks ? h->chunks[0] : NULL;
    h->env.size = size;
}

static void h_send(struct h *h)
{
    enum smtpc_ev ev = smtpc_message(&h->s, &h->msg, h->now);
    h_record(h, ev);
    if (!h->hold)
        h_drain(h);
}

static void h_std_msg(struct h *h, const char *rcpts)
{
    h_msg(h, "alice@example.org", rcpts);
    h_body(h, BODY, NULL);
}

/* ---- connection phase ------------------------------------------------------ */

static void greeting_multiline_220_then_ehlo_is_sent(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    assert_int_equal(smtpc_deadline(&h->s), T0 + SMTPC_GREETING_TIMEOUT_MS_DEFAULT);
    h_expect(h, "");
    h_server(h, "220-mx.example.net ESMTP\r\n220-no UCE\r\n");
    h_expect(h, "");
    h_expect_ev(h, "");
    h_server(h, "220 ready\r\n");
    h_expect(h, EHLO_CMD);
    assert_int_equal(smtpc_deadline(&h->s), T0 + SMTPC_HELO_TIMEOUT_MS_DEFAULT);
    assert_false(smtpc_ready(&h->s));
    h_server(h, "250-mx.example.net\r\n250 PIPELINING\r\n");
    h_expect_ev(h, "READY");
    assert_true(smtpc_ready(&h->s));
    assert_false(smtpc_closing(&h->s));
    assert_int_equal(smtpc_deadline(&h->s), UINT64_MAX);
    h_free(h);
}

static void greeting_554_is_a_permanent_connection_failure_and_quits(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, "554 5.7.1 mx.example.net no service for you\r\n");
    h_expect_ev(h, "FAILED");
    h_expect(h, "QUIT\r\n");
    /* Before EHLO nothing says the server uses enhanced codes: derived. */
    assert_string_equal(h_failure(h), "PERM 554 5.0.0 greeting");
    assert_string_equal(h_failure_text(h), "554 5.7.1 mx.example.net no service for you");
    assert_true(smtpc_closing(&h->s));
    assert_false(smtpc_ready(&h->s));
    h_free(h);
}

static void greeting_421_is_a_temporary_connection_failure_without_quit(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, "421 mx.example.net busy\r\n");
    h_expect_ev(h, "FAILED");
    h_expect(h, "");
    assert_string_equal(h_failure(h), "TEMP 421 4.0.0 greeting");
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void greeting_malformed_is_a_connection_failure(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, "SSH-2.0-OpenSSH_9.2\r\n");
    h_expect_ev(h, "FAILED");
    h_expect(h, "");
    assert_string_equal(h_failure(h), "TEMP 0 4.5.0 greeting");
    assert_string_equal(h_failure_text(h),
                        "malformed reply from " PEER
                        " while receiving the initial server greeting (bad reply code)");
    h_free(h);
}

static void greeting_with_another_2xx_is_a_connection_failure(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, "250 hello\r\n");
    h_expect_ev(h, "FAILED");
    assert_string_equal(h_failure(h), "TEMP 250 4.0.0 greeting");
    h_free(h);
}

static void ehlo_capabilities_are_parsed(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, GREETING);
    h_expect(h, EHLO_CMD);
    h_server(h, "250-mx.example.net Hello client\r\n"
                "250-pipelining\r\n"
                "250-SIZE 35882577\r\n"
                "250-8BITMIME\r\n"
                "250-SMTPUTF8\r\n"
                "250-ENHANCEDSTATUSCODES\r\n"
                "250-DSN\r\n"
                "250-CHUNKING\r\n"
                "250-STARTTLS\r\n"
                "250-AUTH PLAIN LOGIN\r\n"
                "250 X-SOMETHING-ELSE\r\n");
    h_expect_ev(h, "READY");
    const struct smtpc_caps *c = smtpc_caps(&h->s);
    assert_int_equal(c->flags, SMTPC_CAP_ESMTP | SMTPC_CAP_PIPELINING | SMTPC_CAP_SIZE |
                                   SMTPC_CAP_8BITMIME | SMTPC_CAP_SMTPUTF8 |
                                   SMTPC_CAP_ENHANCEDSTATUSCODES | SMTPC_CAP_DSN |
                                   SMTPC_CAP_CHUNKING | SMTPC_CAP_STARTTLS);
    assert_int_equal(c->size_max, 35882577);
    h_free(h);
}

static void ehlo_size_without_a_number_means_no_limit(void **state)
{
    (void)state;
    const char *variants[] = {"SIZE", "SIZE 0", "SIZE abc", "SIZE 99999999999999999999999"};
    for (size_t i = 0; i < RM_ARRAY_LEN(variants); i++) {
        struct h *h = h_new();
        h_connect(h, variants[i], NULL);
        const struct smtpc_caps *c = smtpc_caps(&h->s);
        assert_int_equal(c->flags, SMTPC_CAP_ESMTP | SMTPC_CAP_SIZE);
        assert_int_equal(c->size_max, 0);
        h_free(h);
    }
}

static void ehlo_single_line_offers_nothing(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, NULL);
    assert_int_equal(smtpc_caps(&h->s)->flags, SMTPC_CAP_ESMTP);
    h_free(h);
}

static void ehlo_502_falls_back_to_helo(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, GREETING);
    h_expect(h, EHLO_CMD);
    h_server(h, "502 5.5.1 EHLO not implemented\r\n");
    h_expect(h, "HELO " HELO_NAME "\r\n");
    h_expect_ev(h, "");
    h_server(h, "250 mx.example.net\r\n");
    h_expect_ev(h, "READY");
    assert_int_equal(smtpc_caps(&h->s)->flags, 0);
    /* No PIPELINING: lock-step. */
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n");
    h_free(h);
}

static void helo_550_is_a_permanent_connection_failure(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, GREETING);
    h_server(h, "500 what\r\n");
    h_expect(h, EHLO_CMD "HELO " HELO_NAME "\r\n");
    h_server(h, "550 go away\r\n");
    h_expect_ev(h, "FAILED");
    h_expect(h, "QUIT\r\n");
    assert_string_equal(h_failure(h), "PERM 550 5.0.0 HELO");
    h_free(h);
}

static void ehlo_4xx_is_a_temporary_connection_failure(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, GREETING);
    h_expect(h, EHLO_CMD);
    h_server(h, "450 4.7.1 slow down\r\n");
    h_expect_ev(h, "FAILED");
    h_expect(h, "QUIT\r\n");
    assert_string_equal(h_failure(h), "TEMP 450 4.0.0 EHLO");
    h_free(h);
}

/* ---- one message ------------------------------------------------------------ */

static void pipelined_message_is_one_burst_and_replies_are_read_in_order(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "SIZE 1000000", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_expect_ev(h, "");
    h_expect(h, "MAIL FROM:<alice@example.org> SIZE=27\r\n"
                "RCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\n"
                "DATA\r\n");
    assert_false(smtpc_ready(&h->s));
    h_server(h, "250 2.1.0 Ok\r\n");
    h_server(h, "250 2.1.5 Ok\r\n");
    h_server(h, "250 2.1.5 Ok\r\n");
    h_expect(h, "");
    h_server(h, "354 End data with <CR><LF>.<CR><LF>\r\n");
    h_expect(h, BODY ".\r\n");
    h_expect_ev(h, "");
    h_server(h, "250 2.0.0 Ok: queued as 12345\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA;OK 250 2.0.0 end of DATA");
    assert_string_equal(h_text(h, 1), "250 2.0.0 Ok: queued as 12345");
    assert_true(smtpc_ready(&h->s));
    assert_false(smtpc_closing(&h->s));
    h_free(h);
}

static void lockstep_message_waits_for_each_reply(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "8BITMIME", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect(h, "RCPT TO:<bob@example.net>\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect(h, "RCPT TO:<carol@example.net>\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect(h, "DATA\r\n");
    h_server(h, "354 go\r\n");
    h_expect(h, BODY ".\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA;OK 250 2.0.0 end of DATA");
    h_free(h);
}

static void rcpt_results_are_per_recipient(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net,dave@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n"
                "RCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\n"
                "RCPT TO:<dave@example.net>\r\n"
                "DATA\r\n");
    h_server(h, "250 2.1.0 Ok\r\n"
                "250 2.1.5 Ok\r\n"
                "450 4.2.1 carol is over quota, try later\r\n"
                "550 5.1.1 dave: no such user\r\n"
                "354 go ahead\r\n");
    h_expect(h, BODY ".\r\n");
    h_server(h, "250 2.0.0 queued\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA;"
                                      "TEMP 450 4.2.1 RCPT TO;"
                                      "PERM 550 5.1.1 RCPT TO");
    assert_string_equal(h_text(h, 0), "250 2.0.0 queued");
    assert_string_equal(h_text(h, 1), "450 4.2.1 carol is over quota, try later");
    assert_string_equal(h_text(h, 2), "550 5.1.1 dave: no such user");
    h_free(h);
}

static void mail_452_makes_every_recipient_temp(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n"
                "RCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\n"
                "DATA\r\n");
    h_server(h, "452 4.3.1 Insufficient system storage\r\n");
    h_expect_ev(h, ""); /* the pipelined replies are still to come */
    h_server(h, "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
    h_expect_ev(h, "");
    h_server(h, "503 5.5.1 need RCPT\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "TEMP 452 4.3.1 MAIL FROM;TEMP 452 4.3.1 MAIL FROM");
    assert_string_equal(h_text(h, 1), "452 4.3.1 Insufficient system storage");
    assert_true(smtpc_ready(&h->s));
    h_free(h);
}

static void mail_refused_in_lockstep_sends_nothing_more(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n");
    h_server(h, "553 5.7.1 sender rejected\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "PERM 553 5.7.1 MAIL FROM;PERM 553 5.7.1 MAIL FROM");
    assert_true(smtpc_ready(&h->s));
    h_free(h);
}

static void data_554_makes_the_accepted_recipients_perm(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n"
                "RCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\n"
                "DATA\r\n");
    h_server(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.7.1 greylisted\r\n"
                "554 5.7.1 content policy\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "PERM 554 5.7.1 DATA;TEMP 450 4.7.1 RCPT TO");
    h_free(h);
}

static void final_dot_451_makes_the_accepted_recipients_temp(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_server(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n354 go\r\n");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n"
                "RCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\n"
                "DATA\r\n" BODY ".\r\n");
    h_server(h, "451 4.3.0 local error in processing\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "TEMP 451 4.3.0 end of DATA;PERM 550 5.1.1 RCPT TO");
    assert_true(smtpc_ready(&h->s));
    h_free(h);
}

static void all_rcpts_refused_in_lockstep_sends_no_data(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n");
    h_server(h, "550 no\r\n");
    h_server(h, "551 not here\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n"
                "RCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\n");
    assert_string_equal(h_results(h), "PERM 550 5.0.0 RCPT TO;PERM 551 5.0.0 RCPT TO");
    h_free(h);
}

static void all_rcpts_refused_then_354_gets_a_lone_dot(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    h_server(h, "250 Ok\r\n550 no\r\n354 go\r\n");
    h_expect(h, ".\r\n"); /* RFC 2920 3.1: the body is not sent */
    h_expect_ev(h, "");
    h_server(h, "554 no valid recipients\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "PERM 550 5.0.0 RCPT TO");
    assert_true(smtpc_ready(&h->s));
    h_free(h);
}

static void all_rcpts_refused_then_data_554_ends_the_transaction(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n550 no\r\n554 no valid recipients\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    assert_string_equal(h_results(h), "PERM 550 5.0.0 RCPT TO");
    h_free(h);
}

static void reply_of_an_unexpected_class_to_rcpt_is_temp(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 2.1.0 Ok\r\n");
    h_server(h, "354 2.1.5 what\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "TEMP 354 4.0.0 RCPT TO");
    h_free(h);
}

/* ---- body output ------------------------------------------------------------ */

/* Runs one lock-step message with the chunks given and returns what was
 * written after the 354 (body and terminator). */
static void run_body(struct h *h, const char *want)
{
    h_connect(h, NULL);
    h_send(h);
    h_server(h, "250 Ok\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    h_server(h, "354 go\r\n");
    h_expect(h, want);
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA");
}

static void dot_stuffing_doubles_leading_dots_including_the_first_line(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_msg(h, "alice@example.org", "bob@example.net");
    h_body(h, ".first\r\nmid.dle\r\n..two\r\n.\r\nlast\r\n", NULL);
    run_body(h, "..first\r\nmid.dle\r\n...two\r\n..\r\nlast\r\n.\r\n");
    h_free(h);
}

static void dot_stuffing_works_across_chunk_boundaries(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_msg(h, "alice@example.org", "bob@example.net");
    h_body(h, "a\r\n", ".b\r\nc\r", "\n.d\r\ne\r\n", ".", "f\r\ng\r\n", "", ".h\r\nx.", "y\r\n",
           NULL);
    run_body(h, "a\r\n..b\r\nc\r\n..d\r\ne\r\n..f\r\ng\r\n..h\r\nx.y\r\n.\r\n");
    h_free(h);
}

static void body_without_final_crlf_gets_one_before_the_dot(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_msg(h, "alice@example.org", "bob@example.net");
    h_body(h, "abc\r\n", ".last", NULL);
    run_body(h, "abc\r\n..last\r\n.\r\n");
    h_free(h);
}

static void empty_body_is_just_the_dot(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_msg(h, "alice@example.org", "bob@example.net");
    h_body(h, NULL);
    run_body(h, ".\r\n");
    h_free(h);
}

static void flat_body_span_is_sent_like_a_chain(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_msg(h, "alice@example.org", "bob@example.net");
    static const char flat[] = ".x\r\ny\r\n.\r\nz";
    h->msg.body = NULL;
    h->msg.body_flat = rm_span_make(flat, sizeof(flat) - 1);
    h->env.size = sizeof(flat) - 1;
    run_body(h, "..x\r\ny\r\n..\r\nz\r\n.\r\n");
    h_free(h);
}

static void body_output_survives_partial_sends_of_one_span(void **state)
{
    (void)state;
    struct h *h = h_new();
    h->iov_max = 1;
    h->send_max = 3;
    h_msg(h, "alice@example.org", "bob@example.net");
    h_body(h, ".a\r\n", "\r\n.", ".b\r\n", NULL);
    run_body(h, "..a\r\n\r\n...b\r\n.\r\n");
    h_free(h);
}

/* ---- extensions and parameters --------------------------------------------- */

static void smtputf8_needed_but_not_offered_fails_5_6_7_or_5_6_9_unsent(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", NULL);
    /* ASCII sender: 5.6.7 only for the non-ASCII recipient. */
    h_msg(h, "alice@example.org", "bob@example.net,j\xc3\xb6ran@example.net");
    h_body(h, BODY, NULL);
    h->env.flags = Q_ENV_SMTPUTF8;
    h_send(h);
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "PERM 0 5.6.9 none;PERM 0 5.6.7 none");
    assert_string_equal(h_text(h, 0), "SMTPUTF8 is required, but was not offered by host " PEER);
    assert_true(smtpc_ready(&h->s));
    /* A non-ASCII sender: 5.6.7 for all. */
    h_msg(h, "\xc3\xa5sa@example.org", "bob@example.net");
    h_body(h, BODY, NULL);
    h->env.flags = Q_ENV_SMTPUTF8;
    h_send(h);
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "PERM 0 5.6.7 none");
    /* Non-ASCII without the flag needs SMTPUTF8 all the same. */
    h_msg(h, "alice@example.org", "j\xc3\xb6ran@example.net");
    h_body(h, BODY, NULL);
    h_send(h);
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "PERM 0 5.6.7 none");
    h_expect(h, "");
    /* Nothing was sent, so the next transaction needs no RSET. */
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    h_free(h);
}

static void smtputf8_offered_is_sent_with_mail(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "SMTPUTF8", NULL);
    h_msg(h, "j\xc3\xb6ran@example.org", "bob@example.net");
    h_body(h, BODY, NULL);
    h->env.flags = Q_ENV_SMTPUTF8;
    h_send(h);
    h_expect(h, "MAIL FROM:<j\xc3\xb6ran@example.org> SMTPUTF8\r\n"
                "RCPT TO:<bob@example.net>\r\nDATA\r\n");
    h_free(h);
}

static void size_over_the_server_limit_fails_5_3_4_unsent(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "SIZE 1000", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h->env.size = 1001;
    h_send(h);
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "PERM 0 5.3.4 none;PERM 0 5.3.4 none");
    assert_string_equal(h_text(h, 1), "message size 1001 exceeds size limit 1000 of server " PEER);
    /* At the limit exactly it goes. */
    h->env.size = 1000;
    h_send(h);
    h_expect_ev(h, "");
    h_expect(h, "MAIL FROM:<alice@example.org> SIZE=1000\r\n"
                "RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n");
    h_free(h);
}

static void mail_and_rcpt_parameters_are_sent_when_offered(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "DSN", NULL);
    h_msg(h, "alice@example.org", "bob@example.net,carol@example.net,dave@example.net");
    h_body(h, BODY, NULL);
    h->env.flags = Q_ENV_SMTPUTF8 | Q_ENV_8BITMIME;
    h->env.ret = Q_RET_HDRS;
    h->env.envid = h_str(h, "QQ314159");
    h->rcpts[0].notify = Q_NOTIFY_SUCCESS | Q_NOTIFY_FAILURE;
    h->rcpts[0].orcpt = h_str(h, "rfc822;bob@example.net");
    h->rcpts[1].notify = Q_NOTIFY_NEVER;
    h->rcpts[2].notify = Q_NOTIFY_DELAY | Q_NOTIFY_FAILURE | Q_NOTIFY_SUCCESS;
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org> SIZE=27 BODY=8BITMIME SMTPUTF8 RET=HDRS "
                "ENVID=QQ314159\r\n"
                "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE "
                "ORCPT=rfc822;bob@example.net\r\n"
                "RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n"
                "RCPT TO:<dave@example.net> NOTIFY=SUCCESS,FAILURE,DELAY\r\n"
                "DATA\r\n");
    h_free(h);
}

static void mail_and_rcpt_parameters_are_left_out_when_not_offered(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_msg(h, "alice@example.org", "bob@example.net");
    h_body(h, "Received: x\r\n\r\n\xe2\x82\xac\r\n", NULL);
    /* 8-bit without 8BITMIME offered: sent anyway, without BODY= (as Postfix). */
    h->env.flags = Q_ENV_8BITMIME | Q_ENV_8BIT;
    h->env.ret = Q_RET_FULL;
    h->env.envid = h_str(h, "ID1");
    h->rcpts[0].notify = Q_NOTIFY_SUCCESS;
    h->rcpts[0].orcpt = h_str(h, "rfc822;bob@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    h_expect(h, "Received: x\r\n\r\n\xe2\x82\xac\r\n.\r\n");
    h_free(h);
}

static void undeclared_8bit_body_gets_body_8bitmime_when_offered(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "8BITMIME", "DSN", NULL);
    h_msg(h, "", "bob@example.net");
    h_body(h, BODY, NULL);
    h->env.flags = Q_ENV_8BIT;
    h->env.ret = Q_RET_FULL;
    h_send(h);
    h_expect(h, "MAIL FROM:<> BODY=8BITMIME RET=FULL\r\n");
    h_free(h);
}

static void enhanced_status_is_taken_from_replies_only_when_offered(void **state)
{
    (void)state;
    /* Offered: taken when present and of the right class, else derived. */
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "a@example.net,b@example.net,c@example.net,d@example.net");
    h_send(h);
    h_server(h, "250 2.1.0 Ok\r\n"
                "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
                "550 5.1.1 Please check the address.\r\n"
                "550 no such user\r\n"
                "550 4.1.1 inconsistent\r\n"
                "450 4.2.0 later\r\n"
                "554 no valid recipients\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "PERM 550 5.1.1 RCPT TO;PERM 550 5.0.0 RCPT TO;"
                                      "PERM 550 5.0.0 RCPT TO;TEMP 450 4.2.0 RCPT TO");
    assert_string_equal(h_text(h, 0),
                        "550-5.1.1 The email account that you tried to reach does not exist. "
                        "550 5.1.1 Please check the address.");
    h_free(h);

    /* Not offered: always derived, the text keeps what the server said. */
    h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "a@example.net,b@example.net");
    h_send(h);
    h_server(h, "250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n250 2.1.5 Ok\r\n354 go\r\n");
    h_server(h, "250 2.6.0 queued\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "PERM 550 5.0.0 RCPT TO;OK 250 2.0.0 end of DATA");
    assert_string_equal(h_text(h, 0), "550 5.1.1 no such user");
    h_free(h);
}

static void bad_addresses_are_refused_locally(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_msg(h, "alice@example.org", "bob@exa\r\nmple.net,carol@example.net");
    h_body(h, BODY, NULL);
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n");
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    h_expect(h, BODY ".\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "PERM 0 5.1.3 none;OK 250 2.0.0 end of DATA");
    assert_string_equal(h_text(h, 0), "bad recipient address syntax");

    h_msg(h, "alice\r\n@example.org", "carol@example.net");
    h_body(h, BODY, NULL);
    h_send(h);
    h_expect_ev(h, "DONE");
    h_expect(h, "");
    assert_string_equal(h_results(h), "PERM 0 5.1.7 none");
    h_free(h);
}

/* ---- reuse and QUIT ---------------------------------------------------------- */

static void run_ok_message(struct h *h)
{
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n");
    h_server(h, "250 Ok\r\n");
    h_server(h, "354 go\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA");
    h_expect(h,
             "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n" BODY ".\r\n");
}

static void second_message_sends_rset_first_in_the_burst(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    run_ok_message(h);
    h_std_msg(h, "carol@example.net");
    h_send(h);
    h_expect(h, "RSET\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.net>\r\n"
                "DATA\r\n");
    h_server(h, "250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n");
    h_expect(h, BODY ".\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA");
    h_free(h);
}

static void second_message_in_lockstep_waits_for_the_rset_reply(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n");
    h_server(h, "250 Ok\r\n");
    h_server(h, "354 go\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h,
             "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n" BODY ".\r\n");
    h_std_msg(h, "carol@example.net");
    h_send(h);
    h_expect(h, "RSET\r\n");
    assert_int_equal(smtpc_deadline(&h->s), h->now + SMTPC_RSET_TIMEOUT_MS_DEFAULT);
    h_server(h, "250 Ok\r\n");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\n");
    h_free(h);
}

static void rset_failure_makes_recipients_temp_and_closes(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, NULL);
    run_ok_message(h);
    h_std_msg(h, "carol@example.net");
    h_send(h);
    h_expect(h, "RSET\r\n");
    h_server(h, "502 5.5.1 RSET not implemented\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "QUIT\r\n");
    /* Not PERM: the recipients were never tried. */
    assert_string_equal(h_results(h), "TEMP 502 4.0.0 RSET");
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void rset_failure_in_a_burst_closes_without_quit(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    run_ok_message(h);
    h_std_msg(h, "carol@example.net");
    h_send(h);
    h_expect(h, "RSET\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.net>\r\n"
                "DATA\r\n");
    h_server(h, "500 what\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, ""); /* replies to MAIL/RCPT/DATA are outstanding: no QUIT */
    assert_string_equal(h_results(h), "TEMP 500 4.0.0 RSET");
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void quit_when_ready_sends_quit_and_closes_on_221(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    run_ok_message(h);
    h->now += 5;
    assert_int_equal(smtpc_quit(&h->s, h->now), SMTPC_EV_NONE);
    h_drain(h);
    h_expect(h, "QUIT\r\n");
    assert_int_equal(smtpc_deadline(&h->s), h->now + SMTPC_QUIT_TIMEOUT_MS_DEFAULT);
    assert_false(smtpc_ready(&h->s));
    h_server(h, "221 2.0.0 Bye\r\n");
    h_expect_ev(h, "CLOSE");
    assert_true(smtpc_closing(&h->s));
    assert_int_equal(smtpc_quit(&h->s, h->now), SMTPC_EV_CLOSE);
    h_free(h);
}

static void quit_mid_transaction_aborts_with_temp(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    assert_int_equal(smtpc_quit(&h->s, h->now), SMTPC_EV_DONE);
    h_drain(h);
    h_expect(h, "");
    assert_string_equal(h_results(h), "TEMP 0 4.3.0 RCPT TO");
    assert_string_equal(h_text(h, 0), "delivery to " PEER " aborted while sending RCPT TO");
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void quit_before_ready_closes_at_once(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    assert_int_equal(smtpc_quit(&h->s, h->now), SMTPC_EV_CLOSE);
    h_drain(h);
    h_expect(h, "");
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void unsolicited_reply_while_idle_closes(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    run_ok_message(h);
    h_server(h, "421 4.4.2 mx.example.net idle timeout\r\n");
    h_expect_ev(h, "CLOSE");
    h_expect(h, "");
    assert_true(smtpc_closing(&h->s));
    assert_int_equal(smtpc_deadline(&h->s), UINT64_MAX);
    h_free(h);
}

/* ---- failures mid-transaction ---------------------------------------------- */

static void reply_421_mid_transaction_ends_the_session_with_its_text(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", "ENHANCEDSTATUSCODES", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_server(h, "250 2.1.0 Ok\r\n550 5.1.1 no\r\n421 4.7.0 too many errors\r\n");
    h_expect_ev(h, "DONE");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\nDATA\r\n");
    assert_string_equal(h_results(h), "PERM 550 5.1.1 RCPT TO;TEMP 421 4.7.0 RCPT TO");
    assert_string_equal(h_text(h, 1), "421 4.7.0 too many errors");
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void connection_lost_mid_transaction_is_temp_with_the_step(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net,carol@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n550 no\r\n");
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                "RCPT TO:<carol@example.net>\r\nDATA\r\n");
    assert_int_equal(smtpc_lost(&h->s, h->now), SMTPC_EV_DONE);
    assert_string_equal(h_results(h), "PERM 550 5.0.0 RCPT TO;TEMP 0 4.4.2 RCPT TO");
    assert_string_equal(h_text(h, 1), "lost connection with " PEER " while sending RCPT TO");
    assert_true(smtpc_closing(&h->s));
    assert_int_equal(smtpc_deadline(&h->s), UINT64_MAX);
    assert_int_equal(smtpc_lost(&h->s, h->now), SMTPC_EV_CLOSE);
    h_free(h);
}

static void connection_lost_while_sending_the_body_or_awaiting_the_dot_reply(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h->hold = true;
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    assert_int_equal(smtpc_lost(&h->s, h->now), SMTPC_EV_DONE);
    assert_string_equal(h_results(h), "TEMP 0 4.4.2 message body");
    assert_string_equal(h_text(h, 0), "lost connection with " PEER " while sending message body");
    struct rm_span iov[4];
    assert_int_equal(smtpc_output(&h->s, iov, 4), 0); /* closed: no more body */
    h_free(h);

    h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    assert_int_equal(smtpc_lost(&h->s, h->now), SMTPC_EV_DONE);
    assert_string_equal(h_results(h), "TEMP 0 4.4.2 end of DATA");
    assert_string_equal(h_text(h, 0), "lost connection with " PEER " while sending end of data "
                                      "-- message may be sent more than once");
    h_free(h);
}

static void connection_lost_before_ready_is_a_connection_failure(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_start(h);
    h_server(h, GREETING);
    assert_int_equal(smtpc_lost(&h->s, h->now), SMTPC_EV_FAILED);
    assert_string_equal(h_failure(h), "TEMP 0 4.4.2 EHLO");
    assert_string_equal(h_failure_text(h),
                        "lost connection with " PEER " while performing the EHLO handshake");
    h_free(h);

    h = h_new();
    h_connect(h, NULL);
    assert_int_equal(smtpc_lost(&h->s, h->now), SMTPC_EV_CLOSE); /* idle */
    h_free(h);
}

static void malformed_replies_make_unresolved_temp_and_close(void **state)
{
    (void)state;
    static const struct {
        const char *reply;
        const char *why;
    } cases[] = {
        {"25x Ok\r\n", "bad reply code"},
        {"2500 Ok\r\n", "bad reply code"},
        {"150 Ok\r\n", "bad reply code"},
        {"650 Ok\r\n", "bad reply code"},
        {"250_Ok\r\n", "bad reply code"},
        {"\r\n", "bad reply code"},
        {"250-Ok\r\n251 Ok\r\n", "reply codes differ between lines"},
    };
    for (size_t i = 0; i < RM_ARRAY_LEN(cases); i++) {
        struct h *h = h_new();
        h_connect(h, "PIPELINING", NULL);
        h_std_msg(h, "bob@example.net");
        h_send(h);
        h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
        h_server(h, cases[i].reply);
        h_expect_ev(h, "DONE");
        h_expect(h, "");
        assert_string_equal(h_results(h), "TEMP 0 4.5.0 MAIL FROM");
        char want[256];
        snprintf(want, sizeof(want), "malformed reply from %s while sending MAIL FROM (%s)", PEER,
                 cases[i].why);
        assert_string_equal(h_text(h, 0), want);
        assert_true(smtpc_closing(&h->s));
        h_free(h);
    }
}

static void reply_line_of_512_is_taken_513_is_malformed(void **state)
{
    (void)state;
    for (size_t len = SMTPC_REPLY_LINE_MAX; len <= SMTPC_REPLY_LINE_MAX + 1; len++) {
        for (int mode = FEED_WHOLE; mode <= FEED_BYTES; mode++) {
            struct h *h = h_new();
            h->mode = (enum feed_mode)mode;
            h_connect(h, NULL);
            h_std_msg(h, "bob@example.net");
            h_send(h);
            char line[SMTPC_REPLY_LINE_MAX + 2];
            memset(line, 'x', len);
            memcpy(line, "550 ", 4);
            memcpy(line + len - 2, "\r\n", 2);
            h_server_n(h, line, len);
            h_expect_ev(h, "DONE");
            if (len == SMTPC_REPLY_LINE_MAX) {
                assert_string_equal(h_results(h), "PERM 550 5.0.0 MAIL FROM");
                /* The whole line, CRLF aside, is the text. */
                assert_int_equal(smtpc_result(&h->s, 0)->text.len, len - 2);
            } else {
                assert_string_equal(h_results(h), "TEMP 0 4.5.0 MAIL FROM");
                assert_string_equal(h_text(h, 0), "malformed reply from " PEER
                                                  " while sending MAIL FROM (reply line too long)");
            }
            h_free(h);
        }
    }
    /* An rx of exactly SMTPC_REPLY_LINE_MAX without LF is enough to know:
     * the caller's buffer need not hold one octet more. */
    struct h *h = h_new();
    h_connect(h, NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    uint8_t *p = h->guard_end - SMTPC_REPLY_LINE_MAX;
    memset(p, 'x', SMTPC_REPLY_LINE_MAX);
    memcpy(p, "550 ", 4);
    enum smtpc_ev ev = SMTPC_EV_NONE;
    assert_int_equal(smtpc_feed(&h->s, p, SMTPC_REPLY_LINE_MAX - 1, h->now, &ev), 0);
    assert_int_equal(ev, SMTPC_EV_NONE);
    assert_int_equal(smtpc_feed(&h->s, p, SMTPC_REPLY_LINE_MAX, h->now, &ev), SMTPC_REPLY_LINE_MAX);
    assert_int_equal(ev, SMTPC_EV_DONE);
    h->msg.rcpt_count = 1;
    assert_string_equal(h_results(h), "TEMP 0 4.5.0 MAIL FROM");
    h_free(h);
}

static void reply_of_max_lines_is_taken_one_more_is_malformed(void **state)
{
    (void)state;
    for (unsigned lines = SMTPC_REPLY_LINES_MAX; lines <= SMTPC_REPLY_LINES_MAX + 1; lines++) {
        struct h *h = h_new();
        h_start(h);
        h_server(h, GREETING);
        char reply[8192];
        size_t n = 0;
        for (unsigned i = 0; i < lines; i++)
            n += (size_t)snprintf(reply + n, sizeof(reply) - n, "250%cX-LINE%u\r\n",
                                  i + 1 < lines ? '-' : ' ', i);
        h_server(h, reply);
        if (lines == SMTPC_REPLY_LINES_MAX) {
            h_expect_ev(h, "READY");
        } else {
            h_expect_ev(h, "FAILED");
            assert_string_equal(h_failure(h), "TEMP 0 4.5.0 EHLO");
            assert_string_equal(h_failure_text(h),
                                "malformed reply from " PEER
                                " while performing the EHLO handshake (too many reply lines)");
        }
        h_free(h);
    }
}

static void reply_text_joins_lines_masks_controls_and_is_cut(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    /* Bare LF ends a line too. */
    h_server(h, "550-a\tb\x01"
                "c\n550 d\xc3\xa9\r\n");
    h_expect_ev(h, "");
    h_server(h, "503 x\r\n503 y\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_text(h, 0), "550-a?b?c 550 d\xc3\xa9");
    h_free(h);

    h = h_new();
    h_connect(h, NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    char reply[4096];
    size_t n = 0;
    for (unsigned i = 0; i < 20; i++)
        n += (size_t)snprintf(reply + n, sizeof(reply) - n,
                              "550%c123456789012345678901234567890123456789\r\n",
                              i < 19 ? '-' : ' ');
    h_server(h, reply);
    h_expect_ev(h, "DONE");
    assert_int_equal(smtpc_result(&h->s, 0)->text.len, SMTPC_TEXT_MAX);
    assert_string_equal(h_results(h), "PERM 550 5.0.0 MAIL FROM");
    h_free(h);
}

/* ---- timeouts ---------------------------------------------------------------- */

static void h_fire(struct h *h, uint32_t want_ms, enum smtpc_ev want_ev)
{
    uint64_t d = smtpc_deadline(&h->s);
    assert_int_equal(d, h->now + want_ms);
    assert_int_equal(smtpc_timeout(&h->s, d - 1), SMTPC_EV_NONE); /* stale timer */
    h->now = d;
    assert_int_equal(smtpc_timeout(&h->s, d), want_ev);
    assert_true(smtpc_closing(&h->s));
    assert_int_equal(smtpc_deadline(&h->s), UINT64_MAX);
}

static struct h *h_new_timeouts(void)
{
    struct h *h = h_new();
    /* Distinct values, so each phase is seen to use its own field. */
    h->cfg.greeting_timeout_ms = 1001;
    h->cfg.helo_timeout_ms = 1002;
    h->cfg.mail_timeout_ms = 1003;
    h->cfg.rcpt_timeout_ms = 1004;
    h->cfg.data_timeout_ms = 1005;
    h->cfg.block_timeout_ms = 1006;
    h->cfg.dot_timeout_ms = 1007;
    h->cfg.rset_timeout_ms = 1008;
    h->cfg.quit_timeout_ms = 1009;
    return h;
}

static void timeouts_before_ready_are_connection_failures(void **state)
{
    (void)state;
    struct h *h = h_new_timeouts();
    h_start(h);
    h_fire(h, 1001, SMTPC_EV_FAILED);
    assert_string_equal(h_failure(h), "TEMP 0 4.4.2 greeting");
    assert_string_equal(h_failure_text(h),
                        "conversation with " PEER
                        " timed out while receiving the initial server greeting");
    h_free(h);

    h = h_new_timeouts();
    h_start(h);
    h->now += 7;
    h_server(h, GREETING);
    h_fire(h, 1002, SMTPC_EV_FAILED);
    assert_string_equal(h_failure(h), "TEMP 0 4.4.2 EHLO");
    h_free(h);
}

static void timeouts_in_a_transaction_use_each_phase_limit(void **state)
{
    (void)state;
    static const struct {
        unsigned replies; /* lock-step replies given before the timer fires */
        uint32_t ms;
        const char *result;
    } cases[] = {
        {0, 1003, "TEMP 0 4.4.2 MAIL FROM"},
        {1, 1004, "TEMP 0 4.4.2 RCPT TO"},
        {2, 1005, "TEMP 0 4.4.2 DATA"},
    };
    static const char *const replies[] = {"250 Ok\r\n", "250 Ok\r\n"};
    for (size_t i = 0; i < RM_ARRAY_LEN(cases); i++) {
        struct h *h = h_new_timeouts();
        h_connect(h, NULL);
        h_std_msg(h, "bob@example.net");
        h_send(h);
        for (unsigned r = 0; r < cases[i].replies; r++) {
            h->now += 100;
            h_server(h, replies[r]);
        }
        h_fire(h, cases[i].ms, SMTPC_EV_DONE);
        assert_string_equal(h_results(h), cases[i].result);
        h_free(h);
    }
}

static void timeout_while_sending_the_body_counts_from_the_last_progress(void **state)
{
    (void)state;
    struct h *h = h_new_timeouts();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    /* The first RCPT reply is awaited with the RCPT limit once MAIL's came. */
    assert_int_equal(smtpc_deadline(&h->s), h->now + 1003);
    h->now += 10;
    h_server(h, "250 Ok\r\n");
    assert_int_equal(smtpc_deadline(&h->s), h->now + 1004);
    h->now += 10;
    h_server(h, "250 Ok\r\n");
    assert_int_equal(smtpc_deadline(&h->s), h->now + 1005);
    h->hold = true;
    h->now += 10;
    h_server(h, "354 go\r\n");
    assert_int_equal(smtpc_deadline(&h->s), h->now + 1006);
    h->now += 500;
    smtpc_sent(&h->s, 4, h->now); /* progress moves the deadline */
    h_fire(h, 1006, SMTPC_EV_DONE);
    assert_string_equal(h_results(h), "TEMP 0 4.4.2 message body");
    assert_string_equal(h_text(h, 0),
                        "conversation with " PEER " timed out while sending message body");
    h_free(h);
}

static void send_completing_after_a_timeout_mid_body_is_taken(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h->hold = true;
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    struct rm_span iov[8];
    size_t k = smtpc_output(&h->s, iov, 8);
    size_t total = 0;
    for (size_t i = 0; i < k; i++)
        total += iov[i].len;
    assert_int_equal(total, strlen(BODY ".\r\n")); /* handed to a send */
    h->now = smtpc_deadline(&h->s);
    assert_int_equal(smtpc_timeout(&h->s, h->now), SMTPC_EV_DONE);
    smtpc_sent(&h->s, total, h->now); /* its completion, after the close */
    assert_int_equal(smtpc_output(&h->s, iov, 8), 0);
    assert_true(smtpc_closing(&h->s));
    h_free(h);
}

static void timeout_waiting_for_the_dot_reply(void **state)
{
    (void)state;
    struct h *h = h_new_timeouts();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    h_fire(h, 1007, SMTPC_EV_DONE);
    assert_string_equal(h_results(h), "TEMP 0 4.4.2 end of DATA");
    h_free(h);
}

static void timeouts_for_rset_and_quit(void **state)
{
    (void)state;
    struct h *h = h_new_timeouts();
    h_connect(h, NULL);
    run_ok_message(h);
    h_std_msg(h, "carol@example.net");
    h_send(h);
    h_expect(h, "RSET\r\n");
    h_fire(h, 1008, SMTPC_EV_DONE);
    assert_string_equal(h_results(h), "TEMP 0 4.4.2 RSET");
    h_free(h);

    h = h_new_timeouts();
    h_connect(h, NULL);
    assert_int_equal(smtpc_quit(&h->s, h->now), SMTPC_EV_NONE);
    h_fire(h, 1009, SMTPC_EV_CLOSE);
    h_free(h);
}

/* ---- feeding and streaming ------------------------------------------------- */

/* A whole conversation; returns its transcript: what the client wrote, the
 * events and the results, in order. */
static void run_script(struct h *h, char *out, size_t cap)
{
    size_t n = 0;
#define LOG()                                                                                      \
    do {                                                                                           \
        n += (size_t)snprintf(out + n, cap - n, "[%s]{%s}", h->out, h_events(h));                  \
        h->out_len = 0;                                                                            \
        h->out[0] = '\0';                                                                          \
    } while (0)
    h_start(h);
    h_server(h, "220-mx.example.net ESMTP\r\n220 hi\r\n");
    LOG();
    h_server(h, "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 100000\r\n"
                "250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n");
    LOG();
    h_msg(h, "alice@example.org", "bob@example.net,carol@example.net,dave@example.net");
    h_body(h, "Received: x\r\n\r\n.dot\r\nline\r", "\n.\r\n", ".more", NULL);
    h_send(h);
    LOG();
    h_server(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450-4.2.1 mailbox\r\n450 4.2.1 busy\r\n"
                "550 5.1.1 no such user\r\n354 go\r\n");
    LOG();
    h_server(h, "250 2.0.0 Ok: queued as ABC\r\n");
    LOG();
    n += (size_t)snprintf(out + n, cap - n, "(%s)", h_results(h));
    h_std_msg(h, "erin@example.net");
    h_send(h);
    LOG();
    h_server(h, "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
    LOG();
    h_server(h, "451 4.3.0 try again\r\n");
    LOG();
    n += (size_t)snprintf(out + n, cap - n, "(%s)", h_results(h));
    n += (size_t)snprintf(out + n, cap - n, "q%d", (int)smtpc_quit(&h->s, h->now));
    h_drain(h);
    h_server(h, "221 Bye\r\n");
    LOG();
#undef LOG
    assert_true(n < cap);
}

static void input_fed_whole_bytewise_or_split_gives_the_same_result(void **state)
{
    (void)state;
    static char want[16384];
    static char got[16384];
    struct h *h = h_new();
    run_script(h, want, sizeof(want));
    h_free(h);
    /* Sanity: the script did what it says. */
    assert_non_null(strstr(want, "(OK 250 2.0.0 end of DATA;TEMP 450 4.2.1 RCPT TO;"
                                 "PERM 550 5.1.1 RCPT TO)"));
    assert_non_null(strstr(want, "..dot\r\nline\r\n..\r\n..more\r\n.\r\n"));
    assert_non_null(strstr(want, "(TEMP 451 4.3.0 end of DATA)"));
    assert_non_null(strstr(want, "q0[QUIT\r\n]{CLOSE}"));

    h = h_new();
    h->mode = FEED_BYTES;
    run_script(h, got, sizeof(got));
    h_free(h);
    assert_string_equal(got, want);

    for (size_t k = 1; k < 100; k++) {
        h = h_new();
        h->mode = FEED_SPLIT;
        h->split_at = k;
        run_script(h, got, sizeof(got));
        h_free(h);
        assert_string_equal(got, want);
    }
    /* Sending in dribbles of every size gives the same bytes. */
    for (size_t k = 1; k < 12; k++) {
        h = h_new();
        h->send_max = k;
        h->iov_max = 1 + k % 3;
        run_script(h, got, sizeof(got));
        h_free(h);
        assert_string_equal(got, want);
    }
}

static void reply_during_body_waits_until_the_body_is_sent(void **state)
{
    (void)state;
    struct h *h = h_new();
    h_connect(h, "PIPELINING", NULL);
    h_std_msg(h, "bob@example.net");
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    h->hold = true;
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n250 Ok: queued\r\n");
    h_expect_ev(h, "");
    assert_int_equal(h->rx_len, strlen("250 Ok: queued\r\n")); /* left in rx */
    h->hold = false;
    h_pump(h);
    h_expect(h, BODY ".\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA");
    h_free(h);
}

static void burst_larger_than_tx_goes_out_in_pieces(void **state)
{
    (void)state;
    struct h *h = h_new();
    h->tx_cap = SMTPC_TX_MIN;
    h->rcpt_cap = RCPT_N;
    h_connect(h, "PIPELINING", NULL);
    char rcpts[8192];
    char want[16384];
    char addr[128];
    size_t rn = 0;
    size_t wn = (size_t)snprintf(want, sizeof(want), "MAIL FROM:<alice@example.org>\r\n");
    for (unsigned i = 0; i < RCPT_N; i++) {
        snprintf(addr, sizeof(addr), "recipient-number-%02u-with-a-long-name@example.net", i);
        rn += (size_t)snprintf(rcpts + rn, sizeof(rcpts) - rn, "%s%s", i ? "," : "", addr);
        wn += (size_t)snprintf(want + wn, sizeof(want) - wn, "RCPT TO:<%s>\r\n", addr);
    }
    wn += (size_t)snprintf(want + wn, sizeof(want) - wn, "DATA\r\n");
    assert_true(wn > SMTPC_TX_MIN);
    h_msg(h, "alice@example.org", rcpts);
    h_body(h, BODY, NULL);
    h->hold = true;
    h_send(h);
    struct rm_span iov[4];
    assert_int_equal(smtpc_output(&h->s, iov, 4), 1);
    assert_true(iov[0].len <= SMTPC_TX_MIN);
    /* Replies to the first part may come before the rest is queued. */
    h_server(h, "250 Ok\r\n250 Ok\r\n");
    h->hold = false;
    h_drain(h);
    h_expect(h, want);
    char replies[8192];
    size_t pn = 0;
    for (unsigned i = 1; i < RCPT_N; i++)
        pn += (size_t)snprintf(replies + pn, sizeof(replies) - pn, "250 Ok\r\n");
    pn += (size_t)snprintf(replies + pn, sizeof(replies) - pn, "354 go\r\n");
    assert_true(pn < sizeof(replies));
    h_server(h, replies);
    h_expect(h, BODY ".\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    for (uint32_t i = 0; i < RCPT_N; i++)
        assert_int_equal(smtpc_result(&h->s, i)->outcome, SMTPC_OK);
    h_free(h);
}

/* Dot-stuffs body[0..len) the simple way, as the reference. */
static size_t stuff_ref(const uint8_t *body, size_t len, uint8_t *out)
{
    size_t n = 0;
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        if (bol && body[i] == '.')
            out[n++] = '.';
        out[n++] = body[i];
        bol = body[i] == '\n';
    }
    if (!bol) {
        out[n++] = '\r';
        out[n++] = '\n';
    }
    memcpy(out + n, ".\r\n", 3);
    return n + 3;
}

static void large_multichunk_body_streams_without_copying(void **state)
{
    (void)state;
    enum { CHUNK = 64 * 1024, NCHUNK = 64 };
    struct rm_pool pool;
    assert_int_equal(rm_pool_init(&pool, CHUNK, NCHUNK), 0);
    struct rm_chunk *head = NULL;
    struct rm_chunk *tail = NULL;
    uint8_t *flat = malloc((size_t)CHUNK * NCHUNK);
    assert_non_null(flat);
    /* Lines of varying length, one in seven starting with '.' (some are "."
     * alone), so dots fall at chunk starts and lines cross chunk ends. */
    size_t cap_total = (size_t)NCHUNK * (CHUNK - sizeof(struct rm_chunk));
    size_t pos = 0;
    size_t last_lf = 0;
    for (unsigned line = 0; pos < cap_total; line++) {
        size_t ll = 1 + (line * 37u) % 120u;
        for (size_t j = 0; j < ll && pos < cap_total; j++, pos++)
            flat[pos] = (j == 0 && line % 7 == 3) ? '.' : (uint8_t)('a' + pos % 26);
        if (pos + 2 > cap_total)
            break;
        flat[pos++] = '\r';
        flat[pos++] = '\n';
        last_lf = pos;
    }
    size_t body_len = last_lf; /* CRLF line ends only, as stored */
    for (size_t off = 0; off < body_len;) {
        struct rm_chunk *ch = rm_pool_get(&pool);
        assert_non_null(ch);
        ch->len = (uint32_t)RM_MIN((size_t)ch->cap, body_len - off);
        memcpy(ch->data, flat + off, ch->len);
        off += ch->len;
        if (tail)
            tail->next = ch;
        else
            head = ch;
        tail = ch;
    }
    uint8_t *want = malloc(body_len * 2 + 8);
    uint8_t *got = malloc(body_len * 2 + 8);
    assert_non_null(want);
    assert_non_null(got);
    size_t want_len = stuff_ref(flat, body_len, want);
    assert_true(want_len > body_len + 1000); /* there were dots to stuff */

    struct h *h = h_new();
    h->tx_cap = SMTPC_TX_MIN;
    h_connect(h, "PIPELINING", NULL);
    h_msg(h, "alice@example.org", "bob@example.net");
    h->msg.body = head;
    h->env.size = body_len;
    h_send(h);
    h_expect(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n");
    h->hold = true;
    h_server(h, "250 Ok\r\n250 Ok\r\n354 go\r\n");
    size_t got_len = 0;
    size_t from_pool = 0;
    size_t from_static = 0;
    size_t sends = 0;
    for (;;) {
        struct rm_span iov[32];
        size_t k = smtpc_output(&h->s, iov, RM_ARRAY_LEN(iov));
        if (k == 0)
            break;
        size_t total = 0;
        for (size_t i = 0; i < k; i++) {
            const uint8_t *p = iov[i].p;
            bool in_pool = p >= pool.base && p + iov[i].len <= pool.base + pool.region_bytes;
            bool in_tx = p >= h->txmem && p < h->txmem + h->tx_cap;
            assert_false(in_tx); /* the body never goes through tx */
            if (in_pool)
                from_pool += iov[i].len;
            else
                from_static += iov[i].len;
            if (!in_pool)
                assert_true(iov[i].len <= 5); /* a stuffing dot or the terminator */
            total += iov[i].len;
        }
        size_t n = RM_MIN(total, (size_t)100000); /* partial sends */
        size_t left = n;
        for (size_t i = 0; i < k && left > 0; i++) {
            size_t take = RM_MIN(left, iov[i].len);
            memcpy(got + got_len, iov[i].p, take);
            got_len += take;
            left -= take;
        }
        smtpc_sent(&h->s, n, h->now);
        sends++;
    }
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    assert_int_equal(from_pool, body_len); /* every body octet sent zero-copy */
    assert_int_equal(from_static, want_len - body_len);
    assert_true(sends > 10);
    h->hold = false;
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA");
    h_free(h);
    free(want);
    free(got);
    free(flat);
    rm_pool_fini(&pool);
}

static void rcpt_cap_recipients_fit_one_transaction(void **state)
{
    (void)state;
    struct h *h = h_new();
    h->rcpt_cap = 3;
    h_connect(h, NULL);
    h_std_msg(h, "a@example.net,b@example.net,c@example.net");
    h_send(h);
    h_server(h, "250 Ok\r\n");
    h_server(h, "250 Ok\r\n");
    h_server(h, "250 Ok\r\n");
    h_server(h, "250 Ok\r\n");
    h_server(h, "354 go\r\n");
    h_server(h, "250 Ok\r\n");
    h_expect_ev(h, "DONE");
    assert_string_equal(h_results(h), "OK 250 2.0.0 end of DATA;OK 250 2.0.0 end of DATA;"
                                      "OK 250 2.0.0 end of DATA");
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greeting_multiline_220_then_ehlo_is_sent),
        cmocka_unit_test(greeting_554_is_a_permanent_connection_failure_and_quits),
        cmocka_unit_test(greeting_421_is_a_temporary_connection_failure_without_quit),
        cmocka_unit_test(greeting_malformed_is_a_connection_failure),
        cmocka_unit_test(greeting_with_another_2xx_is_a_connection_failure),
        cmocka_unit_test(ehlo_capabilities_are_parsed),
        cmocka_unit_test(ehlo_size_without_a_number_means_no_limit),
        cmocka_unit_test(ehlo_single_line_offers_nothing),
        cmocka_unit_test(ehlo_502_falls_back_to_helo),
        cmocka_unit_test(helo_550_is_a_permanent_connection_failure),
        cmocka_unit_test(ehlo_4xx_is_a_temporary_connection_failure),
        cmocka_unit_test(pipelined_message_is_one_burst_and_replies_are_read_in_order),
        cmocka_unit_test(lockstep_message_waits_for_each_reply),
        cmocka_unit_test(rcpt_results_are_per_recipient),
        cmocka_unit_test(mail_452_makes_every_recipient_temp),
        cmocka_unit_test(mail_refused_in_lockstep_sends_nothing_more),
        cmocka_unit_test(data_554_makes_the_accepted_recipients_perm),
        cmocka_unit_test(final_dot_451_makes_the_accepted_recipients_temp),
        cmocka_unit_test(all_rcpts_refused_in_lockstep_sends_no_data),
        cmocka_unit_test(all_rcpts_refused_then_354_gets_a_lone_dot),
        cmocka_unit_test(all_rcpts_refused_then_data_554_ends_the_transaction),
        cmocka_unit_test(reply_of_an_unexpected_class_to_rcpt_is_temp),
        cmocka_unit_test(dot_stuffing_doubles_leading_dots_including_the_first_line),
        cmocka_unit_test(dot_stuffing_works_across_chunk_boundaries),
        cmocka_unit_test(body_without_final_crlf_gets_one_before_the_dot),
        cmocka_unit_test(empty_body_is_just_the_dot),
        cmocka_unit_test(flat_body_span_is_sent_like_a_chain),
        cmocka_unit_test(body_output_survives_partial_sends_of_one_span),
        cmocka_unit_test(smtputf8_needed_but_not_offered_fails_5_6_7_or_5_6_9_unsent),
        cmocka_unit_test(smtputf8_offered_is_sent_with_mail),
        cmocka_unit_test(size_over_the_server_limit_fails_5_3_4_unsent),
        cmocka_unit_test(mail_and_rcpt_parameters_are_sent_when_offered),
        cmocka_unit_test(mail_and_rcpt_parameters_are_left_out_when_not_offered),
        cmocka_unit_test(undeclared_8bit_body_gets_body_8bitmime_when_offered),
        cmocka_unit_test(enhanced_status_is_taken_from_replies_only_when_offered),
        cmocka_unit_test(bad_addresses_are_refused_locally),
        cmocka_unit_test(second_message_sends_rset_first_in_the_burst),
        cmocka_unit_test(second_message_in_lockstep_waits_for_the_rset_reply),
        cmocka_unit_test(rset_failure_makes_recipients_temp_and_closes),
        cmocka_unit_test(rset_failure_in_a_burst_closes_without_quit),
        cmocka_unit_test(quit_when_ready_sends_quit_and_closes_on_221),
        cmocka_unit_test(quit_mid_transaction_aborts_with_temp),
        cmocka_unit_test(quit_before_ready_closes_at_once),
        cmocka_unit_test(unsolicited_reply_while_idle_closes),
        cmocka_unit_test(reply_421_mid_transaction_ends_the_session_with_its_text),
        cmocka_unit_test(connection_lost_mid_transaction_is_temp_with_the_step),
        cmocka_unit_test(connection_lost_while_sending_the_body_or_awaiting_the_dot_reply),
        cmocka_unit_test(connection_lost_before_ready_is_a_connection_failure),
        cmocka_unit_test(malformed_replies_make_unresolved_temp_and_close),
        cmocka_unit_test(reply_line_of_512_is_taken_513_is_malformed),
        cmocka_unit_test(reply_of_max_lines_is_taken_one_more_is_malformed),
        cmocka_unit_test(reply_text_joins_lines_masks_controls_and_is_cut),
        cmocka_unit_test(timeouts_before_ready_are_connection_failures),
        cmocka_unit_test(timeouts_in_a_transaction_use_each_phase_limit),
        cmocka_unit_test(timeout_while_sending_the_body_counts_from_the_last_progress),
        cmocka_unit_test(send_completing_after_a_timeout_mid_body_is_taken),
        cmocka_unit_test(timeout_waiting_for_the_dot_reply),
        cmocka_unit_test(timeouts_for_rset_and_quit),
        cmocka_unit_test(input_fed_whole_bytewise_or_split_gives_the_same_result),
        cmocka_unit_test(reply_during_body_waits_until_the_body_is_sent),
        cmocka_unit_test(burst_larger_than_tx_goes_out_in_pieces),
        cmocka_unit_test(large_multichunk_body_streams_without_copying),
        cmocka_unit_test(rcpt_cap_recipients_fit_one_transaction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
