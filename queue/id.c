/* queue/id.c: time-ordered 128-bit message ids (see q.h). */
#include <errno.h>

#include "q.h"

/* RFC 4648 section 7, base32hex: its alphabet is in ASCII order, so the text
 * sorts like the bytes (the section 6 alphabet puts 2-7 before a-z). */
static const char q_b32[] = "0123456789abcdefghijklmnopqrstuv";

void q_idgen_init(struct q_idgen *g, uint16_t worker, uint64_t seed)
{
    g->worker = worker;
    g->seq = 0;
    g->rnd = seed ? seed : 0x9e3779b97f4a7c15ull; /* xorshift must not start at 0 */
}

static uint64_t q_xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

void q_id_make(struct q_idgen *g, uint64_t now_ms, struct q_id *out)
{
    /* 48 bits of ms | 16 bits worker | 32 bits sequence | 32 random bits.
     * Sequence and worker make ids unique within one process lifetime; the
     * random part makes a collision after a restart within the same ms (or
     * with a clock stepped back) a 2^-32 event per pair. */
    uint64_t hi = (now_ms & 0xffffffffffffull) << 16 | g->worker;
    uint64_t lo = (uint64_t)g->seq++ << 32 | (q_xorshift64(&g->rnd) & 0xffffffffu);
    rm_put_be64(out->b, hi);
    rm_put_be64(out->b + 8, lo);
}

uint64_t q_id_time_ms(const struct q_id *id)
{
    return rm_get_be64(id->b) >> 16;
}

void q_id_format(const struct q_id *id, char out[Q_ID_STR_LEN + 1])
{
    /* 128 bits as 26 groups of 5 bits, most significant first; the last group
     * holds the final 3 bits shifted left, so the text sorts like the bytes. */
    unsigned bit = 0;
    for (int i = 0; i < Q_ID_STR_LEN; i++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++, bit++) {
            v <<= 1;
            if (bit < 128)
                v |= (id->b[bit / 8] >> (7 - bit % 8)) & 1u;
        }
        out[i] = q_b32[v];
    }
    out[Q_ID_STR_LEN] = '\0';
}

int q_id_parse(const char *s, size_t len, struct q_id *out)
{
    if (len != Q_ID_STR_LEN)
        return -EINVAL;
    struct q_id id;
    memset(&id, 0, sizeof(id));
    unsigned bit = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        unsigned v;
        if (c >= '0' && c <= '9')
            v = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'v')
            v = (unsigned)(c - 'a') + 10;
        else if (c >= 'A' && c <= 'V')
            v = (unsigned)(c - 'A') + 10;
        else
            return -EINVAL;
        for (int k = 4; k >= 0; k--, bit++) {
            unsigned b = (v >> k) & 1u;
            if (bit < 128)
                id.b[bit / 8] |= (uint8_t)(b << (7 - bit % 8));
            else if (b)
                return -EINVAL; /* padding bits must be zero: one text per id */
        }
    }
    *out = id;
    return 0;
}
