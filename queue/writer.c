/* queue/writer.c: the queue writer thread, the per-worker rings and group commit (see q.h).
 *
 * Each worker has a request ring (it produces, the writer consumes) and a completion ring
 * (the writer produces, it consumes): two SPSC rings of struct q_req pointers, so no
 * compare-and-swap anywhere. A worker may have at most Q_RING_CAP requests in flight
 * (submitted and not reaped), which bounds both rings: neither producer ever finds its
 * ring full.
 *
 * The writer takes whatever every ring holds (up to Q_BATCH_MAX requests and
 * Q_BATCH_BYTES_MAX body bytes), applies each request in a nested txn of ONE write txn,
 * commits it (one fsync for the batch, with LMDB's default sync), and only then fills in
 * each request's status and hands it back.
 *
 * Waking the writer without a syscall per request: the writer sleeps in a blocking read of
 * its own eventfd. Before that it stores `sleeping = true` and then looks at every ring's
 * tail once more. q_submit stores its ring's tail and then loads `sleeping`; it writes the
 * eventfd only if the writer says it sleeps. Those four accesses are seq_cst, so they fall
 * into one total order (Dekker): if the writer's last look misses the new tail, that look
 * precedes the tail store, so the submitter's later load sees `sleeping` (or a later
 * store, made by a submitter that wakes the writer) and writes the eventfd. A busy writer
 * costs the submitters no syscall: it finds their requests on its next pass.
 * XXX: seq_cst operations rather than seq_cst fences beside relaxed/release ones: the same
 * one full barrier per submit on x86 (xchg instead of mov + mfence), but ThreadSanitizer
 * models them, while GCC refuses atomic_thread_fence under -fsanitize=thread at -O1 and
 * above (-Wtsan, an error with -Werror).
 *
 * Waking a worker: after a batch, the writer publishes the worker's completions and then
 * always writes the worker's eventfd (one write per worker per batch, not per request). A
 * worker must read its eventfd (or have an io_uring read on it complete) BEFORE it calls
 * q_reap until that returns 0: every completion published before the eventfd write it
 * consumed is then reaped, and a completion published later writes the eventfd again.
 */
#include "q.h"
/* q.h is this file's own header, so it comes first (STYLE.md); this line keeps it there. */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "q_internal.h"

#define Q_RING_MASK (Q_RING_CAP - 1u)

static uint64_t q_now_ns(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void q_efd_signal(int fd)
{
    uint64_t one = 1;
    /* write() on an eventfd fails only when the counter would pass 2^64-2, and then the fd
     * is readable anyway: nothing is lost. */
    ssize_t n = write(fd, &one, sizeof(one));
    (void)n;
}

/* Single-writer counters: relaxed load + store, no locked RMW (STYLE.md "Concurrency"). */
static void q_stat_add(_Atomic uint64_t *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static void q_stat_max(_Atomic uint64_t *c, uint64_t v)
{
    if (v > atomic_load_explicit(c, memory_order_relaxed))
        atomic_store_explicit(c, v, memory_order_relaxed);
}

/* ---- set-up ---------------------------------------------------------------- */

int q_writer_init(struct q *q)
{
    int rc;
    q->wake_fd = eventfd(0, EFD_CLOEXEC); /* blocking: the writer sleeps in read() */
    if (q->wake_fd < 0)
        return -errno;
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
    q->batch = calloc(Q_BATCH_MAX, sizeof(q->batch[0]));
    q->batch_worker = calloc(Q_BATCH_MAX, sizeof(q->batch_worker[0]));
    q->wake = calloc(q->workers + 1u, sizeof(q->wake[0]));
    /* An anonymous mapping: zeroed, page (so cache line) aligned, and a ring's pages cost
     * memory only once used. */
    q->wr_bytes = sizeof(struct q_wring) * (q->workers + 1u);
    void *m = mmap(NULL, q->wr_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    q->wr = m == MAP_FAILED ? NULL : m;
    if (q->batch == NULL || q->batch_worker == NULL || q->wake == NULL || q->wr == NULL) {
        rc = -ENOMEM;
        goto out_free;
    }
    for (unsigned i = 0; i < q->workers; i++)
        q->wr[i].efd = -1;
    for (unsigned i = 0; i < q->workers; i++) {
        q->wr[i].efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (q->wr[i].efd < 0) {
            rc = -errno;
            goto out_close;
        }
    }
    atomic_init(&q->accepting, true);
    atomic_init(&q->stopping, false);
    atomic_init(&q->sleeping, false);
    return 0;
out_close:
    for (unsigned i = 0; i < q->workers; i++)
        if (q->wr[i].efd >= 0)
            close(q->wr[i].efd);
out_free:
    if (q->wr != NULL)
        munmap(q->wr, q->wr_bytes);
    free(q->wake);
    free(q->batch_worker);
    free(q->batch);
    close(q->wake_fd);
    q->wr = NULL;
    q->wake = NULL;
    q->batch_worker = NULL;
    q->batch = NULL;
    q->wake_fd = -1;
    return rc;
}

void q_writer_fini(struct q *q)
{
    for (unsigned i = 0; i < q->workers; i++) {
        struct q_wring *w = &q->wr[i];
        /* A request submitted after q_writer_stop (against q.h) would be lost here. */
        RM_ASSERT(atomic_load_explicit(&w->sq.tail, memory_order_acquire) ==
                  atomic_load_explicit(&w->sq.head, memory_order_relaxed));
        close(w->efd);
    }
    munmap(q->wr, q->wr_bytes);
    free(q->wake);
    free(q->batch_worker);
    free(q->batch);
    close(q->wake_fd);
}

/* ---- the worker side ------------------------------------------------------- */

RM_UNUSED static uint64_t q_chain_bytes(const struct rm_chunk *c)
{
    uint64_t n = 0;
    for (; c != NULL; c = c->next)
        n += c->len;
    return n;
}

/* Checks what the writer will rely on, here on the submitting worker's thread, so that a
 * bad request crashes its culprit and not the writer. */
static void q_req_check(const struct q_req *r)
{
    RM_ASSERT(r->op == Q_OP_STORE || r->op == Q_OP_UPDATE || r->op == Q_OP_DELETE);
    if (r->op == Q_OP_DELETE)
        return;
    RM_ASSERT(r->env != NULL);
    RM_ASSERT(r->env->rcpt_count >= 1);
    RM_ASSERT(r->env->rcpt_count <= Q_RCPT_MAX);
    RM_ASSERT(r->env->rcpts != NULL);
    if (r->op == Q_OP_STORE) {
        RM_ASSERT(r->body != NULL || r->env->size == 0);
        RM_ASSERT_DEBUG(q_chain_bytes(r->body) == r->env->size);
    }
}

int q_submit(struct q *q, unsigned worker, struct q_req *r)
{
    RM_ASSERT(q->wr != NULL);
    RM_ASSERT(worker < q->workers);
    RM_ASSERT(r != NULL);
    q_req_check(r);
    struct q_wring *w = &q->wr[worker];
    /* Relaxed: q.h has workers stop submitting before q_writer_stop, which orders the two;
     * this load only turns a late call into Q_ERR_STOPPED. */
    if (!atomic_load_explicit(&q->accepting, memory_order_relaxed))
        return Q_ERR_STOPPED;
    if (w->in_flight == Q_RING_CAP)
        return -EAGAIN;
    r->status = 0;
    r->committed_ns = 0;
    r->batch = 0;
    uint32_t tail = atomic_load_explicit(&w->sq.tail, memory_order_relaxed); /* our own */
    /* Acquire: pairs with the writer's release of head in q_collect (slot read before reuse). */
    RM_ASSERT_DEBUG(tail - atomic_load_explicit(&w->sq.head, memory_order_acquire) < Q_RING_CAP);
    w->sq.slot[tail & Q_RING_MASK] = r;
    /* Release (as part of seq_cst): publishes the slot, *r and all it points to (env,
     * body); pairs with the acquire load of tail in q_collect. seq_cst: with the load of
     * sleeping below, and the store of sleeping and the loads of tail in q_writer_sleep,
     * this is the wake-up protocol at the top of this file. */
    atomic_store_explicit(&w->sq.tail, tail + 1u, memory_order_seq_cst);
    w->in_flight++;
    /* seq_cst: see above. The exchange lets one submitter, not all of them, make the
     * syscall while the writer sleeps. */
    if (atomic_load_explicit(&q->sleeping, memory_order_seq_cst) &&
        atomic_exchange_explicit(&q->sleeping, false, memory_order_seq_cst))
        q_efd_signal(q->wake_fd);
    return 0;
}

size_t q_reap(struct q *q, unsigned worker, struct q_req **out, size_t max)
{
    RM_ASSERT(q->wr != NULL);
    RM_ASSERT(worker < q->workers);
    RM_ASSERT(out != NULL || max == 0);
    struct q_wring *w = &q->wr[worker];
    uint32_t head = atomic_load_explicit(&w->cq.head, memory_order_relaxed); /* our own */
    /* Acquire: pairs with the release of tail in q_publish: the slots and the status,
     * committed_ns and batch the writer wrote into each request are visible. */
    uint32_t tail = atomic_load_explicit(&w->cq.tail, memory_order_acquire);
    uint32_t avail = tail - head;
    RM_ASSERT(avail <= w->in_flight);
    size_t n = RM_MIN((size_t)avail, max);
    for (size_t i = 0; i < n; i++)
        out[i] = w->cq.slot[(head + (uint32_t)i) & Q_RING_MASK];
    /* Release: the slots are read before the writer may reuse them; pairs with the acquire
     * load of head in q_push_completion's debug assert. */
    atomic_store_explicit(&w->cq.head, head + (uint32_t)n, memory_order_release);
    w->in_flight -= (uint32_t)n;
    return n;
}

int q_worker_fd(const struct q *q, unsigned worker)
{
    RM_ASSERT(q->wr != NULL);
    RM_ASSERT(worker < q->workers);
    return q->wr[worker].efd;
}

void q_stats_get(const struct q *q, struct q_stats *out)
{
    /* Relaxed loads of single-writer counters: each value is exact, the set is not a
     * snapshot. */
    out->commits = atomic_load_explicit(&q->st.commits, memory_order_relaxed);
    out->requests = atomic_load_explicit(&q->st.requests, memory_order_relaxed);
    out->failed = atomic_load_explicit(&q->st.failed, memory_order_relaxed);
    out->batch_max = atomic_load_explicit(&q->st.batch_max, memory_order_relaxed);
    out->commit_ns_sum = atomic_load_explicit(&q->st.commit_ns_sum, memory_order_relaxed);
    out->commit_ns_max = atomic_load_explicit(&q->st.commit_ns_max, memory_order_relaxed);
}

/* ---- the writer: collecting and completing -------------------------------- */

/* Takes requests from the rings into q->batch, starting one ring further each time so that
 * no worker is always first. Returns how many. */
static size_t q_collect(struct q *q)
{
    size_t n = 0;
    uint64_t bytes = 0;
    unsigned start = q->rr_next;
    q->rr_next = q->workers > 0 ? (start + 1u) % q->workers : 0;
    for (unsigned k = 0; k < q->workers; k++) {
        unsigned wi = (start + k) % q->workers;
        struct q_ring *ring = &q->wr[wi].sq;
        uint32_t head = atomic_load_explicit(&ring->head, memory_order_relaxed); /* our own */
        /* Acquire: pairs with the release of tail in q_submit: the slots, the requests and
         * their env and body are visible. */
        uint32_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
        RM_ASSERT(tail - head <= Q_RING_CAP);
        uint32_t taken = head;
        bool full = false;
        for (; taken != tail; taken++) {
            struct q_req *r = ring->slot[taken & Q_RING_MASK];
            uint64_t sz = r->op == Q_OP_STORE ? r->env->size : 0;
            /* A request bigger than the byte limit still goes, alone. */
            full = n == Q_BATCH_MAX ||
                   (n > 0 && (sz > Q_BATCH_BYTES_MAX || bytes + sz > Q_BATCH_BYTES_MAX));
            if (full)
                break;
            bytes += sz;
            q->batch[n] = r;
            q->batch_worker[n] = (uint16_t)wi;
            n++;
        }
        /* Release: our reads of the slots happen before the worker overwrites them; pairs
         * with the acquire in q_submit's debug assert. */
        if (taken != head)
            atomic_store_explicit(&ring->head, taken, memory_order_release);
        if (full)
            break;
    }
    return n;
}

/* Writes a finished request into its worker's completion ring, unpublished. */
static void q_push_completion(struct q *q, unsigned wi, struct q_req *r)
{
    struct q_wring *w = &q->wr[wi];
    /* Acquire: pairs with the release of head in q_reap. The in-flight limit makes this
     * always true: r itself is in flight and not yet in the ring. */
    RM_ASSERT_DEBUG(w->cq_tail_local - atomic_load_explicit(&w->cq.head, memory_order_acquire) <
                    Q_RING_CAP);
    w->cq.slot[w->cq_tail_local & Q_RING_MASK] = r;
    w->cq_tail_local++;
    q->wake[wi] = 1;
}

/* Publishes the completions of every worker that got some, and wakes it. */
static void q_publish(struct q *q)
{
    for (unsigned wi = 0; wi < q->workers; wi++) {
        if (!q->wake[wi])
            continue;
        q->wake[wi] = 0;
        struct q_wring *w = &q->wr[wi];
        /* Release: pairs with the acquire load of tail in q_reap; publishes the slots and
         * the status fields written into the requests. */
        atomic_store_explicit(&w->cq.tail, w->cq_tail_local, memory_order_release);
        q_efd_signal(w->efd);
    }
}

/* Completes batch[from, to), which shared one txn: a failed commit fails them all. */
static void q_finish(struct q *q, size_t from, size_t to, int commit_err, uint64_t now_ns)
{
    uint64_t failed = 0;
    for (size_t i = from; i < to; i++) {
        struct q_req *r = q->batch[i];
        if (commit_err != 0)
            r->status = commit_err;
        r->committed_ns = now_ns;
        r->batch = (uint32_t)(to - from);
        failed += r->status != 0;
        q_push_completion(q, q->batch_worker[i], r);
    }
    q_stat_add(&q->st.requests, to - from);
    q_stat_add(&q->st.failed, failed);
    q_stat_max(&q->st.batch_max, to - from);
}

/* ---- the writer: applying requests ------------------------------------------ */

/* mdb_del, with a missing record reported as Q_ERR_NOT_FOUND. */
static int q_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key)
{
    int rc = mdb_del(txn, dbi, key, NULL);
    return rc == MDB_NOTFOUND ? Q_ERR_NOT_FOUND : rc;
}

static int q_put_sched(struct q *q, MDB_txn *txn, uint64_t due_ms, const struct q_id *id)
{
    uint8_t k[Q_SCHED_KEY_BYTES];
    q_sched_key(k, due_ms, id);
    MDB_val key = {sizeof(k), k};
    MDB_val val = {0, k}; /* empty */
    return mdb_put(txn, q->dbi[Q_DB_SCHED], &key, &val, 0);
}

static int q_del_sched(struct q *q, MDB_txn *txn, uint64_t due_ms, const struct q_id *id)
{
    uint8_t k[Q_SCHED_KEY_BYTES];
    q_sched_key(k, due_ms, id);
    MDB_val key = {sizeof(k), k};
    return q_del(txn, q->dbi[Q_DB_SCHED], &key);
}

/* Encodes the envelope straight into LMDB's space (MDB_RESERVE). A record longer than
 * Q_ENV_BYTES_MAX is refused with Q_ERR_RANGE, as q_env_decode would reject it. */
static int q_put_env(struct q *q, MDB_txn *txn, const struct q_req *r, unsigned put_flags)
{
    size_t need = q_env_encoded_size(r->env);
    if (need > Q_ENV_BYTES_MAX)
        return Q_ERR_RANGE;
    struct q_id id = r->id; /* MDB_val wants a mutable pointer; LMDB does not write keys */
    MDB_val key = {sizeof(id.b), id.b};
    MDB_val val = {need, NULL};
    int rc = mdb_put(txn, q->dbi[Q_DB_ENV], &key, &val, put_flags | MDB_RESERVE);
    if (rc != 0)
        return rc;
    int64_t n = q_env_encode(r->env, val.mv_data, val.mv_size);
    RM_ASSERT(n == (int64_t)need);
    return 0;
}

/* msg[id]: the chain copied once, into the space LMDB reserved for it. */
static int q_put_msg(struct q *q, MDB_txn *txn, const struct q_req *r)
{
    uint64_t size = r->env->size;
    struct q_id id = r->id; /* mutable, for MDB_val */
    MDB_val key = {sizeof(id.b), id.b};
    MDB_val val = {(size_t)size, NULL};
    int rc = mdb_put(txn, q->dbi[Q_DB_MSG], &key, &val, MDB_RESERVE | MDB_NOOVERWRITE);
    if (rc != 0)
        return rc;
    uint8_t *dst = val.mv_data;
    uint64_t off = 0;
    const struct rm_chunk *c = r->body;
    for (uint64_t k = 0; c != NULL; c = c->next, k++) {
        RM_ASSERT(k <= size);            /* bounds the walk: no cycle, no endless empty chunks */
        RM_ASSERT(c->len <= size - off); /* the chain is no longer than env->size */
        if (c->len > 0)
            memcpy(dst + off, c->data, c->len);
        off += c->len;
    }
    RM_ASSERT(off == size); /* ... and no shorter */
    return 0;
}

static int q_do_store(struct q *q, MDB_txn *txn, const struct q_req *r)
{
    int rc = q_put_msg(q, txn, r);
    if (rc == 0)
        rc = q_put_env(q, txn, r, MDB_NOOVERWRITE);
    if (rc == 0)
        rc = q_put_sched(q, txn, r->env->next_attempt_ms, &r->id);
    /* XXX: an existing id (2^-32 per pair, and only across a restart within one ms) fails
     * the store like an I/O error; the worker answers 451 and the client retries. */
    return rc == MDB_KEYEXIST ? Q_ERR_IO : rc;
}

/* Strict: the env record and the sched entry at old_due_ms must both exist. A caller with a
 * wrong old_due_ms receives Q_ERR_NOT_FOUND and nothing changes, instead of an orphan sched
 * entry that would survive the message. */
static int q_do_update(struct q *q, MDB_txn *txn, const struct q_req *r)
{
    struct q_id id = r->id; /* mutable, for MDB_val */
    MDB_val key = {sizeof(id.b), id.b};
    MDB_val old;
    int rc = mdb_get(txn, q->dbi[Q_DB_ENV], &key, &old);
    if (rc == MDB_NOTFOUND)
        return Q_ERR_NOT_FOUND;
    if (rc == 0)
        rc = q_del_sched(q, txn, r->old_due_ms, &r->id);
    if (rc == 0)
        rc = q_put_env(q, txn, r, 0);
    if (rc == 0)
        rc = q_put_sched(q, txn, r->env->next_attempt_ms, &r->id);
    return rc;
}

static int q_do_delete(struct q *q, MDB_txn *txn, const struct q_req *r)
{
    struct q_id id = r->id; /* mutable, for MDB_val */
    MDB_val key = {sizeof(id.b), id.b};
    int rc = q_del(txn, q->dbi[Q_DB_MSG], &key);
    if (rc == 0)
        rc = q_del(txn, q->dbi[Q_DB_ENV], &key);
    if (rc == 0)
        rc = q_del_sched(q, txn, r->old_due_ms, &r->id);
    return rc;
}

static int q_do(struct q *q, MDB_txn *txn, const struct q_req *r)
{
    switch (r->op) {
    case Q_OP_STORE:
        return q_do_store(q, txn, r);
    case Q_OP_UPDATE:
        return q_do_update(q, txn, r);
    case Q_OP_DELETE:
        return q_do_delete(q, txn, r);
    }
    rm_assert_fail(__FILE__, __LINE__, "r->op is a q_op"); /* q_req_check lets no other in */
}

/* Applies r in a txn nested in parent, so a failure undoes r alone. Returns 0, an MDB_*
 * code, or a Q_ERR_* code. */
static int q_apply(struct q *q, MDB_txn *parent, const struct q_req *r)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->env, parent, 0, &txn);
    if (rc != 0)
        return rc;
    rc = q_do(q, txn, r);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn); /* into the parent: no I/O */
}

/* The status a request completes with, from q_apply's or mdb_txn_commit's code. */
static int q_status(int rc)
{
    if (rc == 0 || rc == Q_ERR_NOT_FOUND || rc == Q_ERR_RANGE)
        return rc;
    return rc == MDB_MAP_FULL ? Q_ERR_MAP_FULL : Q_ERR_IO;
}

/* Runs batch[from, n) in one write txn and completes what it held. Returns where it
 * stopped: n, or the index of a request that hit MDB_TXN_FULL and must start a new txn. */
static size_t q_run_txn(struct q *q, size_t from, size_t n)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->env, NULL, 0, &txn);
    if (rc != 0) {
        q_finish(q, from, n, q_status(rc), q_now_ns());
        return n;
    }
    size_t i = from;
    for (; i < n; i++) {
        rc = q_apply(q, txn, q->batch[i]);
        /* The txn's dirty page list is full: commit the others, retry this one alone. */
        if (rc == MDB_TXN_FULL && i > from)
            break;
        q->batch[i]->status = q_status(rc);
    }
    uint64_t t0 = q_now_ns();
    rc = mdb_txn_commit(txn); /* the one fsync of the batch */
    uint64_t t1 = q_now_ns();
    if (rc == 0) {
        q_stat_add(&q->st.commits, 1);
        q_stat_add(&q->st.commit_ns_sum, t1 - t0);
        q_stat_max(&q->st.commit_ns_max, t1 - t0);
    }
    /* A failed commit made nothing of the batch durable: every request fails, even one that
     * failed alone before (NOT_FOUND may have come from a delete that is now undone). */
    q_finish(q, from, i, rc == 0 ? 0 : q_status(rc), t1);
    return i;
}

static void q_run_batch(struct q *q, size_t n)
{
    size_t i = 0;
    /* Each pass completes at least one request. */
    for (size_t pass = 0; pass < n && i < n; pass++)
        i = q_run_txn(q, i, n);
    RM_ASSERT(i == n);
    q_publish(q);
}

/* ---- the writer: the thread ----------------------------------------------- */

static bool q_rings_empty(const struct q *q)
{
    for (unsigned wi = 0; wi < q->workers; wi++) {
        const struct q_ring *ring = &q->wr[wi].sq;
        /* tail: seq_cst, the wake-up protocol (top of this file); q_collect acquires it
         * again before it reads a slot. head: our own. */
        if (atomic_load_explicit(&ring->tail, memory_order_seq_cst) !=
            atomic_load_explicit(&ring->head, memory_order_relaxed))
            return false;
    }
    return true;
}

static void q_writer_sleep(struct q *q)
{
    /* seq_cst: the wake-up protocol with q_submit (top of this file). */
    atomic_store_explicit(&q->sleeping, true, memory_order_seq_cst);
    /* stopping: relaxed, as q_writer_stop writes the eventfd after setting it anyway. */
    if (q_rings_empty(q) && !atomic_load_explicit(&q->stopping, memory_order_relaxed)) {
        uint64_t v;
        /* On EINTR the caller just looks again. */
        ssize_t n = read(q->wake_fd, &v, sizeof(v));
        (void)n;
    }
    /* Relaxed: a submitter that still sees true only makes one needless eventfd write. */
    atomic_store_explicit(&q->sleeping, false, memory_order_relaxed);
}

static void *q_writer_main(void *arg)
{
    struct q *q = arg;
    for (;;) { /* the writer's event loop: runs until q_writer_stop */
        /* Acquire: pairs with the release in q_writer_stop, so that the q_collect below
         * sees every request submitted before q_writer_stop was called. */
        bool stop = atomic_load_explicit(&q->stopping, memory_order_acquire);
        size_t n = q_collect(q);
        if (n > 0)
            q_run_batch(q, n);
        else if (stop)
            break;
        else
            q_writer_sleep(q);
    }
    return NULL;
}

int q_writer_start(struct q *q)
{
    RM_ASSERT(q->wr != NULL);
    RM_ASSERT(!q->running);
    /* Not restartable: q_submit answers Q_ERR_STOPPED for good once q_writer_stop ran. */
    RM_ASSERT(atomic_load_explicit(&q->accepting, memory_order_relaxed));
    int rc = pthread_create(&q->thread, NULL, q_writer_main, q);
    if (rc != 0)
        return -rc;
    (void)pthread_setname_np(q->thread, "rm-qwriter");
    q->running = true;
    return 0;
}

/* Completes, with Q_ERR_STOPPED, what is still in the request rings once the writer is
 * gone: a request submitted while q_writer_stop ran (against q.h) or before a writer that
 * never started. The main thread is the rings' consumer now. */
static void q_sweep(struct q *q)
{
    uint64_t now = q_now_ns();
    uint64_t swept = 0;
    for (unsigned wi = 0; wi < q->workers; wi++) {
        struct q_ring *ring = &q->wr[wi].sq;
        uint32_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
        /* Acquire: pairs with the release of tail in q_submit. */
        uint32_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
        RM_ASSERT(tail - head <= Q_RING_CAP);
        for (; head != tail; head++) {
            struct q_req *r = ring->slot[head & Q_RING_MASK];
            r->status = Q_ERR_STOPPED;
            r->committed_ns = now;
            r->batch = 0;
            q_push_completion(q, wi, r);
            swept++;
        }
        /* Release: pairs with the acquire in q_submit's debug assert. */
        atomic_store_explicit(&ring->head, head, memory_order_release);
    }
    q_stat_add(&q->st.requests, swept);
    q_stat_add(&q->st.failed, swept);
    q_publish(q);
}

void q_writer_stop(struct q *q)
{
    RM_ASSERT(q->wr != NULL);
    /* Relaxed: q_submit reads it as a hint only (see there). */
    atomic_store_explicit(&q->accepting, false, memory_order_relaxed);
    if (q->running) {
        /* Release: pairs with the acquire in q_writer_main; requests submitted before this
         * call (the workers have stopped: q.h) are visible to the writer's last pass. */
        atomic_store_explicit(&q->stopping, true, memory_order_release);
        q_efd_signal(q->wake_fd); /* unconditional: the writer may be asleep */
        int rc = pthread_join(q->thread, NULL);
        RM_ASSERT(rc == 0);
        q->running = false;
    }
    q_sweep(q);
}
