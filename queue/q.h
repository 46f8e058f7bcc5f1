/* queue/q.h: the durable message queue (LMDB) and its single writer thread.
 *
 * One LMDB environment in queue_dir (data.mdb, lock.mdb) with named databases:
 *   msg    id (16 bytes) -> message bytes as stored (Received: line first)
 *   env    id            -> envelope, a small versioned binary record (q_env_encode)
 *   sched  due_ms (8 bytes big-endian) || id -> empty: the retry index, in due order
 *
 * Writes: only the writer thread (q_writer_start) opens write transactions.
 * Workers hand it requests through one lock-free SPSC ring per worker
 * (q_submit); the writer drains every ring into ONE write transaction and
 * commits it with one fsync (group commit), then returns each request through
 * the worker's completion ring (q_reap) and wakes the worker through its
 * eventfd (q_worker_fd). Each request is applied in a nested transaction, so
 * one that fails (Q_ERR_MAP_FULL, ...) leaves nothing half-written and does
 * not fail the others in its batch. A request completed with status 0 is
 * durable: its transaction committed with the default LMDB sync (never
 * MDB_NOSYNC; see ../shared/TESTING.md).
 *
 * Reads: any thread may open short read transactions (q_read_begin); bytes
 * read are borrowed straight from the map until q_read_end. The environment is
 * opened with MDB_NOTLS so a read handle is not tied to a thread, but one read
 * handle is used by one thread at a time.
 *
 * queue/ never logs, never builds SMTP replies and never calls mta/, dns/ or tls/;
 * mta/ maps the Q_ERR_* codes to replies in one place.
 */
#ifndef Q_H
#define Q_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../common/rm_pool.h"

/* Limits, each with its reason. */
#define Q_RING_CAP        4096u        /* requests in flight per worker; a power of two */
#define Q_BATCH_MAX       4096u        /* requests in one write txn: bounds txn size and latency */
#define Q_BATCH_BYTES_MAX (256u << 20) /* message bytes in one write txn */
#define Q_WORKERS_MAX     256u         /* worker rings the writer polls */
#define Q_RCPT_MAX        100000u      /* recipients in one envelope record */
#define Q_ENV_BYTES_MAX   (64u << 20)  /* one encoded envelope */
#define Q_MAP_SIZE_MIN    (1ull << 20) /* smallest queue_map_size accepted */
#define Q_ID_STR_LEN      26           /* 128 bits in base32, no padding */
#define Q_ENV_VERSION     1

/* Errors: negative. Other negative values are -errno. */
enum q_err {
    Q_ERR_MAP_FULL = -10001,  /* queue_map_size reached: refuse new mail (452 4.3.1) */
    Q_ERR_IO = -10002,        /* LMDB or disk error */
    Q_ERR_NOT_FOUND = -10003, /* no such id */
    Q_ERR_CORRUPT = -10004,   /* a record that does not decode */
    Q_ERR_RANGE = -10005,     /* a caller-given capacity is too small */
    Q_ERR_STOPPED = -10006,   /* the writer is stopping: no new requests */
};

/* Names a Q_ERR_* or -errno code; static string. */
const char *q_strerror(int err);

/* ---- message ids ---------------------------------------------------------- */

/* 128-bit, time-ordered: 48 bits of unix ms, 16 bits of worker index, 32 bits
 * of a per-worker sequence and 32 random bits. Byte order is big-endian, so
 * ids sort by arrival time in LMDB. Printed as 26 chars of base32hex (RFC 4648
 * section 7, lower case: 0-9 a-v), which sort the same way as text. */
struct q_id {
    uint8_t b[16];
};

/* Per-worker id state; owned and used by one thread. */
struct q_idgen {
    uint16_t worker;
    uint32_t seq;
    uint64_t rnd; /* xorshift state, seeded at start-up from getrandom() */
};

void q_idgen_init(struct q_idgen *g, uint16_t worker, uint64_t seed);
void q_id_make(struct q_idgen *g, uint64_t now_ms, struct q_id *out);
/* Writes Q_ID_STR_LEN chars and a NUL. */
void q_id_format(const struct q_id *id, char out[Q_ID_STR_LEN + 1]);
/* Parses exactly Q_ID_STR_LEN base32 chars (either case). Returns 0 or -EINVAL. */
RM_MUST_CHECK int q_id_parse(const char *s, size_t len, struct q_id *out);
/* Arrival time in unix ms, from the id. */
uint64_t q_id_time_ms(const struct q_id *id);

/* ---- envelope ------------------------------------------------------------- */

enum q_rcpt_state {
    Q_RCPT_PENDING = 0,   /* not yet delivered */
    Q_RCPT_DELIVERED = 1, /* 2xx from the destination */
    Q_RCPT_FAILED = 2,    /* permanent failure; DSN sent if asked */
    Q_RCPT_EXPIRED = 3,   /* max queue lifetime reached */
};

/* RCPT NOTIFY= bits (RFC 3461 4.1); 0 means "not given" (default FAILURE,DELAY). */
#define Q_NOTIFY_NEVER   0x01u
#define Q_NOTIFY_SUCCESS 0x02u
#define Q_NOTIFY_FAILURE 0x04u
#define Q_NOTIFY_DELAY   0x08u

/* MAIL RET= (RFC 3461 4.3). */
enum q_ret { Q_RET_UNSPEC = 0, Q_RET_FULL = 1, Q_RET_HDRS = 2 };

/* Envelope flags. */
#define Q_ENV_SMTPUTF8 0x01u /* MAIL ... SMTPUTF8 was given (RFC 6531) */
#define Q_ENV_8BITMIME 0x02u /* MAIL ... BODY=8BITMIME was given (RFC 6152) */
#define Q_ENV_8BIT     0x04u /* the body holds octets >= 0x80 (declared or not) */
#define Q_ENV_BDAT     0x08u /* received with BDAT (RFC 3030) */

/* Spans are borrowed: from the session's arena when storing, from the
 * decoded record (so from the map, until q_read_end) when reading. */
struct q_rcpt {
    struct rm_span addr;       /* forward-path mailbox, without <>, as received */
    struct rm_span orcpt;      /* ORCPT= value as received ("rfc822;" xtext), or empty */
    struct rm_span last_reply; /* last response text for this recipient, or empty */
    uint32_t attempts;         /* delivery attempts so far */
    uint16_t last_code;        /* last SMTP reply code, 0 if none */
    uint8_t notify;            /* Q_NOTIFY_* bits */
    uint8_t state;             /* enum q_rcpt_state */
};

struct q_env {
    struct rm_span sender;    /* reverse-path mailbox without <>; empty for <> */
    struct rm_span envid;     /* ENVID= xtext as received, or empty */
    struct rm_span auth_user; /* authenticated user, or empty */
    struct rm_span client;    /* client address as text, e.g. "127.0.0.1" */
    struct rm_span helo;      /* EHLO/HELO argument */
    struct rm_span listener;  /* name of the [listen NAME] section */
    uint64_t arrival_ms;      /* unix ms when the message was accepted */
    uint64_t next_attempt_ms; /* unix ms of the next delivery attempt (its sched key) */
    uint64_t size;            /* bytes in msg */
    uint32_t flags;           /* Q_ENV_* */
    uint32_t attempts;        /* delivery attempts of the message */
    uint8_t ret;              /* enum q_ret */
    uint32_t rcpt_count;      /* entries in rcpts, 1..Q_RCPT_MAX */
    struct q_rcpt *rcpts;     /* borrowed */
};

/* Bytes q_env_encode will write. */
size_t q_env_encoded_size(const struct q_env *e);
/* Encodes e into out[0..cap). Returns bytes written (>0), or Q_ERR_RANGE. */
RM_MUST_CHECK int64_t q_env_encode(const struct q_env *e, uint8_t *out, size_t cap);
/* Decodes a record. Spans in *e point into in[]; recipients are written to
 * rcpts[0..rcpt_cap) and e->rcpts = rcpts. Returns 0, Q_ERR_CORRUPT (bad
 * record, unknown version) or Q_ERR_RANGE (more recipients than rcpt_cap). */
RM_MUST_CHECK int q_env_decode(struct q_env *e, const uint8_t *in, size_t len, struct q_rcpt *rcpts,
                               size_t rcpt_cap);

/* ---- the environment ------------------------------------------------------ */

struct q; /* opaque */

#define Q_OPEN_RDONLY 0x01u /* readers only (queue inspection while the daemon runs) */

/* Opens (creating dir's files if needed, not dir itself) the queue in dir with
 * a map of map_size bytes, with completion rings for `workers` workers
 * (0 with Q_OPEN_RDONLY). Returns 0 and *out, or a negative code. Main thread,
 * at start-up. */
RM_MUST_CHECK int q_open(struct q **out, const char *dir, uint64_t map_size, unsigned workers,
                         unsigned flags);
/* Closes; the writer must be stopped. q_close(NULL) does nothing. */
void q_close(struct q *q);

/* ---- the writer ----------------------------------------------------------- */

enum q_op {
    Q_OP_STORE = 1,  /* put msg, env and sched (env->next_attempt_ms) for a new id */
    Q_OP_UPDATE = 2, /* replace env; move the sched entry from old_due_ms to env->next_attempt_ms */
    Q_OP_DELETE = 3, /* remove msg, env and the sched entry at old_due_ms */
};

/* A request: caller memory, lent to the writer from q_submit until q_reap
 * returns it. The caller must not touch it, nor what it points to (env and
 * its strings, body chain), in between. */
struct q_req {
    enum q_op op;
    struct q_id id;
    const struct q_env *env;     /* STORE, UPDATE */
    const struct rm_chunk *body; /* STORE: message bytes, a chunk chain */
    uint64_t old_due_ms;         /* UPDATE, DELETE: the current sched key's time */
    uint64_t tag;                /* the caller's, untouched (e.g. slot + generation) */
    /* Written by the writer before completion: */
    int status;            /* 0, Q_ERR_MAP_FULL, Q_ERR_IO, Q_ERR_NOT_FOUND, Q_ERR_STOPPED,
                            * Q_ERR_RANGE (envelope over Q_ENV_BYTES_MAX) */
    uint64_t committed_ns; /* CLOCK_MONOTONIC ns when its txn committed */
    uint32_t batch;        /* requests in the txn that held it (observability) */
};

/* Starts the writer thread. Returns 0 or -errno. Main thread. */
RM_MUST_CHECK int q_writer_start(struct q *q);
/* Stops taking requests, commits everything already submitted, completes it,
 * and joins the thread. Call after the workers have stopped submitting.
 * Main thread. */
void q_writer_stop(struct q *q);

/* Hands r to the writer. Only worker `worker`'s thread calls this for its
 * ring. Returns 0, -EAGAIN (ring full: try again after a q_reap) or
 * Q_ERR_STOPPED. Never blocks: the writer is woken through an eventfd. */
RM_MUST_CHECK int q_submit(struct q *q, unsigned worker, struct q_req *r);
/* Takes up to max completed requests of this worker into out[]; returns how
 * many. Only worker `worker`'s thread calls this. */
size_t q_reap(struct q *q, unsigned worker, struct q_req **out, size_t max);
/* An eventfd (EFD_NONBLOCK) that becomes readable when worker `worker` has
 * completions; the worker reads it (8 bytes) and then calls q_reap until 0. */
int q_worker_fd(const struct q *q, unsigned worker);

/* Writer statistics, readable from any thread (relaxed loads). */
struct q_stats {
    uint64_t commits;       /* write transactions committed */
    uint64_t requests;      /* requests completed */
    uint64_t failed;        /* requests completed with a non-zero status */
    uint64_t batch_max;     /* largest batch */
    uint64_t commit_ns_sum; /* time spent in mdb_txn_commit */
    uint64_t commit_ns_max;
};
void q_stats_get(const struct q *q, struct q_stats *out);

/* ---- readers -------------------------------------------------------------- */

struct q_read; /* opaque: one read transaction */

RM_MUST_CHECK int q_read_begin(struct q *q, struct q_read **out);
void q_read_end(struct q_read *r); /* q_read_end(NULL) does nothing */
/* Message bytes, borrowed from the map until q_read_end. Returns 0 or Q_ERR_NOT_FOUND/IO. */
RM_MUST_CHECK int q_read_msg(struct q_read *r, const struct q_id *id, struct rm_span *out);
/* Raw envelope record (decode it with q_env_decode), borrowed likewise. */
RM_MUST_CHECK int q_read_env(struct q_read *r, const struct q_id *id, struct rm_span *out);

/* Walks the sched index in due order, calling cb for each entry; stops early
 * when cb returns non-zero and returns that value. Returns 0 at the end, or
 * a negative code. Opens its own read transaction. */
typedef int q_sched_cb(void *ctx, const struct q_id *id, uint64_t due_ms);
RM_MUST_CHECK int q_scan_sched(struct q *q, q_sched_cb *cb, void *ctx);
/* The same, starting at the first entry due at or after from_due_ms: the
 * scheduler loads only what is due soon, a window at a time. */
RM_MUST_CHECK int q_scan_sched_from(struct q *q, uint64_t from_due_ms, q_sched_cb *cb, void *ctx);

/* Counts of the env database (messages) and the map in use. */
struct q_info {
    uint64_t messages;
    uint64_t map_size; /* bytes */
    uint64_t map_used; /* bytes: last used page * page size */
};
RM_MUST_CHECK int q_info_get(struct q *q, struct q_info *out);

#endif /* Q_H */
