/* mta/worker.c: one io_uring event loop per CPU (see worker.h). */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/rm_pool.h"
#include "deliver.h"
#include "log.h"
#include "smtpd.h"
#include "uring.h"

struct slot {
    struct smtpd sess; /* the SMTP session; uses rx/tx/arena below */
    struct q_req qreq; /* lent to the queue writer while storing */
    struct rm_buf rx;  /* data: this slot's part of the worker region */
    struct rm_buf tx;
    uint64_t last_rx_ms; /* monotonic ms of the last received bytes */
    uint64_t closing_since_ms;
    uint64_t store_t0_ns; /* monotonic ns when the store was submitted */
    uint64_t conn_id;
    int fd;
    uint32_t gen;
    uint32_t next_free;
    uint32_t ip_bucket;
    uint16_t listener; /* index into cfg->listeners */
    uint8_t ops;       /* io_uring operations in flight that name this slot */
    bool used;
    bool recv_on, send_on, close_on, cancel_on;
    bool closing;    /* no more input; send tx, then close */
    bool peer_gone;  /* the connection failed: drop tx */
    bool rx_eof;     /* the peer half-closed: answer what it sent, then close */
    size_t recv_off; /* rx.tail when the pending recv was submitted */
    bool storing;    /* qreq is with the writer */
    bool store_wait; /* qreq waits for ring space (on w->wait list) */
    uint32_t wait_next;
    char peer[INET6_ADDRSTRLEN];
};

struct listen_sock {
    int fd;
    uint16_t listener; /* index into cfg->listeners */
    bool armed;
    bool rearm; /* re-arm at the next tick (after an accept error) */
};

struct worker {
    struct worker_shared *sh;
    unsigned idx;
    struct io_uring ring;
    bool ring_ok;
    pthread_t thread;
    int cpu;
    sem_t ready;
    int start_rc;
    _Atomic bool done; /* thread left its loop: release by worker, acquire by main */
    int wake_fd;
    uint64_t wake_buf, qev_buf;
    struct __kernel_timespec tick_ts;
    struct listen_sock *ls;
    unsigned nls;
    struct smtpd_cfg *scfg; /* one per cfg listener */
    struct slot *slots;
    uint32_t nslots, free_head, used;
    uint32_t wait_head, wait_tail; /* stores waiting for ring space, FIFO */
    uint8_t *region;               /* rx, tx, arenas and rcpts of all slots (MAP_NORESERVE) */
    size_t region_bytes, slot_bytes;
    struct rm_pool pool;
    struct q_idgen idgen;
    struct log_buf dlog, diag;
    struct worker_stats *st;
    struct worker_iptab *iptab;
    struct deliver *dl; /* the delivery engine: outbound connections, DNS */
    struct worker_recovered *rec;
    size_t nrec;
    uint64_t now_ms;  /* unix ms: ids, Received:, logs */
    uint64_t mono_ms; /* CLOCK_MONOTONIC ms: every timeout (a clock step must not fire them) */
    uint64_t now_ns;  /* CLOCK_MONOTONIC ns: latencies */
    uint64_t conn_seq;
    uint64_t drain_deadline_ms;
    bool draining;
    bool fatal; /* stop the loop: the worker cannot go on */
    bool accept_err_logged;
    char line[LOG_LINE_MAX];
};

#define SLOT_NONE UINT32_MAX

static void stat_add(_Atomic uint64_t *c, int64_t d)
{
    /* Single writer: a relaxed load and store, no locked RMW; readers use
     * relaxed loads (STYLE.md "Concurrency"). */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint64_t)d,
                          memory_order_relaxed);
}

static void clock_update(struct worker *w)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    w->now_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    w->now_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    w->mono_ms = w->now_ns / 1000000;
}

static struct io_uring_sqe *sqe_get(struct worker *w)
{
    return uring_sqe(&w->ring);
}

/* ---- listening sockets ----------------------------------------------------- */

unsigned worker_listen_count(const struct cfg *cfg)
{
    unsigned n = 0;
    for (unsigned i = 0; i < cfg->nlisteners; i++)
        n += cfg->listeners[i].naddrs;
    return n;
}

static int listen_one(const struct cfg_addr *a, bool reuseport, char *err, size_t err_len)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_len, "cannot create a socket for %s: %s", a->text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    /* Replies are small writes: without TCP_NODELAY the final 250 waits for
     * the ACK of the earlier replies (Nagle), i.e. the peer's delayed ACK,
     * ~40 ms per message. Accepted sockets inherit it from the listener. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(fd, 4096) != 0) {
        snprintf(err, err_len, "cannot listen on %s: %s%s", a->text, strerror(errno),
                 errno == EACCES ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" : "");
        int e = errno;
        close(fd);
        errno = e; /* the caller retries on EADDRINUSE */
        return -1;
    }
    return fd;
}

int worker_listen_open(const struct cfg *cfg, unsigned nworkers, int *fds, size_t fds_cap,
                       char *err, size_t err_len)
{
    unsigned naddr = worker_listen_count(cfg), k = 0;
    RM_ASSERT(fds_cap >= (size_t)naddr * nworkers);
    for (size_t i = 0; i < (size_t)naddr * nworkers; i++)
        fds[i] = -1;
    for (unsigned l = 0; l < cfg->nlisteners; l++) {
        for (unsigned a = 0; a < cfg->listeners[l].naddrs; a++, k++) {
            const struct cfg_addr *addr = &cfg->listeners[l].addrs[a];
            /* Probe without SO_REUSEPORT: another process holding the port
             * with SO_REUSEPORT (a second ringmta) would otherwise silently
             * share it with us. */
            int probe = listen_one(addr, false, err, err_len);
            /* After a crash the kernel tears down the dead process's io_uring
             * asynchronously, and its listening sockets stay bound a moment
             * after it is reaped: a restart waits up to 2 s for them. */
            for (int tries = 0; probe < 0 && errno == EADDRINUSE && tries < 40; tries++) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL); /* main thread, at start-up */
                probe = listen_one(addr, false, err, err_len);
            }
            if (probe < 0)
                goto fail;
            close(probe);
            for (unsigned w = 0; w < nworkers; w++) {
                int fd = listen_one(addr, true, err, err_len);
                if (fd < 0)
                    goto fail;
                fds[(size_t)w * naddr + k] = fd;
            }
        }
    }
    return 0;
fail:
    for (size_t i = 0; i < (size_t)naddr * nworkers; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return -1;
}

static void accept_arm(struct worker *w, unsigned i)
{
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_multishot_accept(sqe, w->ls[i].fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud_make(UD_ACCEPT, i, 0));
    w->ls[i].armed = true;
}

/* ---- slots ------------------------------------------------------------------ */

static uint8_t *slot_mem(struct worker *w, uint32_t i)
{
    return w->region + (size_t)i * w->slot_bytes;
}

static uint64_t slot_ud(struct worker *w, struct slot *s, enum ud_kind k)
{
    return ud_make(k, (uint32_t)(s - w->slots), s->gen);
}

static void slot_recv(struct worker *w, struct slot *s)
{
    if (s->recv_on || s->closing || s->peer_gone || s->rx_eof || s->close_on)
        return;
    /* Only here, with no recv pending, may rx's bytes move (rm_buf_recv_prep). */
    if (rm_buf_recv_prep(&s->rx) == 0)
        return; /* the session will consume; recv is re-armed after */
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_recv(sqe, s->fd, rm_buf_wptr(&s->rx), rm_buf_space(&s->rx), 0);
    io_uring_sqe_set_data64(sqe, slot_ud(w, s, UD_RECV));
    s->recv_on = true;
    s->recv_off = s->rx.tail;
    s->ops++;
}

static void slot_send(struct worker *w, struct slot *s)
{
    /* Once the close is submitted no operation may name the slot: its
     * completion frees it (a 421 queued by a drain after that is dropped). */
    if (s->send_on || s->peer_gone || s->close_on || rm_buf_len(&s->tx) == 0)
        return;
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_send(sqe, s->fd, rm_buf_rptr(&s->tx), rm_buf_len(&s->tx), MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, slot_ud(w, s, UD_SEND));
    s->send_on = true;
    s->ops++;
}

static void slot_free(struct worker *w, struct slot *s)
{
    uint32_t i = (uint32_t)(s - w->slots);
    RM_ASSERT(s->used && s->ops == 0 && !s->storing && !s->store_wait);
    const struct smtpd_stats *ss = &s->sess.stats;
    /* Logged once per session, not once per bad line; a session whose only
     * error is our own 421 (timeout, per-IP limit, shutdown) is only counted. */
    if (ss->errors > (ss->last_error.code == 421 ? 1u : 0u))
        log_buf_diag(&w->diag, LOG_INFO, "smtpd", "-",
                     "session end conn=%llu client=%s messages=%u errors=%u last_error=%u_%u.%u.%u",
                     (unsigned long long)s->conn_id, s->peer, ss->messages, ss->errors,
                     ss->last_error.code, ss->last_error.esc[0], ss->last_error.esc[1],
                     ss->last_error.esc[2]);
    smtpd_fini(&s->sess); /* a peer gone mid-DATA leaves body chunks to return */
    _Atomic uint32_t *cnt = &w->iptab->count[s->ip_bucket];
    atomic_store_explicit(cnt, atomic_load_explicit(cnt, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    stat_add(&w->st->sessions, -1);
    s->used = false;
    s->gen++;
    s->next_free = w->free_head;
    w->free_head = i;
    w->used--;
}

/* Drives a slot after any event: feed input, submit a store, send, close. */
static void slot_pump(struct worker *w, struct slot *s);

static void store_submit(struct worker *w, struct slot *s)
{
    const struct q_env *env;
    const struct rm_chunk *body;
    smtpd_message(&s->sess, &s->qreq.id, &env, &body);
    s->qreq.op = Q_OP_STORE;
    s->qreq.env = env;
    s->qreq.body = body;
    s->qreq.tag = slot_ud(w, s, UD_TAG_SESSION);
    s->qreq.status = 0;
    s->store_t0_ns = w->now_ns;
    int rc = q_submit(w->sh->q, w->idx, &s->qreq);
    if (rc == 0) {
        s->storing = true;
        return;
    }
    if (rc == -EAGAIN) { /* ring full: wait for completions, FIFO */
        s->store_wait = true;
        s->wait_next = SLOT_NONE;
        uint32_t i = (uint32_t)(s - w->slots);
        if (w->wait_tail == SLOT_NONE)
            w->wait_head = i;
        else
            w->slots[w->wait_tail].wait_next = i;
        w->wait_tail = i;
        return;
    }
    stat_add(&w->st->store_failed, 1);
    smtpd_stored(&s->sess, rc, w->now_ms);
}

static void log_reception(struct worker *w, struct slot *s)
{
    const struct q_env *e = s->qreq.env;
    char id[Q_ID_STR_LEN + 1];
    struct log_json j;
    q_id_format(&s->qreq.id, id);
    log_json_begin(&j, w->line, sizeof(w->line));
    log_json_key(&j, "time");
    log_json_time(&j, w->now_ms);
    log_json_key(&j, "event");
    log_json_str(&j, rm_span_str("reception"));
    log_json_key(&j, "id");
    log_json_str(&j, rm_span_str(id));
    log_json_key(&j, "listener");
    log_json_str(&j, e->listener);
    log_json_key(&j, "client");
    log_json_str(&j, e->client);
    log_json_key(&j, "helo");
    log_json_str(&j, e->helo);
    log_json_key(&j, "sender");
    log_json_str(&j, e->sender);
    log_json_key(&j, "size");
    log_json_u64(&j, e->size);
    log_json_key(&j, "nrcpt");
    log_json_u64(&j, e->rcpt_count);
    log_json_key(&j, "commit_us");
    log_json_u64(&j, (s->qreq.committed_ns - s->store_t0_ns) / 1000);
    log_json_key(&j, "batch");
    log_json_u64(&j, s->qreq.batch);
    size_t before_rcpts = j.len;
    log_json_key(&j, "rcpts");
    log_json_raw(&j, "[", 1);
    for (uint32_t i = 0; i < e->rcpt_count && j.ok; i++) {
        if (i)
            log_json_raw(&j, ",", 1);
        log_json_str(&j, e->rcpts[i].addr);
    }
    log_json_raw(&j, "]", 1);
    if (!j.ok) { /* too many recipients for one line: keep the count only */
        j.ok = true;
        j.len = before_rcpts;
        log_json_key(&j, "rcpts_truncated");
        log_json_raw(&j, "true", 4);
    }
    log_json_end(&j);
    log_buf_line(&w->dlog, j.p, j.len);
}

static void store_done(struct worker *w, struct q_req *r)
{
    uint64_t ud = r->tag;
    uint32_t i = (uint32_t)(ud >> 32) & UD_IDX_MAX;
    RM_ASSERT(i < w->nslots);
    struct slot *s = &w->slots[i];
    RM_ASSERT(&s->qreq == r && s->gen == (uint32_t)ud && s->storing);
    s->storing = false;
    if (r->status == 0) {
        stat_add(&w->st->messages, 1);
        stat_add(&w->st->message_bytes, (int64_t)r->env->size);
        log_reception(w, s);
        deliver_received(w->dl, &r->id, r->env->next_attempt_ms);
    } else {
        stat_add(&w->st->store_failed, 1);
        char id[Q_ID_STR_LEN + 1];
        q_id_format(&r->id, id);
        log_buf_diag(&w->diag, LOG_ERR, "queue", id, "store failed: %s", q_strerror(r->status));
    }
    smtpd_stored(&s->sess, r->status, w->now_ms);
    slot_pump(w, s);
}

static void slot_close_maybe(struct worker *w, struct slot *s)
{
    if (!s->closing || s->storing || s->store_wait || s->close_on)
        return;
    if (!s->peer_gone && (s->send_on || rm_buf_len(&s->tx) > 0)) {
        slot_send(w, s);
        return;
    }
    if (s->send_on)
        return;
    if (s->recv_on) { /* a pending recv holds the file: cancel it first */
        if (!s->cancel_on) {
            struct io_uring_sqe *sqe = sqe_get(w);
            io_uring_prep_cancel64(sqe, slot_ud(w, s, UD_RECV), 0);
            io_uring_sqe_set_data64(sqe, slot_ud(w, s, UD_CANCEL));
            s->cancel_on = true;
            s->ops++;
        }
        return;
    }
    if (s->ops > 0) /* the cancel's own completion */
        return;
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_close(sqe, s->fd);
    io_uring_sqe_set_data64(sqe, slot_ud(w, s, UD_CLOSE));
    s->close_on = true;
    s->ops++;
}

static void slot_pump(struct worker *w, struct slot *s)
{
    /* Bounded: each pass consumes input or stops. */
    for (unsigned guard = 0; guard < 1024; guard++) {
        if (s->closing || s->storing || s->store_wait || rm_buf_len(&s->rx) == 0)
            break;
        if (s->peer_gone)
            break;
        enum smtpd_ev ev = SMTPD_EV_NONE;
        size_t n = smtpd_feed(&s->sess, rm_buf_rptr(&s->rx), rm_buf_len(&s->rx), w->now_ms, &ev);
        rm_buf_skip(&s->rx, n); /* a recv may be pending at rx.tail: see slot_recv */
        if (ev == SMTPD_EV_STORE) {
            store_submit(w, s);
            continue; /* a failed submission answered at once: go on */
        }
        if (ev == SMTPD_EV_CLOSE) {
            s->closing = true;
            s->closing_since_ms = w->mono_ms;
            break;
        }
        if (n == 0)
            break; /* a partial line, or tx is full until the next send */
    }
    if (!s->closing && smtpd_closing(&s->sess)) {
        s->closing = true;
        s->closing_since_ms = w->mono_ms;
    }
    /* Gone, or half-closed with everything it sent answered: close (after
     * sending what is queued, when the peer can still read it). */
    if (!s->closing && (s->peer_gone || (s->rx_eof && !s->storing && !s->store_wait))) {
        s->closing = true;
        s->closing_since_ms = w->mono_ms;
    }
    slot_send(w, s);
    slot_recv(w, s);
    slot_close_maybe(w, s);
}

static const struct smtp_reply reply_timeout = {421, {4, 4, 2}, "Error: timeout exceeded"};
static const struct smtp_reply reply_shutdown = {421, {4, 3, 2}, "Service shutting down"};
static const struct smtp_reply reply_per_ip = {
    421, {4, 7, 0}, "Error: too many connections from your address"};

static uint32_t ip_bucket(const struct worker *w, const struct sockaddr_storage *ss)
{
    /* Keyed FNV-1a over the address bytes: a client cannot aim at another
     * client's bucket without knowing the start-up key. */
    const uint8_t *p;
    size_t n;
    if (ss->ss_family == AF_INET) {
        p = (const uint8_t *)&((const struct sockaddr_in *)(const void *)ss)->sin_addr;
        n = 4;
    } else {
        p = ((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr.s6_addr;
        n = 16;
    }
    uint64_t h = 1469598103934665603ull ^ w->sh->ip_key;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    h ^= h >> 29;
    return (uint32_t)(h % WORKER_IPTAB_BUCKETS);
}

static uint32_t ip_sessions(const struct worker *w, uint32_t b)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < w->sh->nworkers; i++)
        n += atomic_load_explicit(&w->sh->iptabs[i].count[b], memory_order_relaxed);
    return n;
}

static void refuse_unslotted(struct worker *w, int fd)
{
    /* No slot: one send of a static 421; its completion closes the fd,
     * whatever the send's result (a linked close would be cancelled by a
     * failed send and leak the fd). */
    static const char msg[] = "421 4.7.0 Error: too many sessions, try again later\r\n";
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_send(sqe, fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    io_uring_sqe_set_data64(sqe, ud_make(UD_REFUSED, (uint32_t)fd, 0));
    stat_add(&w->st->refused, 1);
}

static void on_accept(struct worker *w, uint32_t li, int res, uint32_t flags)
{
    RM_ASSERT(li < w->nls);
    if (!(flags & IORING_CQE_F_MORE)) {
        w->ls[li].armed = false;
        if (w->draining) {
            /* Close now, so new clients are refused by the kernel instead of
             * waiting in a backlog nobody accepts from. */
            if (w->ls[li].fd >= 0)
                close(w->ls[li].fd);
            w->ls[li].fd = -1;
        } else if (res == -EINVAL) {
            /* Multishot accept needs Linux 5.19. */
            log_buf_diag(&w->diag, LOG_ERR, "worker", "-",
                         "multishot accept is not supported by this kernel (5.19+ needed)");
            w->fatal = true;
        } else if (res < 0) {
            /* EMFILE, ENFILE, ENOBUFS...: re-arm from the next tick, not at
             * once, or the loop spins on the same error. Logged once. */
            if (!w->accept_err_logged)
                log_buf_diag(&w->diag, LOG_WARN, "worker", "-", "accept: %s (retrying each tick)",
                             strerror(-res));
            w->accept_err_logged = true;
            w->ls[li].rearm = true;
        } else {
            accept_arm(w, li);
        }
    }
    if (res < 0)
        return;
    int fd = res;
    stat_add(&w->st->accepted, 1);
    if (w->draining || w->free_head == SLOT_NONE) {
        refuse_unslotted(w, fd);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0) {
        close(fd); /* the peer is already gone; close(2) of a socket does not block */
        return;
    }
    uint32_t i = w->free_head;
    struct slot *s = &w->slots[i];
    w->free_head = s->next_free;
    w->used++;
    uint32_t gen = s->gen;
    uint8_t *mem = slot_mem(w, i);
    memset(s, 0, sizeof(*s));
    s->gen = gen;
    s->used = true;
    s->fd = fd;
    s->listener = w->ls[li].listener;
    s->conn_id = ++w->conn_seq * 256 + w->idx;
    s->last_rx_ms = w->mono_ms;
    s->ip_bucket = ip_bucket(w, &ss);
    const void *a = ss.ss_family == AF_INET
                        ? (const void *)&((struct sockaddr_in *)(void *)&ss)->sin_addr
                        : (const void *)&((struct sockaddr_in6 *)(void *)&ss)->sin6_addr;
    if (!inet_ntop(ss.ss_family, a, s->peer, sizeof(s->peer)))
        snprintf(s->peer, sizeof(s->peer), "unknown");
    rm_buf_init(&s->rx, mem, WORKER_RX_BYTES);
    rm_buf_init(&s->tx, mem + WORKER_RX_BYTES, WORKER_TX_BYTES);
    const struct cfg *cfg = w->sh->cfg;
    struct smtpd_mem sm = {
        .tx = &s->tx,
        .pool = &w->pool,
        .arena = mem + WORKER_RX_BYTES + WORKER_TX_BYTES,
        .arena_cap = SMTPD_ARENA_BYTES(cfg->rcpt_max),
        .rcpts = (struct q_rcpt *)(void *)(mem + WORKER_RX_BYTES + WORKER_TX_BYTES +
                                           SMTPD_ARENA_BYTES(cfg->rcpt_max)),
        .rcpt_cap = cfg->rcpt_max,
        .idgen = &w->idgen,
    };
    struct smtpd_peer peer = {
        .addr = s->peer,
        .relay_ok = cfg_net_match(cfg->trusted, cfg->ntrusted, (struct sockaddr *)&ss),
    };
    bool over_ip = ip_sessions(w, s->ip_bucket) >= cfg->sessions_per_ip_max;
    _Atomic uint32_t *cnt = &w->iptab->count[s->ip_bucket];
    atomic_store_explicit(cnt, atomic_load_explicit(cnt, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    stat_add(&w->st->sessions, 1);
    smtpd_init(&s->sess, &w->scfg[s->listener], &sm, &peer, w->now_ms);
    if (over_ip) {
        /* The greeting is replaced: RFC 5321 3.1 allows 421 at connection. */
        rm_buf_init(&s->tx, mem + WORKER_RX_BYTES, WORKER_TX_BYTES);
        smtpd_close_with(&s->sess, &reply_per_ip);
        stat_add(&w->st->refused, 1);
    }
    slot_pump(w, s);
}

static struct slot *slot_of(struct worker *w, uint64_t ud)
{
    uint32_t i = (uint32_t)(ud >> 32) & UD_IDX_MAX;
    RM_ASSERT(i < w->nslots);
    struct slot *s = &w->slots[i];
    RM_ASSERT(s->used && s->gen == (uint32_t)ud && s->ops > 0);
    s->ops--;
    return s;
}

static void on_recv(struct worker *w, struct slot *s, int res)
{
    s->recv_on = false;
    RM_ASSERT(s->rx.tail == s->recv_off); /* nothing moved rx under the recv */
    if (res > 0) {
        rm_buf_produce(&s->rx, (size_t)res);
        s->last_rx_ms = w->mono_ms;
    } else if (res == 0) {
        s->rx_eof = true; /* half-close: still answer what was sent (e.g. nc -N) */
    } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
        s->peer_gone = true; /* a socket error: nothing more can be said */
    }
    slot_pump(w, s);
}

static void on_send(struct worker *w, struct slot *s, int res)
{
    s->send_on = false;
    if (res > 0)
        rm_buf_consume(&s->tx, (size_t)res);
    else if (res != -EINTR && res != -EAGAIN)
        s->peer_gone = true;
    slot_pump(w, s);
}

/* ---- timers, queue completions, shutdown ------------------------------------ */

static void tick_arm(struct worker *w)
{
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_timeout(sqe, &w->tick_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, ud_make(UD_TICK, 0, 0));
}

static void slot_force_close(struct slot *s)
{
    /* shutdown(2) does not block; it completes the pending recv/send with an
     * error or EOF so the slot can be closed. */
    s->peer_gone = true;
    shutdown(s->fd, SHUT_RDWR);
}

static void on_tick(struct worker *w)
{
    const struct cfg *cfg = w->sh->cfg;
    bool grace_over = w->draining && w->mono_ms >= w->drain_deadline_ms;
    for (unsigned i = 0; i < w->nls; i++) {
        if (w->ls[i].rearm && !w->draining && w->ls[i].fd >= 0) {
            w->ls[i].rearm = false;
            accept_arm(w, i);
        }
    }
    for (uint32_t i = 0; i < w->nslots; i++) {
        struct slot *s = &w->slots[i];
        if (!s->used || s->close_on)
            continue;
        if (s->closing) {
            if (w->mono_ms - s->closing_since_ms > WORKER_CLOSE_FORCE_MS || grace_over)
                slot_force_close(s);
        } else if (!s->storing && !s->store_wait &&
                   (w->mono_ms - s->last_rx_ms >= cfg->idle_timeout_ms || grace_over)) {
            smtpd_close_with(&s->sess, grace_over ? &reply_shutdown : &reply_timeout);
        }
        slot_pump(w, s);
    }
    if (grace_over)
        deliver_force(w->dl);
    deliver_tick(w->dl);
    tick_arm(w);
}

static void qevent_arm(struct worker *w)
{
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_read(sqe, q_worker_fd(w->sh->q, w->idx), &w->qev_buf, sizeof(w->qev_buf), 0);
    io_uring_sqe_set_data64(sqe, ud_make(UD_QEVENT, 0, 0));
}

static void on_qevent(struct worker *w)
{
    struct q_req *done[64];
    qevent_arm(w);
    for (unsigned guard = 0; guard < 1024; guard++) {
        size_t n = q_reap(w->sh->q, w->idx, done, RM_ARRAY_LEN(done));
        for (size_t i = 0; i < n; i++) {
            if (ud_kind(done[i]->tag) == UD_TAG_DELIVER)
                deliver_req_done(w->dl, done[i]);
            else
                store_done(w, done[i]);
        }
        if (n < RM_ARRAY_LEN(done))
            break;
    }
    /* Completions freed ring space: resubmit waiting stores in order. */
    while (w->wait_head != SLOT_NONE) {
        struct slot *s = &w->slots[w->wait_head];
        int rc = q_submit(w->sh->q, w->idx, &s->qreq);
        if (rc == -EAGAIN)
            break;
        w->wait_head = s->wait_next;
        if (w->wait_head == SLOT_NONE)
            w->wait_tail = SLOT_NONE;
        s->store_wait = false;
        if (rc == 0) {
            s->storing = true;
        } else {
            stat_add(&w->st->store_failed, 1);
            smtpd_stored(&s->sess, rc, w->now_ms);
        }
        slot_pump(w, s);
    }
}

static void wake_arm(struct worker *w)
{
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
    io_uring_sqe_set_data64(sqe, ud_make(UD_WAKE, 0, 0));
}

static void drain_begin(struct worker *w)
{
    w->draining = true;
    w->drain_deadline_ms = w->mono_ms + w->sh->cfg->shutdown_grace_ms;
    deliver_drain(w->dl);
    for (unsigned i = 0; i < w->nls; i++) { /* stop accepting */
        struct io_uring_sqe *sqe = sqe_get(w);
        io_uring_prep_cancel64(sqe, ud_make(UD_ACCEPT, i, 0), 0);
        io_uring_sqe_set_data64(sqe, ud_make(UD_IGNORE, 0, 0));
    }
    for (uint32_t i = 0; i < w->nslots; i++) {
        struct slot *s = &w->slots[i];
        if (s->used && !s->close_on) {
            smtpd_drain(&s->sess);
            slot_pump(w, s);
        }
    }
}

static void on_wake(struct worker *w)
{
    int phase = atomic_load_explicit(&w->sh->stop_phase, memory_order_acquire);
    if (phase >= WORKER_DRAIN && !w->draining)
        drain_begin(w);
    if (phase >= WORKER_FORCE)
        w->drain_deadline_ms = w->mono_ms; /* the next tick closes everything */
    wake_arm(w);
}

static void log_flush(struct worker *w, struct log_buf *b, uint32_t which)
{
    const char *p;
    size_t n;
    if (!log_buf_next(b, &p, &n))
        return;
    struct io_uring_sqe *sqe = sqe_get(w);
    io_uring_prep_write(sqe, b->fd, p, (unsigned)n, (uint64_t)-1); /* -1: the file position */
    io_uring_sqe_set_data64(sqe, ud_make(UD_LOG, which, 0));
}

static void on_cqe(struct worker *w, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    enum ud_kind kind = (enum ud_kind)(ud >> 56);
    switch (kind) {
    case UD_ACCEPT:
        on_accept(w, (uint32_t)(ud >> 32) & UD_IDX_MAX, cqe->res, cqe->flags);
        break;
    case UD_RECV:
        on_recv(w, slot_of(w, ud), cqe->res);
        break;
    case UD_SEND:
        on_send(w, slot_of(w, ud), cqe->res);
        break;
    case UD_CANCEL: {
        struct slot *s = slot_of(w, ud);
        s->cancel_on = false;
        slot_pump(w, s);
        break;
    }
    case UD_CLOSE: {
        struct slot *s = slot_of(w, ud);
        s->close_on = false;
        slot_free(w, s);
        break;
    }
    case UD_TICK:
        on_tick(w);
        break;
    case UD_QEVENT:
        on_qevent(w);
        break;
    case UD_WAKE:
        on_wake(w);
        break;
    case UD_LOG:
        log_buf_written(((ud >> 32) & 1) ? &w->diag : &w->dlog, cqe->res);
        break;
    case UD_REFUSED:
        close((int)((ud >> 32) & UD_IDX_MAX)); /* close(2) of a socket does not block */
        break;
    case UD_IGNORE:
        break;
    case UD_OUT_CONNECT:
    case UD_OUT_RECV:
    case UD_OUT_SEND:
    case UD_OUT_CLOSE:
    case UD_OUT_TIMEOUT:
    case UD_DNS_RECV:
    case UD_DNS_SEND:
    case UD_DNS_TCP:
        deliver_cqe(w->dl, ud, cqe->res, cqe->flags);
        break;
    case UD_KIND_MAX:
        RM_ASSERT(!"bad user_data kind");
    }
}

static bool worker_finished(const struct worker *w)
{
    if (!w->draining || w->used > 0 || !deliver_idle(w->dl))
        return false;
    for (unsigned i = 0; i < w->nls; i++)
        if (w->ls[i].armed)
            return false;
    return !w->dlog.writing && !w->diag.writing && w->dlog.len[0] + w->dlog.len[1] == 0 &&
           w->diag.len[0] + w->diag.len[1] == 0;
}

static int ring_setup(struct worker *w)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* One thread submits and reaps: let the kernel skip cross-thread work. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    /* The CQ holds every completion that can be pending at once (a slot has
     * at most recv, send and cancel or close in flight, plus the loop's own
     * few), so it never overflows and submission never fails for it. */
    const struct cfg *cfg = w->sh->cfg;
    uint64_t outbound = (cfg->outbound_max + w->sh->nworkers - 1) / w->sh->nworkers;
    uint64_t cq = 4ull * w->nslots + 4ull * w->nls + 3ull * outbound + DELIVER_DNS_SENDS +
                  DELIVER_DNS_TCP + 64;
    p.cq_entries = (uint32_t)RM_MIN(cq, WORKER_CQ_MAX);
    p.flags |= IORING_SETUP_CQSIZE;
    int rc = io_uring_queue_init_params(WORKER_RING_ENTRIES, &w->ring, &p);
    if (rc == -EINVAL) { /* kernels before 6.1 */
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
        p.cq_entries = (uint32_t)RM_MIN(cq, WORKER_CQ_MAX);
        rc = io_uring_queue_init_params(WORKER_RING_ENTRIES, &w->ring, &p);
    }
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof(p));
        rc = io_uring_queue_init_params(WORKER_RING_ENTRIES, &w->ring, &p);
    }
    if (rc < 0)
        return rc;
    w->ring_ok = true;
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (w->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set); /* best effort */
    }
    w->start_rc = ring_setup(w);
    sem_post(&w->ready);
    if (w->start_rc < 0)
        goto out;
    clock_update(w);
    for (unsigned i = 0; i < w->nls; i++)
        accept_arm(w, i);
    qevent_arm(w);
    wake_arm(w);
    tick_arm(w);
    if (deliver_start(w->dl) != 0)
        w->fatal = true;
    if (w->nrec > 0)
        log_buf_diag(&w->diag, LOG_INFO, "worker", "-", "worker=%u recovered=%zu", w->idx, w->nrec);
    if (atomic_load_explicit(&w->sh->stop_phase, memory_order_acquire) != WORKER_RUN)
        drain_begin(w); /* a signal before we started */
    while (!worker_finished(w) && !w->fatal) {
        log_flush(w, &w->dlog, 0);
        log_flush(w, &w->diag, 1);
        int rc = io_uring_submit_and_wait(&w->ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
            log_buf_diag(&w->diag, LOG_ERR, "worker", "-", "io_uring_submit_and_wait: %s",
                         strerror(-rc));
            break;
        }
        clock_update(w);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            on_cqe(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        stat_add(&w->st->log_dropped,
                 (int64_t)(w->dlog.dropped + w->diag.dropped -
                           atomic_load_explicit(&w->st->log_dropped, memory_order_relaxed)));
    }
out:
    log_buf_flush_sync(&w->dlog);
    log_buf_flush_sync(&w->diag);
    atomic_store_explicit(&w->done, true, memory_order_release); /* pairs with worker_done */
    worker_wake(w); /* nothing reads it now; harmless */
    return NULL;
}

/* ---- life cycle --------------------------------------------------------------- */

int worker_new(struct worker **out, struct worker_shared *sh, unsigned idx, const int *fds,
               unsigned nfds)
{
    const struct cfg *cfg = sh->cfg;
    struct worker *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->sh = sh;
    w->idx = idx;
    w->cpu = -1;
    w->wake_fd = -1;
    w->st = &sh->stats[idx];
    w->iptab = &sh->iptabs[idx];
    w->wait_head = w->wait_tail = SLOT_NONE;
    w->tick_ts.tv_nsec = (long long)WORKER_TICK_MS * 1000000;
    int rc = -ENOMEM;
    if (sem_init(&w->ready, 0, 0) != 0)
        goto fail;
    w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->wake_fd < 0) {
        rc = -errno;
        goto fail;
    }
    w->nslots = (cfg->sessions_max + sh->nworkers - 1) / sh->nworkers;
    w->nslots = RM_MIN(w->nslots, WORKER_SLOTS_MAX); /* the CQ bound: see ring_setup */
    w->slots = calloc(w->nslots, sizeof(*w->slots));
    w->scfg = calloc(cfg->nlisteners, sizeof(*w->scfg));
    w->ls = calloc(nfds, sizeof(*w->ls));
    if (!w->slots || !w->scfg || !w->ls)
        goto fail;
    w->nls = nfds;
    for (unsigned l = 0, k = 0; l < cfg->nlisteners; l++) {
        for (unsigned a = 0; a < cfg->listeners[l].naddrs; a++, k++) {
            RM_ASSERT(k < nfds);
            w->ls[k].fd = fds[k];
            w->ls[k].listener = (uint16_t)l;
        }
        w->scfg[l] = (struct smtpd_cfg){
            .hostname = cfg->hostname,
            .listener = cfg->listeners[l].name,
            .message_size_max = cfg->message_size_max,
            .rcpt_max = cfg->rcpt_max,
            .command_line_max = cfg->command_line_max,
            .text_line_max = cfg->text_line_max,
            .errors_max = cfg->errors_max,
        };
    }
    /* Slot memory: rx, tx, arena, recipient records; reserved, not committed. */
    size_t per = WORKER_RX_BYTES + WORKER_TX_BYTES + SMTPD_ARENA_BYTES(cfg->rcpt_max) +
                 (size_t)cfg->rcpt_max * sizeof(struct q_rcpt);
    w->slot_bytes = (per + 4095) & ~(size_t)4095;
    w->region_bytes = w->slot_bytes * w->nslots;
    void *m = mmap(NULL, w->region_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    w->region = m;
    rc = rm_pool_init(&w->pool, RM_CHUNK_BYTES_DEFAULT, cfg->body_memory / RM_CHUNK_BYTES_DEFAULT);
    if (rc < 0)
        goto fail;
    w->free_head = SLOT_NONE;
    for (uint32_t i = w->nslots; i-- > 0;) {
        w->slots[i].next_free = w->free_head;
        w->free_head = i;
    }
    uint64_t seed = 0;
    if (getentropy(&seed, sizeof(seed)) != 0)
        seed = (uint64_t)time(NULL) ^ ((uint64_t)idx << 32);
    q_idgen_init(&w->idgen, (uint16_t)idx, seed);
    rc = log_buf_init(&w->dlog, sh->delivery_log_fd);
    if (rc == 0)
        rc = log_buf_init(&w->diag, STDERR_FILENO);
    if (rc < 0)
        goto fail;
    struct deliver_ctx dc = {.ring = &w->ring,
                             .cfg = cfg,
                             .q = sh->q,
                             .worker = idx,
                             .nworkers = sh->nworkers,
                             .pool = &w->pool,
                             .idgen = &w->idgen,
                             .dlog = &w->dlog,
                             .diag = &w->diag,
                             .now_ms = &w->now_ms,
                             .mono_ms = &w->mono_ms};
    char derr[256];
    rc = deliver_new(&w->dl, &dc, derr, sizeof(derr));
    if (rc < 0) {
        log_diag(LOG_ERR, "worker", "-", "%s", derr);
        goto fail;
    }
    *out = w;
    return 0;
fail:
    worker_free(w);
    return rc;
}

void worker_give_recovered(struct worker *w, struct worker_recovered *rec, size_t n)
{
    free(w->rec);
    w->rec = rec;
    w->nrec = n;
}

int worker_start(struct worker *w, int cpu)
{
    w->cpu = cpu;
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0)
        return -rc;
    while (sem_wait(&w->ready) != 0 && errno == EINTR)
        ;
    if (w->start_rc < 0) {
        pthread_join(w->thread, NULL);
        w->thread = 0;
    }
    return w->start_rc;
}

void worker_wake(struct worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->wake_fd, &one, sizeof(one)); /* EFD_NONBLOCK: never blocks */
    (void)n;
}

bool worker_done(struct worker *w)
{
    return atomic_load_explicit(&w->done, memory_order_acquire);
}

void worker_join(struct worker *w)
{
    if (w->thread) {
        pthread_join(w->thread, NULL);
        w->thread = 0;
    }
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    /* The ring first: closing an fd does not cancel its io_uring requests,
     * and an armed DNS recvmsg writes into the engine's buffers. */
    if (w->ring_ok)
        io_uring_queue_exit(&w->ring);
    deliver_free(w->dl);
    for (unsigned i = 0; w->ls && i < w->nls; i++)
        if (w->ls[i].fd >= 0)
            close(w->ls[i].fd);
    if (w->region)
        munmap(w->region, w->region_bytes);
    rm_pool_fini(&w->pool);
    log_buf_fini(&w->dlog);
    log_buf_fini(&w->diag);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    sem_destroy(&w->ready);
    free(w->slots);
    free(w->scfg);
    free(w->ls);
    free(w->rec);
    free(w);
}
