/* mta/deliver.c: the delivery engine of one worker (see deliver.h). */
#include "deliver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../dns/dns.h"
#include "dsn.h"
#include "retry.h"
#include "sched.h"
#include "smtpc.h"
#include "uring.h"

#define OC_RX_BYTES   4096u /* >= SMTPC_REPLY_LINE_MAX */
#define OC_TX_BYTES   (4u * SMTPC_CMD_MAX)
#define OC_IOV_MAX    64u
#define DRES_TEXT_MAX 300u /* octets of a reply text kept per recipient */
static_assert(DELIVER_DNS_SENDS <= UINT16_MAX + 1u, "dsend_free holds 16-bit indices");

#define TARGETS_MAX                                                                                \
    32u /* addresses tried per destination, in order: no sender                                    \
         * tries more in one attempt; ~12 KiB per destination */

/* ---- structures --------------------------------------------------------- */

struct dres {        /* one recipient's outcome in this attempt */
    uint8_t outcome; /* enum smtpc_outcome; SMTPC_PENDING: not attempted */
    uint8_t esc[3];
    uint16_t code;
    uint16_t text_len;
    char text[DRES_TEXT_MAX];
    char mta[64]; /* remote host name, for the DSN */
};

enum dmsg_phase { DM_DELIVERING, DM_DSN, DM_COMMIT };

struct dmsg { /* a message out for delivery; malloc'd, at most max_inflight per worker */
    struct q_id id;
    char ids[Q_ID_STR_LEN + 1];
    uint64_t due_ms;       /* its sched key now */
    uint8_t *env_raw;      /* owned copy of the envelope record */
    struct q_env env;      /* decoded: spans into env_raw */
    struct q_rcpt *rcpts;  /* owned */
    struct rm_chunk *body; /* owned, from the pool */
    struct dres *res;      /* owned, one per recipient */
    uint32_t jobs_left;
    enum dmsg_phase phase;
    struct q_req req;     /* the UPDATE / DELETE, then the DSN STORE */
    struct dsn_env *benv; /* owned while a DSN is stored */
    struct rm_chunk *dsn_body;
    bool final;               /* every recipient final: DELETE */
    struct dmsg *prev, *next; /* the engine's list of messages in flight */
    struct dmsg *next_retry;  /* on the engine's list of requests to submit again */
};

struct ddest;

struct djob { /* the recipients of one message for one destination */
    struct dmsg *m;
    struct ddest *d;
    struct djob *next;
    uint32_t target; /* first target to try: past those whose greeting/EHLO failed */
    uint32_t n;
    uint32_t idx[DELIVER_BATCH_RCPTS];
};

struct dtarget {
    struct sockaddr_storage sa;
    socklen_t len;
    char host[DNS_NAME_MAX + 1];
};

enum ddest_state { DD_NEW, DD_RESOLVING, DD_READY, DD_FAILED };

struct ddest {
    bool used;
    char name[DNS_NAME_MAX + 1]; /* lower case */
    enum ddest_state st;
    uint64_t expiry_ms;      /* mono: route valid until / failure held until */
    struct dtarget *targets; /* owned, in the order to try */
    unsigned ntargets;
    /* A route failure applies to every job: */
    uint8_t fail_outcome;
    uint8_t fail_esc[3];
    char fail_text[160];
    uint64_t lookup;
    struct djob *head, *tail;
    uint32_t queued;
    uint32_t nconn, conn_max;
    uint16_t port;
    bool starved;       /* on the engine's starved list: waits for a free slot */
    bool tomb;          /* evicted: !used, but lookups probe past it */
    struct oconn *idle; /* its idle connections (a destination is not evicted with any) */
    uint64_t mark;      /* msg_start: kicked for the message with this sequence
                         * number (not its address: malloc reuses addresses) */
    struct ddest *next_starved;
};

enum oc_state { OC_FREE, OC_CONNECTING, OC_SMTP, OC_IDLE, OC_CLOSING };

struct oconn {
    enum oc_state st;
    uint32_t gen;
    int fd;
    uint8_t ops; /* io_uring operations in flight naming this slot */
    bool recv_on, send_on, close_on, quitting;
    bool result_pending; /* the job's results wait for the send in flight to complete */
    bool shut;           /* shut down (by us) or failed: nothing more is sent or received */
    struct oconn *idle_prev, *idle_next; /* on d->idle while OC_IDLE */
    struct ddest *d;
    unsigned target;  /* index into d->targets being tried */
    struct djob *job; /* the transaction in progress */
    uint32_t msgs;    /* transactions on this connection */
    uint64_t idle_since_ms;
    size_t recv_off;
    char peer[DNS_NAME_MAX + INET6_ADDRSTRLEN + 4];
    struct smtpc sc;
    struct rm_buf rx, tx;
    uint8_t *mem; /* rx, tx, arena, results: malloc'd at first use, kept */
    struct smtpc_result *results;
    struct rm_span spans[OC_IOV_MAX];
    struct iovec iov[OC_IOV_MAX];
    struct msghdr mh;
    struct __kernel_timespec connect_ts;
};

struct dns_send {
    bool used;
    uint8_t wire[DNS_QUERY_WIRE_MAX + 2];
    struct sockaddr_storage sa;
    struct iovec iov;
    struct msghdr mh;
    uint64_t query;
};

enum dtcp_state { DT_FREE, DT_CONNECT, DT_SEND, DT_RECV };

struct dns_tcp { /* one DNS exchange over TCP, after a truncated UDP answer */
    enum dtcp_state st;
    uint32_t gen;
    int fd;
    uint64_t query;
    uint64_t started_ms; /* mono */
    struct sockaddr_storage sa;
    socklen_t salen;
    uint8_t out[DNS_QUERY_WIRE_MAX + 2];
    size_t out_len, sent;
    uint8_t *in; /* malloc'd at first use: 2 + DNS_TCP_ANSWER_MAX */
    size_t in_len;
};

struct dns_sock {
    int fd;
    bool recv_on;
    uint8_t buf[DNS_UDP_RX_BYTES];
    struct sockaddr_storage src;
    struct iovec iov;
    struct msghdr mh;
};

struct deliver {
    struct deliver_ctx c;
    struct sched sched;
    struct retry_sched retry;
    struct smtpc_cfg scfg;
    struct dns_resolver *dns;
    struct dns_sock dsock[2];
    struct dns_send dsend[DELIVER_DNS_SENDS];
    uint16_t dsend_free[DELIVER_DNS_SENDS]; /* stack of free send buffers; top at
                                             * DELIVER_DNS_SENDS - dns_sends - 1 */
    struct dns_tcp dtcp[DELIVER_DNS_TCP];
    uint32_t dns_tcp_busy;
    struct ddest *dests;
    uint32_t ndest_cap;
    struct oconn *conns;
    uint32_t nconns, conns_used;
    uint32_t *free_slots;   /* stack of free connection slots: O(1) allocation */
    uint32_t conn_share;    /* this worker's share of max_connections per destination */
    uint32_t reqs_inflight; /* queue requests of ours not yet back */
    uint32_t dns_sends;
    struct dmsg *msgs; /* messages in flight (freed at exit if still there) */
    struct ddest *starved_head, *starved_tail; /* destinations waiting for a free slot, FIFO */
    struct dmsg *retry_head; /* messages whose queue request failed: submitted again each tick */
    int load_err;            /* why the last dmsg_load failed */
    uint64_t start_seq;      /* msg_start calls, for ddest.mark */
    bool draining;
    uint64_t rnd;
    char line[LOG_LINE_MAX];
};

static uint64_t now_ms(const struct deliver *d)
{
    return *d->c.now_ms;
}

static uint64_t mono_ms(const struct deliver *d)
{
    return *d->c.mono_ms;
}

static uint32_t rnd32(struct deliver *d)
{
    uint64_t x = d->rnd;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    d->rnd = x;
    return (uint32_t)(x >> 16);
}

/* ---- the delivery log ---------------------------------------------------- */

static const char *outcome_event(uint8_t outcome, bool expired)
{
    if (expired)
        return "expiry";
    switch ((enum smtpc_outcome)outcome) {
    case SMTPC_OK:
        return "delivery";
    case SMTPC_TEMP:
        return "deferral";
    case SMTPC_PERM:
        return "bounce";
    case SMTPC_PENDING:
        break;
    }
    return "deferral";
}

static void log_rcpt(struct deliver *d, const struct dmsg *m, uint32_t i, bool expired,
                     uint64_t next_ms)
{
    const struct dres *r = &m->res[i];
    struct log_json j;
    char esc[16];
    log_json_begin(&j, d->line, sizeof(d->line));
    log_json_key(&j, "time");
    log_json_time(&j, now_ms(d));
    log_json_key(&j, "event");
    log_json_str(&j, rm_span_str(outcome_event(r->outcome, expired)));
    log_json_key(&j, "id");
    log_json_str(&j, rm_span_str(m->ids));
    log_json_key(&j, "sender");
    log_json_str(&j, m->env.sender);
    log_json_key(&j, "rcpt");
    log_json_str(&j, m->rcpts[i].addr);
    log_json_key(&j, "attempt");
    log_json_u64(&j, m->env.attempts + 1);
    if (r->mta[0]) {
        log_json_key(&j, "mx");
        log_json_str(&j, rm_span_str(r->mta));
    }
    int n = snprintf(esc, sizeof(esc), "%u.%u.%u", r->esc[0], r->esc[1], r->esc[2]);
    log_json_key(&j, "status");
    log_json_str(&j, rm_span_make(esc, (size_t)n));
    if (r->code) {
        log_json_key(&j, "code");
        log_json_u64(&j, r->code);
    }
    log_json_key(&j, "reply");
    log_json_str(&j, rm_span_make(r->text, r->text_len));
    log_json_key(&j, "delay_ms");
    log_json_u64(&j, now_ms(d) > m->env.arrival_ms ? now_ms(d) - m->env.arrival_ms : 0);
    if (next_ms) {
        log_json_key(&j, "next_attempt");
        log_json_time(&j, next_ms);
    }
    log_json_end(&j);
    log_buf_line(d->c.dlog, j.p, j.len);
}

/* ---- messages -------------------------------------------------------------- */

static void dmsg_free(struct deliver *d, struct dmsg *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else if (d->msgs == m)
        d->msgs = m->next;
    if (m->next)
        m->next->prev = m->prev;
    rm_pool_put_chain(d->c.pool, m->body);
    rm_pool_put_chain(d->c.pool, m->dsn_body);
    free(m->env_raw);
    free(m->rcpts);
    free(m->res);
    free(m->benv);
    free(m);
}

static void dres_set(struct dres *r, uint8_t outcome, const uint8_t esc[3], uint16_t code,
                     struct rm_span text, const char *mta)
{
    r->outcome = outcome;
    memcpy(r->esc, esc, 3);
    r->code = code;
    r->text_len = (uint16_t)RM_MIN(text.len, sizeof(r->text));
    memcpy(r->text, text.p, r->text_len);
    snprintf(r->mta, sizeof(r->mta), "%s", mta ? mta : "");
}

/* Copies the message's body from the map into pool chunks. */
static int copy_body(struct deliver *d, struct dmsg *m, struct rm_span msg)
{
    struct rm_chunk *head = NULL, *tail = NULL;
    size_t off = 0;
    while (off < msg.len) {
        struct rm_chunk *c = rm_pool_get(d->c.pool);
        if (!c) {
            rm_pool_put_chain(d->c.pool, head);
            return -ENOMEM;
        }
        size_t n = RM_MIN(c->cap, msg.len - off);
        memcpy(c->data, msg.p + off, n);
        c->len = (uint32_t)n;
        if (tail)
            tail->next = c;
        else
            head = c;
        tail = c;
        off += n;
    }
    m->body = head;
    return 0;
}

static struct dmsg *dmsg_load(struct deliver *d, const struct sched_entry *e)
{
    struct dmsg *m = calloc(1, sizeof(*m));
    struct q_read *r = NULL;
    struct rm_span raw, msg;
    if (!m)
        return NULL;
    m->id = e->id;
    m->due_ms = e->due_ms;
    q_id_format(&e->id, m->ids);
    d->load_err = q_read_begin(d->c.q, &r);
    if (d->load_err == 0)
        d->load_err = q_read_env(r, &e->id, &raw);
    if (d->load_err == 0)
        d->load_err = q_read_msg(r, &e->id, &msg);
    if (d->load_err != 0)
        goto fail;
    d->load_err = -ENOMEM;
    m->env_raw = malloc(raw.len);
    if (!m->env_raw)
        goto fail;
    memcpy(m->env_raw, raw.p, raw.len);
    /* A first decode into a small array tells the recipient count. */
    struct q_rcpt one;
    int rc = q_env_decode(&m->env, m->env_raw, raw.len, &one, 1);
    uint32_t n = rc == 0 ? 1 : 0;
    if (rc == Q_ERR_RANGE) {
        /* count them: decode with the largest array that could be needed */
        n = (uint32_t)RM_MIN(raw.len / 8 + 1, Q_RCPT_MAX);
    } else if (rc != 0) {
        goto fail;
    }
    m->rcpts = calloc(n, sizeof(*m->rcpts));
    if (!m->rcpts || q_env_decode(&m->env, m->env_raw, raw.len, m->rcpts, n) != 0)
        goto fail;
    m->res = calloc(m->env.rcpt_count, sizeof(*m->res));
    if (!m->res || copy_body(d, m, msg) != 0)
        goto fail;
    q_read_end(r);
    d->load_err = 0;
    m->next = d->msgs;
    if (d->msgs)
        d->msgs->prev = m;
    d->msgs = m;
    return m;
fail:
    q_read_end(r);
    if (d->load_err != Q_ERR_NOT_FOUND)
        log_buf_diag(d->c.diag, LOG_ERR, "deliver", m->ids, "cannot load the message: %s",
                     d->load_err == -ENOMEM ? "out of memory" : q_strerror(d->load_err));
    dmsg_free(d, m);
    return NULL;
}

/* ---- destinations ------------------------------------------------------------ */

static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        h = (h ^ (c >= 'A' && c <= 'Z' ? c + 32 : c)) * 16777619u;
    }
    return h;
}

static bool dest_evictable(const struct ddest *x)
{
    return x->used && !x->head && x->nconn == 0 && !x->idle && x->st != DD_RESOLVING && !x->starved;
}

static void dest_init(struct deliver *d, struct ddest *x, const char *dom, size_t n)
{
    struct dtarget *t = x->targets; /* kept across evictions */
    memset(x, 0, sizeof(*x));
    x->targets = t;
    x->used = true;
    for (size_t k = 0; k < n; k++)
        x->name[k] = (char)((dom[k] >= 'A' && dom[k] <= 'Z') ? dom[k] + 32 : dom[k]);
    x->name[n] = '\0';
    const struct cfg_domain *cd = cfg_domain_find(d->c.cfg, x->name, n);
    uint32_t max = cd && cd->max_connections ? cd->max_connections : d->c.cfg->dest_connections_max;
    /* The global limit holds: each worker gets its share (at least 1, so
     * the limit is max(max_connections, workers)). */
    x->conn_max = RM_MAX(1u, (max + d->c.nworkers - 1 - d->c.worker) / d->c.nworkers);
    x->port = cd && cd->route_port ? cd->route_port : d->c.cfg->delivery_port;
}

/* The destination of a domain: found, or made. Open addressing with
 * tombstones; when the table is full, idle destinations (no job, no
 * connection, no lookup) are evicted (their route comes back from the DNS
 * cache). NULL when even that leaves no room. */
static struct ddest *dest_get(struct deliver *d, const char *dom, size_t n)
{
    if (n == 0 || n > DNS_NAME_MAX)
        return NULL;
    uint32_t mask = d->ndest_cap - 1, home = name_hash(dom, n) & mask;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t at = UINT32_MAX; /* the first free slot (tombstone or empty) */
        uint32_t i = home;
        for (uint32_t probe = 0; probe < d->ndest_cap; probe++, i = (i + 1) & mask) {
            struct ddest *x = &d->dests[i];
            if (x->used) {
                if (strlen(x->name) == n && strncasecmp(x->name, dom, n) == 0)
                    return x;
                continue;
            }
            if (at == UINT32_MAX)
                at = i;
            if (!x->tomb)
                break; /* an empty slot ends the chain: the name is not further on */
        }
        if (at != UINT32_MAX) {
            struct ddest *x = &d->dests[at];
            if (!x->targets)
                x->targets = calloc(TARGETS_MAX, sizeof(*x->targets));
            if (!x->targets)
                return NULL;
            dest_init(d, x, dom, n);
            return x;
        }
        for (uint32_t k = 0; pass == 0 && k < d->ndest_cap; k++) { /* full: evict idle ones */
            if (dest_evictable(&d->dests[k])) {
                d->dests[k].used = false;
                d->dests[k].tomb = true;
            }
        }
    }
    return NULL;
}

static void job_finish(struct deliver *d, struct djob *jb);

/* Resolves every queued job of a destination with one outcome. */
static void dest_fail_all(struct deliver *d, struct ddest *x)
{
    while (x->head) {
        struct djob *jb = x->head;
        x->head = jb->next;
        x->queued--;
        for (uint32_t k = 0; k < jb->n; k++)
            dres_set(&jb->m->res[jb->idx[k]], x->fail_outcome, x->fail_esc, 0,
                     rm_span_str(x->fail_text), NULL);
        job_finish(d, jb);
    }
    x->tail = NULL;
}

static void dest_set_failure(struct ddest *x, uint8_t outcome, uint8_t a, uint8_t b, uint8_t c,
                             const char *text, uint64_t until_ms)
{
    x->st = DD_FAILED;
    x->fail_outcome = outcome;
    x->fail_esc[0] = a;
    x->fail_esc[1] = b;
    x->fail_esc[2] = c;
    snprintf(x->fail_text, sizeof(x->fail_text), "%s", text);
    x->expiry_ms = until_ms;
}

static void dest_dispatch(struct deliver *d, struct ddest *x);

static bool target_from_literal(const char *host, uint16_t port, struct dtarget *t)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)&t->sa;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t->sa;
    memset(t, 0, sizeof(*t));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        t->len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        t->len = sizeof(*a6);
    } else {
        return false;
    }
    snprintf(t->host, sizeof(t->host), "%s", host);
    return true;
}

static void dest_route_done(struct deliver *d, struct ddest *x, const struct dns_route *rt)
{
    uint64_t ttl_ms = (uint64_t)RM_MAX(rt->ttl_s, 5u) * 1000;
    switch (rt->outcome) {
    case DNS_ROUTE_OK:
        break;
    case DNS_ROUTE_NULLMX:
        dest_set_failure(x, SMTPC_PERM, 5, 1, 10, "Domain does not accept mail (null MX, RFC 7505)",
                         mono_ms(d) + ttl_ms);
        dest_fail_all(d, x);
        return;
    case DNS_ROUTE_NXDOMAIN:
        dest_set_failure(x, SMTPC_PERM, 5, 1, 2, "Host or domain name not found (NXDOMAIN)",
                         mono_ms(d) + ttl_ms);
        dest_fail_all(d, x);
        return;
    case DNS_ROUTE_NOHOSTS:
        dest_set_failure(x, SMTPC_PERM, 5, 4, 4, "Host or domain name not found (no address)",
                         mono_ms(d) + ttl_ms);
        dest_fail_all(d, x);
        return;
    case DNS_ROUTE_TEMPFAIL:
        dest_set_failure(x, SMTPC_TEMP, 4, 4, 3, "DNS lookup failed temporarily",
                         mono_ms(d) + DELIVER_ROUTE_FAIL_MS / 10);
        dest_fail_all(d, x);
        return;
    }
    unsigned n = 0;
    for (unsigned h = 0; h < rt->host_count; h++) {
        const struct dns_host *host = &rt->hosts[h];
        for (unsigned a = 0; a < host->addr_count && n < TARGETS_MAX; a++) {
            struct dtarget *t = &x->targets[n];
            memset(t, 0, sizeof(*t));
            const struct dns_addr *ad = &host->addrs[a];
            if (ad->family == AF_INET) {
                struct sockaddr_in *a4 = (struct sockaddr_in *)&t->sa;
                a4->sin_family = AF_INET;
                a4->sin_port = htons(x->port);
                memcpy(&a4->sin_addr, ad->ip, 4);
                t->len = sizeof(*a4);
            } else {
                struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t->sa;
                a6->sin6_family = AF_INET6;
                a6->sin6_port = htons(x->port);
                memcpy(&a6->sin6_addr, ad->ip, 16);
                t->len = sizeof(*a6);
            }
            size_t hl = RM_MIN(host->name.len, sizeof(t->host) - 1);
            memcpy(t->host, host->name.p, hl);
            t->host[hl] = '\0';
            n++;
        }
    }
    x->ntargets = n;
    x->st = DD_READY;
    x->expiry_ms = mono_ms(d) + ttl_ms;
    dest_dispatch(d, x);
}

static void dns_pump(struct deliver *d);

/* Makes sure the destination has a route (or a failure) and sends its jobs. */
static void dest_kick(struct deliver *d, struct ddest *x)
{
    if ((x->st == DD_READY || x->st == DD_FAILED) && mono_ms(d) >= x->expiry_ms)
        x->st = DD_NEW; /* expired: resolve again */
    if (x->st == DD_FAILED) {
        dest_fail_all(d, x);
        return;
    }
    if (x->st == DD_READY) {
        dest_dispatch(d, x);
        return;
    }
    if (x->st == DD_RESOLVING)
        return;
    const struct cfg_domain *cd = cfg_domain_find(d->c.cfg, x->name, strlen(x->name));
    const char *host = cd && cd->route_host[0] ? cd->route_host : x->name;
    if (cd && cd->route_host[0] && target_from_literal(host, x->port, &x->targets[0])) {
        x->ntargets = 1; /* route = IP[:port]: no DNS at all */
        x->st = DD_READY;
        x->expiry_ms = UINT64_MAX;
        dest_dispatch(d, x);
        return;
    }
    if (x->name[0] == '[') { /* an address literal domain: user@[192.0.2.1] */
        char lit[DNS_NAME_MAX + 1];
        size_t n = strlen(x->name);
        snprintf(lit, sizeof(lit), "%.*s", (int)(n >= 2 ? n - 2 : 0), x->name + 1);
        const char *p = strncasecmp(lit, "ipv6:", 5) == 0 ? lit + 5 : lit;
        if (target_from_literal(p, x->port, &x->targets[0])) {
            x->ntargets = 1;
            x->st = DD_READY;
            x->expiry_ms = UINT64_MAX;
            dest_dispatch(d, x);
            return;
        }
        dest_set_failure(x, SMTPC_PERM, 5, 1, 2, "Bad address literal", UINT64_MAX);
        dest_fail_all(d, x);
        return;
    }
    /* MX lookup (a named route host is looked up the same way; with no MX
     * records that is its own A/AAAA). */
    uint32_t di = (uint32_t)(x - d->dests);
    int rc = dns_route(d->dns, host, strlen(host), di, mono_ms(d), &x->lookup);
    if (rc < 0) {
        if (rc == DNS_ERR_NAME)
            dest_set_failure(x, SMTPC_PERM, 5, 1, 2, "Bad destination domain name", UINT64_MAX);
        else
            dest_set_failure(x, SMTPC_TEMP, 4, 4, 3, "DNS resolver busy", mono_ms(d) + 1000);
        dest_fail_all(d, x);
        return;
    }
    x->st = DD_RESOLVING;
    dns_pump(d); /* DNS_DONE: the answer waits in dns_poll */
}

/* ---- outbound connections ------------------------------------------------------- */

static uint64_t oc_ud(struct deliver *d, struct oconn *o, enum ud_kind k)
{
    return ud_make(k, (uint32_t)(o - d->conns), o->gen);
}

static void oc_pump(struct deliver *d, struct oconn *o);

static struct oconn *oc_alloc(struct deliver *d)
{
    if (d->conns_used < d->nconns) {
        struct oconn *o = &d->conns[d->free_slots[d->nconns - d->conns_used - 1]];
        RM_ASSERT(o->st == OC_FREE);
        if (!o->mem) {
            size_t arena = SMTPC_ARENA_BYTES(DELIVER_BATCH_RCPTS);
            o->mem = malloc(OC_RX_BYTES + OC_TX_BYTES + arena +
                            DELIVER_BATCH_RCPTS * sizeof(struct smtpc_result));
            if (!o->mem)
                return NULL;
            o->results =
                (struct smtpc_result *)(void *)(o->mem + OC_RX_BYTES + OC_TX_BYTES + arena);
        }
        uint32_t gen = o->gen;
        uint8_t *mem = o->mem;
        struct smtpc_result *res = o->results;
        memset(o, 0, sizeof(*o));
        o->gen = gen;
        o->mem = mem;
        o->results = res;
        o->fd = -1;
        rm_buf_init(&o->rx, mem, OC_RX_BYTES);
        rm_buf_init(&o->tx, mem + OC_RX_BYTES, OC_TX_BYTES);
        d->conns_used++;
        return o;
    }
    return NULL;
}

static void oc_set_idle(struct deliver *d, struct oconn *o)
{
    o->st = OC_IDLE;
    o->idle_since_ms = mono_ms(d);
    o->idle_prev = NULL;
    o->idle_next = o->d->idle;
    if (o->d->idle)
        o->d->idle->idle_prev = o;
    o->d->idle = o;
}

/* Takes an idle connection off its destination's list, for a job or a QUIT. */
static void oc_unidle(struct oconn *o)
{
    RM_ASSERT(o->st == OC_IDLE);
    if (o->idle_prev)
        o->idle_prev->idle_next = o->idle_next;
    else
        o->d->idle = o->idle_next;
    if (o->idle_next)
        o->idle_next->idle_prev = o->idle_prev;
    o->idle_prev = o->idle_next = NULL;
    o->st = OC_SMTP;
}

static void oc_quit_idle(struct deliver *d, struct oconn *o)
{
    oc_unidle(o);
    o->quitting = true;
    smtpc_quit(&o->sc, mono_ms(d));
    oc_pump(d, o);
}

static void oc_release(struct deliver *d, struct oconn *o)
{
    RM_ASSERT(o->ops == 0 && o->fd < 0 && !o->job);
    if (o->d)
        o->d->nconn--;
    o->st = OC_FREE;
    o->gen++;
    d->conns_used--;
    d->free_slots[d->nconns - d->conns_used - 1] = (uint32_t)(o - d->conns);
}

static void oc_connect(struct deliver *d, struct oconn *o);

/* The connection is over: the fd is closed. Its slot goes to its own
 * destination's queued jobs first, else to a destination that waits for one. */
static void oc_closed(struct deliver *d, struct oconn *o)
{
    struct ddest *x = o->d;
    oc_release(d, o);
    if (x && x->head)
        dest_dispatch(d, x);
    while (d->starved_head && d->conns_used < d->nconns) {
        struct ddest *s = d->starved_head;
        d->starved_head = s->next_starved;
        if (!d->starved_head)
            d->starved_tail = NULL;
        s->starved = false;
        dest_dispatch(d, s);
    }
}

/* No free slot for x: wait in line, and ask one idle connection elsewhere
 * to quit so that a slot frees up soon. */
static void dest_starve(struct deliver *d, struct ddest *x)
{
    if (!x->starved) {
        x->starved = true;
        x->next_starved = NULL;
        if (d->starved_tail)
            d->starved_tail->next_starved = x;
        else
            d->starved_head = x;
        d->starved_tail = x;
    }
    for (uint32_t i = 0; i < d->nconns; i++) { /* rare: only when every slot is taken */
        struct oconn *o = &d->conns[i];
        if (o->st == OC_IDLE && o->d != x) {
            oc_quit_idle(d, o);
            return;
        }
    }
}

static void oc_close(struct deliver *d, struct oconn *o)
{
    if (o->close_on)
        return;
    if (o->st == OC_IDLE) /* the server closed an idle connection */
        oc_unidle(o);
    o->st = OC_CLOSING;
    if (o->fd < 0) {
        if (o->ops == 0)
            oc_closed(d, o);
        return;
    }
    /* shutdown(2) does not block; it ends the pending recv, then the close */
    shutdown(o->fd, SHUT_RDWR);
    if (o->ops > 0)
        return; /* the last completion comes back here */
    struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
    io_uring_prep_close(sqe, o->fd);
    io_uring_sqe_set_data64(sqe, oc_ud(d, o, UD_OUT_CLOSE));
    o->close_on = true;
    o->ops++;
}

static void job_result(struct deliver *d, struct oconn *o)
{
    struct djob *jb = o->job;
    o->job = NULL;
    for (uint32_t k = 0; k < jb->n; k++) {
        const struct smtpc_result *r = smtpc_result(&o->sc, k);
        dres_set(&jb->m->res[jb->idx[k]], (uint8_t)r->outcome, r->esc, r->code, r->text,
                 o->d->targets[o->target].host);
    }
    job_finish(d, jb);
}

/* A connection to every target failed (or the job could not be tried):
 * the job and the others queued get TEMP with the last reason. */
static void oc_give_up(struct deliver *d, struct oconn *o, const char *why)
{
    struct ddest *x = o->d;
    struct djob *jb = o->job;
    o->job = NULL;
    if (jb) {
        for (uint32_t k = 0; k < jb->n; k++)
            dres_set(&jb->m->res[jb->idx[k]], SMTPC_TEMP, (const uint8_t[]){4, 4, 1}, 0,
                     rm_span_str(why), NULL);
        job_finish(d, jb);
    }
    if (x->nconn == 1) { /* nobody else gets through: hold the failure a while */
        dest_set_failure(x, SMTPC_TEMP, 4, 4, 1, why, mono_ms(d) + DELIVER_ROUTE_FAIL_MS);
        dest_fail_all(d, x);
    }
}

static void oc_next_target(struct deliver *d, struct oconn *o, const char *why)
{
    if (o->fd >= 0) {
        close(o->fd); /* close(2) of a socket does not block */
        o->fd = -1;
    }
    o->target++;
    if (o->target < o->d->ntargets && !d->draining) {
        oc_connect(d, o);
        return;
    }
    char text[200];
    snprintf(text, sizeof(text), "%s", why);
    oc_give_up(d, o, text);
    oc_close(d, o);
}

static void oc_connect(struct deliver *d, struct oconn *o)
{
    const struct dtarget *t = &o->d->targets[o->target];
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *a =
        t->sa.ss_family == AF_INET
            ? (const void *)&((const struct sockaddr_in *)(const void *)&t->sa)->sin_addr
            : (const void *)&((const struct sockaddr_in6 *)(const void *)&t->sa)->sin6_addr;
    inet_ntop(t->sa.ss_family, a, ip, sizeof(ip));
    snprintf(o->peer, sizeof(o->peer), "%s[%s]", t->host, ip);
    o->fd = socket(t->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (o->fd < 0) {
        oc_next_target(d, o, "cannot create a socket");
        return;
    }
    int one = 1;
    setsockopt(o->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    o->st = OC_CONNECTING;
    struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
    io_uring_prep_connect(sqe, o->fd, (const struct sockaddr *)&t->sa, t->len);
    io_uring_sqe_set_data64(sqe, oc_ud(d, o, UD_OUT_CONNECT));
    sqe->flags |= IOSQE_IO_LINK;
    o->connect_ts.tv_sec = (long long)(d->c.cfg->connect_timeout_ms / 1000);
    o->connect_ts.tv_nsec = (long long)(d->c.cfg->connect_timeout_ms % 1000) * 1000000;
    sqe = uring_sqe(d->c.ring);
    io_uring_prep_link_timeout(sqe, &o->connect_ts, 0);
    io_uring_sqe_set_data64(sqe, oc_ud(d, o, UD_OUT_TIMEOUT));
    o->ops += 2;
}

static void oc_recv(struct deliver *d, struct oconn *o)
{
    if (o->recv_on || o->fd < 0 || o->shut || o->st == OC_CLOSING || o->st == OC_CONNECTING)
        return;
    if (rm_buf_recv_prep(&o->rx) == 0) /* no recv pending: rx may move now */
        return;
    struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
    io_uring_prep_recv(sqe, o->fd, rm_buf_wptr(&o->rx), rm_buf_space(&o->rx), 0);
    io_uring_sqe_set_data64(sqe, oc_ud(d, o, UD_OUT_RECV));
    o->recv_on = true;
    o->recv_off = o->rx.tail;
    o->ops++;
}

static void oc_send(struct deliver *d, struct oconn *o)
{
    if (o->send_on || o->fd < 0 || o->shut || o->st == OC_CONNECTING || o->st == OC_CLOSING)
        return;
    size_t k = smtpc_output(&o->sc, o->spans, OC_IOV_MAX);
    if (k == 0)
        return;
    for (size_t i = 0; i < k; i++) {
        o->iov[i].iov_base = (void *)(uintptr_t)o->spans[i].p; /* sendmsg only reads */
        o->iov[i].iov_len = o->spans[i].len;
    }
    memset(&o->mh, 0, sizeof(o->mh));
    o->mh.msg_iov = o->iov;
    o->mh.msg_iovlen = k;
    struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
    io_uring_prep_sendmsg(sqe, o->fd, &o->mh, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, oc_ud(d, o, UD_OUT_SEND));
    o->send_on = true;
    o->ops++;
}

/* Gives the connection its next job (the one it was opened for, first), or
 * parks it. */
static void oc_next_job(struct deliver *d, struct oconn *o)
{
    struct ddest *x = o->d;
    if (o->job || (x->head && !d->draining && o->msgs < d->c.cfg->msgs_per_connection_max)) {
        struct djob *jb = o->job;
        if (!jb) {
            jb = x->head;
            x->head = jb->next;
            if (!x->head)
                x->tail = NULL;
            x->queued--;
        }
        o->job = jb;
        o->st = OC_SMTP;
        o->msgs++;
        struct smtpc_msg sm = {
            .env = &jb->m->env, .rcpt_idx = jb->idx, .rcpt_count = jb->n, .body = jb->m->body};
        enum smtpc_ev ev = smtpc_message(&o->sc, &sm, mono_ms(d));
        if (ev == SMTPC_EV_DONE)
            job_result(d, o), oc_next_job(d, o);
        return;
    }
    if (d->draining || o->msgs >= d->c.cfg->msgs_per_connection_max ||
        d->c.cfg->conn_idle_ms == 0) {
        o->quitting = true;
        o->st = OC_SMTP;
        enum smtpc_ev ev = smtpc_quit(&o->sc, mono_ms(d));
        (void)ev;
        return;
    }
    oc_set_idle(d, o);
}

static void oc_event(struct deliver *d, struct oconn *o, enum smtpc_ev ev)
{
    switch (ev) {
    case SMTPC_EV_NONE:
        break;
    case SMTPC_EV_READY:
        oc_next_job(d, o);
        break;
    case SMTPC_EV_DONE:
        if (o->job && o->send_on) {
            /* A timeout or loss while a body send is in flight: the kernel
             * still reads the body's chunks. Cut the send short and hold
             * the job until its completion (on_out_cqe). */
            o->result_pending = true;
            shutdown(o->fd, SHUT_RDWR);
            o->shut = true;
            o->quitting = true;
            break;
        }
        if (o->job)
            job_result(d, o);
        if (smtpc_closing(&o->sc))
            o->quitting = true;
        else
            oc_next_job(d, o);
        break;
    case SMTPC_EV_FAILED: {
        const struct smtpc_result *f = smtpc_failure(&o->sc);
        char why[256];
        snprintf(why, sizeof(why), "%.*s", (int)f->text.len, (const char *)f->text.p);
        /* The greeting or EHLO failed: try the next host with the same job. */
        struct djob *jb = o->job;
        if (o->fd >= 0) { /* the server refused us: no QUIT owed */
            shutdown(o->fd, SHUT_RDWR);
            o->shut = true;
        }
        o->quitting = true;
        if (jb && o->target + 1 < o->d->ntargets) {
            o->job = NULL;
            jb->target = o->target + 1; /* its next connection starts at the next host */
            /* put it back at the head of the queue: the next connection takes it */
            jb->next = o->d->head;
            o->d->head = jb;
            if (!o->d->tail)
                o->d->tail = jb;
            o->d->queued++;
        } else if (jb) {
            oc_give_up(d, o, why);
        }
        break;
    }
    case SMTPC_EV_CLOSE:
        o->quitting = true;
        break;
    }
}

/* Feeds what rx holds to the session (replies may sit there while a body
 * send is in flight, or arrive together with the server's close). */
static void oc_feed(struct deliver *d, struct oconn *o)
{
    for (unsigned guard = 0; guard < 256 && o->st == OC_SMTP && rm_buf_len(&o->rx) > 0; guard++) {
        enum smtpc_ev ev = SMTPC_EV_NONE;
        size_t n = smtpc_feed(&o->sc, rm_buf_rptr(&o->rx), rm_buf_len(&o->rx), mono_ms(d), &ev);
        rm_buf_skip(&o->rx, n);
        oc_event(d, o, ev);
        if (n == 0 && ev == SMTPC_EV_NONE)
            break;
    }
}

static void oc_pump(struct deliver *d, struct oconn *o)
{
    oc_feed(d, o);
    if (o->st == OC_SMTP || o->st == OC_IDLE || (o->quitting && o->st != OC_CLOSING)) {
        oc_send(d, o);
        oc_recv(d, o);
    }
    if (o->quitting && !o->send_on && o->st != OC_CLOSING) {
        if (o->job)
            oc_give_up(d, o, "connection closed during the transaction");
        oc_close(d, o);
    }
}

static void dest_dispatch(struct deliver *d, struct ddest *x)
{
    /* Idle connections first, then new ones within the destination's share.
     * Each pass takes one off the idle list (for a job, or to quit). */
    for (unsigned guard = 0; guard < d->nconns && x->head && x->idle; guard++) {
        struct oconn *o = x->idle;
        oc_unidle(o);
        oc_next_job(d, o);
        oc_pump(d, o);
    }
    while (x->head && x->st == DD_READY && x->nconn < x->conn_max && x->ntargets > 0 &&
           !d->draining) {
        struct oconn *o = oc_alloc(d);
        if (!o) { /* max_outbound: the jobs wait for a slot to free up */
            dest_starve(d, x);
            break;
        }
        o->d = x;
        x->nconn++;
        struct djob *jb = x->head;
        x->head = jb->next;
        if (!x->head)
            x->tail = NULL;
        x->queued--;
        o->job = jb;
        o->target = jb->target;
        oc_connect(d, o);
    }
}

static void on_out_cqe(struct deliver *d, enum ud_kind k, struct oconn *o, int res)
{
    RM_ASSERT(o->ops > 0);
    o->ops--;
    switch (k) {
    case UD_OUT_CONNECT:
        if (res < 0) {
            char why[512];
            snprintf(why, sizeof(why), "connect to %s: %s", o->peer,
                     res == -ECANCELED ? "timed out" : strerror(-res));
            oc_next_target(d, o, why);
            return;
        }
        o->st = OC_SMTP;
        smtpc_init(&o->sc, &d->scfg,
                   &(struct smtpc_mem){.tx = &o->tx,
                                       .arena = o->mem + OC_RX_BYTES + OC_TX_BYTES,
                                       .arena_cap = SMTPC_ARENA_BYTES(DELIVER_BATCH_RCPTS),
                                       .results = o->results,
                                       .rcpt_cap = DELIVER_BATCH_RCPTS},
                   o->peer, mono_ms(d));
        break;
    case UD_OUT_TIMEOUT:
        /* The connect's completion says what happened; this one only ends
         * the connection's last operation when the connect failed first. */
        if (o->st == OC_CLOSING)
            oc_close(d, o);
        return;
    case UD_OUT_RECV:
        o->recv_on = false;
        RM_ASSERT(o->rx.tail == o->recv_off);
        if (res > 0) {
            rm_buf_produce(&o->rx, (size_t)res);
        } else if (res != -EINTR && res != -EAGAIN && o->st != OC_CLOSING) {
            oc_feed(d, o);  /* a last reply may have come with the close */
            o->shut = true; /* EOF or an error: the peer is gone */
            if (o->st == OC_SMTP && !o->quitting)
                oc_event(d, o, smtpc_lost(&o->sc, mono_ms(d)));
            o->quitting = true;
        }
        break;
    case UD_OUT_SEND:
        o->send_on = false;
        if (o->result_pending) { /* the body is no longer read: the job may end */
            o->result_pending = false;
            job_result(d, o);
        }
        if (res >= 0 && o->st != OC_CLOSING) {
            smtpc_sent(&o->sc, (size_t)res, mono_ms(d));
        } else if (res < 0 && o->st != OC_CLOSING) {
            o->shut = true;
            oc_event(d, o, smtpc_lost(&o->sc, mono_ms(d)));
            o->quitting = true;
        }
        break;
    case UD_OUT_CLOSE:
        o->close_on = false;
        o->fd = -1;
        if (o->ops == 0)
            oc_closed(d, o);
        return;
    default:
        RM_ASSERT(!"not an outbound kind");
    }
    if (o->st == OC_CLOSING) {
        oc_close(d, o);
        return;
    }
    oc_pump(d, o);
}

/* ---- jobs and outcomes ------------------------------------------------------------- */

static void msg_commit(struct deliver *d, struct dmsg *m);

static void msg_unref(struct deliver *d, struct dmsg *m);

static void job_finish(struct deliver *d, struct djob *jb)
{
    struct dmsg *m = jb->m;
    free(jb);
    msg_unref(d, m);
}

/* A request that could not be submitted or failed: its outcomes exist only in
 * memory, so the message is never reloaded from LMDB meanwhile (that would
 * deliver again to recipients already done): the same request goes again at
 * the next tick. */
static void retry_later(struct deliver *d, struct dmsg *m)
{
    m->next_retry = d->retry_head;
    d->retry_head = m;
}

static void submit(struct deliver *d, struct q_req *r)
{
    struct dmsg *m = (struct dmsg *)(void *)((uint8_t *)r - offsetof(struct dmsg, req));
    r->tag = ud_make(UD_TAG_DELIVER, 0, 0);
    r->status = 0;
    int rc = q_submit(d->c.q, d->c.worker, r);
    if (rc != 0) { /* the ring is full (or the writer is stopping) */
        retry_later(d, m);
        return;
    }
    d->reqs_inflight++;
}

/* The message's last queue request: delete it when every recipient is final,
 * else store the updated envelope (after its DSN, if one was owed). */
static void msg_submit_outcome(struct deliver *d, struct dmsg *m)
{
    m->phase = DM_COMMIT;
    memset(&m->req, 0, sizeof(m->req));
    m->req.op = m->final ? Q_OP_DELETE : Q_OP_UPDATE;
    m->req.id = m->id;
    m->req.env = &m->env;
    m->req.old_due_ms = m->due_ms;
    submit(d, &m->req);
}

/* Applies this attempt's outcomes to the envelope; builds the DSN. */
static void msg_commit(struct deliver *d, struct dmsg *m)
{
    struct q_env *e = &m->env;
    bool any_temp = false, any_pending = false;
    uint32_t nfail = 0;
    for (uint32_t i = 0; i < e->rcpt_count; i++) {
        struct q_rcpt *r = &m->rcpts[i];
        if (r->state != Q_RCPT_PENDING)
            continue;
        if (m->res[i].outcome == SMTPC_TEMP)
            any_temp = true;
        if (m->res[i].outcome == SMTPC_PENDING)
            any_pending = true; /* not attempted (no job): stays as it is */
    }
    uint64_t next = 0;
    bool expired = false;
    if (any_temp || any_pending) {
        next = retry_next_ms(&d->retry, e->arrival_ms, e->attempts + 1, now_ms(d),
                             d->c.cfg->max_queue_lifetime_ms, rnd32(d));
        expired = next == RETRY_EXPIRED;
    }
    struct dsn_rcpt *dr = calloc(e->rcpt_count, sizeof(*dr));
    if (!dr) { /* no DSN could be built: nothing becomes final without one */
        expired = false;
        for (uint32_t i = 0; i < e->rcpt_count; i++)
            if (m->res[i].outcome == SMTPC_PERM)
                m->res[i].outcome = SMTPC_TEMP;
        if (!next)
            next = now_ms(d) + 60000;
    }
    for (uint32_t i = 0; i < e->rcpt_count; i++) {
        struct q_rcpt *r = &m->rcpts[i];
        struct dres *x = &m->res[i];
        if (r->state != Q_RCPT_PENDING)
            continue;
        if (x->outcome == SMTPC_PENDING && !expired)
            continue;
        r->attempts++;
        r->last_code = x->code;
        r->last_reply = rm_span_make(x->text, x->text_len);
        bool exp_now = expired && x->outcome != SMTPC_OK && x->outcome != SMTPC_PERM;
        if (x->outcome == SMTPC_OK)
            r->state = Q_RCPT_DELIVERED;
        else if (x->outcome == SMTPC_PERM)
            r->state = Q_RCPT_FAILED;
        else if (exp_now)
            r->state = Q_RCPT_EXPIRED;
        log_rcpt(d, m, i, exp_now, r->state == Q_RCPT_PENDING ? next : 0);
        if ((r->state == Q_RCPT_FAILED || r->state == Q_RCPT_EXPIRED) && dr) {
            struct dsn_rcpt *y = &dr[nfail++];
            y->rcpt = i;
            y->action = DSN_ACTION_FAILED;
            if (exp_now) {
                y->status[0] = 4, y->status[1] = 4, y->status[2] = 7;
            } else {
                memcpy(y->status, x->esc, 3);
            }
            y->diag_code = x->code;
            y->diag_text = rm_span_make(x->text, x->text_len);
            if (x->code) { /* the text after the code */
                struct rm_span t = y->diag_text;
                size_t skip = t.len >= 4 ? 4 : t.len;
                y->diag_text = rm_span_make(t.p + skip, t.len - skip);
            }
            y->remote_mta = rm_span_str(x->mta);
            y->last_attempt_ms = now_ms(d);
        }
    }
    e->attempts++;
    m->final = true;
    for (uint32_t i = 0; i < e->rcpt_count; i++)
        if (m->rcpts[i].state == Q_RCPT_PENDING)
            m->final = false;
    if (!m->final)
        e->next_attempt_ms = next;
    /* A DSN first, the update after its commit: a crash between them may send
     * the DSN twice, never lose it. */
    if (nfail > 0 && dsn_is_bounce(e)) {
        log_buf_diag(d->c.diag, LOG_INFO, "deliver", m->ids,
                     "bounce of a bounce dropped (null sender): %u recipient(s)", nfail);
    } else if (nfail > 0) {
        struct q_read *r = NULL;
        struct rm_span orig;
        m->benv = calloc(1, sizeof(*m->benv));
        q_id_make(d->c.idgen, now_ms(d), &m->req.id);
        char bid[Q_ID_STR_LEN + 1];
        q_id_format(&m->req.id, bid);
        struct dsn_out out;
        int rc = -ENOMEM;
        if (m->benv && q_read_begin(d->c.q, &r) == 0 && q_read_msg(r, &m->id, &orig) == 0) {
            struct dsn_in in = {.env = e,
                                .msg = orig,
                                .rcpts = dr,
                                .rcpt_count = nfail,
                                .host = d->c.cfg->hostname,
                                .id = bid,
                                .now_ms = now_ms(d),
                                .return_size_max = DSN_RETURN_SIZE_DEFAULT};
            rc = dsn_build(&in, d->c.pool, &out, m->benv);
        }
        q_read_end(r);
        if (rc == 0) {
            m->dsn_body = out.body;
            m->phase = DM_DSN;
            m->req.op = Q_OP_STORE;
            m->req.env = &m->benv->env;
            m->req.body = out.body;
            free(dr);
            log_buf_diag(d->c.diag, LOG_INFO, "deliver", m->ids, "dsn %s to sender (%u rcpt)", bid,
                         nfail);
            submit(d, &m->req);
            return;
        }
        if (rc != DSN_ERR_NOT_REQUESTED)
            log_buf_diag(d->c.diag, LOG_ERR, "deliver", m->ids, "cannot build the DSN: %s",
                         dsn_strerror(rc));
    }
    free(dr);
    msg_submit_outcome(d, m);
}

void deliver_req_done(struct deliver *d, struct q_req *r)
{
    struct dmsg *m = (struct dmsg *)(void *)((uint8_t *)r - offsetof(struct dmsg, req));
    RM_ASSERT(d->reqs_inflight > 0);
    d->reqs_inflight--;
    bool gone = r->status == Q_ERR_NOT_FOUND && m->phase == DM_COMMIT; /* deleted meanwhile */
    if (r->status != 0 && !gone) {
        /* Never drop it: a lost DSN, or a reload that delivers again. */
        log_buf_diag(d->c.diag, LOG_ERR, "deliver", m->ids, "cannot %s: %s (retrying)",
                     m->phase == DM_DSN ? "queue the DSN" : "update the queue",
                     q_strerror(r->status));
        retry_later(d, m);
        return;
    }
    if (m->phase == DM_DSN) {
        sched_add(&d->sched, m->benv->env.next_attempt_ms, &r->id);
        rm_pool_put_chain(d->c.pool, m->dsn_body);
        m->dsn_body = NULL;
        msg_submit_outcome(d, m);
        return;
    }
    sched_done(&d->sched, &m->id);
    if (r->status == 0 && !m->final)
        sched_add(&d->sched, m->env.next_attempt_ms, &m->id);
    dmsg_free(d, m);
}

/* Drops one reference of the message's job count (the jobs, and a hold while
 * they are made); the last one commits the outcomes. */
static void msg_unref(struct deliver *d, struct dmsg *m)
{
    RM_ASSERT(m->jobs_left > 0);
    if (--m->jobs_left == 0)
        msg_commit(d, m);
}

static struct rm_span addr_domain(struct rm_span a)
{
    const uint8_t *at = memrchr(a.p, '@', a.len);
    return at ? rm_span_make(at + 1, a.len - (size_t)(at - a.p) - 1) : rm_span_make(a.p, 0);
}

/* Splits a loaded message's pending recipients into jobs by domain (at most
 * DELIVER_BATCH_RCPTS each) and queues them on their destinations. */
static void msg_start(struct deliver *d, struct dmsg *m)
{
    uint32_t n = m->env.rcpt_count;
    bool *taken = calloc(n, sizeof(*taken));
    struct ddest **touched = calloc(n, sizeof(*touched));
    uint32_t ntouched = 0;
    m->jobs_left = 1; /* a hold while the jobs are made */
    uint64_t seq = ++d->start_seq;
    for (uint32_t i = 0; taken && touched && i < n; i++) {
        if (m->rcpts[i].state != Q_RCPT_PENDING || taken[i])
            continue;
        struct rm_span dom = addr_domain(m->rcpts[i].addr);
        struct ddest *x = dom.len ? dest_get(d, (const char *)dom.p, dom.len) : NULL;
        struct djob *jb = x ? calloc(1, sizeof(*jb)) : NULL;
        if (!jb) {
            if (dom.len == 0) /* smtpd refuses these; a damaged record is final */
                dres_set(&m->res[i], SMTPC_PERM, (const uint8_t[]){5, 1, 3}, 0,
                         rm_span_str("recipient address has no domain"), NULL);
            else
                dres_set(&m->res[i], SMTPC_TEMP, (const uint8_t[]){4, 3, 0}, 0,
                         rm_span_str(x ? "out of memory" : "too many destinations at once"), NULL);
            taken[i] = true;
            continue;
        }
        jb->m = m;
        jb->d = x;
        for (uint32_t k = i; k < n && jb->n < DELIVER_BATCH_RCPTS; k++) {
            if (m->rcpts[k].state != Q_RCPT_PENDING || taken[k])
                continue;
            struct rm_span dk = addr_domain(m->rcpts[k].addr);
            if (dk.len != dom.len || strncasecmp((const char *)dk.p, (const char *)dom.p, dom.len))
                continue;
            jb->idx[jb->n++] = k;
            taken[k] = true;
        }
        m->jobs_left++;
        if (x->tail)
            x->tail->next = jb;
        else
            x->head = jb;
        x->tail = jb;
        x->queued++;
        if (x->mark != seq) { /* kicked once per message (a big domain gets several jobs) */
            x->mark = seq;
            touched[ntouched++] = x;
        }
    }
    if (!taken || !touched) {
        for (uint32_t i = 0; i < n; i++)
            dres_set(&m->res[i], SMTPC_TEMP, (const uint8_t[]){4, 3, 0}, 0,
                     rm_span_str("out of memory"), NULL);
    }
    for (uint32_t i = 0; i < ntouched; i++)
        dest_kick(d, touched[i]);
    free(taken);
    free(touched);
    msg_unref(d, m); /* drop the hold */
}

/* ---- DNS I/O ---------------------------------------------------------------- */

static void dns_recv_arm(struct deliver *d, unsigned fam)
{
    struct dns_sock *k = &d->dsock[fam];
    if (k->fd < 0 || k->recv_on)
        return;
    memset(&k->mh, 0, sizeof(k->mh));
    k->iov.iov_base = k->buf;
    k->iov.iov_len = sizeof(k->buf);
    k->mh.msg_name = &k->src;
    k->mh.msg_namelen = sizeof(k->src);
    k->mh.msg_iov = &k->iov;
    k->mh.msg_iovlen = 1;
    struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
    io_uring_prep_recvmsg(sqe, k->fd, &k->mh, 0);
    io_uring_sqe_set_data64(sqe, ud_make(UD_DNS_RECV, fam, 0));
    k->recv_on = true;
}

static void dtcp_op(struct deliver *d, struct dns_tcp *t)
{
    struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
    switch (t->st) {
    case DT_CONNECT:
        io_uring_prep_connect(sqe, t->fd, (struct sockaddr *)&t->sa, t->salen);
        break;
    case DT_SEND:
        io_uring_prep_send(sqe, t->fd, t->out + t->sent, t->out_len - t->sent, MSG_NOSIGNAL);
        break;
    case DT_RECV:
        io_uring_prep_recv(sqe, t->fd, t->in + t->in_len, 2 + DNS_TCP_ANSWER_MAX - t->in_len, 0);
        break;
    case DT_FREE:
        RM_ASSERT(!"no operation on a free TCP slot");
    }
    io_uring_sqe_set_data64(sqe, ud_make(UD_DNS_TCP, (uint32_t)(t - d->dtcp), t->gen));
}

static void dtcp_end(struct deliver *d, struct dns_tcp *t, int err)
{
    if (err)
        dns_tcp_failed(d->dns, t->query, err, mono_ms(d));
    close(t->fd); /* close(2) of a socket does not block */
    t->fd = -1;
    t->st = DT_FREE;
    t->gen++;
    d->dns_tcp_busy--;
}

/* RFC 1035 4.2.2: connect, send the length-prefixed query, read one
 * length-prefixed answer. One operation in flight per slot. */
static void dtcp_start(struct deliver *d, const struct dns_io *io)
{
    struct dns_tcp *t = NULL;
    for (unsigned i = 0; i < DELIVER_DNS_TCP && !t; i++)
        if (d->dtcp[i].st == DT_FREE)
            t = &d->dtcp[i];
    if (t && !t->in)
        t->in = malloc(2 + DNS_TCP_ANSWER_MAX);
    if (!t || !t->in || io->wire.len > sizeof(t->out)) {
        dns_tcp_failed(d->dns, io->query, -ENOBUFS, mono_ms(d));
        return;
    }
    t->fd = socket(io->addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (t->fd < 0) {
        dns_tcp_failed(d->dns, io->query, -errno, mono_ms(d));
        return;
    }
    memcpy(t->out, io->wire.p, io->wire.len);
    t->out_len = io->wire.len;
    t->sent = 0;
    t->in_len = 0;
    t->query = io->query;
    memcpy(&t->sa, io->addr, io->addr_len);
    t->salen = io->addr_len;
    t->started_ms = mono_ms(d);
    t->st = DT_CONNECT;
    d->dns_tcp_busy++;
    dtcp_op(d, t);
}

static void dtcp_cqe(struct deliver *d, struct dns_tcp *t, int res)
{
    if (res < 0) {
        dtcp_end(d, t, res);
        return;
    }
    switch (t->st) {
    case DT_CONNECT:
        t->st = DT_SEND;
        break;
    case DT_SEND:
        t->sent += (size_t)res;
        if (t->sent == t->out_len)
            t->st = DT_RECV;
        break;
    case DT_RECV:
        if (res == 0) {
            dtcp_end(d, t, -EPIPE);
            return;
        }
        t->in_len += (size_t)res;
        if (t->in_len >= 2) {
            size_t want = (size_t)t->in[0] << 8 | t->in[1];
            if (t->in_len >= 2 + want) {
                (void)dns_tcp_input(d->dns, t->query, t->in + 2, want, mono_ms(d));
                dtcp_end(d, t, 0);
                return;
            }
        }
        if (t->in_len == 2 + DNS_TCP_ANSWER_MAX) {
            dtcp_end(d, t, -EMSGSIZE);
            return;
        }
        break;
    case DT_FREE:
        RM_ASSERT(!"completion on a free TCP slot");
    }
    dtcp_op(d, t);
}

/* Sends what the resolver asks for and hands out finished lookups. */
static void dns_pump(struct deliver *d)
{
    struct dns_io io;
    for (unsigned guard = 0; guard < 4096 && dns_next_io(d->dns, &io); guard++) {
        if (io.kind == DNS_IO_TCP) {
            dtcp_start(d, &io);
            continue;
        }
        unsigned fam = io.addr->sa_family == AF_INET6 ? 1 : 0;
        struct dns_send *b = d->dns_sends < DELIVER_DNS_SENDS
                                 ? &d->dsend[d->dsend_free[DELIVER_DNS_SENDS - d->dns_sends - 1]]
                                 : NULL;
        if (!b || d->dsock[fam].fd < 0 || io.wire.len > sizeof(b->wire)) {
            dns_udp_send_failed(d->dns, io.query, -ENOBUFS, mono_ms(d));
            continue;
        }
        RM_ASSERT(!b->used);
        b->used = true;
        b->query = io.query;
        memcpy(b->wire, io.wire.p, io.wire.len);
        memcpy(&b->sa, io.addr, io.addr_len);
        b->iov.iov_base = b->wire;
        b->iov.iov_len = io.wire.len;
        memset(&b->mh, 0, sizeof(b->mh));
        b->mh.msg_name = &b->sa;
        b->mh.msg_namelen = io.addr_len;
        b->mh.msg_iov = &b->iov;
        b->mh.msg_iovlen = 1;
        struct io_uring_sqe *sqe = uring_sqe(d->c.ring);
        io_uring_prep_sendmsg(sqe, d->dsock[fam].fd, &b->mh, 0);
        io_uring_sqe_set_data64(sqe, ud_make(UD_DNS_SEND, (uint32_t)(b - d->dsend), 0));
        d->dns_sends++;
    }
    struct dns_done done;
    for (unsigned guard = 0; guard < 4096 && dns_poll(d->dns, &done); guard++) {
        if (done.kind != DNS_KIND_ROUTE || done.tag >= d->ndest_cap)
            continue;
        struct ddest *x = &d->dests[done.tag];
        if (x->used && x->st == DD_RESOLVING && x->lookup == done.lookup)
            dest_route_done(d, x, done.route);
    }
}

static int dns_setup(struct deliver *d, char *err, size_t err_len)
{
    struct dns_server servers[DNS_SERVERS_MAX];
    int n;
    const struct cfg *cfg = d->c.cfg;
    if (cfg->resolvers[0]) {
        size_t off = 0;
        n = dns_parse_servers(cfg->resolvers, strlen(cfg->resolvers), servers, DNS_SERVERS_MAX,
                              &off);
        if (n < 0) {
            snprintf(err, err_len, "%s: [dns] resolvers: %s at \"%s\"", cfg->path, dns_strerror(n),
                     cfg->resolvers + off);
            return -1;
        }
    } else {
        char text[4096];
        FILE *f = fopen("/etc/resolv.conf", "r");
        size_t len = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
        if (f)
            fclose(f);
        n = dns_parse_resolv_conf(text, len, servers, DNS_SERVERS_MAX);
        if (n <= 0) { /* as the C library: 127.0.0.1 */
            n = dns_parse_servers("127.0.0.1", 9, servers, DNS_SERVERS_MAX, NULL);
            RM_ASSERT(n == 1);
        }
    }
    for (int i = 0; i < n; i++) {
        if (cfg->dns_trust == CFG_DNS_TRUST_ALL)
            servers[i].trusted = true;
        else if (cfg->dns_trust == CFG_DNS_TRUST_NONE)
            servers[i].trusted = false;
    }
    struct dns_opts o;
    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = (unsigned)n;
    o.seed = d->rnd;
    int rc = dns_new(&d->dns, &o);
    if (rc < 0) {
        snprintf(err, err_len, "cannot create the resolver: %s", dns_strerror(rc));
        return -1;
    }
    d->dsock[0].fd = d->dsock[1].fd = -1;
    for (int i = 0; i < n; i++) {
        unsigned fam = servers[i].addr.ss_family == AF_INET6 ? 1 : 0;
        if (d->dsock[fam].fd >= 0)
            continue;
        d->dsock[fam].fd = socket(fam ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (d->dsock[fam].fd < 0) {
            snprintf(err, err_len, "cannot create a DNS socket: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* ---- life cycle and events -------------------------------------------------------- */

int deliver_new(struct deliver **out, const struct deliver_ctx *ctx, char *err, size_t err_len)
{
    struct deliver *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    d->c = *ctx;
    d->dsock[0].fd = d->dsock[1].fd = -1;
    const struct cfg *cfg = ctx->cfg;
    if (getrandom(&d->rnd, sizeof(d->rnd), 0) != sizeof(d->rnd) || d->rnd == 0)
        d->rnd = 0x9e3779b97f4a7c15ull ^ ctx->worker;
    if (retry_sched_parse(&d->retry, cfg->retry, err, err_len) != 0) {
        char why[200];
        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, err_len, "%s: [delivery] retry: %s", cfg->path, why);
        goto fail;
    }
    smtpc_cfg_defaults(&d->scfg, cfg->hostname);
    uint32_t inflight = RM_MAX(1u, cfg->inflight_max / ctx->nworkers);
    if (sched_init(&d->sched, SCHED_CAP_DEFAULT, inflight, ctx->worker, ctx->nworkers,
                   SCHED_WINDOW_MS_DEFAULT) != 0) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    d->ndest_cap = DELIVER_DESTS_MAX;
    d->dests = calloc(d->ndest_cap, sizeof(*d->dests));
    d->nconns = RM_MAX(1u, cfg->outbound_max / ctx->nworkers);
    d->conns = calloc(d->nconns, sizeof(*d->conns));
    d->free_slots = calloc(d->nconns, sizeof(*d->free_slots));
    if (!d->dests || !d->conns || !d->free_slots) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < d->nconns; i++) /* the stack's top is free_slots[nconns-1] */
        d->free_slots[i] = d->nconns - 1 - i;
    for (unsigned i = 0; i < DELIVER_DNS_SENDS; i++) /* likewise for the DNS send buffers */
        d->dsend_free[i] = (uint16_t)(DELIVER_DNS_SENDS - 1 - i);
    if (dns_setup(d, err, err_len) != 0)
        goto fail;
    *out = d;
    return 0;
fail:
    deliver_free(d);
    return -EINVAL;
}

void deliver_free(struct deliver *d)
{
    if (!d)
        return;
    for (uint32_t i = 0; d->conns && i < d->nconns; i++) {
        if (d->conns[i].fd >= 0 && d->conns[i].st != OC_FREE)
            close(d->conns[i].fd);
        free(d->conns[i].mem);
    }
    /* Work still queued at exit (a lookup or connection that never ended):
     * the messages stay in the queue as they were; only memory is freed. */
    for (uint32_t i = 0; d->conns && i < d->nconns; i++)
        free(d->conns[i].job);
    for (uint32_t i = 0; d->dests && i < d->ndest_cap; i++) {
        for (struct djob *jb = d->dests[i].head, *next; jb; jb = next) {
            next = jb->next;
            free(jb);
        }
        free(d->dests[i].targets);
    }
    while (d->msgs)
        dmsg_free(d, d->msgs);
    for (unsigned f = 0; f < 2; f++)
        if (d->dsock[f].fd >= 0)
            close(d->dsock[f].fd);
    for (unsigned i = 0; i < DELIVER_DNS_TCP; i++) {
        if (d->dtcp[i].st != DT_FREE)
            close(d->dtcp[i].fd);
        free(d->dtcp[i].in);
    }
    dns_free(d->dns);
    sched_fini(&d->sched);
    free(d->dests);
    free(d->conns);
    free(d->free_slots);
    free(d);
}

int deliver_start(struct deliver *d)
{
    for (unsigned f = 0; f < 2; f++)
        dns_recv_arm(d, f);
    deliver_tick(d);
    return 0;
}

static void start_due(struct deliver *d);

void deliver_received(struct deliver *d, const struct q_id *id, uint64_t due_ms)
{
    if (!sched_owns(&d->sched, id))
        return;
    sched_add(&d->sched, due_ms, id);
    start_due(d); /* due now: do not wait for the tick */
}

static void start_due(struct deliver *d)
{
    struct sched_entry e;
    for (unsigned guard = 0; guard < 4096 && !d->draining; guard++) {
        if (!sched_pop_due(&d->sched, now_ms(d), &e))
            break;
        struct dmsg *m = dmsg_load(d, &e);
        if (!m) {
            sched_done(&d->sched, &e.id);
            /* Deleted meanwhile: done. Else (pool or memory exhausted, a read
             * error) the entry is behind the horizon now: put it back. */
            if (d->load_err != Q_ERR_NOT_FOUND)
                sched_add(&d->sched, now_ms(d) + DELIVER_LOAD_RETRY_MS, &e.id);
            continue;
        }
        msg_start(d, m);
    }
}

void deliver_tick(struct deliver *d)
{
    struct dmsg *retry = d->retry_head; /* failed queue requests go again */
    d->retry_head = NULL;
    while (retry) {
        struct dmsg *m = retry;
        retry = m->next_retry;
        submit(d, &m->req);
    }
    int rc = sched_refill(&d->sched, d->c.q, now_ms(d));
    if (rc < 0)
        log_buf_diag(d->c.diag, LOG_ERR, "deliver", "-", "schedule refill: %s", q_strerror(rc));
    for (unsigned i = 0; i < DELIVER_DNS_TCP; i++) {
        struct dns_tcp *t = &d->dtcp[i];
        /* The resolver gives up on its own after tcp_timeout_ms; the socket
         * must not wait longer: shutdown(2) ends the pending operation. */
        if (t->st != DT_FREE && mono_ms(d) - t->started_ms > DNS_TCP_TIMEOUT_MS_DEFAULT + 1000)
            shutdown(t->fd, SHUT_RDWR);
    }
    dns_tick(d->dns, mono_ms(d));
    dns_pump(d);
    for (uint32_t i = 0; i < d->nconns; i++) {
        struct oconn *o = &d->conns[i];
        if (o->st == OC_SMTP && mono_ms(d) >= smtpc_deadline(&o->sc)) {
            oc_event(d, o, smtpc_timeout(&o->sc, mono_ms(d)));
            o->quitting = true;
            oc_pump(d, o);
        } else if (o->st == OC_IDLE &&
                   (d->draining || mono_ms(d) - o->idle_since_ms >= d->c.cfg->conn_idle_ms)) {
            oc_quit_idle(d, o);
        }
    }
    start_due(d);
}

void deliver_cqe(struct deliver *d, uint64_t ud, int res, uint32_t flags)
{
    (void)flags;
    enum ud_kind k = ud_kind(ud);
    uint32_t i = ud_idx(ud);
    switch (k) {
    case UD_DNS_RECV: {
        struct dns_sock *s = &d->dsock[i & 1];
        s->recv_on = false;
        if (res > 0)
            (void)dns_udp_input(d->dns, (const struct sockaddr *)&s->src, s->mh.msg_namelen, s->buf,
                                (size_t)res, mono_ms(d));
        if (!d->draining || d->reqs_inflight || d->conns_used)
            dns_recv_arm(d, i & 1);
        dns_pump(d);
        return;
    }
    case UD_DNS_TCP: {
        struct dns_tcp *t = &d->dtcp[i % DELIVER_DNS_TCP];
        RM_ASSERT(t->st != DT_FREE && t->gen == ud_gen(ud));
        dtcp_cqe(d, t, res);
        dns_pump(d);
        return;
    }
    case UD_DNS_SEND: {
        struct dns_send *b = &d->dsend[i];
        RM_ASSERT(b->used);
        b->used = false;
        d->dns_sends--;
        d->dsend_free[DELIVER_DNS_SENDS - d->dns_sends - 1] = (uint16_t)(b - d->dsend);
        if (res < 0)
            dns_udp_send_failed(d->dns, b->query, res, mono_ms(d));
        dns_pump(d);
        return;
    }
    default:
        break;
    }
    RM_ASSERT(i < d->nconns);
    struct oconn *o = &d->conns[i];
    RM_ASSERT(o->st != OC_FREE && o->gen == ud_gen(ud));
    on_out_cqe(d, k, o, res);
}

void deliver_drain(struct deliver *d)
{
    d->draining = true;
    for (uint32_t i = 0; i < d->nconns; i++) {
        struct oconn *o = &d->conns[i];
        if (o->st == OC_IDLE)
            oc_quit_idle(d, o);
    }
}

void deliver_force(struct deliver *d)
{
    d->draining = true;
    for (uint32_t i = 0; i < d->nconns; i++) {
        struct oconn *o = &d->conns[i];
        if (o->st != OC_FREE && o->fd >= 0) {
            shutdown(o->fd, SHUT_RDWR);
            o->shut = true;
        }
    }
}

bool deliver_idle(const struct deliver *d)
{
    return d->conns_used == 0 && d->reqs_inflight == 0 && !d->retry_head && d->dns_sends == 0 &&
           d->dns_tcp_busy == 0;
}
