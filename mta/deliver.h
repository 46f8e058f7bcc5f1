/* mta/deliver.h: the delivery engine of one worker.
 *
 * It turns the worker's share of the queue into delivered mail (DESIGN.md
 * "Life of a message" 5-7): the schedule (sched.h) says which messages are
 * due; each is read from LMDB (envelope decoded, body copied into pool
 * chunks), its pending recipients grouped by destination domain into jobs;
 * each destination resolves its route ([domain X] route, or MX through the
 * worker's DNS resolver, dns.h) and keeps a pool of outbound connections
 * (smtpc.h) reused for the next job (RSET between), within its share of
 * max_connections. When every job of a message has ended, the per-recipient
 * outcomes are applied: delivered and permanently failed recipients become
 * final, the others get the next attempt time (retry.h), or expire; a DSN
 * (dsn.h) is queued for failures when the sender is not <>; the message is
 * deleted once every recipient is final, else updated. Every step is a line
 * in the delivery log.
 *
 * All I/O goes through the worker's io_uring (user_data kinds UD_OUT_* and
 * UD_DNS_* of uring.h); the worker calls deliver_cqe() with those. Only the
 * worker's thread calls any of this. Memory: in-flight messages, jobs and
 * destinations are bounded (max_inflight, max_outbound, DELIVER_DESTS_MAX);
 * what is not due soon stays in LMDB.
 */
#ifndef DELIVER_H
#define DELIVER_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/rm_pool.h"
#include "../queue/q.h"
#include "cfg.h"
#include "log.h"

#define DELIVER_DESTS_MAX 4096u /* destinations per worker; full: jobs wait (TEMP) */
#define DELIVER_BATCH_RCPTS                                                                        \
    100u /* recipients per transaction: every server takes 100                                     \
          * (RFC 5321 4.5.3.1.8); more go in further jobs */
#define DELIVER_DNS_SENDS                                                                          \
    (64u * 21u)                      /* DNS datagrams being sent at once: every lookup             \
                                      * slot's MX and A+AAAA of 10 hosts (dns.h) */
#define DELIVER_LOAD_RETRY_MS 5000u  /* a message that could not be loaded is tried again */
#define DELIVER_DNS_TCP       8u     /* TCP exchanges (truncated answers) at once */
#define DELIVER_ROUTE_FAIL_MS 30000u /* a destination whose hosts all failed waits this long */

struct deliver;

/* What the engine borrows from its worker (all outlive it). */
struct deliver_ctx {
    struct io_uring *ring;
    const struct cfg *cfg;
    struct q *q;
    unsigned worker, nworkers;
    struct rm_pool *pool;    /* the worker's body chunk pool */
    struct q_idgen *idgen;   /* ids for DSNs */
    struct log_buf *dlog;    /* delivery log (JSON lines) */
    struct log_buf *diag;    /* diagnostics */
    const uint64_t *now_ms;  /* the worker's unix ms */
    const uint64_t *mono_ms; /* the worker's monotonic ms */
};

/* Creates the engine (resolver, slots, schedule). Main thread, before the
 * worker starts. Returns 0 or a negative code, with err filled. */
RM_MUST_CHECK int deliver_new(struct deliver **out, const struct deliver_ctx *ctx, char *err,
                              size_t err_len);
void deliver_free(struct deliver *d); /* deliver_free(NULL) does nothing */

/* Worker thread, once its ring is up: opens the DNS sockets and loads the
 * first window of the schedule. Returns 0 or -errno. */
RM_MUST_CHECK int deliver_start(struct deliver *d);

/* The worker's tick: refills the schedule, starts due messages, runs
 * timeouts of connections and DNS, closes idle connections. */
void deliver_tick(struct deliver *d);

/* A completion of kind UD_OUT_* or UD_DNS_*. */
void deliver_cqe(struct deliver *d, uint64_t user_data, int res, uint32_t flags);

/* A store/update/delete request of the engine came back (tag UD_TAG_DELIVER). */
void deliver_req_done(struct deliver *d, struct q_req *r);

/* Reception stored a new message (owned by this worker): schedule it. */
void deliver_received(struct deliver *d, const struct q_id *id, uint64_t due_ms);

/* Shutdown: start nothing new; connections finish their transaction and quit. */
void deliver_drain(struct deliver *d);
/* Shutdown's end: cut every connection (messages stay queued as they were). */
void deliver_force(struct deliver *d);
/* True when nothing is in flight (no connection, DNS send or queue request). */
bool deliver_idle(const struct deliver *d);

#endif /* DELIVER_H */
