/* common/rm.h: header-only basics every ringmta module may use.
 *
 * Assertions, the span and buffer types, and a few helpers. Nothing here
 * allocates, logs or blocks; any thread may use it on its own objects.
 */
#ifndef RM_H
#define RM_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RM_MUST_CHECK   __attribute__((warn_unused_result))
#define RM_UNUSED       __attribute__((unused))
#define RM_NORETURN     __attribute__((noreturn))
#define RM_LIKELY(x)    __builtin_expect(!!(x), 1)
#define RM_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#define RM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define RM_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define RM_MAX(a, b)    ((a) > (b) ? (a) : (b))
#define RM_CACHELINE    64

RM_NORETURN static inline void rm_assert_fail(const char *file, int line, const char *expr)
{
    /* Always on: a crash costs a restart, never mail, as nothing is
     * acknowledged before its commit (STYLE.md "Assertions"). */
    fprintf(stderr, "ringmta: assertion failed: %s:%d: %s\n", file, line, expr);
    abort();
}

#define RM_ASSERT(e) (RM_LIKELY(e) ? (void)0 : rm_assert_fail(__FILE__, __LINE__, #e))
#ifdef RM_DEBUG
#define RM_ASSERT_DEBUG(e) RM_ASSERT(e)
#else
#define RM_ASSERT_DEBUG(e) ((void)0)
#endif

/* A borrowed byte range: never NUL-terminated in place; whose it is and
 * until when is said where one is stored. */
struct rm_span {
    const uint8_t *p;
    size_t len;
};

static inline struct rm_span rm_span_make(const void *p, size_t len)
{
    struct rm_span s = {(const uint8_t *)p, len};
    return s;
}

static inline struct rm_span rm_span_str(const char *s)
{
    return rm_span_make(s, strlen(s));
}

static inline bool rm_span_eq(struct rm_span a, struct rm_span b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* ASCII case-insensitive comparison of a span with a C string. */
static inline bool rm_span_ieq(struct rm_span a, const char *lit)
{
    size_t n = strlen(lit);
    if (a.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t x = a.p[i], y = (uint8_t)lit[i];
        if (x >= 'A' && x <= 'Z')
            x = (uint8_t)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (uint8_t)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* A byte buffer in caller-owned memory that is never reallocated.
 * Invariant: head <= tail <= cap. Bytes [head, tail) are pending: for an
 * rx buffer, received and not yet consumed; for a tx buffer, queued and not
 * yet sent. The owner of `data` is said where the buffer lives. */
struct rm_buf {
    uint8_t *data;
    size_t cap;
    size_t head;
    size_t tail;
};

static inline bool rm_buf_valid(const struct rm_buf *b)
{
    return b->head <= b->tail && b->tail <= b->cap;
}

static inline void rm_buf_init(struct rm_buf *b, uint8_t *data, size_t cap)
{
    b->data = data;
    b->cap = cap;
    b->head = 0;
    b->tail = 0;
}

static inline size_t rm_buf_len(const struct rm_buf *b)
{
    return b->tail - b->head;
}

/* Free space after tail (compact first to get all of it). */
static inline size_t rm_buf_space(const struct rm_buf *b)
{
    return b->cap - b->tail;
}

static inline uint8_t *rm_buf_rptr(const struct rm_buf *b)
{
    return b->data + b->head;
}

static inline uint8_t *rm_buf_wptr(const struct rm_buf *b)
{
    return b->data + b->tail;
}

static inline void rm_buf_consume(struct rm_buf *b, size_t n)
{
    RM_ASSERT(n <= rm_buf_len(b));
    b->head += n;
    if (b->head == b->tail)
        b->head = b->tail = 0;
}

/* Like rm_buf_consume but never moves tail back to 0: for a buffer that an
 * in-flight recv may still write at tail. */
static inline void rm_buf_skip(struct rm_buf *b, size_t n)
{
    RM_ASSERT(n <= rm_buf_len(b));
    b->head += n;
}

static inline void rm_buf_produce(struct rm_buf *b, size_t n)
{
    RM_ASSERT(n <= rm_buf_space(b));
    b->tail += n;
}

/* Moves pending bytes to the front so that all free space is after tail. */
static inline void rm_buf_compact(struct rm_buf *b)
{
    if (b->head == 0)
        return;
    size_t n = rm_buf_len(b);
    memmove(b->data, b->data + b->head, n);
    b->head = 0;
    b->tail = n;
}

/* Readies an rx buffer for the next recv; call it only when no recv is
 * pending (a pending one writes at the tail it was given, so bytes must not
 * move under it; consumers use rm_buf_skip meanwhile). Moves pending bytes
 * to the front when less than a quarter of the buffer is free. Returns the
 * free space after tail. */
static inline size_t rm_buf_recv_prep(struct rm_buf *b)
{
    if (b->head == b->tail)
        b->head = b->tail = 0;
    else if (b->cap - b->tail < b->cap / 4)
        rm_buf_compact(b);
    return b->cap - b->tail;
}

/* Appends n bytes; returns false (and appends nothing) when they do not fit
 * even after compaction. */
static inline RM_MUST_CHECK bool rm_buf_append(struct rm_buf *b, const void *p, size_t n)
{
    if (rm_buf_space(b) < n)
        rm_buf_compact(b);
    if (rm_buf_space(b) < n)
        return false;
    memcpy(b->data + b->tail, p, n);
    b->tail += n;
    return true;
}

/* Monotonic-free helpers for big-endian integers (queue keys, wire formats). */
static inline void rm_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t rm_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* UTC calendar fields of unix seconds, computed without libc: glibc's
 * gmtime_r takes its tzset lock, and workers never lock (STYLE.md).
 * Days-from-civil inverse after Howard Hinnant's algorithm. */
struct rm_utc {
    int year, month, day; /* month 1..12, day 1..31 */
    int hour, min, sec;
    int wday; /* 0 = Sunday */
};

static inline void rm_utc_from_unix(uint64_t t, struct rm_utc *u)
{
    uint64_t days = t / 86400, rem = t % 86400;
    u->hour = (int)(rem / 3600);
    u->min = (int)(rem % 3600 / 60);
    u->sec = (int)(rem % 60);
    u->wday = (int)((days + 4) % 7); /* 1970-01-01 was a Thursday */
    uint64_t z = days + 719468;      /* days since 0000-03-01 */
    uint64_t era = z / 146097;
    uint64_t doe = z - era * 146097;
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    uint64_t m = mp < 10 ? mp + 3 : mp - 9;
    u->day = (int)(doy - (153 * mp + 2) / 5 + 1);
    u->month = (int)m;
    u->year = (int)(yoe + era * 400 + (m <= 2));
}

#endif /* RM_H */
