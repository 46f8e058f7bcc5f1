/* tests/unit/test_dsn.c: the retry schedule (mta/retry.h) and the DSN
 * builder (mta/dsn.h).
 *
 * DSNs are checked three ways: byte for byte against a golden message, by
 * structural rules (CRLF, line lengths, boundary), and by Python's email
 * package when python3 is installed (skipped, not failed, without it).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
/* cmocka.h needs the headers above */
#include <cmocka.h>

#include "mta/dsn.h"
#include "mta/retry.h"

#define MIN_MS  (60ull * 1000)
#define HOUR_MS (60ull * MIN_MS)
#define DAY_MS  (24ull * HOUR_MS)

/* ---- retry: parsing --------------------------------------------------------- */

static void retry_default_schedule_is_1m_5m_15m_30m_1h_2h(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    const uint64_t want[] = {MIN_MS, 5 * MIN_MS, 15 * MIN_MS, 30 * MIN_MS, HOUR_MS, 2 * HOUR_MS};
    assert_int_equal(s.count, RM_ARRAY_LEN(want));
    for (size_t i = 0; i < RM_ARRAY_LEN(want); i++)
        assert_int_equal(s.interval_ms[i], want[i]);

    struct retry_sched p;
    assert_int_equal(retry_sched_parse(&p, RETRY_SCHED_DEFAULT, NULL, 0), 0);
    assert_memory_equal(&p, &s, sizeof(s));
    assert_int_equal(RETRY_LIFETIME_DEFAULT_MS, 5 * DAY_MS);
}

static void retry_parse_accepts_every_unit_and_separator(void **state)
{
    (void)state;
    struct retry_sched s;
    char err[128];
    assert_int_equal(retry_sched_parse(&s, "  250ms\t1s,5m , 1h\t\t2d ", err, sizeof(err)), 0);
    assert_int_equal(s.count, 5);
    assert_int_equal(s.interval_ms[0], 250);
    assert_int_equal(s.interval_ms[1], 1000);
    assert_int_equal(s.interval_ms[2], 5 * MIN_MS);
    assert_int_equal(s.interval_ms[3], HOUR_MS);
    assert_int_equal(s.interval_ms[4], 2 * DAY_MS);

    /* One interval is a fixed interval; the order is free. */
    assert_int_equal(retry_sched_parse(&s, "10m", err, sizeof(err)), 0);
    assert_int_equal(s.count, 1);
    assert_int_equal(retry_sched_parse(&s, "1h 1m", err, sizeof(err)), 0);
    assert_int_equal(s.interval_ms[1], MIN_MS);
}

static void retry_parse_rejects_junk_with_a_message(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "   ",
        ",",
        "5",
        "5x",
        "m",
        "-1m",
        "+1m",
        "1.5m",
        "0s",
        "1m 0s",
        "1mm",
        "1 m",
        "1M",
        "0x10s",
        "1m;2m",
        "1m\n",
        "1m 2",
        "5m\"",
        "99999999999999999999d",
        "18446744073709551615ms",
        "213503982335d",
    };
    for (size_t i = 0; i < RM_ARRAY_LEN(bad); i++) {
        struct retry_sched s;
        memset(&s, 0xa5, sizeof(s));
        struct retry_sched before = s;
        char err[128] = "";
        int rc = retry_sched_parse(&s, bad[i], err, sizeof(err));
        if (rc != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_true(strlen(err) > 0);
        assert_null(strchr(err, '\n'));
        assert_memory_equal(&s, &before, sizeof(s)); /* untouched on error */
    }
    /* A tiny buffer gets a cut, NUL-terminated message. */
    struct retry_sched s;
    char tiny[8];
    memset(tiny, 'x', sizeof(tiny));
    assert_int_equal(retry_sched_parse(&s, "5x", tiny, sizeof(tiny)), -EINVAL);
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
}

static void retry_parse_takes_steps_max_intervals_but_not_one_more(void **state)
{
    (void)state;
    char list[RETRY_STEPS_MAX * 4 + 8] = "";
    size_t n = 0;
    for (unsigned i = 0; i < RETRY_STEPS_MAX; i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%us ", i + 1);
    struct retry_sched s;
    char err[128];
    assert_int_equal(retry_sched_parse(&s, list, err, sizeof(err)), 0);
    assert_int_equal(s.count, RETRY_STEPS_MAX);
    assert_int_equal(s.interval_ms[RETRY_STEPS_MAX - 1], RETRY_STEPS_MAX * 1000ull);
    snprintf(list + n, sizeof(list) - n, "1s");
    assert_int_equal(retry_sched_parse(&s, list, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "32"));
}

static void retry_parse_takes_the_max_interval_but_not_one_ms_more(void **state)
{
    (void)state;
    struct retry_sched s;
    char buf[64], err[128];
    snprintf(buf, sizeof(buf), "1m %llums", (unsigned long long)RETRY_INTERVAL_MAX_MS);
    assert_int_equal(retry_sched_parse(&s, buf, err, sizeof(err)), 0);
    assert_int_equal(s.interval_ms[1], RETRY_INTERVAL_MAX_MS);
    assert_int_equal(retry_sched_parse(&s, "30d", err, sizeof(err)), 0);
    snprintf(buf, sizeof(buf), "%llums", (unsigned long long)RETRY_INTERVAL_MAX_MS + 1);
    assert_int_equal(retry_sched_parse(&s, buf, err, sizeof(err)), -EINVAL);
    assert_int_equal(retry_sched_parse(&s, "31d", err, sizeof(err)), -EINVAL);
}

/* ---- retry: the next attempt ---------------------------------------------- */

static const uint64_t T0 = 1700000000000ull; /* arrival */

static void retry_first_attempt_is_due_at_once(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    assert_int_equal(retry_next_ms(&s, T0, 0, T0, 5 * DAY_MS, 0), T0);
    assert_int_equal(retry_next_ms(&s, T0, 0, T0 + 7, 5 * DAY_MS, 12345), T0 + 7);
}

static void retry_intervals_follow_the_schedule_and_the_last_repeats(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    const uint64_t want[] = {MIN_MS,  5 * MIN_MS,  15 * MIN_MS, 30 * MIN_MS,
                             HOUR_MS, 2 * HOUR_MS, 2 * HOUR_MS, 2 * HOUR_MS};
    uint64_t now = T0;
    for (uint32_t a = 1; a <= RM_ARRAY_LEN(want); a++) {
        assert_int_equal(retry_interval_ms(&s, a), want[a - 1]);
        uint64_t next = retry_next_ms(&s, T0, a, now, 5 * DAY_MS, 0);
        assert_int_equal(next, now + want[a - 1]);
        now = next + 1234; /* the attempt took a while */
    }
    assert_int_equal(retry_interval_ms(&s, 1000000), 2 * HOUR_MS);
}

static void retry_last_attempt_happens_exactly_at_the_lifetime(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    const uint64_t life = 5 * DAY_MS, deadline = T0 + life;
    /* A retry landing exactly on the deadline stays. */
    assert_int_equal(retry_next_ms(&s, T0, 9, deadline - 2 * HOUR_MS, life, 0), deadline);
    /* One that would land after it is pulled back to it: the last attempt. */
    assert_int_equal(retry_next_ms(&s, T0, 9, deadline - HOUR_MS, life, 0), deadline);
    assert_int_equal(retry_next_ms(&s, T0, 9, deadline - 1, life, 0), deadline);
    /* A failure at or after the deadline: expired. */
    assert_int_equal(retry_next_ms(&s, T0, 10, deadline, life, 0), RETRY_EXPIRED);
    assert_int_equal(retry_next_ms(&s, T0, 10, deadline + 1, life, 0), RETRY_EXPIRED);
    /* Never tried: still due exactly at the deadline, expired after it. */
    assert_int_equal(retry_next_ms(&s, T0, 0, deadline, life, 0), deadline);
    assert_int_equal(retry_next_ms(&s, T0, 0, deadline + 1, life, 0), RETRY_EXPIRED);
}

static void retry_whole_life_of_a_message_ends_in_one_expiry(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    const uint64_t life = 5 * DAY_MS;
    uint64_t now = T0;
    uint32_t attempts = 0;
    uint64_t next;
    while ((next = retry_next_ms(&s, T0, attempts, now, life, 0)) != RETRY_EXPIRED) {
        assert_true(next >= now);
        assert_true(next <= T0 + life);
        now = next;
        attempts++;
        assert_true(attempts < 1000);
    }
    assert_int_equal(now, T0 + life); /* the last attempt was at the deadline */
    /* 1m+5m+15m+30m+1h = 1h51m, then 2h steps: 1 + 5 + 60 (2h) + 1 (clamped). */
    assert_int_equal(attempts, 1 + 5 + 59 + 1);
}

static void retry_zero_lifetime_tries_once(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    assert_int_equal(retry_next_ms(&s, T0, 0, T0, 0, 0), T0);
    assert_int_equal(retry_next_ms(&s, T0, 1, T0, 0, 0), RETRY_EXPIRED);
}

static void retry_jitter_adds_at_most_ten_percent_deterministically(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    const uint64_t life = 5 * DAY_MS, now = T0 + DAY_MS;
    for (uint32_t a = 1; a <= 8; a++) {
        uint64_t iv = retry_interval_ms(&s, a);
        assert_int_equal(retry_next_ms(&s, T0, a, now, life, 0), now + iv);
        uint64_t hi = retry_next_ms(&s, T0, a, now, life, UINT32_MAX);
        assert_true(hi > now + iv);
        assert_true(hi <= now + iv + iv / 10);
        uint64_t mid = retry_next_ms(&s, T0, a, now, life, 1u << 31);
        assert_int_equal(mid, now + iv + iv / 10 / 2); /* proportional */
        assert_int_equal(retry_next_ms(&s, T0, a, now, life, 1u << 31), mid);
    }
    /* Different random values spread a backlog. */
    assert_true(retry_next_ms(&s, T0, 6, now, life, 1000000000u) !=
                retry_next_ms(&s, T0, 6, now, life, 2000000000u));
}

static void retry_jitter_never_pushes_past_the_lifetime(void **state)
{
    (void)state;
    struct retry_sched s;
    retry_sched_default(&s);
    const uint64_t life = 5 * DAY_MS, deadline = T0 + life;
    /* 2h + up to 12 min of jitter from 2h before the deadline: clamped. */
    assert_int_equal(retry_next_ms(&s, T0, 9, deadline - 2 * HOUR_MS, life, UINT32_MAX), deadline);
}

static void retry_huge_values_never_overflow(void **state)
{
    (void)state;
    struct retry_sched s;
    char err[64];
    assert_int_equal(retry_sched_parse(&s, "30d", err, sizeof(err)), 0);
    const uint64_t big = UINT64_MAX - 5;
    assert_int_equal(retry_interval_ms(&s, UINT32_MAX), 30 * DAY_MS);
    /* Lifetime to the end of time: never RETRY_EXPIRED by wrap-around. */
    uint64_t t = retry_next_ms(&s, 0, UINT32_MAX, big, UINT64_MAX, UINT32_MAX);
    assert_true(t != RETRY_EXPIRED);
    assert_true(t >= big);
    t = retry_next_ms(&s, big, UINT32_MAX, big, UINT64_MAX, UINT32_MAX);
    assert_true(t != RETRY_EXPIRED);
    assert_int_equal(retry_next_ms(&s, UINT64_MAX, 0, UINT64_MAX, UINT64_MAX, 0), UINT64_MAX - 1);
    /* Past an ordinary deadline with everything at its maximum: expired. */
    assert_int_equal(retry_next_ms(&s, 0, UINT32_MAX, UINT64_MAX, DAY_MS, UINT32_MAX),
                     RETRY_EXPIRED);
}

/* ---- DSN fixtures ---------------------------------------------------------- */

#define HOST "mail.example.org"
#define ID   "0abc123"
#define NOW  1700432000000ull /* Sun, 19 Nov 2023 22:13:20 +0000 */

static const char ORIG[] = "Received: from client.example.org by mail.example.org\r\n"
                           "From: Alice <alice@example.org>\r\n"
                           "To: bob@example.com, carol@example.net\r\n"
                           "Subject: hi\r\n"
                           "Message-ID: <m1@example.org>\r\n"
                           "\r\n"
                           "Hello Bob and Carol.\r\n"
                           "\r\n"
                           "Bye.\r\n";
#define ORIG_HDRS_LEN 171 /* up to and including the CRLF of the last header line */

/* A test case: an envelope with up to 4 recipients and what to report. */
struct fx {
    struct q_env env;
    struct q_rcpt rcpts[4];
    struct dsn_rcpt rep[4];
    struct dsn_in in;
    struct rm_pool pool;
    struct dsn_out out;
    struct dsn_env benv;
    uint8_t *flat; /* out.body flattened, NUL-terminated (malloc) */
};

static struct rm_span S(const char *s) {
    return rm_span_str(s);
}

/* Two recipients, both failed: bob (ORCPT, a 550 from mx.example.com) and
 * carol (expired, NOTIFY=FAILURE). ENVID given, RET unset. */
static struct fx *
fx_new(void)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->env.sender = S("alice@example.org");
    f->env.envid = S("env+2B42");
    f->env.auth_user = S("alice");
    f->env.client = S("192.0.2.1");
    f->env.helo = S("client.example.org");
    f->env.listener = S("submission");
    f->env.arrival_ms = 1700000000000ull; /* Tue, 14 Nov 2023 22:13:20 +0000 */
    f->env.next_attempt_ms = NOW;
    f->env.size = sizeof(ORIG) - 1;
    f->env.rcpt_count = 2;
    f->env.rcpts = f->rcpts;
    f->rcpts[0] = (struct q_rcpt){.addr = S("bob@example.com"),
                                  .orcpt = S("rfc822;bob+2Bold@example.com"),
                                  .last_reply = S(""),
                                  .state = Q_RCPT_FAILED};
    f->rcpts[1] = (struct q_rcpt){.addr = S("carol@example.net"),
                                  .orcpt = S(""),
                                  .last_reply = S(""),
                                  .notify = Q_NOTIFY_FAILURE,
                                  .state = Q_RCPT_EXPIRED};
    f->rep[0] = (struct dsn_rcpt){
        .rcpt = 0,
        .action = DSN_ACTION_FAILED,
        .status = {5, 1, 1},
        .diag_code = 550,
        .diag_text = S("5.1.1 <bob@example.com>: Recipient address rejected: User unknown"),
        .remote_mta = S("mx.example.com"),
        .last_attempt_ms = 1700000060000ull,
    };
    f->rep[1] = (struct dsn_rcpt){
        .rcpt = 1,
        .action = DSN_ACTION_FAILED,
        .status = {4, 4, 7},
        .diag_text = S(""),
        .remote_mta = S(""),
        .last_attempt_ms = NOW,
    };
    f->in = (struct dsn_in){
        .env = &f->env,
        .msg = rm_span_make(ORIG, sizeof(ORIG) - 1),
        .rcpts = f->rep,
        .rcpt_count = 2,
        .host = HOST,
        .id = ID,
        .now_ms = NOW,
        .return_size_max = DSN_RETURN_SIZE_DEFAULT,
    };
    assert_int_equal(rm_pool_init(&f->pool, 1024, 64), 0);
    return f;
}

static void fx_free(struct fx *f)
{
    rm_pool_put_chain(&f->pool, f->out.body);
    assert_int_equal(f->pool.free_count, f->pool.count); /* nothing leaked */
    rm_pool_fini(&f->pool);
    free(f->flat);
    free(f);
}

/* Builds; on success flattens the chain into f->flat and checks its length. */
static int fx_build(struct fx *f)
{
    rm_pool_put_chain(&f->pool, f->out.body);
    free(f->flat);
    f->flat = NULL;
    memset(&f->out, 0x5a, sizeof(f->out));
    size_t free_before = f->pool.free_count;
    int rc = dsn_build(&f->in, &f->pool, &f->out, &f->benv);
    if (rc != 0) {
        assert_null(f->out.body);
        assert_int_equal(f->out.len, 0);
        assert_int_equal(f->pool.free_count, free_before);
        return rc;
    }
    f->flat = malloc(f->out.len + 1);
    assert_non_null(f->flat);
    uint64_t n = 0;
    for (const struct rm_chunk *c = f->out.body; c; c = c->next) {
        assert_true(c->len > 0);
        assert_true(n + c->len <= f->out.len);
        memcpy(f->flat + n, c->data, c->len);
        n += c->len;
    }
    assert_int_equal(n, f->out.len);
    f->flat[n] = '\0';
    return 0;
}

static const char *fx_text(const struct fx *f)
{
    return (const char *)f->flat;
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0, len = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}

/* Every line ends in CRLF, no bare CR or LF, none longer than 998 octets. */
static void assert_lines_ok(const uint8_t *p, size_t len)
{
    assert_true(len >= 2);
    assert_true(p[len - 2] == '\r' && p[len - 1] == '\n');
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\r') {
            assert_true(i + 1 < len && p[i + 1] == '\n');
            i++;
            col = 0;
            continue;
        }
        assert_true(p[i] != '\n');
        assert_true(p[i] != '\0');
        col++;
        if (col > DSN_LINE_MAX)
            fail_msg("line longer than %u at offset %zu", DSN_LINE_MAX, i);
    }
}

static bool all_ascii(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((uint8_t)s[i] >= 0x80)
            return false;
    return true;
}

/* ---- DSN: the golden message ----------------------------------------------- */

static const char GOLDEN[] =
    "From: Mail Delivery System <MAILER-DAEMON@mail.example.org>\r\n"
    "To: <alice@example.org>\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "Date: Sun, 19 Nov 2023 22:13:20 +0000\r\n"
    "Message-ID: <0abc123@mail.example.org>\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=delivery-status;\r\n"
    " boundary=\"=_rm_0abc123_0\"\r\n"
    "\r\n"
    "This is a MIME-encapsulated message.\r\n"
    "\r\n"
    "--=_rm_0abc123_0\r\n"
    "Content-Description: Notification\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "This is the mail delivery system at mail.example.org.\r\n"
    "\r\n"
    "Your message could not be delivered to one or more recipients. The reasons are\r\n"
    "below; the attached delivery report has the details.\r\n"
    "\r\n"
    "<bob@example.com>: host mx.example.com said: 550 5.1.1 <bob@example.com>:\r\n"
    "    Recipient address rejected: User unknown\r\n"
    "\r\n"
    "<carol@example.net>: delivery time expired (4.4.7)\r\n"
    "\r\n"
    "Your message is attached.\r\n"
    "\r\n"
    "--=_rm_0abc123_0\r\n"
    "Content-Description: Delivery report\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Original-Envelope-Id: env+42\r\n"
    "Reporting-MTA: dns; mail.example.org\r\n"
    "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    "\r\n"
    "Original-Recipient: rfc822;bob+old@example.com\r\n"
    "Final-Recipient: rfc822; bob@example.com\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Remote-MTA: dns; mx.example.com\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: Recipient address\r\n"
    " rejected: User unknown\r\n"
    "Last-Attempt-Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n"
    "\r\n"
    "Final-Recipient: rfc822; carol@example.net\r\n"
    "Action: failed\r\n"
    "Status: 4.4.7\r\n"
    "Last-Attempt-Date: Sun, 19 Nov 2023 22:13:20 +0000\r\n"
    "\r\n"
    "--=_rm_0abc123_0\r\n"
    "Content-Description: Undelivered Message\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "Received: from client.example.org by mail.example.org\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.com, carol@example.net\r\n"
    "Subject: hi\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "\r\n"
    "Hello Bob and Carol.\r\n"
    "\r\n"
    "Bye.\r\n"
    "\r\n"
    "--=_rm_0abc123_0--\r\n";

static void dsn_failed_for_two_recipients_is_exactly_the_golden_message(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    assert_int_equal(fx_build(f), 0);
    if (strcmp(fx_text(f), GOLDEN) != 0) {
        fprintf(stderr, "---- got:\n%s---- want:\n%s----\n", fx_text(f), GOLDEN);
        fail();
    }
    assert_int_equal(f->out.len, sizeof(GOLDEN) - 1);
    assert_int_equal(f->out.reported, 2);
    assert_int_equal(f->out.returned, DSN_RETURN_FULL);
    assert_false(f->out.cut);
    assert_lines_ok(f->flat, f->out.len);
    fx_free(f);
}

/* ---- DSN: envelope fields ---------------------------------------------------- */

static void dsn_envid_is_decoded_from_xtext_unless_not_printable(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->env.envid = S("a+2Bb+3Dc");
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "\r\nOriginal-Envelope-Id: a+b=c\r\n"));

    f->env.envid = S("x+0Ay+7Fz"); /* decodes to controls: kept as xtext */
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "\r\nOriginal-Envelope-Id: x+0Ay+7Fz\r\n"));

    f->env.envid = S("");
    assert_int_equal(fx_build(f), 0);
    assert_null(strstr(fx_text(f), "Original-Envelope-Id"));
    fx_free(f);
}

static void dsn_orcpt_is_reported_only_when_given(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(count_of(fx_text(f), "Original-Recipient:"), 1);
    f->rcpts[0].orcpt = S("x-foo;ABC+2B1");
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "\r\nOriginal-Recipient: x-foo;ABC+1\r\n"));
    fx_free(f);
}

static void dsn_ret_hdrs_returns_only_the_header_section(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->env.ret = Q_RET_HDRS;
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(f->out.returned, DSN_RETURN_HDRS);
    const char *t = fx_text(f);
    const char *part = strstr(t, "Content-Description: Undelivered Message Headers\r\n"
                                 "Content-Type: text/rfc822-headers\r\n\r\n");
    assert_non_null(part);
    part = strstr(part, "\r\n\r\n") + 4;
    assert_memory_equal(part, ORIG, ORIG_HDRS_LEN);
    assert_string_equal(part + ORIG_HDRS_LEN, "\r\n--=_rm_0abc123_0--\r\n");
    assert_null(strstr(t, "Hello Bob"));
    assert_non_null(strstr(t, "\r\nThe header section of your message is attached.\r\n"));
    assert_lines_ok(f->flat, f->out.len);
    fx_free(f);
}

static void dsn_ret_full_or_unset_returns_the_whole_message(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    for (int ret = Q_RET_UNSPEC; ret <= Q_RET_FULL; ret++) {
        f->env.ret = (uint8_t)ret;
        assert_int_equal(fx_build(f), 0);
        assert_int_equal(f->out.returned, DSN_RETURN_FULL);
        const char *part = strstr(fx_text(f), "Content-Type: message/rfc822\r\n\r\n");
        assert_non_null(part);
        part += strlen("Content-Type: message/rfc822\r\n\r\n");
        assert_memory_equal(part, ORIG, sizeof(ORIG) - 1);
        assert_string_equal(part + sizeof(ORIG) - 1, "\r\n--=_rm_0abc123_0--\r\n");
    }
    fx_free(f);
}

static void dsn_original_without_final_crlf_gets_one(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->in.msg.len -= 2; /* "...Bye." */
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "\r\nBye.\r\n\r\n--=_rm_0abc123_0--\r\n"));
    assert_lines_ok(f->flat, f->out.len);
    fx_free(f);
}

static void dsn_size_limit_returns_headers_from_limit_plus_one(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->in.return_size_max = sizeof(ORIG) - 1; /* exactly the size: whole */
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(f->out.returned, DSN_RETURN_FULL);
    assert_non_null(strstr(fx_text(f), "Hello Bob"));

    f->in.return_size_max = sizeof(ORIG) - 2; /* one octet over: headers */
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(f->out.returned, DSN_RETURN_OVERSIZE);
    assert_false(f->out.cut);
    const char *t = fx_text(f);
    assert_null(strstr(t, "Hello Bob"));
    assert_non_null(strstr(t, "Content-Type: text/rfc822-headers\r\n"));
    assert_non_null(strstr(t, "\r\nYour message is larger than 202 octets, so only its header "
                              "section is\r\nattached.\r\n"));
    assert_lines_ok(f->flat, f->out.len);
    fx_free(f);
}

static void dsn_header_section_over_the_limit_is_cut_at_a_line_end(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->in.return_size_max = 100; /* the first two header lines are 88 octets */
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(f->out.returned, DSN_RETURN_OVERSIZE);
    assert_true(f->out.cut);
    const char *t = fx_text(f);
    const char *part = strstr(t, "Content-Type: text/rfc822-headers\r\n\r\n");
    assert_non_null(part);
    part += strlen("Content-Type: text/rfc822-headers\r\n\r\n");
    assert_memory_equal(part, ORIG, 88);
    assert_string_equal(part + 88, "\r\n--=_rm_0abc123_0--\r\n");
    assert_non_null(strstr(t, "The header section is cut short"));
    assert_lines_ok(f->flat, f->out.len);
    fx_free(f);
}

static void dsn_message_without_a_body_returns_all_as_headers(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static const char only[] = "Subject: x\r\nFrom: a@b\r\n";
    f->in.msg = rm_span_make(only, sizeof(only) - 1);
    f->env.ret = Q_RET_HDRS;
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "rfc822-headers\r\n\r\nSubject: x\r\nFrom: a@b\r\n\r\n--"));
    fx_free(f);
}

/* ---- DSN: who gets reported -------------------------------------------------- */

static void dsn_never_and_success_only_recipients_are_left_out(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->rcpts[0].notify = Q_NOTIFY_NEVER;
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(f->out.reported, 1);
    assert_null(strstr(fx_text(f), "bob@example.com>"));
    assert_int_equal(count_of(fx_text(f), "Final-Recipient:"), 1);

    f->rcpts[1].notify = Q_NOTIFY_SUCCESS;
    assert_int_equal(fx_build(f), DSN_ERR_NOT_REQUESTED);
    f->rcpts[1].notify = Q_NOTIFY_SUCCESS | Q_NOTIFY_DELAY;
    assert_int_equal(fx_build(f), DSN_ERR_NOT_REQUESTED);
    f->in.rcpt_count = 0;
    assert_int_equal(fx_build(f), DSN_ERR_NOT_REQUESTED);
    fx_free(f);
}

static void dsn_notify_rules_follow_rfc3461(void **state)
{
    (void)state;
    assert_true(dsn_notify_wants(0, DSN_ACTION_FAILED));
    assert_true(dsn_notify_wants(0, DSN_ACTION_DELAYED));
    assert_false(dsn_notify_wants(Q_NOTIFY_NEVER, DSN_ACTION_FAILED));
    assert_false(dsn_notify_wants(Q_NOTIFY_NEVER, DSN_ACTION_DELAYED));
    assert_false(dsn_notify_wants(Q_NOTIFY_SUCCESS, DSN_ACTION_FAILED));
    assert_true(dsn_notify_wants(Q_NOTIFY_FAILURE, DSN_ACTION_FAILED));
    assert_false(dsn_notify_wants(Q_NOTIFY_FAILURE, DSN_ACTION_DELAYED));
    assert_true(dsn_notify_wants(Q_NOTIFY_DELAY, DSN_ACTION_DELAYED));
    assert_false(dsn_notify_wants(Q_NOTIFY_DELAY, DSN_ACTION_FAILED));
    assert_true(dsn_notify_wants(Q_NOTIFY_FAILURE | Q_NOTIFY_DELAY, DSN_ACTION_FAILED));
}

static void dsn_delayed_reports_say_so_and_return_headers(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->rep[0] = (struct dsn_rcpt){.rcpt = 0,
                                  .action = DSN_ACTION_DELAYED,
                                  .status = {4, 2, 2},
                                  .diag_code = 452,
                                  .diag_text = S("4.2.2 Mailbox full"),
                                  .remote_mta = S("mx.example.com"),
                                  .last_attempt_ms = NOW};
    f->in.rcpt_count = 1;
    f->in.will_retry_until_ms = 1700864000000ull;
    assert_int_equal(fx_build(f), 0);
    const char *t = fx_text(f);
    assert_non_null(strstr(t, "\r\nSubject: Delayed Mail (still being retried)\r\n"));
    assert_non_null(
        strstr(t, "\r\nYour message has not yet been delivered to the recipients below. "
                  "Delivery is\r\nstill being retried until Fri, 24 Nov 2023 22:13:20 +0000; "
                  "there is no need to\r\nsend it again.\r\n"));
    assert_non_null(strstr(t, "\r\nAction: delayed\r\nStatus: 4.2.2\r\n"));
    assert_non_null(strstr(t, "\r\nWill-Retry-Until: Fri, 24 Nov 2023 22:13:20 +0000\r\n"));
    assert_non_null(strstr(t, "(still being retried)"));
    assert_int_equal(f->out.returned, DSN_RETURN_HDRS);
    assert_non_null(strstr(t, "Content-Description: Delayed Message Headers\r\n"
                              "Content-Type: text/rfc822-headers\r\n"));

    /* A recipient with NOTIFY=FAILURE wants no delay report. */
    f->rcpts[0].notify = Q_NOTIFY_FAILURE;
    assert_int_equal(fx_build(f), DSN_ERR_NOT_REQUESTED);
    fx_free(f);
}

static void dsn_null_sender_gets_no_dsn(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    f->env.sender = S("");
    assert_true(dsn_is_bounce(&f->env));
    assert_int_equal(fx_build(f), DSN_ERR_NULL_SENDER);
    assert_int_equal(f->pool.free_count, f->pool.count);
    f->env.sender = S("alice@example.org");
    assert_false(dsn_is_bounce(&f->env));
    fx_free(f);
}

static void dsn_bounce_envelope_has_null_sender_and_the_sender_as_recipient(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    assert_int_equal(fx_build(f), 0);
    const struct q_env *e = &f->benv.env;
    assert_int_equal(e->sender.len, 0);
    assert_non_null(e->sender.p);
    assert_true(dsn_is_bounce(e));
    assert_int_equal(e->envid.len, 0);
    assert_int_equal(e->rcpt_count, 1);
    assert_ptr_equal(e->rcpts, &f->benv.rcpt);
    assert_true(rm_span_eq(e->rcpts[0].addr, S("alice@example.org")));
    assert_ptr_not_equal(e->rcpts[0].addr.p, f->env.sender.p); /* a copy */
    assert_int_equal(e->rcpts[0].notify, Q_NOTIFY_NEVER);
    assert_int_equal(e->rcpts[0].orcpt.len, 0);
    assert_int_equal(e->rcpts[0].state, Q_RCPT_PENDING);
    assert_int_equal(e->rcpts[0].attempts, 0);
    assert_int_equal(e->ret, Q_RET_UNSPEC);
    assert_int_equal(e->flags, 0);
    assert_int_equal(e->size, f->out.len);
    assert_int_equal(e->arrival_ms, NOW);
    assert_int_equal(e->next_attempt_ms, NOW);
    assert_int_equal(e->attempts, 0);
    fx_free(f);
}

/* ---- DSN: robustness ----------------------------------------------------------- */

static void dsn_lines_end_in_crlf_and_fit_998_whatever_the_diagnostic(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static char diag[6000];
    /* NUL, 8-bit junk, words split by CR, LF and TAB, a 1500-octet token. */
    size_t n = 5;
    memcpy(diag, " \0\x80\xff ", n);
    while (n < 1000) {
        memcpy(diag + n, "word\r\n\t", 7);
        n += 7;
    }
    memset(diag + n, 'x', 1500);
    n += 1500;
    memcpy(diag + n, " end", 4);
    n += 4;
    f->rep[0].diag_text = rm_span_make(diag, n);
    f->rep[1].diag_text = rm_span_make(diag, n); /* diag_code 0: "X-ringmta; " */
    f->rep[1].remote_mta = rm_span_make("bad\r\nhost\x01", 10);
    assert_int_equal(fx_build(f), 0);
    assert_lines_ok(f->flat, f->out.len);
    assert_true(all_ascii(fx_text(f), f->out.len));
    assert_null(strstr(fx_text(f), "\r\nhost")); /* no header injection */
    assert_non_null(strstr(fx_text(f), "\r\nRemote-MTA: dns; bad  host \r\n"));
    /* Cut at DSN_DIAG_TEXT_MAX: the tail is not there. */
    assert_int_equal(count_of(fx_text(f), " end"), 0);
    assert_non_null(strstr(fx_text(f), "\r\nDiagnostic-Code: smtp; 550 ?? word word"));
    assert_non_null(strstr(fx_text(f), "\r\nDiagnostic-Code: X-ringmta; ?? word word"));
    fx_free(f);
}

static void dsn_diagnostic_is_cut_at_diag_text_max_and_not_before(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static char diag[DSN_DIAG_TEXT_MAX + 1];
    memset(diag, 'a', sizeof(diag));
    diag[DSN_DIAG_TEXT_MAX - 1] = '#'; /* the last octet kept */
    f->rep[0].diag_text = rm_span_make(diag, DSN_DIAG_TEXT_MAX);
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(count_of(fx_text(f), "#"), 2); /* text part and Diagnostic-Code */
    assert_lines_ok(f->flat, f->out.len);
    diag[DSN_DIAG_TEXT_MAX - 1] = 'a';
    diag[DSN_DIAG_TEXT_MAX] = '#'; /* one octet too many */
    f->rep[0].diag_text = rm_span_make(diag, DSN_DIAG_TEXT_MAX + 1);
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(count_of(fx_text(f), "#"), 0);
    fx_free(f);
}

static void dsn_boundary_is_never_in_the_content(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static char orig[sizeof(ORIG) + 64];
    int n = snprintf(orig, sizeof(orig), "%s--=_rm_0abc123_0\r\n", ORIG);
    f->in.msg = rm_span_make(orig, (size_t)n);
    assert_int_equal(fx_build(f), 0);
    const char *t = fx_text(f);
    assert_non_null(strstr(t, "boundary=\"=_rm_0abc123_1\"\r\n"));
    assert_int_equal(count_of(t, "=_rm_0abc123_1"), 5); /* parameter, 3 openings, close */
    assert_int_equal(count_of(t, "=_rm_0abc123_0"), 1); /* the original's */
    assert_lines_ok(f->flat, f->out.len);

    /* In generated text (a reply from the remote) too. */
    f->in.msg = rm_span_make(ORIG, sizeof(ORIG) - 1);
    f->rep[0].diag_text = S("=_rm_0abc123_0 and =_rm_0abc123_1");
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "boundary=\"=_rm_0abc123_2\"\r\n"));
    fx_free(f);
}

static void dsn_content_holding_every_boundary_fails_cleanly(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static char orig[sizeof(ORIG) + DSN_BOUNDARY_TRIES * 24];
    size_t n = (size_t)snprintf(orig, sizeof(orig), "%s", ORIG);
    for (unsigned k = 0; k < DSN_BOUNDARY_TRIES; k++)
        n += (size_t)snprintf(orig + n, sizeof(orig) - n, "=_rm_0abc123_%u\r\n", k);
    f->in.msg = rm_span_make(orig, n);
    assert_int_equal(fx_build(f), DSN_ERR_BOUNDARY);
    assert_int_equal(f->pool.free_count, f->pool.count);
    fx_free(f);
}

static void dsn_pool_exhaustion_returns_enomem_without_leaking(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    rm_pool_fini(&f->pool);
    assert_int_equal(rm_pool_init(&f->pool, 128, 1000), 0); /* 112 octets per chunk */
    assert_int_equal(fx_build(f), 0);
    assert_string_equal(fx_text(f), GOLDEN); /* the same bytes across many chunks */
    size_t need = f->pool.count - f->pool.free_count;
    assert_true(need > 10);
    rm_pool_put_chain(&f->pool, f->out.body);
    f->out.body = NULL;
    rm_pool_fini(&f->pool);
    for (size_t count = 1; count < need; count++) {
        assert_int_equal(rm_pool_init(&f->pool, 128, count), 0);
        assert_int_equal(fx_build(f), -ENOMEM);
        assert_int_equal(f->pool.free_count, count);
        rm_pool_fini(&f->pool);
    }
    assert_int_equal(rm_pool_init(&f->pool, 128, need), 0);
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(f->pool.free_count, 0);
    fx_free(f);
}

static void dsn_pool_exhaustion_during_a_boundary_retry_leaks_nothing(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static char orig[sizeof(ORIG) + 64];
    int n = snprintf(orig, sizeof(orig), "%s=_rm_0abc123_0\r\n", ORIG);
    f->in.msg = rm_span_make(orig, (size_t)n);
    rm_pool_fini(&f->pool);
    assert_int_equal(rm_pool_init(&f->pool, 128, 1000), 0);
    assert_int_equal(fx_build(f), 0);
    size_t need = f->pool.count - f->pool.free_count;
    rm_pool_put_chain(&f->pool, f->out.body);
    f->out.body = NULL;
    rm_pool_fini(&f->pool);
    assert_int_equal(rm_pool_init(&f->pool, 128, need - 1), 0);
    assert_int_equal(fx_build(f), -ENOMEM);
    assert_int_equal(f->pool.free_count, need - 1);
    fx_free(f);
}

static void dsn_rejects_bad_host_id_status_and_sender(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static const char *const bad_hosts[] = {"", "bad host", "a\r\nb", "h\xc3\xa9.example"};
    for (size_t i = 0; i < RM_ARRAY_LEN(bad_hosts); i++) {
        f->in.host = bad_hosts[i];
        assert_int_equal(fx_build(f), -EINVAL);
    }
    char longhost[SMTP_DOMAIN_MAX + 2];
    memset(longhost, 'a', sizeof(longhost) - 1);
    longhost[sizeof(longhost) - 1] = '\0';
    f->in.host = longhost;
    assert_int_equal(fx_build(f), -EINVAL);
    longhost[SMTP_DOMAIN_MAX] = '\0';
    assert_int_equal(fx_build(f), 0);
    f->in.host = HOST;

    static const char *const bad_ids[] = {"", "a=b", "a b", "a_b", "<x>", "a@b"};
    for (size_t i = 0; i < RM_ARRAY_LEN(bad_ids); i++) {
        f->in.id = bad_ids[i];
        assert_int_equal(fx_build(f), -EINVAL);
    }
    char longid[DSN_ID_MAX + 2];
    memset(longid, '7', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    f->in.id = longid;
    assert_int_equal(fx_build(f), -EINVAL);
    longid[DSN_ID_MAX] = '\0';
    assert_int_equal(fx_build(f), 0);
    f->in.id = ID;

    f->rep[1].status[0] = 2;
    assert_int_equal(fx_build(f), -EINVAL);
    f->rep[1].status[0] = 4;

    static char longsender[SMTP_PATH_MAX + 1];
    memset(longsender, 'a', sizeof(longsender));
    f->env.sender = rm_span_make(longsender, sizeof(longsender));
    assert_int_equal(fx_build(f), -EINVAL);
    fx_free(f);
}

static void dsn_8bit_original_is_declared_8bit(void **state)
{
    (void)state;
    struct fx *f = fx_new();
    static const char orig[] = "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n";
    f->in.msg = rm_span_make(orig, sizeof(orig) - 1);
    f->env.flags = Q_ENV_8BITMIME | Q_ENV_8BIT;
    f->rep[0].diag_text = S("5.1.1 unknown user b\xc3\xb8"
                            "b");
    assert_int_equal(fx_build(f), 0);
    const char *t = fx_text(f);
    assert_non_null(strstr(t, "\r\nContent-Type: message/rfc822\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n\r\n"));
    assert_int_equal(count_of(t, "Content-Transfer-Encoding: 8bit\r\n"), 2); /* + top */
    assert_non_null(strstr(t, "unknown user b??b")); /* our text stays ASCII */
    assert_int_equal(f->benv.env.flags, Q_ENV_8BITMIME | Q_ENV_8BIT);
    /* Headers only: the returned octets are ASCII again, so 7bit. */
    f->env.ret = Q_RET_HDRS;
    f->in.msg = rm_span_make(ORIG, sizeof(ORIG) - 1);
    assert_int_equal(fx_build(f), 0);
    assert_null(strstr(fx_text(f), "Content-Transfer-Encoding"));
    assert_true(all_ascii(fx_text(f), f->out.len));
    assert_int_equal(f->benv.env.flags, 0);
    fx_free(f);
}

/* SMTPUTF8 original: a UTF-8 sender and recipient, an ORCPT in the utf-8
 * address type with a \x{...} escape. */
static struct fx *fx_utf8(void)
{
    struct fx *f = fx_new();
    f->env.flags = Q_ENV_SMTPUTF8 | Q_ENV_8BITMIME | Q_ENV_8BIT;
    f->env.sender = S("\xc3\xa1lice@example.org");
    f->rcpts[0].addr = S("b\xc3\xb8"
                         "b@example.com");
    f->rcpts[0].orcpt = S("utf-8;b\\x{F8}b+2Bold@example.com");
    f->rep[0].diag_text = S("5.1.1 <b\xc3\xb8"
                            "b@example.com>: unknown, \xff bad UTF-8");
    static const char orig[] = "From: \xc3\xa1lice@example.org\r\nSubject: hi\r\n\r\nHej!\r\n";
    f->in.msg = rm_span_make(orig, sizeof(orig) - 1);
    return f;
}

static void dsn_smtputf8_original_gets_global_types_and_utf8_addresses(void **state)
{
    (void)state;
    struct fx *f = fx_utf8();
    assert_int_equal(fx_build(f), 0);
    const char *t = fx_text(f);
    assert_non_null(strstr(t, "\r\nTo: <\xc3\xa1lice@example.org>\r\n"));
    assert_non_null(strstr(t, "Content-Type: multipart/report; "
                              "report-type=global-delivery-status;\r\n"));
    assert_non_null(strstr(t, "\r\nContent-Type: text/plain; charset=utf-8\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n"));
    assert_non_null(strstr(t, "\r\nContent-Type: message/global-delivery-status\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n"));
    assert_non_null(strstr(t, "\r\nContent-Type: message/global\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n"));
    assert_non_null(strstr(t, "\r\nOriginal-Recipient: utf-8;b\xc3\xb8"
                              "b+old@example.com\r\n"));
    assert_non_null(strstr(t, "\r\nFinal-Recipient: utf-8; b\xc3\xb8"
                              "b@example.com\r\n"));
    assert_non_null(strstr(t, "\r\nFinal-Recipient: rfc822; carol@example.net\r\n"));
    assert_non_null(strstr(t, "\r\n<b\xc3\xb8"
                              "b@example.com>: host mx.example.com said:"));
    assert_non_null(strstr(t, "unknown, ? bad UTF-8")); /* invalid UTF-8 is replaced */
    assert_int_equal(f->benv.env.flags, Q_ENV_SMTPUTF8 | Q_ENV_8BITMIME | Q_ENV_8BIT);
    assert_true(rm_span_eq(f->benv.rcpt.addr, S("\xc3\xa1lice@example.org")));
    assert_lines_ok(f->flat, f->out.len);

    f->env.ret = Q_RET_HDRS;
    assert_int_equal(fx_build(f), 0);
    assert_non_null(strstr(fx_text(f), "\r\nContent-Type: message/global-headers\r\n"));
    fx_free(f);
}

static void dsn_strerror_names_every_code(void **state)
{
    (void)state;
    const int codes[] = {DSN_ERR_NULL_SENDER, DSN_ERR_NOT_REQUESTED, DSN_ERR_BOUNDARY};
    for (size_t i = 0; i < RM_ARRAY_LEN(codes); i++) {
        const char *s = dsn_strerror(codes[i]);
        assert_non_null(s);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, dsn_strerror(codes[j]));
    }
    assert_non_null(strstr(dsn_strerror(-ENOMEM), "memory"));
}

/* ---- DSN: Python's email package as an independent reader -------------------------- */

static const char PY_CHECK[] =
    "import sys, email, email.utils\n"
    "path, rtype, types, nrcpt = sys.argv[1], sys.argv[2], sys.argv[3].split(','), "
    "int(sys.argv[4])\n"
    "data = open(path, 'rb').read()\n"
    "for line in data.split(b'\\r\\n')[:-1]:\n"
    "    assert b'\\n' not in line and b'\\r' not in line and len(line) <= 998, line\n"
    "m = email.message_from_bytes(data)\n"
    "for part in m.walk():\n"
    "    assert not part.defects, (part.get_content_type(), part.defects)\n"
    "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
    "assert m.get_param('report-type') == rtype, m.get_param('report-type')\n"
    "b = m.get_boundary()\n"
    "assert data.count(b.encode()) == 5, b\n"
    "assert m['From'] == 'Mail Delivery System <MAILER-DAEMON@mail.example.org>'\n"
    "assert m['Auto-Submitted'] == 'auto-replied'\n"
    "assert email.utils.parsedate_to_datetime(m['Date']).timestamp() == 1700432000\n"
    "parts = m.get_payload()\n"
    "assert [p.get_content_type() for p in parts] == types, [p.get_content_type() for p in "
    "parts]\n"
    "assert 'delivery system' in parts[0].get_payload()\n"
    "ds = parts[1].get_payload()\n"
    "if types[1] == 'message/delivery-status':\n"
    "    assert len(ds) == 1 + nrcpt, len(ds)\n"
    "    assert ds[0]['Reporting-MTA'] == 'dns; mail.example.org'\n"
    "    for r in ds[1:]:\n"
    "        assert r['Final-Recipient'] and r['Action'] and r['Status'], r.items()\n"
    "else:\n"
    "    assert ds[0]['Reporting-MTA'] == 'dns; mail.example.org'\n"
    "o = parts[2]\n"
    "if o.is_multipart():\n"
    "    inner = o.get_payload(0)\n"
    "    assert inner['Subject'] == 'hi', inner.items()\n"
    "    if o.get_content_type() == 'message/global-headers':\n"
    "        assert inner.get_payload() == '', inner.get_payload()\n"
    "else:\n"
    "    t = o.get_payload(decode=True)\n"
    "    assert b'Subject: hi' in t and b'\\r\\n\\r\\n' not in t, t\n";

static bool have_python3(void)
{
    return system("command -v python3 >/dev/null 2>&1") == 0;
}

/* Runs PY_CHECK on the DSN in f; returns its exit status. */
static int python_check(const struct fx *f, const char *rtype, const char *types, int nrcpt)
{
    char dir[] = "/tmp/test_dsn.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char eml[64], py[64], cmd[512];
    snprintf(eml, sizeof(eml), "%s/dsn.eml", dir);
    snprintf(py, sizeof(py), "%s/check.py", dir);
    FILE *fp = fopen(eml, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(f->flat, 1, f->out.len, fp), f->out.len);
    assert_int_equal(fclose(fp), 0);
    fp = fopen(py, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(PY_CHECK, 1, sizeof(PY_CHECK) - 1, fp), sizeof(PY_CHECK) - 1);
    assert_int_equal(fclose(fp), 0);
    snprintf(cmd, sizeof(cmd), "python3 %s %s %s %s %d", py, eml, rtype, types, nrcpt);
    int st = system(cmd);
    unlink(eml);
    unlink(py);
    rmdir(dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void dsn_python_email_parses_every_variant(void **state)
{
    (void)state;
    if (!have_python3())
        skip();
    struct fx *f = fx_new();
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(
        python_check(f, "delivery-status", "text/plain,message/delivery-status,message/rfc822", 2),
        0);
    f->env.ret = Q_RET_HDRS;
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(python_check(f, "delivery-status",
                                  "text/plain,message/delivery-status,text/rfc822-headers", 2),
                     0);
    f->rcpts[0].notify = Q_NOTIFY_NEVER;
    f->in.return_size_max = 200; /* the header section, 171 octets, is returned */
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(python_check(f, "delivery-status",
                                  "text/plain,message/delivery-status,text/rfc822-headers", 1),
                     0);
    fx_free(f);

    f = fx_utf8();
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(python_check(f, "global-delivery-status",
                                  "text/plain,message/global-delivery-status,message/global", 2),
                     0);
    f->env.ret = Q_RET_HDRS;
    assert_int_equal(fx_build(f), 0);
    assert_int_equal(
        python_check(f, "global-delivery-status",
                     "text/plain,message/global-delivery-status,message/global-headers", 2),
        0);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(retry_default_schedule_is_1m_5m_15m_30m_1h_2h),
        cmocka_unit_test(retry_parse_accepts_every_unit_and_separator),
        cmocka_unit_test(retry_parse_rejects_junk_with_a_message),
        cmocka_unit_test(retry_parse_takes_steps_max_intervals_but_not_one_more),
        cmocka_unit_test(retry_parse_takes_the_max_interval_but_not_one_ms_more),
        cmocka_unit_test(retry_first_attempt_is_due_at_once),
        cmocka_unit_test(retry_intervals_follow_the_schedule_and_the_last_repeats),
        cmocka_unit_test(retry_last_attempt_happens_exactly_at_the_lifetime),
        cmocka_unit_test(retry_whole_life_of_a_message_ends_in_one_expiry),
        cmocka_unit_test(retry_zero_lifetime_tries_once),
        cmocka_unit_test(retry_jitter_adds_at_most_ten_percent_deterministically),
        cmocka_unit_test(retry_jitter_never_pushes_past_the_lifetime),
        cmocka_unit_test(retry_huge_values_never_overflow),
        cmocka_unit_test(dsn_failed_for_two_recipients_is_exactly_the_golden_message),
        cmocka_unit_test(dsn_envid_is_decoded_from_xtext_unless_not_printable),
        cmocka_unit_test(dsn_orcpt_is_reported_only_when_given),
        cmocka_unit_test(dsn_ret_hdrs_returns_only_the_header_section),
        cmocka_unit_test(dsn_ret_full_or_unset_returns_the_whole_message),
        cmocka_unit_test(dsn_original_without_final_crlf_gets_one),
        cmocka_unit_test(dsn_size_limit_returns_headers_from_limit_plus_one),
        cmocka_unit_test(dsn_header_section_over_the_limit_is_cut_at_a_line_end),
        cmocka_unit_test(dsn_message_without_a_body_returns_all_as_headers),
        cmocka_unit_test(dsn_never_and_success_only_recipients_are_left_out),
        cmocka_unit_test(dsn_notify_rules_follow_rfc3461),
        cmocka_unit_test(dsn_delayed_reports_say_so_and_return_headers),
        cmocka_unit_test(dsn_null_sender_gets_no_dsn),
        cmocka_unit_test(dsn_bounce_envelope_has_null_sender_and_the_sender_as_recipient),
        cmocka_unit_test(dsn_lines_end_in_crlf_and_fit_998_whatever_the_diagnostic),
        cmocka_unit_test(dsn_diagnostic_is_cut_at_diag_text_max_and_not_before),
        cmocka_unit_test(dsn_boundary_is_never_in_the_content),
        cmocka_unit_test(dsn_content_holding_every_boundary_fails_cleanly),
        cmocka_unit_test(dsn_pool_exhaustion_returns_enomem_without_leaking),
        cmocka_unit_test(dsn_pool_exhaustion_during_a_boundary_retry_leaks_nothing),
        cmocka_unit_test(dsn_rejects_bad_host_id_status_and_sender),
        cmocka_unit_test(dsn_8bit_original_is_declared_8bit),
        cmocka_unit_test(dsn_smtputf8_original_gets_global_types_and_utf8_addresses),
        cmocka_unit_test(dsn_strerror_names_every_code),
        cmocka_unit_test(dsn_python_email_parses_every_variant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
