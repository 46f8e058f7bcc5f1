/* common/rm_pool.h: a fixed pool of fixed-size chunks for message bodies.
 *
 * One pool per worker, made at start-up from one mmap(MAP_NORESERVE) region:
 * pages cost memory only once touched, and freed chunks go back on a LIFO
 * free list so the warm ones are reused first. A body is a singly linked
 * chain of chunks. Only the owning worker's thread takes or returns chunks;
 * while a store request is in flight the chain is lent (read-only) to the
 * queue writer, and it comes back with the completion (STYLE.md "Memory").
 * A full pool is back-pressure (`452 4.3.1`), never growth.
 */
#ifndef RM_POOL_H
#define RM_POOL_H

#include <errno.h>
#include <sys/mman.h>

#include "rm.h"

#define RM_CHUNK_BYTES_DEFAULT (64u * 1024u) /* one chunk incl. its header */

struct rm_chunk {
    struct rm_chunk *next; /* next chunk of the same body, or NULL */
    uint32_t len;          /* bytes used in data[] */
    uint32_t cap;          /* bytes available in data[] */
    uint8_t data[];
};

struct rm_pool {
    uint8_t *base;         /* owned: the mmap'd region */
    size_t region_bytes;   /* its length */
    size_t chunk_bytes;    /* stride, header included */
    size_t count;          /* chunks in the pool */
    size_t free_count;     /* chunks on the free list */
    size_t carved;         /* chunks handed out at least once */
    struct rm_chunk *free; /* LIFO free list */
};

/* Reserves count chunks of chunk_bytes (header included). Returns 0 or -errno. */
static inline RM_MUST_CHECK int rm_pool_init(struct rm_pool *p, size_t chunk_bytes, size_t count)
{
    RM_ASSERT(chunk_bytes > sizeof(struct rm_chunk) + 64 && chunk_bytes % 64 == 0);
    RM_ASSERT(count > 0);
    memset(p, 0, sizeof(*p));
    p->region_bytes = chunk_bytes * count;
    void *m = mmap(NULL, p->region_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    p->base = m;
    p->chunk_bytes = chunk_bytes;
    p->count = count;
    p->free_count = count;
    return 0;
}

static inline void rm_pool_fini(struct rm_pool *p)
{
    if (p->base)
        munmap(p->base, p->region_bytes);
    memset(p, 0, sizeof(*p));
}

/* Returns an empty chunk (len 0, next NULL), or NULL when the pool is empty. */
static inline struct rm_chunk *rm_pool_get(struct rm_pool *p)
{
    struct rm_chunk *c;
    if (p->free) {
        c = p->free;
        p->free = c->next;
    } else if (p->carved < p->count) {
        /* Carve lazily so untouched chunks never fault in. */
        c = (struct rm_chunk *)(void *)(p->base + p->carved * p->chunk_bytes);
        p->carved++;
    } else {
        return NULL;
    }
    RM_ASSERT(p->free_count > 0);
    p->free_count--;
    c->next = NULL;
    c->len = 0;
    c->cap = (uint32_t)(p->chunk_bytes - sizeof(struct rm_chunk));
    return c;
}

/* Returns a whole chain (NULL is allowed). */
static inline void rm_pool_put_chain(struct rm_pool *p, struct rm_chunk *c)
{
    while (c) {
        struct rm_chunk *next = c->next;
        RM_ASSERT((uint8_t *)c >= p->base && (uint8_t *)c < p->base + p->region_bytes);
        c->next = p->free;
        p->free = c;
        p->free_count++;
        RM_ASSERT(p->free_count <= p->count);
        c = next;
    }
}

#endif /* RM_POOL_H */
