/* mta/retry.c: the retry schedule; the rules are in retry.h. */
#include "retry.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>

/* The largest time we return: RETRY_EXPIRED (UINT64_MAX) is the sentinel. */
#define RETRY_TIME_MAX (UINT64_MAX - 1)

static const uint64_t retry_default_ms[] = {
    60ull * 1000,      5 * 60ull * 1000, 15 * 60ull * 1000,
    30 * 60ull * 1000, 3600ull * 1000,   2 * 3600ull * 1000,
};
static_assert(RM_ARRAY_LEN(retry_default_ms) <= RETRY_STEPS_MAX, "the default fits");

void retry_sched_default(struct retry_sched *s)
{
    memset(s, 0, sizeof(*s));
    s->count = (uint32_t)RM_ARRAY_LEN(retry_default_ms);
    memcpy(s->interval_ms, retry_default_ms, sizeof(retry_default_ms));
}

enum retry_why { RETRY_WHY_SYNTAX, RETRY_WHY_RANGE, RETRY_WHY_MANY, RETRY_WHY_EMPTY };

/* Writes the message for why (about token tok) to err; returns -EINVAL. */
static int retry_fail(char *err, size_t err_len, enum retry_why why, const char *tok)
{
    if (err_len == 0)
        return -EINVAL;
    switch (why) {
    case RETRY_WHY_SYNTAX:
        (void)snprintf(err, err_len,
                       "bad interval \"%s\": expected a number and a unit (ms, s, m, h, d), "
                       "e.g. 5m",
                       tok);
        break;
    case RETRY_WHY_RANGE:
        (void)snprintf(err, err_len, "interval \"%s\" out of range (1ms to %llud)", tok,
                       (unsigned long long)(RETRY_INTERVAL_MAX_MS / 86400000));
        break;
    case RETRY_WHY_MANY:
        (void)snprintf(err, err_len, "more than %u intervals", RETRY_STEPS_MAX);
        break;
    case RETRY_WHY_EMPTY:
        (void)snprintf(err, err_len, "expected at least one interval, e.g. \"%s\"",
                       RETRY_SCHED_DEFAULT);
        break;
    }
    return -EINVAL;
}

/* The token s[0..len) for a message: at most 40 octets, non-printables as
 * '?', so that the message stays one line whatever the config holds. */
static const char *retry_quote(const char *s, size_t len, char out[41])
{
    size_t n = RM_MIN(len, (size_t)40);
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0x20 && s[i] < 0x7f)
            out[i] = s[i];
        else
            out[i] = '?';
    out[n] = '\0';
    return out;
}

static bool retry_is_sep(char c)
{
    return c == ' ' || c == '\t' || c == ',';
}

/* One token s[0..len): digits then a unit. Returns 0 and *ms, or -1. */
static int retry_parse_one(const char *s, size_t len, uint64_t *ms)
{
    size_t i = 0;
    uint64_t v = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        i++;
    }
    if (i == 0)
        return -1;
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        {"ms", 1}, {"s", 1000}, {"m", 60ull * 1000}, {"h", 3600ull * 1000}, {"d", 86400ull * 1000}};
    for (size_t u = 0; u < RM_ARRAY_LEN(units); u++) {
        size_t ulen = strlen(units[u].unit);
        if (len - i == ulen && memcmp(s + i, units[u].unit, ulen) == 0) {
            if (v > UINT64_MAX / units[u].ms)
                return -1;
            *ms = v * units[u].ms;
            return 0;
        }
    }
    return -1;
}

int retry_sched_parse(struct retry_sched *out, const char *s, char *err, size_t err_len)
{
    RM_ASSERT(out != NULL && s != NULL);
    RM_ASSERT(err != NULL || err_len == 0);
    struct retry_sched r;
    memset(&r, 0, sizeof(r));
    const char *p = s;
    for (;;) {
        while (retry_is_sep(*p))
            p++;
        if (*p == '\0')
            break;
        const char *e = p;
        while (*e != '\0' && !retry_is_sep(*e))
            e++;
        char q[41];
        uint64_t ms;
        if (retry_parse_one(p, (size_t)(e - p), &ms) != 0)
            return retry_fail(err, err_len, RETRY_WHY_SYNTAX, retry_quote(p, (size_t)(e - p), q));
        if (ms == 0 || ms > RETRY_INTERVAL_MAX_MS)
            return retry_fail(err, err_len, RETRY_WHY_RANGE, retry_quote(p, (size_t)(e - p), q));
        if (r.count == RETRY_STEPS_MAX)
            return retry_fail(err, err_len, RETRY_WHY_MANY, "");
        r.interval_ms[r.count++] = ms;
        p = e;
    }
    if (r.count == 0)
        return retry_fail(err, err_len, RETRY_WHY_EMPTY, "");
    *out = r;
    return 0;
}

uint64_t retry_interval_ms(const struct retry_sched *s, uint32_t attempts)
{
    RM_ASSERT(s->count >= 1 && s->count <= RETRY_STEPS_MAX);
    RM_ASSERT(attempts >= 1);
    return s->interval_ms[RM_MIN(attempts - 1, s->count - 1)];
}

/* a + b, saturating at RETRY_TIME_MAX. */
static uint64_t retry_add(uint64_t a, uint64_t b)
{
    return b >= RETRY_TIME_MAX || a > RETRY_TIME_MAX - b ? RETRY_TIME_MAX : a + b;
}

uint64_t retry_next_ms(const struct retry_sched *s, uint64_t arrival_ms, uint32_t attempts,
                       uint64_t now_ms, uint64_t lifetime_ms, uint32_t rnd)
{
    uint64_t now = RM_MIN(now_ms, RETRY_TIME_MAX);
    uint64_t deadline = retry_add(RM_MIN(arrival_ms, RETRY_TIME_MAX), lifetime_ms);
    if (attempts == 0)
        return now <= deadline ? now : RETRY_EXPIRED;

    uint64_t iv = retry_interval_ms(s, attempts);
    RM_ASSERT(iv >= 1 && iv <= RETRY_INTERVAL_MAX_MS); /* as parsed */
    /* jmax < 2^32 (static_assert in retry.h), so jmax * rnd < 2^64. */
    uint64_t jmax = iv * RETRY_JITTER_PCT / 100;
    uint64_t next = retry_add(now, iv + ((jmax * rnd) >> 32));
    if (next <= deadline)
        return next;
    /* The last attempt, exactly at the lifetime (retry.h). */
    return now < deadline ? deadline : RETRY_EXPIRED;
}
