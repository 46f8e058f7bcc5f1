/* mta/sched.c: a worker's delivery schedule (see sched.h). */
#include "sched.h"

#include <errno.h>
#include <stdlib.h>

#define SCHED_USED 1
#define SCHED_DEL  2

static bool entry_less(const struct sched_entry *a, const struct sched_entry *b)
{
    if (a->due_ms != b->due_ms)
        return a->due_ms < b->due_ms;
    return memcmp(a->id.b, b->id.b, sizeof(a->id.b)) < 0;
}

static uint32_t id_hash(const struct q_id *id)
{
    /* The low half is sequence + random bits: well spread already. */
    uint64_t x = rm_get_be64(id->b + 8) ^ rm_get_be64(id->b);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static uint32_t taken_find(const struct sched *s, const struct q_id *id, bool *found)
{
    uint32_t mask = s->taken_cap - 1, i = id_hash(id) & mask, first_del = UINT32_MAX;
    for (uint32_t probe = 0; probe < s->taken_cap; probe++, i = (i + 1) & mask) {
        if (s->taken_used[i] == 0) {
            *found = false;
            return first_del != UINT32_MAX ? first_del : i;
        }
        if (s->taken_used[i] == SCHED_DEL) {
            if (first_del == UINT32_MAX)
                first_del = i;
        } else if (memcmp(s->taken[i].b, id->b, sizeof(id->b)) == 0) {
            *found = true;
            return i;
        }
    }
    *found = false;
    RM_ASSERT(first_del != UINT32_MAX); /* the set is never full: cap is 2x its bound */
    return first_del;
}

static bool taken_has(const struct sched *s, const struct q_id *id)
{
    bool found;
    taken_find(s, id, &found);
    return found;
}

static void taken_put(struct sched *s, const struct q_id *id)
{
    bool found;
    uint32_t i = taken_find(s, id, &found);
    RM_ASSERT(!found && s->taken_n < s->taken_cap / 2);
    s->taken[i] = *id;
    s->taken_used[i] = SCHED_USED;
    s->taken_n++;
}

int sched_init(struct sched *s, uint32_t cap, uint32_t inflight_cap, unsigned worker,
               unsigned nworkers, uint64_t window_ms)
{
    memset(s, 0, sizeof(*s));
    RM_ASSERT(cap > 0 && nworkers > 0 && worker < nworkers);
    s->cap = cap;
    s->inflight_cap = inflight_cap;
    s->taken_cap = 16;
    while (s->taken_cap < 2 * ((uint64_t)cap + inflight_cap))
        s->taken_cap *= 2;
    s->heap = calloc(cap, sizeof(*s->heap));
    s->taken = calloc(s->taken_cap, sizeof(*s->taken));
    s->taken_used = calloc(s->taken_cap, 1);
    if (!s->heap || !s->taken || !s->taken_used) {
        sched_fini(s);
        return -ENOMEM;
    }
    s->worker = worker;
    s->nworkers = nworkers;
    s->window_ms = window_ms;
    return 0;
}

void sched_fini(struct sched *s)
{
    free(s->heap);
    free(s->taken);
    free(s->taken_used);
    memset(s, 0, sizeof(*s));
}

bool sched_owns(const struct sched *s, const struct q_id *id)
{
    unsigned w = (unsigned)id->b[6] << 8 | id->b[7]; /* q_id_make: ms(48) | worker(16) */
    return w % s->nworkers == s->worker;
}

static void heap_push(struct sched *s, uint64_t due_ms, const struct q_id *id)
{
    RM_ASSERT(s->n < s->cap);
    struct sched_entry e = {due_ms, *id};
    uint32_t i = s->n++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!entry_less(&e, &s->heap[parent]))
            break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = e;
}

static struct sched_entry heap_pop(struct sched *s)
{
    RM_ASSERT(s->n > 0);
    struct sched_entry top = s->heap[0], last = s->heap[--s->n];
    uint32_t i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= s->n)
            break;
        if (c + 1 < s->n && entry_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!entry_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->n > 0)
        s->heap[i] = last;
    return top;
}

void sched_add(struct sched *s, uint64_t due_ms, const struct q_id *id)
{
    RM_ASSERT(sched_owns(s, id));
    if (due_ms >= s->horizon_ms || taken_has(s, id))
        return; /* a refill finds it, or it is here already */
    if (s->n == s->cap) {
        s->horizon_ms = due_ms; /* full: the next refill looks again from here */
        return;
    }
    heap_push(s, due_ms, id);
    taken_put(s, id);
}

bool sched_pop_due(struct sched *s, uint64_t now_ms, struct sched_entry *out)
{
    if (s->n == 0 || s->heap[0].due_ms > now_ms || sched_inflight(s) >= s->inflight_cap)
        return false;
    *out = heap_pop(s); /* stays in `taken`: in flight */
    return true;
}

void sched_done(struct sched *s, const struct q_id *id)
{
    bool found;
    uint32_t i = taken_find(s, id, &found);
    RM_ASSERT(found);
    s->taken_used[i] = SCHED_DEL;
    s->taken_n--;
}

uint64_t sched_next_due(const struct sched *s)
{
    return s->n ? s->heap[0].due_ms : UINT64_MAX;
}

uint32_t sched_inflight(const struct sched *s)
{
    return s->taken_n - s->n;
}

struct refill_ctx {
    struct sched *s;
    uint64_t until_ms;
    int added;
};

static int refill_one(void *arg, const struct q_id *id, uint64_t due_ms)
{
    struct refill_ctx *c = arg;
    struct sched *s = c->s;
    if (due_ms >= c->until_ms)
        return 1; /* past the window: done */
    if (!sched_owns(s, id) || taken_has(s, id))
        return 0;
    if (s->n == s->cap) {
        c->until_ms = due_ms; /* full: the horizon stops here */
        return 1;
    }
    heap_push(s, due_ms, id);
    taken_put(s, id);
    c->added++;
    return 0;
}

int sched_refill(struct sched *s, struct q *q, uint64_t now_ms)
{
    struct refill_ctx c = {s, now_ms + s->window_ms, 0};
    if (c.until_ms <= s->horizon_ms)
        return 0;
    int rc = q_scan_sched_from(q, s->horizon_ms, refill_one, &c);
    if (rc < 0)
        return rc;
    s->horizon_ms = c.until_ms;
    return c.added;
}
