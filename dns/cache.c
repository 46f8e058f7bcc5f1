/* dns/cache.c: the per-resolver answer cache: fixed entries, a hash index
 * and an LRU list, all allocated once. Keys are (lower-case wire name, type). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dns_internal.h"

int dns_cache_init(struct dns_cache *c, uint32_t cap, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    c->lru_head = c->lru_tail = c->free_head = DNS_NIL;
    c->seed = seed;
    if (cap == 0)
        return 0;
    uint32_t buckets = 1;
    while (buckets < cap) /* load factor <= 1 */
        buckets <<= 1;
    c->e = calloc(cap, sizeof(*c->e));
    c->bucket = malloc((size_t)buckets * sizeof(*c->bucket));
    if (!c->e || !c->bucket) {
        dns_cache_fini(c);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < buckets; i++)
        c->bucket[i] = DNS_NIL;
    for (uint32_t i = 0; i < cap; i++)
        c->e[i].hnext = i + 1 < cap ? i + 1 : DNS_NIL;
    c->free_head = 0;
    c->cap = cap;
    c->mask = buckets - 1;
    return 0;
}

void dns_cache_fini(struct dns_cache *c)
{
    free(c->e);
    free(c->bucket);
    memset(c, 0, sizeof(*c));
}

static void lru_unlink(struct dns_cache *c, uint32_t i)
{
    struct dns_cache_entry *e = &c->e[i];
    if (e->prev != DNS_NIL)
        c->e[e->prev].next = e->next;
    else
        c->lru_head = e->next;
    if (e->next != DNS_NIL)
        c->e[e->next].prev = e->prev;
    else
        c->lru_tail = e->prev;
}

static void lru_push_head(struct dns_cache *c, uint32_t i)
{
    struct dns_cache_entry *e = &c->e[i];
    e->prev = DNS_NIL;
    e->next = c->lru_head;
    if (c->lru_head != DNS_NIL)
        c->e[c->lru_head].prev = i;
    c->lru_head = i;
    if (c->lru_tail == DNS_NIL)
        c->lru_tail = i;
}

/* Unlinks entry i from its bucket and the LRU and puts it on the free list. */
static void entry_drop(struct dns_cache *c, uint32_t i)
{
    struct dns_cache_entry *e = &c->e[i];
    RM_ASSERT(e->used);
    uint32_t *pp = &c->bucket[e->hash & c->mask];
    while (*pp != i) {
        RM_ASSERT(*pp != DNS_NIL);
        pp = &c->e[*pp].hnext;
    }
    *pp = e->hnext;
    lru_unlink(c, i);
    e->used = false;
    e->hnext = c->free_head;
    c->free_head = i;
}

static uint64_t key_hash(const struct dns_cache *c, const uint8_t *name, size_t len, uint16_t type)
{
    return dns_name_hash(name, len, c->seed) ^ ((uint64_t)type * 0x9e3779b97f4a7c15ull);
}

static uint32_t find(const struct dns_cache *c, uint64_t h, const uint8_t *name, size_t len,
                     uint16_t type)
{
    for (uint32_t i = c->bucket[h & c->mask]; i != DNS_NIL; i = c->e[i].hnext) {
        const struct dns_cache_entry *e = &c->e[i];
        if (e->hash == h && e->type == type && e->name_len == len &&
            memcmp(e->name, name, len) == 0)
            return i;
    }
    return DNS_NIL;
}

const struct dns_cache_entry *dns_cache_get(struct dns_cache *c, const uint8_t *name, size_t len,
                                            uint16_t type, uint64_t now_ms)
{
    if (c->cap == 0)
        return NULL;
    uint64_t h = key_hash(c, name, len, type);
    uint32_t i = find(c, h, name, len, type);
    if (i == DNS_NIL)
        return NULL;
    if (now_ms >= c->e[i].expires_ms) {
        entry_drop(c, i);
        return NULL;
    }
    lru_unlink(c, i);
    lru_push_head(c, i);
    return &c->e[i];
}

int dns_cache_put(struct dns_cache *c, const uint8_t *name, size_t len, uint16_t type,
                  enum dns_outcome outcome, bool secure, const struct dns_rrview *rrs,
                  uint64_t expires_ms, uint64_t now_ms)
{
    RM_ASSERT(len <= DNS_NAME_WIRE_MAX);
    RM_ASSERT(outcome != DNS_OUT_TEMPFAIL);
    if (c->cap == 0 || rrs->len > DNS_CACHE_BYTES_MAX)
        return -1;
    int evicted = 0;
    uint64_t h = key_hash(c, name, len, type);
    uint32_t i = find(c, h, name, len, type);
    if (i != DNS_NIL) {
        entry_drop(c, i); /* replaced below, most likely into the same entry */
    } else if (c->free_head == DNS_NIL) {
        uint32_t victim = c->lru_tail;
        RM_ASSERT(victim != DNS_NIL);
        evicted = now_ms < c->e[victim].expires_ms;
        entry_drop(c, victim);
    }
    i = c->free_head;
    RM_ASSERT(i != DNS_NIL);
    struct dns_cache_entry *e = &c->e[i];
    c->free_head = e->hnext;
    e->used = true;
    e->hash = h;
    e->type = type;
    e->name_len = (uint8_t)len;
    memcpy(e->name, name, len);
    e->outcome = (uint8_t)outcome;
    e->secure = secure;
    e->partial = rrs->partial;
    e->count = rrs->count;
    e->len = rrs->len;
    if (rrs->len)
        memmove(e->data, rrs->data, rrs->len); /* rrs may be this very entry (cap 1) */
    e->expires_ms = expires_ms;
    uint32_t *b = &c->bucket[h & c->mask];
    e->hnext = *b;
    *b = i;
    lru_push_head(c, i);
    return evicted;
}
