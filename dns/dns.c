/* dns/dns.c: the resolver: lookups, queries, retries, routes, completions.
 *
 * Shapes. A lookup takes a slot (lookups_max of them, allocated at dns_new).
 * Its work is done by "subs": one (name, type) resolution each, with its
 * cache check, its query on the wire, its retries across the servers and its
 * CNAME chain. A slot owns DNS_SLOT_SUBS of them: dns_lookup uses one; dns_route
 * uses sub 0 for the MX, then two per MX host (AAAA, A), all in flight at once.
 *
 * A sub waiting on the network is on the "act" list (it has a deadline) and
 * in the ID table (answers find it by DNS ID). When it wants a datagram or a
 * TCP exchange it is also on the "pend" list until dns_next_io hands it out.
 * Every hand-out bumps its gen, so the I/O handle of an older attempt is stale.
 *
 * The PRNG (xorshift64*) makes query IDs, shuffles equal MX preferences and
 * seeds the hashes. It is not cryptographic and, with one UDP socket per
 * family, the source port is fixed: an off-path attacker who can reach our
 * socket and guess 16 bits of ID could spoof an answer. XXX: acceptable
 * because the resolvers are meant to be on loopback (DESIGN.md "DNS"), where
 * nobody off the machine can send to us as them; a remote resolver should be
 * reached over a trusted network.
 */
#include "dns.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dns_internal.h"

/* Subs per slot: AAAA and A per host; sub 0 does the MX first. */
enum { DNS_SLOT_SUBS = 2 * DNS_ROUTE_HOSTS_MAX };
#define DNS_ID_TRIES 8u /* draws for an ID no waiting query uses; a clash is harmless anyway */

static_assert(DNS_SERVERS_MAX <= 8, "sent_mask is 8 bits");
static_assert(DNS_ROUNDS_MAX * DNS_SERVERS_MAX <= UINT8_MAX, "attempts fit a uint8_t");
static_assert(DNS_LOOKUPS_MAX * DNS_SLOT_SUBS <= 32768, "IDs stay sparse; buckets fit");
static_assert(DNS_HOST_ADDRS_MAX <= DNS_ANSWER_RECORDS_MAX, "an answer can fill a host");

enum sub_state {
    SUB_IDLE = 0, /* not in use, or done */
    SUB_UDP,      /* waiting for a UDP answer (maybe still on the pend list) */
    SUB_TCP,      /* waiting for a TCP exchange's answer */
};

struct sub {
    uint32_t gen;      /* bumped at every I/O request and at the end: the I/O handle */
    uint8_t state;     /* enum sub_state */
    bool on_pend;      /* on the pend list */
    uint8_t server;    /* of the current attempt */
    uint8_t first;     /* the server the current name's attempts started with */
    uint8_t attempts;  /* UDP attempts begun for the current name */
    uint8_t sent_mask; /* servers the current ID was sent to: answers come from these */
    bool secure;       /* every packet used so far had AD from a trusted server */
    bool server_error; /* some server answered with an error (vs. only timeouts) */
    uint8_t qname_len; /* octets of the name at wire + 2 + DNS_HDR_BYTES */
    uint8_t orig_len;
    uint16_t type;
    uint16_t id;
    uint16_t wire_len; /* query octets at wire + 2 */
    uint32_t ttl_s;    /* smallest TTL used so far; UINT32_MAX when none */
    uint32_t id_next;  /* ID table chain */
    uint32_t act_prev, act_next;
    uint32_t pend_prev, pend_next;
    uint64_t deadline_ms;
    const uint8_t *orig; /* the name asked for (cache key): the slot's or a host's */
    struct dns_chain chain;
    uint8_t wire[2 + DNS_QUERY_WIRE_MAX]; /* 2-byte length (for TCP), then the query */
};

/* What a sub ends with, handed to its slot. */
struct subres {
    enum dns_outcome outcome;
    enum dns_fail fail;
    bool secure;
    bool direct;           /* straight from the cache entry of the name asked: not stored again */
    uint32_t ttl_s;        /* remaining lifetime */
    struct dns_rrview rrs; /* borrowed: the scratch set or a cache entry, during the call */
};

enum slot_state { SLOT_FREE = 0, SLOT_RUN, SLOT_DONE, SLOT_HELD };
enum route_phase { PHASE_MX = 0, PHASE_ADDR };

struct host_int {
    uint8_t wire[DNS_NAME_WIRE_MAX]; /* the name, lower-case wire: its subs' cache key */
    uint8_t wire_len;
    char name[DNS_NAME_MAX + 1];
    uint16_t pref;
    uint8_t n4, n6;
    bool temp;     /* an address lookup failed temporarily */
    bool answered; /* an address lookup got a definite answer */
    bool secure;   /* the definite answers were all secure */
    enum dns_fail fail;
    uint8_t v4[DNS_HOST_ADDRS_MAX][4];
    uint8_t v6[DNS_HOST_ADDRS_MAX][16];
    struct dns_addr addrs[DNS_HOST_ADDRS_MAX];
};

struct slot_lookup {
    struct dns_answer ans;
    struct dns_record recs[DNS_ANSWER_RECORDS_MAX];
    struct dns_rrset rrs;
};

struct slot_route {
    struct dns_route route;
    uint8_t phase; /* enum route_phase */
    bool temp;     /* the MX lookup failed temporarily */
    uint16_t subs_left;
    uint32_t ttl_s;
    struct dns_host hosts[DNS_ROUTE_HOSTS_MAX];
    struct host_int hi[DNS_ROUTE_HOSTS_MAX];
};

struct slot {
    uint32_t gen;  /* bumped when freed: the lookup handle */
    uint8_t state; /* enum slot_state */
    uint8_t kind;  /* enum dns_kind */
    uint8_t name_len;
    uint32_t next; /* free list or done queue */
    uint64_t tag;
    uint8_t name[DNS_NAME_WIRE_MAX]; /* the name or domain asked for, lower-case wire */
    union {
        struct slot_lookup look;
        struct slot_route rt;
    } u;
};

struct dns_resolver {
    struct dns_server servers[DNS_SERVERS_MAX];
    unsigned nservers;
    uint32_t attempt_timeout_ms, tcp_timeout_ms;
    uint32_t attempts_max; /* rounds * nservers */
    uint32_t ttl_min_s, ttl_max_s, neg_ttl_s, neg_ttl_max_s;
    uint64_t holdoff_until_ms[DNS_SERVERS_MAX]; /* asked last until then (timed out) */
    uint64_t rng;                               /* xorshift64* state, never 0 */
    uint64_t hash_seed;                         /* CNAME chains */
    struct slot *slots;                         /* owned: nslots */
    uint32_t nslots;
    uint32_t slot_free;            /* free list head */
    uint32_t done_head, done_tail; /* completions, oldest first */
    uint32_t held;                 /* the slot dns_poll lent out, or DNS_NIL */
    uint32_t start_head;           /* routes whose MX step ended: address lookups to start */
    struct sub *subs;              /* owned: nslots * DNS_SLOT_SUBS */
    uint32_t nsubs;
    uint32_t *id_bucket; /* owned: id_mask + 1 chain heads */
    uint32_t id_mask;
    uint32_t act_head;             /* subs waiting on the network */
    uint32_t pend_head, pend_tail; /* subs wanting I/O, oldest first */
    uint64_t *due;                 /* owned: nsubs, dns_tick's scratch */
    struct dns_cache cache;
    struct dns_rrset scratch; /* records of the answer being handled */
    struct dns_stats st;
};

static void slot_sub_done(struct dns_resolver *r, struct slot *sl, uint32_t k,
                          const struct subres *res);

/* ---- small things --------------------------------------------------------- */

static uint64_t rng_next(struct dns_resolver *r)
{
    uint64_t x = r->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static uint32_t rng_below(struct dns_resolver *r, uint32_t n)
{
    RM_ASSERT(n > 0);
    return (uint32_t)((rng_next(r) >> 32) % n);
}

static uint32_t sub_idx(const struct dns_resolver *r, const struct sub *s)
{
    return (uint32_t)(s - r->subs);
}

static struct slot *sub_slot(struct dns_resolver *r, const struct sub *s)
{
    return &r->slots[sub_idx(r, s) / DNS_SLOT_SUBS];
}

static uint64_t handle(uint32_t idx, uint32_t gen)
{
    return (uint64_t)idx << 32 | gen;
}

static const uint8_t *sub_qname(const struct sub *s)
{
    return s->wire + 2 + DNS_HDR_BYTES;
}

static uint32_t clamp_ttl(const struct dns_resolver *r, uint32_t ttl)
{
    return RM_MAX(r->ttl_min_s, RM_MIN(ttl, r->ttl_max_s));
}

static bool sa_same(const struct sockaddr *a, socklen_t alen, const struct dns_server *s)
{
    const struct sockaddr *b = (const struct sockaddr *)&s->addr;
    if (a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET) {
        if (alen < (socklen_t)sizeof(struct sockaddr_in))
            return false;
        const struct sockaddr_in *x = (const void *)a;
        const struct sockaddr_in *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (alen < (socklen_t)sizeof(struct sockaddr_in6))
        return false;
    const struct sockaddr_in6 *x = (const void *)a;
    const struct sockaddr_in6 *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* The server a datagram came from, or -1. A v4-mapped IPv6 source (a
 * dual-stack socket) is compared as the IPv4 address it is. */
static int server_of(const struct dns_resolver *r, const struct sockaddr *src, socklen_t len)
{
    struct sockaddr_in v4;
    if (!src || len < (socklen_t)sizeof(sa_family_t))
        return -1;
    if (src->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a6 = (const void *)src;
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
            memset(&v4, 0, sizeof(v4));
            v4.sin_family = AF_INET;
            v4.sin_port = a6->sin6_port;
            memcpy(&v4.sin_addr, &a6->sin6_addr.s6_addr[12], 4);
            src = (const struct sockaddr *)&v4;
            len = sizeof(v4);
        }
    }
    if (src->sa_family != AF_INET && src->sa_family != AF_INET6)
        return -1;
    for (unsigned i = 0; i < r->nservers; i++)
        if (sa_same(src, len, &r->servers[i]))
            return (int)i;
    return -1;
}

/* ---- lists ---------------------------------------------------------------- */

static void act_add(struct dns_resolver *r, struct sub *s)
{
    uint32_t i = sub_idx(r, s);
    s->act_prev = DNS_NIL;
    s->act_next = r->act_head;
    if (r->act_head != DNS_NIL)
        r->subs[r->act_head].act_prev = i;
    r->act_head = i;
}

static void act_del(struct dns_resolver *r, struct sub *s)
{
    if (s->act_prev != DNS_NIL)
        r->subs[s->act_prev].act_next = s->act_next;
    else
        r->act_head = s->act_next;
    if (s->act_next != DNS_NIL)
        r->subs[s->act_next].act_prev = s->act_prev;
}

static void pend_del(struct dns_resolver *r, struct sub *s)
{
    if (!s->on_pend)
        return;
    if (s->pend_prev != DNS_NIL)
        r->subs[s->pend_prev].pend_next = s->pend_next;
    else
        r->pend_head = s->pend_next;
    if (s->pend_next != DNS_NIL)
        r->subs[s->pend_next].pend_prev = s->pend_prev;
    else
        r->pend_tail = s->pend_prev;
    s->on_pend = false;
}

static void pend_push(struct dns_resolver *r, struct sub *s)
{
    RM_ASSERT(!s->on_pend);
    uint32_t i = sub_idx(r, s);
    s->pend_next = DNS_NIL;
    s->pend_prev = r->pend_tail;
    if (r->pend_tail != DNS_NIL)
        r->subs[r->pend_tail].pend_next = i;
    else
        r->pend_head = i;
    r->pend_tail = i;
    s->on_pend = true;
}

static uint32_t *id_head(struct dns_resolver *r, uint16_t id)
{
    return &r->id_bucket[id & r->id_mask];
}

static bool id_in_use(struct dns_resolver *r, uint16_t id)
{
    for (uint32_t i = *id_head(r, id); i != DNS_NIL; i = r->subs[i].id_next)
        if (r->subs[i].id == id)
            return true;
    return false;
}

static void id_add(struct dns_resolver *r, struct sub *s)
{
    uint32_t *h = id_head(r, s->id);
    s->id_next = *h;
    *h = sub_idx(r, s);
}

static void id_del(struct dns_resolver *r, struct sub *s)
{
    uint32_t i = sub_idx(r, s);
    uint32_t *pp = id_head(r, s->id);
    while (*pp != i) {
        RM_ASSERT(*pp != DNS_NIL);
        pp = &r->subs[*pp].id_next;
    }
    *pp = s->id_next;
}

/* Takes s off the network: lists, ID table. Its handles go stale. */
static void sub_park(struct dns_resolver *r, struct sub *s)
{
    if (s->state == SUB_IDLE)
        return;
    pend_del(r, s);
    act_del(r, s);
    id_del(r, s);
    s->state = SUB_IDLE;
    s->gen++;
}

/* ---- slots and completions ------------------------------------------------ */

static void slot_complete(struct dns_resolver *r, struct slot *sl)
{
    RM_ASSERT(sl->state == SLOT_RUN);
    sl->state = SLOT_DONE;
    uint32_t i = (uint32_t)(sl - r->slots);
    sl->next = DNS_NIL;
    if (r->done_tail != DNS_NIL)
        r->slots[r->done_tail].next = i;
    else
        r->done_head = i;
    r->done_tail = i;
}

static void slot_free(struct dns_resolver *r, struct slot *sl)
{
    struct sub *subs = &r->subs[(size_t)(sl - r->slots) * DNS_SLOT_SUBS];
    for (unsigned k = 0; k < DNS_SLOT_SUBS; k++)
        sub_park(r, &subs[k]);
    sl->state = SLOT_FREE;
    sl->gen++;
    sl->next = r->slot_free;
    r->slot_free = (uint32_t)(sl - r->slots);
}

/* ---- subs ----------------------------------------------------------------- */

static void sub_done(struct dns_resolver *r, struct sub *s, const struct subres *res,
                     uint64_t now_ms);
static void sub_ask(struct dns_resolver *r, struct sub *s, const uint8_t *name, size_t len,
                    uint64_t now_ms);

static void sub_fail(struct dns_resolver *r, struct sub *s, enum dns_fail why, uint64_t now_ms)
{
    struct subres res = {.outcome = DNS_OUT_TEMPFAIL, .fail = why};
    sub_done(r, s, &res, now_ms);
}

/* The first server for a new query: the first in the list not held off,
 * else the one whose hold-off ends first. */
static uint8_t server_first(const struct dns_resolver *r, uint64_t now_ms)
{
    unsigned best = 0;
    for (unsigned i = 0; i < r->nservers; i++) {
        if (r->holdoff_until_ms[i] <= now_ms)
            return (uint8_t)i;
        if (r->holdoff_until_ms[i] < r->holdoff_until_ms[best])
            best = i;
    }
    return (uint8_t)best;
}

/* The next UDP attempt: the next server in turn, or TEMPFAIL after
 * rounds * servers attempts. */
static void sub_next_attempt(struct dns_resolver *r, struct sub *s, uint64_t now_ms)
{
    pend_del(r, s);
    if (s->attempts >= r->attempts_max) {
        sub_fail(r, s, s->server_error ? DNS_FAIL_SERVFAIL : DNS_FAIL_TIMEOUT, now_ms);
        return;
    }
    s->server = (uint8_t)((s->first + s->attempts) % r->nservers);
    s->attempts++;
    s->sent_mask |= (uint8_t)(1u << s->server);
    s->state = SUB_UDP;
    s->deadline_ms = now_ms + r->attempt_timeout_ms;
    s->gen++;
    pend_push(r, s);
}

static void cache_store(struct dns_resolver *r, struct sub *s, const struct subres *res,
                        uint64_t now_ms)
{
    int rc = dns_cache_put(&r->cache, s->orig, s->orig_len, s->type, res->outcome, res->secure,
                           &res->rrs, now_ms + (uint64_t)res->ttl_s * 1000, now_ms);
    if (rc == 1)
        r->st.cache_evictions++;
    else if (rc < 0 && r->cache.cap > 0)
        r->st.cache_too_big++;
}

/* Ends s: merges res with what its CNAME chain gathered (secure, TTL),
 * caches the result under the name asked for, and tells the slot. */
static void sub_done(struct dns_resolver *r, struct sub *s, const struct subres *res,
                     uint64_t now_ms)
{
    sub_park(r, s);
    struct subres m = *res;
    if (m.outcome == DNS_OUT_TEMPFAIL) {
        /* Not cached: the queue's retry schedule already spaces retries, and
         * a cached failure would only delay recovery. */
        m.secure = false;
        m.ttl_s = 0;
        r->st.tempfail++;
    } else {
        m.secure = m.secure && s->secure;
        m.ttl_s = RM_MIN(m.ttl_s, s->ttl_s);
        if (!m.direct) {
            m.ttl_s = RM_MAX(m.ttl_s, r->ttl_min_s);
            cache_store(r, s, &m, now_ms);
        }
        if (m.outcome == DNS_OUT_NXDOMAIN)
            r->st.nxdomain++;
        else if (m.outcome == DNS_OUT_NODATA)
            r->st.nodata++;
    }
    struct slot *sl = sub_slot(r, s);
    RM_ASSERT(sl->state == SLOT_RUN);
    slot_sub_done(r, sl, sub_idx(r, s) % DNS_SLOT_SUBS, &m);
}

/* A cache entry answers the current name of s. */
static void sub_from_cache(struct dns_resolver *r, struct sub *s, const struct dns_cache_entry *e,
                           uint64_t now_ms)
{
    r->st.cache_hits++;
    uint64_t left_ms = e->expires_ms - now_ms;
    struct subres res = {
        .outcome = (enum dns_outcome)e->outcome,
        .secure = e->secure,
        .direct = s->chain.links == 0, /* a CNAME target's entry is stored under orig too */
        .ttl_s = (uint32_t)((left_ms + 999) / 1000),
        .rrs = {.data = e->data, .len = e->len, .count = e->count, .partial = e->partial},
    };
    sub_done(r, s, &res, now_ms);
}

/* Asks for (name, s->type): from the cache, else with a new query. */
static void sub_ask(struct dns_resolver *r, struct sub *s, const uint8_t *name, size_t len,
                    uint64_t now_ms)
{
    const struct dns_cache_entry *e = dns_cache_get(&r->cache, name, len, s->type, now_ms);
    if (e) {
        sub_from_cache(r, s, e, now_ms);
        return;
    }
    r->st.cache_misses++;
    r->st.queries++;
    uint16_t id = 0;
    for (unsigned t = 0; t < DNS_ID_TRIES; t++) {
        id = (uint16_t)(rng_next(r) >> 48);
        if (!id_in_use(r, id))
            break;
    }
    int n = dns_wire_query(s->wire + 2, DNS_QUERY_WIRE_MAX, id, name, len, s->type);
    if (n < 0) { /* ldns could not allocate: nothing else to try */
        sub_fail(r, s, DNS_FAIL_SERVFAIL, now_ms);
        return;
    }
    /* ldns writes the question right after the header, uncompressed. */
    RM_ASSERT((size_t)n >= DNS_HDR_BYTES + len + 4);
    RM_ASSERT(memcmp(s->wire + 2 + DNS_HDR_BYTES, name, len) == 0);
    s->wire[0] = (uint8_t)(n >> 8);
    s->wire[1] = (uint8_t)n;
    s->wire_len = (uint16_t)n;
    s->qname_len = (uint8_t)len;
    if (s->state == SUB_IDLE)
        act_add(r, s);
    else
        id_del(r, s); /* a CNAME target: a new ID */
    s->id = id;
    id_add(r, s);
    s->attempts = 0;
    s->first = server_first(r, now_ms);
    s->sent_mask = 0;
    s->server_error = false;
    s->state = SUB_UDP;
    sub_next_attempt(r, s, now_ms);
}

/* Starts sub k of slot sl for (name, type). */
static void sub_begin(struct dns_resolver *r, struct slot *sl, uint32_t k, const uint8_t *name,
                      size_t len, uint16_t type, uint64_t now_ms)
{
    struct sub *s = &r->subs[(size_t)(sl - r->slots) * DNS_SLOT_SUBS + k];
    RM_ASSERT(s->state == SUB_IDLE);
    s->type = type;
    s->orig = name;
    s->orig_len = (uint8_t)len;
    s->secure = true;
    s->ttl_s = UINT32_MAX;
    s->chain.links = 0;
    s->chain.visited[0] = dns_name_hash(name, len, r->hash_seed);
    sub_ask(r, s, name, len, now_ms);
}

/* A parsed answer from server srv for s. */
static void sub_parsed(struct dns_resolver *r, struct sub *s, unsigned srv,
                       const struct dns_parsed *p, uint64_t now_ms)
{
    bool secure = p->ad && r->servers[srv].trusted;
    struct subres res = {.secure = secure};
    switch (p->kind) {
    case DNS_PK_SERVER_ERROR:
        r->st.server_errors++;
        s->server_error = true;
        sub_next_attempt(r, s, now_ms);
        return;
    case DNS_PK_CNAME_ERROR:
        r->st.cname_errors++;
        sub_fail(r, s, DNS_FAIL_CNAME, now_ms);
        return;
    case DNS_PK_REQUERY:
        s->chain = p->chain;
        s->secure = s->secure && secure;
        s->ttl_s = RM_MIN(s->ttl_s, p->chain_ttl_s);
        sub_ask(r, s, p->target, p->target_len, now_ms);
        return;
    case DNS_PK_RECORDS:
        res.outcome = DNS_OUT_RECORDS;
        res.ttl_s = clamp_ttl(r, p->chain_ttl_s);
        res.rrs = (struct dns_rrview){r->scratch.data, r->scratch.len, r->scratch.count,
                                      r->scratch.partial};
        break;
    case DNS_PK_NODATA:
    case DNS_PK_NXDOMAIN: {
        /* RFC 2308 5: the SOA's TTL or MINIMUM, whichever is less. */
        res.outcome = p->kind == DNS_PK_NODATA ? DNS_OUT_NODATA : DNS_OUT_NXDOMAIN;
        uint32_t neg = p->soa_ttl_s != UINT32_MAX ? p->soa_ttl_s : r->neg_ttl_s;
        res.ttl_s = RM_MIN(RM_MIN(neg, r->neg_ttl_max_s), p->chain_ttl_s);
        break;
    }
    }
    s->chain = p->chain;
    sub_done(r, s, &res, now_ms);
}

/* An answer (UDP or TCP) from server srv that matched s's ID and question. */
static int sub_answer(struct dns_resolver *r, struct sub *s, unsigned srv, const uint8_t *pkt,
                      size_t len, bool tcp, uint64_t now_ms)
{
    bool tc = (pkt[2] & 0x02) != 0;
    uint8_t rcode = pkt[3] & 0x0f;
    r->holdoff_until_ms[srv] = 0; /* it is alive */
    if (tc && !tcp) {
        /* RFC 7766 5: retry over TCP with the same server. */
        r->st.truncated++;
        pend_del(r, s);
        s->state = SUB_TCP;
        s->server = (uint8_t)srv;
        s->deadline_ms = now_ms + r->tcp_timeout_ms;
        s->gen++;
        pend_push(r, s);
        return 0;
    }
    if (tc || (rcode != 0 && rcode != 3)) {
        /* SERVFAIL (a validating resolver's answer to bogus data too),
         * REFUSED, NOTIMP, FORMERR...: this server cannot help now. TC over
         * TCP means the answer does not fit 64 KiB. */
        r->st.answers++;
        r->st.server_errors++;
        s->server_error = true;
        sub_next_attempt(r, s, now_ms);
        return 0;
    }
    struct dns_parsed p;
    p.chain = s->chain;
    int rc = dns_wire_parse(pkt, len, rcode, sub_qname(s), s->qname_len, s->type, r->hash_seed, &p,
                            &r->scratch);
    if (rc < 0) {
        r->st.malformed++;
        if (tcp) /* the exchange is over: nothing better will come from it */
            sub_next_attempt(r, s, now_ms);
        return DNS_ERR_MALFORMED;
    }
    r->st.answers++;
    sub_parsed(r, s, srv, &p, now_ms);
    return 0;
}

/* Header and question of pkt answer s's query: QR, opcode QUERY, one
 * question equal to ours (name case-insensitively, type, class). */
static bool matches(const struct sub *s, const uint8_t *pkt, size_t len)
{
    size_t qlen = (size_t)s->qname_len + 4;
    if (len < DNS_HDR_BYTES + qlen)
        return false;
    if ((pkt[2] & 0x80) == 0 || (pkt[2] & 0x78) != 0)
        return false;
    if (pkt[4] != 0 || pkt[5] != 1)
        return false;
    if (pkt[0] != (uint8_t)(s->id >> 8) || pkt[1] != (uint8_t)s->id)
        return false;
    /* Our name is lower case and its length octets are below 'A'. */
    return dns_name_eq(pkt + DNS_HDR_BYTES, qlen, sub_qname(s), qlen);
}

/* ---- the route ------------------------------------------------------------ */

struct mx {
    const uint8_t *host; /* text, borrowed from the answer's records */
    uint16_t pref;
    uint8_t len;
};

static void route_finish(struct dns_resolver *r, struct slot *sl);

/* The MX step ended: the address lookups start when the API call that got
 * here is about to return (routes_start). Starting them from inside the
 * MX sub's completion would make the code recurse (a cache hit completes a
 * sub at once), which this keeps flat. */
static void route_queue_addrs(struct dns_resolver *r, struct slot *sl)
{
    sl->next = r->start_head;
    r->start_head = (uint32_t)(sl - r->slots);
}

static void route_start_addrs(struct dns_resolver *r, struct slot *sl, uint64_t now_ms)
{
    struct slot_route *rt = &sl->u.rt;
    unsigned n = rt->route.host_count;
    rt->phase = PHASE_ADDR;
    if (n == 0) {
        route_finish(r, sl);
        return;
    }
    rt->subs_left = (uint16_t)(2 * n);
    for (unsigned i = 0; i < n; i++) {
        struct host_int *h = &rt->hi[i];
        /* Each may finish at once from the cache; the last one ends the route. */
        sub_begin(r, sl, 2 * i, h->wire, h->wire_len, DNS_T_AAAA, now_ms);
        sub_begin(r, sl, 2 * i + 1, h->wire, h->wire_len, DNS_T_A, now_ms);
    }
}

/* Adds a host unless it is there already; false when the route is full. */
static bool host_add(struct slot_route *rt, const char *name, size_t len, uint16_t pref)
{
    unsigned n = rt->route.host_count;
    if (n == DNS_ROUTE_HOSTS_MAX)
        return false;
    for (unsigned i = 0; i < n; i++)
        if (rt->hi[i].name[len] == 0 && memcmp(rt->hi[i].name, name, len) == 0)
            return true; /* a duplicate: the earlier (better) one stays */
    struct host_int *h = &rt->hi[n];
    int w = dns_name_from_text(name, len, h->wire);
    if (w < 0)
        return true; /* cannot be asked for: skip it */
    memset(h->name, 0, sizeof(h->name));
    memcpy(h->name, name, len);
    h->wire_len = (uint8_t)w;
    h->pref = pref;
    rt->route.host_count = n + 1;
    return true;
}

static void route_mx_done(struct dns_resolver *r, struct slot *sl, const struct subres *res)
{
    struct slot_route *rt = &sl->u.rt;
    rt->ttl_s = res->ttl_s;
    rt->route.mx_secure = res->outcome != DNS_OUT_TEMPFAIL && res->secure;
    switch (res->outcome) {
    case DNS_OUT_TEMPFAIL:
        rt->temp = true;
        rt->route.fail = res->fail;
        route_finish(r, sl);
        return;
    case DNS_OUT_NXDOMAIN:
        rt->route.outcome = DNS_ROUTE_NXDOMAIN;
        route_finish(r, sl);
        return;
    case DNS_OUT_NODATA: {
        /* RFC 5321 5.1: no MX, the domain itself is the host, preference 0. */
        char text[DNS_NAME_MAX + 1];
        int n = dns_name_to_text(sl->name, sl->name_len, text, sizeof(text));
        RM_ASSERT(n > 0);
        rt->route.implicit = true;
        (void)host_add(rt, text, (size_t)n, 0);
        route_queue_addrs(r, sl);
        return;
    }
    case DNS_OUT_RECORDS:
        break;
    }
    struct mx mx[DNS_ANSWER_RECORDS_MAX];
    unsigned n = 0;
    const uint8_t *d = res->rrs.data;
    for (size_t off = 0; off + 2 <= res->rrs.len && n < RM_ARRAY_LEN(mx);) {
        size_t plen = (size_t)d[off] << 8 | d[off + 1];
        RM_ASSERT(plen >= 2 && off + 2 + plen <= res->rrs.len);
        mx[n].pref = (uint16_t)(d[off + 2] << 8 | d[off + 3]);
        mx[n].host = d + off + 4;
        mx[n].len = (uint8_t)(plen - 2);
        n++;
        off += 2 + plen;
    }
    if (n == 1 && mx[0].len == 0 && !res->rrs.partial) {
        rt->route.outcome = DNS_ROUTE_NULLMX; /* RFC 7505 3 */
        route_finish(r, sl);
        return;
    }
    /* Shuffle, then a stable sort by preference: equal preferences end up
     * in random order (RFC 5321 5.1 asks senders to randomise them). */
    for (unsigned i = n; i > 1; i--) {
        unsigned j = rng_below(r, i);
        struct mx t = mx[i - 1];
        mx[i - 1] = mx[j];
        mx[j] = t;
    }
    for (unsigned i = 1; i < n; i++) {
        struct mx t = mx[i];
        unsigned j = i;
        for (; j > 0 && mx[j - 1].pref > t.pref; j--)
            mx[j] = mx[j - 1];
        mx[j] = t;
    }
    for (unsigned i = 0; i < n; i++) {
        if (mx[i].len == 0)
            continue; /* a "." among real hosts: nothing to connect to */
        if (!host_add(rt, (const char *)mx[i].host, mx[i].len, mx[i].pref))
            break;
    }
    route_queue_addrs(r, sl);
}

static void route_addr_done(struct dns_resolver *r, struct slot *sl, uint32_t k,
                            const struct subres *res)
{
    struct slot_route *rt = &sl->u.rt;
    struct host_int *h = &rt->hi[k / 2];
    bool v6 = k % 2 == 0;
    if (res->outcome == DNS_OUT_TEMPFAIL) {
        if (!h->temp)
            h->fail = res->fail;
        h->temp = true;
    } else {
        h->secure = (h->answered ? h->secure : true) && res->secure;
        h->answered = true;
        rt->ttl_s = RM_MIN(rt->ttl_s, res->ttl_s);
    }
    const uint8_t *d = res->rrs.data;
    for (size_t off = 0; res->outcome == DNS_OUT_RECORDS && off + 2 <= res->rrs.len;) {
        size_t plen = (size_t)d[off] << 8 | d[off + 1];
        RM_ASSERT(plen == (v6 ? 16u : 4u));
        if (v6 && h->n6 < DNS_HOST_ADDRS_MAX)
            memcpy(h->v6[h->n6++], d + off + 2, 16);
        else if (!v6 && h->n4 < DNS_HOST_ADDRS_MAX)
            memcpy(h->v4[h->n4++], d + off + 2, 4);
        off += 2 + plen;
    }
    RM_ASSERT(rt->subs_left > 0);
    if (--rt->subs_left == 0)
        route_finish(r, sl);
}

static void shuffle_rows(struct dns_resolver *r, uint8_t *rows, unsigned n, size_t width)
{
    uint8_t t[16];
    RM_ASSERT(width <= sizeof(t));
    for (unsigned i = n; i > 1; i--) {
        unsigned j = rng_below(r, i);
        memcpy(t, rows + (i - 1) * width, width);
        memcpy(rows + (i - 1) * width, rows + j * width, width);
        memcpy(rows + j * width, t, width);
    }
}

/* Orders a host's addresses: each family shuffled (spreads load over a
 * provider's addresses even while the answer sits in the cache), then
 * interleaved IPv6 first (RFC 8305 4): a broken family costs one connect
 * timeout per host, not one per address. */
static void host_finish(struct dns_resolver *r, struct host_int *h, struct dns_host *out)
{
    shuffle_rows(r, &h->v6[0][0], h->n6, 16);
    shuffle_rows(r, &h->v4[0][0], h->n4, 4);
    unsigned n = 0;
    unsigned i6 = 0;
    unsigned i4 = 0;
    while (n < DNS_HOST_ADDRS_MAX && (i6 < h->n6 || i4 < h->n4)) {
        if (i6 < h->n6 && (i4 >= h->n4 || i6 <= i4)) {
            h->addrs[n].family = AF_INET6;
            memcpy(h->addrs[n].ip, h->v6[i6++], 16);
        } else {
            h->addrs[n].family = AF_INET;
            memset(h->addrs[n].ip, 0, sizeof(h->addrs[n].ip));
            memcpy(h->addrs[n].ip, h->v4[i4++], 4);
        }
        n++;
    }
    out->name = rm_span_make(h->name, strlen(h->name));
    out->pref = h->pref;
    out->addrs = h->addrs;
    out->addr_count = n;
    out->partial = n > 0 && h->temp;
    out->fail = h->temp ? h->fail : DNS_FAIL_NONE;
    out->secure = h->answered && h->secure;
    out->status = n > 0 ? DNS_HOST_OK : h->temp ? DNS_HOST_TEMPFAIL : DNS_HOST_NOADDR;
}

static void route_finish(struct dns_resolver *r, struct slot *sl)
{
    struct slot_route *rt = &sl->u.rt;
    struct dns_route *out = &rt->route;
    out->hosts = rt->hosts;
    if (rt->temp) {
        out->outcome = DNS_ROUTE_TEMPFAIL;
        out->ttl_s = 0;
        slot_complete(r, sl);
        return;
    }
    bool ok = false;
    bool temp = false;
    bool secure = out->mx_secure;
    for (unsigned i = 0; i < out->host_count; i++) {
        struct dns_host *h = &rt->hosts[i];
        host_finish(r, &rt->hi[i], h);
        if (h->status == DNS_HOST_OK) {
            ok = true;
            secure = secure && h->secure;
        } else if (h->status == DNS_HOST_TEMPFAIL) {
            if (!temp && out->fail == DNS_FAIL_NONE)
                out->fail = h->fail;
            temp = true;
        }
    }
    if (rt->phase == PHASE_ADDR) {
        out->outcome = ok ? DNS_ROUTE_OK : temp ? DNS_ROUTE_TEMPFAIL : DNS_ROUTE_NOHOSTS;
        if (out->outcome == DNS_ROUTE_OK)
            out->fail = DNS_FAIL_NONE;
    }
    out->secure = secure && out->outcome != DNS_ROUTE_TEMPFAIL;
    out->ttl_s = rt->ttl_s == UINT32_MAX ? 0 : rt->ttl_s;
    slot_complete(r, sl);
}

/* ---- the generic lookup --------------------------------------------------- */

static void lookup_done(struct slot *sl, const struct subres *res)
{
    struct slot_lookup *lk = &sl->u.look;
    struct dns_answer *a = &lk->ans;
    a->outcome = res->outcome;
    a->fail = res->fail;
    a->secure = res->secure;
    a->ttl_s = res->ttl_s;
    a->partial = res->rrs.partial;
    a->records = lk->recs;
    a->count = 0;
    RM_ASSERT(res->rrs.len <= sizeof(lk->rrs.data));
    if (res->rrs.len)
        memcpy(lk->rrs.data, res->rrs.data, res->rrs.len);
    const uint8_t *d = lk->rrs.data;
    for (size_t off = 0; res->outcome == DNS_OUT_RECORDS && off + 2 <= res->rrs.len;) {
        size_t plen = (size_t)d[off] << 8 | d[off + 1];
        const uint8_t *q = d + off + 2;
        RM_ASSERT(off + 2 + plen <= res->rrs.len && a->count < DNS_ANSWER_RECORDS_MAX);
        struct dns_record *rec = &lk->recs[a->count++];
        memset(rec, 0, sizeof(*rec));
        switch ((enum dns_type)a->type) {
        case DNS_T_A:
            memcpy(rec->u.a, q, 4);
            break;
        case DNS_T_AAAA:
            memcpy(rec->u.aaaa, q, 16);
            break;
        case DNS_T_MX:
            rec->u.mx.pref = (uint16_t)(q[0] << 8 | q[1]);
            rec->u.mx.host = rm_span_make(q + 2, plen - 2);
            break;
        case DNS_T_TLSA:
            rec->u.tlsa.usage = q[0];
            rec->u.tlsa.selector = q[1];
            rec->u.tlsa.mtype = q[2];
            rec->u.tlsa.data = rm_span_make(q + 3, plen - 3);
            break;
        case DNS_T_TXT:
            rec->u.txt = rm_span_make(q, plen);
            break;
        }
        off += 2 + plen;
    }
    if (a->outcome == DNS_OUT_RECORDS && a->count == 0) {
        /* Every record was dropped (e.g. MX hosts we cannot use): there is
         * nothing to give, yet the name has records of the type. */
        a->outcome = DNS_OUT_NODATA;
    }
}

/* Sub k of sl has ended with res. */
static void slot_sub_done(struct dns_resolver *r, struct slot *sl, uint32_t k,
                          const struct subres *res)
{
    if (sl->kind == DNS_KIND_LOOKUP) {
        lookup_done(sl, res);
        slot_complete(r, sl);
    } else if (sl->u.rt.phase == PHASE_MX) {
        RM_ASSERT(k == 0);
        route_mx_done(r, sl, res);
    } else {
        route_addr_done(r, sl, k, res);
    }
}

/* Starts the address lookups of every route whose MX step ended during this
 * API call. Their own completions never queue more. */
static void routes_start(struct dns_resolver *r, uint64_t now_ms)
{
    while (r->start_head != DNS_NIL) {
        struct slot *sl = &r->slots[r->start_head];
        r->start_head = sl->next;
        sl->next = DNS_NIL;
        RM_ASSERT(sl->state == SLOT_RUN && sl->kind == DNS_KIND_ROUTE);
        route_start_addrs(r, sl, now_ms);
    }
}

/* ---- the API -------------------------------------------------------------- */

const char *dns_strerror(int err)
{
    switch (err) {
    case DNS_ERR_OPTS:
        return "DNS option out of range";
    case DNS_ERR_NAME:
        return "not a valid domain name";
    case DNS_ERR_TYPE:
        return "unsupported record type";
    case DNS_ERR_BUSY:
        return "too many DNS lookups in progress";
    case DNS_ERR_ADDR:
        return "not an IP address";
    case DNS_ERR_PORT:
        return "bad port";
    case DNS_ERR_TOO_MANY:
        return "too many DNS servers";
    case DNS_ERR_EMPTY:
        return "empty DNS server list or entry";
    case DNS_ERR_NOMATCH:
        return "DNS answer matches no query";
    case DNS_ERR_MALFORMED:
        return "malformed DNS answer";
    case DNS_ERR_STALE:
        return "stale DNS query handle";
    default: {
        /* strerrordesc_np, unlike strerror, returns a static string: safe from any thread. */
        const char *t = err < 0 && err > -4096 ? strerrordesc_np(-err) : NULL;
        return t ? t : "unknown error";
    }
    }
}

void dns_opts_default(struct dns_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->lookups_max = DNS_LOOKUPS_DEFAULT;
    o->cache_entries = DNS_CACHE_ENTRIES_DEFAULT;
    o->attempt_timeout_ms = DNS_ATTEMPT_TIMEOUT_MS_DEFAULT;
    o->tcp_timeout_ms = DNS_TCP_TIMEOUT_MS_DEFAULT;
    o->rounds = DNS_ROUNDS_DEFAULT;
    o->ttl_min_s = DNS_TTL_MIN_S_DEFAULT;
    o->ttl_max_s = DNS_TTL_MAX_S_DEFAULT;
    o->neg_ttl_s = DNS_NEG_TTL_S_DEFAULT;
    o->neg_ttl_max_s = DNS_NEG_TTL_MAX_S_DEFAULT;
}

static bool in_range(uint32_t v, uint32_t lo, uint32_t hi)
{
    return v >= lo && v <= hi;
}

static bool opts_valid(const struct dns_opts *o)
{
    if (!o->servers || !in_range(o->server_count, 1, DNS_SERVERS_MAX))
        return false;
    for (unsigned i = 0; i < o->server_count; i++) {
        const struct dns_server *s = &o->servers[i];
        if (!(s->addr.ss_family == AF_INET && s->addr_len == sizeof(struct sockaddr_in)) &&
            !(s->addr.ss_family == AF_INET6 && s->addr_len == sizeof(struct sockaddr_in6)))
            return false;
    }
    return in_range(o->lookups_max, 1, DNS_LOOKUPS_MAX) &&
           o->cache_entries <= DNS_CACHE_ENTRIES_MAX &&
           in_range(o->attempt_timeout_ms, DNS_ATTEMPT_TIMEOUT_MS_MIN,
                    DNS_ATTEMPT_TIMEOUT_MS_MAX) &&
           in_range(o->tcp_timeout_ms, DNS_ATTEMPT_TIMEOUT_MS_MIN, DNS_ATTEMPT_TIMEOUT_MS_MAX) &&
           in_range(o->rounds, 1, DNS_ROUNDS_MAX) && o->ttl_min_s <= o->ttl_max_s &&
           o->ttl_max_s <= DNS_TTL_MAX_S_MAX &&
           in_range(o->neg_ttl_max_s, o->ttl_min_s, DNS_TTL_MAX_S_MAX) &&
           o->neg_ttl_s <= DNS_TTL_MAX_S_MAX;
}

int dns_new(struct dns_resolver **out, const struct dns_opts *o)
{
    *out = NULL;
    if (!opts_valid(o))
        return DNS_ERR_OPTS;
    struct dns_resolver *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    memcpy(r->servers, o->servers, o->server_count * sizeof(*o->servers));
    r->nservers = o->server_count;
    r->attempt_timeout_ms = o->attempt_timeout_ms;
    r->tcp_timeout_ms = o->tcp_timeout_ms;
    r->attempts_max = o->rounds * o->server_count;
    r->ttl_min_s = o->ttl_min_s;
    r->ttl_max_s = o->ttl_max_s;
    r->neg_ttl_s = o->neg_ttl_s;
    r->neg_ttl_max_s = o->neg_ttl_max_s;
    r->rng = o->seed ^ 0x6a09e667f3bcc909ull;
    if (r->rng == 0)
        r->rng = 0x6a09e667f3bcc909ull;
    for (int i = 0; i < 4; i++)
        (void)rng_next(r); /* move away from a small seed */
    r->hash_seed = rng_next(r);
    r->nslots = o->lookups_max;
    r->nsubs = o->lookups_max * DNS_SLOT_SUBS;
    uint32_t buckets = 1;
    while (buckets < r->nsubs)
        buckets <<= 1;
    r->id_mask = buckets - 1;
    r->slots = calloc(r->nslots, sizeof(*r->slots));
    r->subs = calloc(r->nsubs, sizeof(*r->subs));
    r->id_bucket = malloc((size_t)buckets * sizeof(*r->id_bucket));
    r->due = malloc((size_t)r->nsubs * sizeof(*r->due));
    if (!r->slots || !r->subs || !r->id_bucket || !r->due ||
        dns_cache_init(&r->cache, o->cache_entries, rng_next(r)) < 0) {
        dns_free(r);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < buckets; i++)
        r->id_bucket[i] = DNS_NIL;
    for (uint32_t i = 0; i < r->nslots; i++)
        r->slots[i].next = i + 1 < r->nslots ? i + 1 : DNS_NIL;
    r->slot_free = 0;
    r->done_head = r->done_tail = r->held = r->start_head = DNS_NIL;
    r->act_head = r->pend_head = r->pend_tail = DNS_NIL;
    *out = r;
    return 0;
}

void dns_free(struct dns_resolver *r)
{
    if (!r)
        return;
    dns_cache_fini(&r->cache);
    free(r->slots);
    free(r->subs);
    free(r->id_bucket);
    free(r->due);
    free(r);
}

static int slot_take(struct dns_resolver *r, const char *name, size_t len, uint8_t kind,
                     uint64_t tag, struct slot **out)
{
    uint8_t wire[DNS_NAME_WIRE_MAX];
    int n = dns_name_from_text(name, len, wire);
    if (n < 0)
        return DNS_ERR_NAME;
    if (r->slot_free == DNS_NIL) {
        r->st.busy++;
        return DNS_ERR_BUSY;
    }
    struct slot *sl = &r->slots[r->slot_free];
    RM_ASSERT(sl->state == SLOT_FREE);
    r->slot_free = sl->next;
    sl->state = SLOT_RUN;
    sl->kind = kind;
    sl->tag = tag;
    sl->next = DNS_NIL;
    memcpy(sl->name, wire, (size_t)n);
    sl->name_len = (uint8_t)n;
    memset(&sl->u, 0, sizeof(sl->u));
    r->st.lookups++;
    *out = sl;
    return 0;
}

int dns_lookup(struct dns_resolver *r, const char *name, size_t len, uint16_t type, uint64_t tag,
               uint64_t now_ms, uint64_t *lookup)
{
    if (type != DNS_T_A && type != DNS_T_AAAA && type != DNS_T_MX && type != DNS_T_TLSA &&
        type != DNS_T_TXT)
        return DNS_ERR_TYPE;
    struct slot *sl;
    int rc = slot_take(r, name, len, DNS_KIND_LOOKUP, tag, &sl);
    if (rc < 0)
        return rc;
    sl->u.look.ans.type = type;
    *lookup = handle((uint32_t)(sl - r->slots), sl->gen);
    sub_begin(r, sl, 0, sl->name, sl->name_len, type, now_ms);
    return sl->state == SLOT_DONE ? DNS_DONE : 0;
}

int dns_route(struct dns_resolver *r, const char *domain, size_t len, uint64_t tag, uint64_t now_ms,
              uint64_t *lookup)
{
    struct slot *sl;
    int rc = slot_take(r, domain, len, DNS_KIND_ROUTE, tag, &sl);
    if (rc < 0)
        return rc;
    sl->u.rt.phase = PHASE_MX;
    sl->u.rt.ttl_s = UINT32_MAX;
    *lookup = handle((uint32_t)(sl - r->slots), sl->gen);
    sub_begin(r, sl, 0, sl->name, sl->name_len, DNS_T_MX, now_ms);
    routes_start(r, now_ms);
    return sl->state == SLOT_DONE ? DNS_DONE : 0;
}

void dns_cancel(struct dns_resolver *r, uint64_t lookup)
{
    uint32_t i = (uint32_t)(lookup >> 32);
    if (i >= r->nslots || r->slots[i].gen != (uint32_t)lookup)
        return;
    struct slot *sl = &r->slots[i];
    if (sl->state == SLOT_DONE) {
        uint32_t *pp = &r->done_head;
        uint32_t prev = DNS_NIL;
        while (*pp != i) {
            RM_ASSERT(*pp != DNS_NIL);
            prev = *pp;
            pp = &r->slots[*pp].next;
        }
        *pp = sl->next;
        if (r->done_tail == i)
            r->done_tail = prev;
    } else if (sl->state != SLOT_RUN) {
        return; /* free, or already handed out by dns_poll */
    }
    slot_free(r, sl);
}

bool dns_poll(struct dns_resolver *r, struct dns_done *out)
{
    if (r->held != DNS_NIL) {
        slot_free(r, &r->slots[r->held]);
        r->held = DNS_NIL;
    }
    if (r->done_head == DNS_NIL)
        return false;
    uint32_t i = r->done_head;
    struct slot *sl = &r->slots[i];
    RM_ASSERT(sl->state == SLOT_DONE);
    r->done_head = sl->next;
    if (r->done_head == DNS_NIL)
        r->done_tail = DNS_NIL;
    sl->state = SLOT_HELD;
    r->held = i;
    memset(out, 0, sizeof(*out));
    out->tag = sl->tag;
    out->lookup = handle(i, sl->gen);
    out->kind = (enum dns_kind)sl->kind;
    if (sl->kind == DNS_KIND_LOOKUP)
        out->answer = &sl->u.look.ans;
    else
        out->route = &sl->u.rt.route;
    return true;
}

bool dns_next_io(struct dns_resolver *r, struct dns_io *out)
{
    if (r->pend_head == DNS_NIL)
        return false;
    struct sub *s = &r->subs[r->pend_head];
    pend_del(r, s);
    RM_ASSERT(s->state == SUB_UDP || s->state == SUB_TCP);
    const struct dns_server *srv = &r->servers[s->server];
    memset(out, 0, sizeof(*out));
    out->query = handle(sub_idx(r, s), s->gen);
    out->addr = (const struct sockaddr *)&srv->addr;
    out->addr_len = srv->addr_len;
    out->server = s->server;
    if (s->state == SUB_UDP) {
        out->kind = DNS_IO_UDP;
        out->wire = rm_span_make(s->wire + 2, s->wire_len);
        r->st.udp_sent++;
    } else {
        out->kind = DNS_IO_TCP;
        out->wire = rm_span_make(s->wire, (size_t)s->wire_len + 2);
        r->st.tcp_sent++;
    }
    return true;
}

int dns_udp_input(struct dns_resolver *r, const struct sockaddr *src, socklen_t src_len,
                  const uint8_t *pkt, size_t len, uint64_t now_ms)
{
    int srv = pkt && len >= DNS_HDR_BYTES ? server_of(r, src, src_len) : -1;
    if (srv >= 0) {
        uint16_t id = (uint16_t)(pkt[0] << 8 | pkt[1]);
        for (uint32_t i = *id_head(r, id); i != DNS_NIL; i = r->subs[i].id_next) {
            struct sub *s = &r->subs[i];
            if (s->id == id && (s->sent_mask & (1u << srv)) && matches(s, pkt, len)) {
                int rc = sub_answer(r, s, (unsigned)srv, pkt, len, false, now_ms);
                routes_start(r, now_ms);
                return rc;
            }
        }
    }
    r->st.unmatched++;
    return DNS_ERR_NOMATCH;
}

/* The sub a handle names while it is still in the given state, or NULL. */
static struct sub *sub_by_handle(struct dns_resolver *r, uint64_t query, enum sub_state st)
{
    uint32_t i = (uint32_t)(query >> 32);
    if (i >= r->nsubs)
        return NULL;
    struct sub *s = &r->subs[i];
    if (s->gen != (uint32_t)query || s->state != st || s->on_pend)
        return NULL;
    return s;
}

void dns_udp_send_failed(struct dns_resolver *r, uint64_t query, int err, uint64_t now_ms)
{
    (void)err;
    struct sub *s = sub_by_handle(r, query, SUB_UDP);
    if (!s)
        return;
    r->st.send_errors++;
    r->holdoff_until_ms[s->server] = now_ms + DNS_SERVER_HOLDOFF_MS;
    sub_next_attempt(r, s, now_ms);
    routes_start(r, now_ms);
}

int dns_tcp_input(struct dns_resolver *r, uint64_t query, const uint8_t *pkt, size_t len,
                  uint64_t now_ms)
{
    struct sub *s = sub_by_handle(r, query, SUB_TCP);
    if (!s)
        return DNS_ERR_STALE;
    int rc = DNS_ERR_NOMATCH;
    if (!pkt || len > DNS_TCP_ANSWER_MAX || !matches(s, pkt, len)) {
        r->st.unmatched++;
        sub_next_attempt(r, s, now_ms);
    } else {
        rc = sub_answer(r, s, s->server, pkt, len, true, now_ms);
    }
    routes_start(r, now_ms);
    return rc;
}

void dns_tcp_failed(struct dns_resolver *r, uint64_t query, int err, uint64_t now_ms)
{
    (void)err;
    struct sub *s = sub_by_handle(r, query, SUB_TCP);
    if (!s)
        return;
    r->st.send_errors++;
    sub_next_attempt(r, s, now_ms);
    routes_start(r, now_ms);
}

uint64_t dns_next_deadline(const struct dns_resolver *r)
{
    uint64_t t = UINT64_MAX;
    for (uint32_t i = r->act_head; i != DNS_NIL; i = r->subs[i].act_next)
        t = RM_MIN(t, r->subs[i].deadline_ms);
    return t;
}

void dns_tick(struct dns_resolver *r, uint64_t now_ms)
{
    /* Collect first: handling a timeout changes the lists. */
    uint32_t n = 0;
    for (uint32_t i = r->act_head; i != DNS_NIL; i = r->subs[i].act_next)
        if (r->subs[i].deadline_ms <= now_ms)
            r->due[n++] = handle(i, r->subs[i].gen);
    for (uint32_t k = 0; k < n; k++) {
        struct sub *s = &r->subs[r->due[k] >> 32];
        if (s->gen != (uint32_t)r->due[k] || s->state == SUB_IDLE || s->deadline_ms > now_ms)
            continue;
        r->st.timeouts++;
        if (s->state == SUB_UDP) /* a TCP timeout says less: the server answered UDP */
            r->holdoff_until_ms[s->server] = now_ms + DNS_SERVER_HOLDOFF_MS;
        sub_next_attempt(r, s, now_ms);
    }
    routes_start(r, now_ms);
}

void dns_stats_get(const struct dns_resolver *r, struct dns_stats *out)
{
    *out = r->st;
}
