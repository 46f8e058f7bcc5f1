/* mta/uring.h: what the worker loop (worker.c) and the delivery engine
 * (deliver.c) share about their one io_uring: the user_data encoding and
 * getting a submission entry. Internal to mta/; used by one thread at a time
 * (the worker's). */
#ifndef URING_H
#define URING_H

#include <errno.h>
#include <liburing.h>

#include "../common/rm.h"

/* user_data: kind (8 bits) | index (24 bits) | generation (32 bits). A slot
 * (inbound or outbound) is reused only when nothing in flight names it, so a
 * completion's generation always matches; it is asserted. */
enum ud_kind {
    UD_ACCEPT = 1, /* index: listening socket */
    UD_RECV,
    UD_SEND,
    UD_CLOSE,
    UD_CANCEL,
    UD_TICK,
    UD_QEVENT,
    UD_WAKE,
    UD_LOG,     /* index: 0 delivery log, 1 diagnostics */
    UD_IGNORE,  /* completions nobody waits for (cancels) */
    UD_REFUSED, /* index: the fd of a refused connection, closed on completion */
    /* deliver.c: */
    UD_OUT_CONNECT, /* index: outbound connection slot */
    UD_OUT_RECV,
    UD_OUT_SEND,
    UD_OUT_CLOSE,
    UD_OUT_TIMEOUT, /* the connect's linked timeout */
    UD_DNS_RECV,    /* index: address family slot (0 IPv4, 1 IPv6) */
    UD_DNS_SEND,    /* index: send buffer */
    UD_DNS_TCP,     /* index: TCP exchange slot (one operation in flight at a time) */
    UD_KIND_MAX,
};

/* Store requests are tagged with the kind of their owner. */
#define UD_TAG_SESSION UD_RECV        /* an inbound session's message */
#define UD_TAG_DELIVER UD_OUT_CONNECT /* the delivery engine's update/delete/DSN */

#define UD_IDX_MAX ((1u << 24) - 1)

static inline uint64_t ud_make(enum ud_kind k, uint32_t idx, uint32_t gen)
{
    RM_ASSERT(idx <= UD_IDX_MAX);
    return (uint64_t)k << 56 | (uint64_t)idx << 32 | gen;
}

static inline enum ud_kind ud_kind(uint64_t ud)
{
    return (enum ud_kind)(ud >> 56);
}

static inline uint32_t ud_idx(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & UD_IDX_MAX;
}

static inline uint32_t ud_gen(uint64_t ud)
{
    return (uint32_t)ud;
}

/* A submission entry; when the SQ is full, what is queued is submitted first
 * (never waits). The CQ is sized for every operation in flight (worker.c
 * ring_setup), so the submit cannot fail for a full CQ. */
static inline struct io_uring_sqe *uring_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        int rc = io_uring_submit(ring);
        RM_ASSERT(rc >= 0 || rc == -EBUSY || rc == -EAGAIN);
        sqe = io_uring_get_sqe(ring);
    }
    RM_ASSERT(sqe != NULL);
    return sqe;
}

#endif /* URING_H */
