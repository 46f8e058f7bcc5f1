/* queue/q_internal.h: what q.c and writer.c share; nothing outside queue/ includes it.
 *
 * struct q is the handle of q.h. q.c owns the environment, the database handles and the
 * readers; writer.c owns the per-worker rings, the writer thread and its statistics.
 */
#ifndef Q_INTERNAL_H
#define Q_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "q.h"

/* Limits, each with its reason. */
#define Q_DBS_MAX         8  /* msg, env, sched, and room for supp and events (DESIGN.md) */
#define Q_OPEN_ENVS_MAX   16 /* queues one process may have open at once (tests open several) */
#define Q_SCHED_KEY_BYTES 24 /* 8-byte big-endian due_ms, then the 16-byte id */
#define Q_ENV_FIXED_BYTES 38 /* version .. rcpt_count, before the strings (q.c) */
#define Q_RCPT_MIN_BYTES  20 /* smallest encoded recipient: 8 bytes of ints, 3 empty strings */
/* Read txns open at once in all processes: MDB_NOTLS gives each txn, not each thread, a
 * reader slot (64 bytes each in lock.mdb). LMDB's default is 126. */
#define Q_READERS_MAX 1024

static_assert((Q_RING_CAP & (Q_RING_CAP - 1)) == 0, "ring indices wrap with a mask");
static_assert(Q_RING_CAP <= (1u << 30), "free-running uint32_t indices stay unambiguous");
static_assert(Q_WORKERS_MAX <= UINT16_MAX, "a worker index fits the writer's uint16_t tags");
static_assert(Q_BATCH_MAX <= UINT32_MAX, "q_req.batch holds a batch size");

enum q_db { Q_DB_MSG = 0, Q_DB_ENV = 1, Q_DB_SCHED = 2, Q_DB_COUNT = 3 };

/* A single-producer single-consumer ring of request pointers. Indices run free and are
 * masked on use; tail - head is the fill. Only the indices are shared between the two
 * threads: a slot (and the struct q_req it points to) changes hands through the
 * release store of tail by the producer and the acquire load of tail by the consumer.
 * head is published with a release store too, but producers read it only in debug
 * asserts: the in-flight limit of q_submit already guarantees that neither ring of a
 * worker can hold more than Q_RING_CAP entries. */
struct q_ring {
    alignas(RM_CACHELINE) _Atomic uint32_t tail; /* written by the producer only */
    alignas(RM_CACHELINE) _Atomic uint32_t head; /* written by the consumer only */
    alignas(RM_CACHELINE) struct q_req *slot[Q_RING_CAP];
};

/* One worker's side of the writer: its two rings and its eventfd. */
struct q_wring {
    struct q_ring sq; /* requests: the worker produces, the writer consumes */
    struct q_ring cq; /* completions: the writer produces, the worker consumes */
    /* Worker-private, touched only by worker w's thread (q_submit, q_reap): */
    alignas(RM_CACHELINE) uint32_t in_flight; /* submitted and not yet reaped, <= Q_RING_CAP */
    /* Writer-private, touched only by the writer thread (and by q_writer_stop after the
     * join): completions written to cq.slot but not yet published through cq.tail. */
    alignas(RM_CACHELINE) uint32_t cq_tail_local;
    int efd; /* owned: eventfd(EFD_NONBLOCK|EFD_CLOEXEC), q_worker_fd */
};

/* The statistics of q.h as single-writer counters: the writer thread does a relaxed load
 * and store (no locked RMW), any thread a relaxed load (STYLE.md "Concurrency"). */
struct q_stat_counters {
    _Atomic uint64_t commits;
    _Atomic uint64_t requests;
    _Atomic uint64_t failed;
    _Atomic uint64_t batch_max;
    _Atomic uint64_t commit_ns_sum;
    _Atomic uint64_t commit_ns_max;
};

/* The padding is the point: the flags every submitter reads, the flag the writer writes
 * around its sleep, and the counters get cache lines of their own. */
struct q { /* NOLINT(clang-analyzer-optin.performance.Padding) */
    /* Set by q_open, constant until q_close; read by any thread. */
    MDB_env *env;            /* owned */
    MDB_dbi dbi[Q_DB_COUNT]; /* valid where dbi_ok */
    bool dbi_ok[Q_DB_COUNT]; /* false only in a RDONLY open of a queue that lacks it */
    unsigned flags;          /* Q_OPEN_* */
    unsigned workers;        /* rings in wr[] */
    dev_t dir_dev;           /* the directory, for the open-once registry (q.c) */
    ino_t dir_ino;
    struct q_wring *wr;     /* owned: [workers] in an anonymous mapping, NULL when RDONLY */
    size_t wr_bytes;        /* its length */
    int wake_fd;            /* owned: the writer's eventfd (blocking), -1 when RDONLY */
    struct q_req **batch;   /* owned: [Q_BATCH_MAX], writer thread only */
    uint16_t *batch_worker; /* owned: [Q_BATCH_MAX], the ring each batch[i] came from */
    uint8_t *wake;          /* owned: [workers], writer thread only: got completions */
    unsigned rr_next;       /* writer thread only: the ring a batch starts with */
    pthread_t thread;       /* valid while running */
    bool running;           /* main thread only: the writer thread exists */

    /* Read by every q_submit, written by the main thread at stop. */
    alignas(RM_CACHELINE) _Atomic bool accepting; /* false once q_writer_stop began */
    _Atomic bool stopping;                        /* tells the writer to drain and exit */
    /* Written by the writer around its sleep, read by every q_submit (writer.c explains). */
    alignas(RM_CACHELINE) _Atomic bool sleeping;
    alignas(RM_CACHELINE) struct q_stat_counters st;
};

/* Maps an LMDB return code to ours: MDB_MAP_FULL, MDB_NOTFOUND, and Q_ERR_IO for the rest. */
int q_lmdb_err(int rc);
/* The sched key of (due_ms, id). */
void q_sched_key(uint8_t key[Q_SCHED_KEY_BYTES], uint64_t due_ms, const struct q_id *id);

/* writer.c: the rings, made by q_open (writable) and freed by q_close. */
RM_MUST_CHECK int q_writer_init(struct q *q);
void q_writer_fini(struct q *q);

#endif /* Q_INTERNAL_H */
