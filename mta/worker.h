/* mta/worker.h: the thread-per-core runtime.
 *
 * One worker per CPU, pinned, each with its own io_uring, its own
 * SO_REUSEPORT listening socket per listener address (multishot accept), its
 * connection slots (fixed rx/tx buffers, the SMTP session, a store request),
 * its body chunk pool and its log buffers. Nothing in the loop blocks or takes
 * a lock: sockets, timers, queue completions (an eventfd) and log writes are
 * all io_uring operations. The main thread talks to a worker only through
 * worker_shared.stop_phase plus a wake eventfd.
 *
 * Buffer ownership: a slot's rx and tx belong to the slot for its whole life;
 * io_uring borrows rx's free space during a recv and tx's pending bytes during
 * a send (one of each at most), the session (smtpd) appends replies to tx,
 * and body chunks are lent to the queue writer from store submission until
 * its completion. A slot is reused (its generation bumped) only when no
 * operation and no store refers to it any more.
 */
#ifndef WORKER_H
#define WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../queue/q.h"
#include "cfg.h"

#define WORKER_RX_BYTES       16384u /* >= SMTPD_COMMAND_LINE_MAX_MAX + room to pipeline */
#define WORKER_TX_BYTES       8192u  /* >= 2 * SMTPD_TX_RESERVE */
#define WORKER_RING_ENTRIES   4096u
#define WORKER_CQ_MAX         65536u /* the kernel's limit (IORING_MAX_CQ_ENTRIES) */
#define WORKER_SLOTS_MAX      16000u /* per worker: 4 CQEs each must fit WORKER_CQ_MAX */
#define WORKER_TICK_MS        250u   /* timer resolution for idle timeouts and grace */
#define WORKER_CLOSE_FORCE_MS 10000u /* a closing peer that does not read is cut off */
#define WORKER_IPTAB_BUCKETS  4096u  /* per-IP session counters, by keyed hash */

enum worker_stop { WORKER_RUN = 0, WORKER_DRAIN = 1, WORKER_FORCE = 2 };

/* Counters of one worker: written by its thread only (relaxed load + store),
 * read by anyone with relaxed loads (STYLE.md "Concurrency"). */
struct worker_stats {
    _Atomic uint64_t accepted;      /* connections accepted */
    _Atomic uint64_t refused;       /* connections refused (limits, shutdown) */
    _Atomic uint64_t sessions;      /* sessions open now */
    _Atomic uint64_t messages;      /* messages stored (250 sent) */
    _Atomic uint64_t message_bytes; /* their bytes */
    _Atomic uint64_t store_failed;  /* stores that failed (452/451 sent) */
    _Atomic uint64_t log_dropped;   /* log lines dropped on a full buffer */
} __attribute__((aligned(RM_CACHELINE)));

/* Per-IP session counts of one worker; only that worker writes its table;
 * the limit check sums every worker's bucket with relaxed loads, so it can be
 * off by the sessions accepted concurrently on other workers (a few). */
struct worker_iptab {
    _Atomic uint32_t count[WORKER_IPTAB_BUCKETS];
} __attribute__((aligned(RM_CACHELINE)));

/* State shared by all workers: read-only after start, except stop_phase and
 * the per-worker tables/counters above (each with a single writer). */
struct worker_shared {
    const struct cfg *cfg;
    struct q *q;
    unsigned nworkers;
    int delivery_log_fd;         /* -1 for "none" */
    uint64_t ip_key;             /* keyed hash of client IPs, from getrandom */
    struct worker_iptab *iptabs; /* nworkers tables */
    struct worker_stats *stats;  /* nworkers blocks */
    _Atomic int stop_phase; /* enum worker_stop; main stores (release), workers load (acquire) */
};

struct worker;

/* A queued message found at start-up, handed to a worker (delivery comes in
 * the delivery issue; until then the worker only keeps them). */
struct worker_recovered {
    struct q_id id;
    uint64_t due_ms;
};

/* Opens every listening socket: per listener address, nworkers SO_REUSEPORT
 * sockets (first probing that no other process holds the port). fds[] gets
 * nworkers * naddrs entries, worker-major. Returns 0 or -1 with err. Main thread. */
RM_MUST_CHECK int worker_listen_open(const struct cfg *cfg, unsigned nworkers, int *fds,
                                     size_t fds_cap, char *err, size_t err_len);
/* Total listener addresses in cfg. */
unsigned worker_listen_count(const struct cfg *cfg);

/* Creates worker idx (memory, pools) owning listening fds[0..nfds), which map
 * in order to the cfg's listener addresses. Returns 0 or -errno. Main thread. */
RM_MUST_CHECK int worker_new(struct worker **out, struct worker_shared *sh, unsigned idx,
                             const int *fds, unsigned nfds);
/* Hands over recovered messages (the array becomes the worker's). Before start. */
void worker_give_recovered(struct worker *w, struct worker_recovered *rec, size_t n);
/* Starts the thread, pinned to cpu; waits until its io_uring is up. Returns 0
 * or a negative errno from the thread's set-up (-ENOSYS/-EPERM: io_uring is
 * blocked, e.g. by a container's seccomp profile). */
RM_MUST_CHECK int worker_start(struct worker *w, int cpu);
/* Wakes the worker to look at stop_phase. Any thread. */
void worker_wake(struct worker *w);
/* True once the thread has left its loop. Any thread. */
bool worker_done(struct worker *w);
void worker_join(struct worker *w);
void worker_free(struct worker *w); /* worker_free(NULL) does nothing */

#endif /* WORKER_H */
