/* tests/unit/test_dns.c: the resolver, driven like the worker loop drives it.
 *
 * The harness plays the worker: it takes every I/O the resolver asks for
 * (copying the wire as the contract says), parses the queries with ldns,
 * builds answers with ldns (ldns_pkt_new, ldns_rr_new_frm_str, ldns_pkt2wire)
 * carrying the query's ID and question, and feeds them back with a source
 * address. Time is a fake clock moved by the tests. A small "zone" answers
 * whole route lookups; single queries are answered by hand where the test is
 * about the packets themselves.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
/* cmocka.h needs stdarg.h, stddef.h, setjmp.h and stdint.h before it. */
#include <arpa/inet.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>
/* After <stdbool.h>: without it ldns/common.h makes bool a signed char. */
#include <ldns/ldns.h>

#ifdef _Bool
#error "ldns redefined bool: include <stdbool.h> before <ldns/ldns.h>"
#endif

#include "dns/dns.h"

#define T0        1000000ull /* the fake clock's start, ms */
#define SENT_MAX  512u
#define DONE_MAX  64u
#define ZONE_MAX  64u
#define DROPS_MAX 8u
#define TAG       0xabcdef01ull

/* ---- harness -------------------------------------------------------------- */

struct sent {
    struct dns_io io;
    uint8_t wire[DNS_QUERY_WIRE_MAX + 2];
};

struct got_host {
    char name[DNS_NAME_MAX + 1];
    uint16_t pref;
    int status;
    int fail;
    bool partial;
    bool secure;
    char addrs[1024]; /* "2001:db8::1,192.0.2.1" in order */
    unsigned naddr;
};

/* A completion, deep-copied (dns_poll's data is borrowed). */
struct got {
    uint64_t tag, lookup;
    int kind;
    int outcome; /* answer: enum dns_outcome; route: enum dns_route_outcome */
    int fail;
    bool secure, partial;
    uint32_t ttl_s;
    unsigned count;
    char recs[DNS_ANSWER_RECORDS_MAX][600];
    bool implicit, mx_secure;
    unsigned nhost;
    struct got_host hosts[DNS_ROUTE_HOSTS_MAX];
};

struct h {
    struct dns_resolver *r;
    struct dns_opts o;
    struct dns_server sv[DNS_SERVERS_MAX];
    uint64_t now;
    struct sent sent[SENT_MAX];
    unsigned sent_head, sent_tail; /* queue of taken I/O not yet handled */
    unsigned udp_count, tcp_count; /* I/O taken so far */
    struct got done[DONE_MAX];
    unsigned ndone;
};

/* A query the resolver sent, parsed. */
struct q {
    ldns_pkt *pkt;
    struct dns_io io;
    uint16_t id;
    char name[DNS_NAME_MAX + 2]; /* with the final dot */
    uint16_t type;
};

static void server_set(struct dns_server *s, const char *ip, uint16_t port, bool trusted)
{
    memset(s, 0, sizeof(*s));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&s->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
        s->addr_len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&s->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
        s->addr_len = sizeof(*a);
    }
    s->trusted = trusted;
}

/* Options for tests: small sizes so limits are reachable. */
static void opts_small(struct h *h, unsigned nservers)
{
    dns_opts_default(&h->o);
    static const char *const ips[] = {"127.0.0.1", "::1", "127.0.0.2", "192.0.2.53"};
    for (unsigned i = 0; i < nservers; i++) {
        server_set(&h->sv[i], ips[i], DNS_PORT, true);
        h->sv[i].trusted = dns_addr_is_loopback((const struct sockaddr *)&h->sv[i].addr);
    }
    h->o.servers = h->sv;
    h->o.server_count = nservers;
    h->o.lookups_max = 8;
    h->o.cache_entries = 64;
    h->o.seed = 42;
}

static void h_start(struct h *h)
{
    assert_int_equal(dns_new(&h->r, &h->o), 0);
    h->now = T0;
}

static struct h *h_alloc(void)
{
    struct h *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    return h;
}

static struct h *h_new(unsigned nservers)
{
    struct h *h = h_alloc();
    opts_small(h, nservers);
    h_start(h);
    return h;
}

static void h_free(struct h *h)
{
    dns_free(h->r);
    free(h);
}

static void render_record(char *out, size_t cap, uint16_t type, const struct dns_record *rec)
{
    char ip[INET6_ADDRSTRLEN];
    switch (type) {
    case DNS_T_A:
        (void)inet_ntop(AF_INET, rec->u.a, ip, sizeof(ip));
        (void)snprintf(out, cap, "%s", ip);
        break;
    case DNS_T_AAAA:
        (void)inet_ntop(AF_INET6, rec->u.aaaa, ip, sizeof(ip));
        (void)snprintf(out, cap, "%s", ip);
        break;
    case DNS_T_MX:
        (void)snprintf(out, cap, "%u %.*s", rec->u.mx.pref, (int)rec->u.mx.host.len,
                       (const char *)rec->u.mx.host.p);
        break;
    case DNS_T_TLSA: {
        int n = snprintf(out, cap, "%u %u %u ", rec->u.tlsa.usage, rec->u.tlsa.selector,
                         rec->u.tlsa.mtype);
        for (size_t i = 0; i < rec->u.tlsa.data.len && (size_t)n + 3 < cap; i++)
            n += snprintf(out + n, cap - (size_t)n, "%02x", rec->u.tlsa.data.p[i]);
        break;
    }
    case DNS_T_TXT:
        (void)snprintf(out, cap, "%.*s", (int)rec->u.txt.len, (const char *)rec->u.txt.p);
        break;
    default:
        fail_msg("unexpected type %u", type);
    }
}

static void copy_done(struct got *g, const struct dns_done *d)
{
    memset(g, 0, sizeof(*g));
    g->tag = d->tag;
    g->lookup = d->lookup;
    g->kind = (int)d->kind;
    if (d->kind == DNS_KIND_LOOKUP) {
        const struct dns_answer *a = d->answer;
        assert_non_null(a);
        assert_null(d->route);
        g->outcome = (int)a->outcome;
        g->fail = (int)a->fail;
        g->secure = a->secure;
        g->partial = a->partial;
        g->ttl_s = a->ttl_s;
        g->count = a->count;
        assert_true(a->count <= DNS_ANSWER_RECORDS_MAX);
        if (a->outcome != DNS_OUT_RECORDS)
            assert_int_equal(a->count, 0);
        else
            assert_true(a->count > 0);
        for (unsigned i = 0; i < a->count; i++)
            render_record(g->recs[i], sizeof(g->recs[i]), a->type, &a->records[i]);
        return;
    }
    assert_int_equal(d->kind, DNS_KIND_ROUTE);
    const struct dns_route *r = d->route;
    assert_non_null(r);
    assert_null(d->answer);
    g->outcome = (int)r->outcome;
    g->fail = (int)r->fail;
    g->secure = r->secure;
    g->implicit = r->implicit;
    g->mx_secure = r->mx_secure;
    g->ttl_s = r->ttl_s;
    g->nhost = r->host_count;
    assert_true(r->host_count <= DNS_ROUTE_HOSTS_MAX);
    for (unsigned i = 0; i < r->host_count; i++) {
        const struct dns_host *hs = &r->hosts[i];
        struct got_host *gh = &g->hosts[i];
        assert_true(hs->name.len <= DNS_NAME_MAX);
        memcpy(gh->name, hs->name.p, hs->name.len);
        gh->pref = hs->pref;
        gh->status = (int)hs->status;
        gh->fail = (int)hs->fail;
        gh->partial = hs->partial;
        gh->secure = hs->secure;
        gh->naddr = hs->addr_count;
        assert_true(hs->addr_count <= DNS_HOST_ADDRS_MAX);
        assert_int_equal(hs->status == DNS_HOST_OK, hs->addr_count > 0);
        size_t n = 0;
        for (unsigned k = 0; k < hs->addr_count; k++) {
            char ip[INET6_ADDRSTRLEN];
            int fam = hs->addrs[k].family;
            assert_true(fam == AF_INET || fam == AF_INET6);
            (void)inet_ntop(fam, hs->addrs[k].ip, ip, sizeof(ip));
            n += (size_t)snprintf(gh->addrs + n, sizeof(gh->addrs) - n, "%s%s", k ? "," : "", ip);
        }
    }
}

/* Takes every I/O and every completion, as the worker does after each call. */
static void pump(struct h *h)
{
    struct dns_io io;
    while (dns_next_io(h->r, &io)) {
        assert_true(h->sent_tail - h->sent_head < SENT_MAX);
        struct sent *s = &h->sent[h->sent_tail++ % SENT_MAX];
        s->io = io;
        assert_true(io.wire.len <= sizeof(s->wire));
        memcpy(s->wire, io.wire.p, io.wire.len);
        s->io.wire = rm_span_make(s->wire, io.wire.len);
        assert_true(io.server < h->o.server_count);
        assert_int_equal(io.addr_len, h->sv[io.server].addr_len);
        assert_memory_equal(io.addr, &h->sv[io.server].addr, io.addr_len);
        if (io.kind == DNS_IO_UDP)
            h->udp_count++;
        else
            h->tcp_count++;
    }
    struct dns_done d;
    while (dns_poll(h->r, &d)) {
        assert_true(h->ndone < DONE_MAX);
        copy_done(&h->done[h->ndone++], &d);
    }
}

static unsigned pending(const struct h *h)
{
    return h->sent_tail - h->sent_head;
}

/* Takes the oldest sent query and parses it. */
static void take(struct h *h, struct q *q)
{
    assert_true(pending(h) > 0);
    struct sent *s = &h->sent[h->sent_head++ % SENT_MAX];
    memset(q, 0, sizeof(*q));
    q->io = s->io;
    const uint8_t *w = s->wire;
    size_t len = s->io.wire.len;
    if (s->io.kind == DNS_IO_TCP) {
        assert_true(len > 2);
        assert_int_equal((size_t)(w[0] << 8 | w[1]), len - 2);
        w += 2;
        len -= 2;
    }
    assert_int_equal(ldns_wire2pkt(&q->pkt, w, len), LDNS_STATUS_OK);
    q->id = ldns_pkt_id(q->pkt);
    assert_int_equal(ldns_pkt_qdcount(q->pkt), 1);
    ldns_rr *qr = ldns_rr_list_rr(ldns_pkt_question(q->pkt), 0);
    char *name = ldns_rdf2str(ldns_rr_owner(qr));
    assert_non_null(name);
    assert_true(strlen(name) < sizeof(q->name));
    memcpy(q->name, name, strlen(name) + 1);
    free(name);
    q->type = (uint16_t)ldns_rr_get_type(qr);
}

static void q_free(struct q *q)
{
    ldns_pkt_free(q->pkt);
    q->pkt = NULL;
}

static void take_expect(struct h *h, struct q *q, const char *name, uint16_t type)
{
    take(h, q);
    assert_string_equal(q->name, name);
    assert_int_equal(q->type, type);
}

static ldns_pkt *reply_new(const struct q *q, uint8_t rcode)
{
    ldns_pkt *p = ldns_pkt_new();
    assert_non_null(p);
    ldns_pkt_set_id(p, q->id);
    ldns_pkt_set_qr(p, true);
    ldns_pkt_set_rd(p, true);
    ldns_pkt_set_ra(p, true);
    ldns_pkt_set_rcode(p, rcode);
    ldns_rr *qr = ldns_rr_clone(ldns_rr_list_rr(ldns_pkt_question(q->pkt), 0));
    assert_true(ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, qr));
    return p;
}

static void add_rr(ldns_pkt *p, ldns_pkt_section sec, const char *text)
{
    ldns_rr *rr = NULL;
    assert_int_equal(ldns_rr_new_frm_str(&rr, text, 0, NULL, NULL), LDNS_STATUS_OK);
    assert_true(ldns_pkt_push_rr(p, sec, rr));
}

static uint8_t *to_wire(ldns_pkt *p, size_t *len)
{
    uint8_t *w = NULL;
    assert_int_equal(ldns_pkt2wire(&w, p, len), LDNS_STATUS_OK);
    return w;
}

static const struct sockaddr *server_addr(const struct h *h, unsigned i, socklen_t *len)
{
    *len = h->sv[i].addr_len;
    return (const struct sockaddr *)&h->sv[i].addr;
}

/* Feeds p as the answer to q (UDP from q's server, or TCP), frees p, pumps. */
static int deliver(struct h *h, const struct q *q, ldns_pkt *p)
{
    size_t len;
    uint8_t *w = to_wire(p, &len);
    ldns_pkt_free(p);
    int rc;
    if (q->io.kind == DNS_IO_TCP) {
        rc = dns_tcp_input(h->r, q->io.query, w, len, h->now);
    } else {
        socklen_t alen;
        const struct sockaddr *a = server_addr(h, q->io.server, &alen);
        rc = dns_udp_input(h->r, a, alen, w, len, h->now);
    }
    free(w);
    pump(h);
    return rc;
}

/* Answers q with rcode and rrs; an rr text starting with "AUTH " goes to the
 * authority section. NULL ends the list. */
static int answer(struct h *h, struct q *q, uint8_t rcode, bool ad, ...)
{
    ldns_pkt *p = reply_new(q, rcode);
    ldns_pkt_set_ad(p, ad);
    va_list ap;
    va_start(ap, ad);
    const char *t;
    while ((t = va_arg(ap, const char *)) != NULL) {
        if (strncmp(t, "AUTH ", 5) == 0)
            add_rr(p, LDNS_SECTION_AUTHORITY, t + 5);
        else
            add_rr(p, LDNS_SECTION_ANSWER, t);
    }
    va_end(ap);
    int rc = deliver(h, q, p);
    q_free(q);
    return rc;
}

static void advance(struct h *h, uint64_t ms)
{
    h->now += ms;
    dns_tick(h->r, h->now);
    pump(h);
}

static struct got *last_done(struct h *h)
{
    assert_true(h->ndone > 0);
    return &h->done[h->ndone - 1];
}

static int start_route(struct h *h, const char *domain)
{
    uint64_t lk;
    int rc = dns_route(h->r, domain, strlen(domain), TAG, h->now, &lk);
    assert_true(rc == 0 || rc == DNS_DONE);
    pump(h);
    return rc;
}

static int start_lookup(struct h *h, const char *name, uint16_t type)
{
    uint64_t lk;
    int rc = dns_lookup(h->r, name, strlen(name), type, TAG, h->now, &lk);
    assert_true(rc == 0 || rc == DNS_DONE);
    pump(h);
    return rc;
}

static struct dns_stats stats(const struct h *h)
{
    struct dns_stats s;
    dns_stats_get(h->r, &s);
    return s;
}

#define SOA_EX                                                                                     \
    "AUTH example.com. 3600 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"

/* ---- a tiny authoritative zone for whole route lookups -------------------- */

struct zone {
    const char *rrs[ZONE_MAX];
    const char *drop[DROPS_MAX];     /* "name. TYPE": never answered */
    const char *servfail[DROPS_MAX]; /* "name. TYPE": SERVFAIL */
    bool ad;
    bool no_chase; /* stop at a CNAME, like a forwarder that does not chase */
};

static bool zone_listed(const char *const *list, const struct q *q)
{
    char key[DNS_NAME_MAX + 16];
    char *tn = ldns_rr_type2str(q->type);
    (void)snprintf(key, sizeof(key), "%s %s", q->name, tn);
    free(tn);
    for (unsigned i = 0; i < DROPS_MAX && list[i]; i++)
        if (strcmp(list[i], key) == 0)
            return true;
    return false;
}

/* Answers q from z like a recursive resolver: chases CNAMEs in the answer,
 * NXDOMAIN when the final name has nothing, NODATA with the SOA otherwise. */
static void zone_answer(struct h *h, const struct zone *z, struct q *q)
{
    if (zone_listed(z->drop, q)) {
        q_free(q);
        return;
    }
    if (zone_listed(z->servfail, q)) {
        answer(h, q, LDNS_RCODE_SERVFAIL, false, NULL);
        return;
    }
    ldns_pkt *p = reply_new(q, LDNS_RCODE_NOERROR);
    ldns_pkt_set_ad(p, z->ad);
    ldns_rdf *cur = ldns_rdf_clone(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(q->pkt), 0)));
    for (int links = 0; links < 12; links++) {
        bool exists = false, found = false;
        ldns_rdf *next = NULL;
        for (unsigned i = 0; i < ZONE_MAX && z->rrs[i]; i++) {
            ldns_rr *rr = NULL;
            assert_int_equal(ldns_rr_new_frm_str(&rr, z->rrs[i], 0, NULL, NULL), LDNS_STATUS_OK);
            if (ldns_dname_compare(ldns_rr_owner(rr), cur) != 0) {
                ldns_rr_free(rr);
                continue;
            }
            exists = true;
            if (ldns_rr_get_type(rr) == q->type) {
                found = true;
                ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, rr);
            } else if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_CNAME) {
                next = ldns_rdf_clone(ldns_rr_rdf(rr, 0));
                ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, rr);
            } else {
                ldns_rr_free(rr);
            }
        }
        if (found || !next) {
            ldns_rdf_deep_free(next);
            if (!exists)
                ldns_pkt_set_rcode(p, LDNS_RCODE_NXDOMAIN);
            if (!found)
                add_rr(p, LDNS_SECTION_AUTHORITY, SOA_EX + 5);
            break;
        }
        ldns_rdf_deep_free(cur);
        cur = next;
        if (z->no_chase)
            break;
    }
    ldns_rdf_deep_free(cur);
    deliver(h, q, p);
    q_free(q);
}

/* Answers everything outstanding (and what that causes) from z. */
static void zone_serve(struct h *h, const struct zone *z)
{
    for (int guard = 0; pending(h) > 0; guard++) {
        assert_true(guard < 1000);
        struct q q;
        take(h, &q);
        zone_answer(h, z, &q);
    }
}

static struct got *route_via_zone(struct h *h, const char *domain, const struct zone *z)
{
    unsigned before = h->ndone;
    start_route(h, domain);
    zone_serve(h, z);
    assert_int_equal(h->ndone, before + 1);
    return last_done(h);
}

/* ---- route lookups -------------------------------------------------------- */

static void mx_hosts_come_in_preference_order(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {
                         "example.com. 300 IN MX 30 mx3.example.com.",
                         "example.com. 300 IN MX 10 mx1.example.com.",
                         "example.com. 300 IN MX 20 mx2.example.com.",
                         "mx1.example.com. 300 IN A 192.0.2.1",
                         "mx2.example.com. 300 IN A 192.0.2.2",
                         "mx3.example.com. 300 IN A 192.0.2.3",
                     }};
    struct got *g = route_via_zone(h, "Example.COM.", &z);
    assert_int_equal(g->kind, DNS_KIND_ROUTE);
    assert_int_equal(g->tag, TAG);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_false(g->implicit);
    assert_int_equal(g->nhost, 3);
    assert_string_equal(g->hosts[0].name, "mx1.example.com");
    assert_int_equal(g->hosts[0].pref, 10);
    assert_string_equal(g->hosts[0].addrs, "192.0.2.1");
    assert_string_equal(g->hosts[1].name, "mx2.example.com");
    assert_int_equal(g->hosts[1].pref, 20);
    assert_string_equal(g->hosts[2].name, "mx3.example.com");
    assert_int_equal(g->hosts[2].pref, 30);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(g->hosts[i].status, DNS_HOST_OK);
    assert_int_equal(g->ttl_s, 60); /* the AAAA NODATA answers: SOA minimum */
    h_free(h);
}

static void equal_preferences_are_shuffled_across_seeds(void **state)
{
    (void)state;
    struct zone z = {.rrs = {
                         "example.com. 300 IN MX 10 a.example.com.",
                         "example.com. 300 IN MX 10 b.example.com.",
                         "example.com. 300 IN MX 5 first.example.com.",
                         "example.com. 300 IN MX 20 c.example.com.",
                         "a.example.com. 300 IN A 192.0.2.1",
                         "b.example.com. 300 IN A 192.0.2.2",
                         "c.example.com. 300 IN A 192.0.2.3",
                         "first.example.com. 300 IN A 192.0.2.4",
                     }};
    unsigned a_first = 0;
    unsigned b_first = 0;
    for (uint64_t seed = 1; seed <= 64; seed++) {
        struct h *h = h_alloc();
        opts_small(h, 1);
        h->o.seed = seed;
        h_start(h);
        struct got *g = route_via_zone(h, "example.com", &z);
        assert_int_equal(g->nhost, 4);
        assert_string_equal(g->hosts[0].name, "first.example.com");
        assert_string_equal(g->hosts[3].name, "c.example.com");
        if (strcmp(g->hosts[1].name, "a.example.com") == 0) {
            assert_string_equal(g->hosts[2].name, "b.example.com");
            a_first++;
        } else {
            assert_string_equal(g->hosts[1].name, "b.example.com");
            assert_string_equal(g->hosts[2].name, "a.example.com");
            b_first++;
        }
        h_free(h);
    }
    assert_true(a_first > 8);
    assert_true(b_first > 8);
}

static void equal_preferences_are_reshuffled_on_cached_lookups(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {
                         "example.com. 300 IN MX 10 a.example.com.",
                         "example.com. 300 IN MX 10 b.example.com.",
                         "a.example.com. 300 IN A 192.0.2.1",
                         "b.example.com. 300 IN A 192.0.2.2",
                     }};
    route_via_zone(h, "example.com", &z);
    unsigned a_first = 0;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(start_route(h, "example.com"), DNS_DONE);
        a_first += strcmp(last_done(h)->hosts[0].name, "a.example.com") == 0;
        h->ndone = 0;
    }
    assert_true(a_first > 5 && a_first < 35);
    h_free(h);
}

static void nodata_mx_gives_the_domain_as_implicit_mx(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {
                         "example.com. 300 IN A 192.0.2.7",
                         "example.com. 300 IN AAAA 2001:db8::7",
                     }};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_true(g->implicit);
    assert_int_equal(g->nhost, 1);
    assert_string_equal(g->hosts[0].name, "example.com");
    assert_int_equal(g->hosts[0].pref, 0);
    assert_string_equal(g->hosts[0].addrs, "2001:db8::7,192.0.2.7");
    assert_int_equal(stats(h).nodata, 1);
    h_free(h);
}

static void sole_null_mx_gives_nullmx(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 0 .", "example.com. 300 IN A 192.0.2.7"}};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_NULLMX);
    assert_int_equal(g->nhost, 0);
    assert_int_equal(h->udp_count, 1); /* no address lookups */
    h_free(h);
}

static void null_mx_among_others_is_dropped(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 0 .",
                             "example.com. 300 IN MX 10 mx.example.com.",
                             "mx.example.com. 300 IN A 192.0.2.9"}};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_int_equal(g->nhost, 1);
    assert_string_equal(g->hosts[0].name, "mx.example.com");
    h_free(h);
}

static void nxdomain_gives_nxdomain(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"other.example.com. 300 IN A 192.0.2.1"}};
    struct got *g = route_via_zone(h, "nope.example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_NXDOMAIN);
    assert_int_equal(g->nhost, 0);
    assert_int_equal(g->ttl_s, 60); /* SOA minimum */
    assert_int_equal(h->udp_count, 1);
    h_free(h);
}

static void aaaa_and_a_of_each_host_are_interleaved_ipv6_first(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {
                         "example.com. 300 IN MX 10 mx1.example.com.",
                         "example.com. 300 IN MX 20 mx2.example.com.",
                         "mx1.example.com. 300 IN A 192.0.2.1",
                         "mx1.example.com. 300 IN A 192.0.2.2",
                         "mx1.example.com. 300 IN AAAA 2001:db8::1",
                         "mx2.example.com. 300 IN AAAA 2001:db8::2",
                     }};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_int_equal(g->hosts[0].naddr, 3);
    /* v6, v4, v4: the v4 pair in either order */
    assert_true(strcmp(g->hosts[0].addrs, "2001:db8::1,192.0.2.1,192.0.2.2") == 0 ||
                strcmp(g->hosts[0].addrs, "2001:db8::1,192.0.2.2,192.0.2.1") == 0);
    assert_string_equal(g->hosts[1].addrs, "2001:db8::2");
    assert_int_equal(h->udp_count, 5); /* MX, then AAAA and A of two hosts */
    h_free(h);
}

static void addresses_per_host_are_capped(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 10 mx.example.com."}};
    char rrs[40][80];
    unsigned n = 1;
    for (unsigned i = 0; i < 20; i++) {
        (void)snprintf(rrs[i], sizeof(rrs[i]), "mx.example.com. 300 IN A 192.0.2.%u", i + 1);
        z.rrs[n++] = rrs[i];
        (void)snprintf(rrs[20 + i], sizeof(rrs[i]), "mx.example.com. 300 IN AAAA 2001:db8::%u",
                       i + 1);
        z.rrs[n++] = rrs[20 + i];
    }
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->hosts[0].naddr, DNS_HOST_ADDRS_MAX);
    /* strictly alternating families */
    char *save = NULL;
    char *tok = strtok_r(g->hosts[0].addrs, ",", &save);
    for (unsigned i = 0; tok; i++, tok = strtok_r(NULL, ",", &save))
        assert_int_equal(strchr(tok, ':') != NULL, i % 2 == 0);
    h_free(h);
}

static void more_mx_hosts_than_max_keeps_the_best(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {0};
    char rrs[2 * (DNS_ROUTE_HOSTS_MAX + 1)][80];
    unsigned n = 0;
    for (unsigned i = 0; i < DNS_ROUTE_HOSTS_MAX + 1; i++) {
        /* preferences DNS_ROUTE_HOSTS_MAX+1 down to 1: the worst comes first */
        (void)snprintf(rrs[n], 80, "example.com. 300 IN MX %u h%u.example.com.",
                       DNS_ROUTE_HOSTS_MAX + 1 - i, i);
        z.rrs[n] = rrs[n];
        n++;
        (void)snprintf(rrs[n], 80, "h%u.example.com. 300 IN A 192.0.2.%u", i, i + 1);
        z.rrs[n] = rrs[n];
        n++;
    }
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->nhost, DNS_ROUTE_HOSTS_MAX);
    assert_int_equal(g->hosts[0].pref, 1);
    assert_int_equal(g->hosts[DNS_ROUTE_HOSTS_MAX - 1].pref, DNS_ROUTE_HOSTS_MAX);
    assert_int_equal(h->udp_count, 1 + 2 * DNS_ROUTE_HOSTS_MAX);
    h_free(h);
}

/* 40 MX records, more than an answer keeps (DNS_ANSWER_RECORDS_MAX), the best
 * one last in wire order: it must be kept (it was dropped, leaving only hosts
 * without addresses: a permanent NOHOSTS for a deliverable domain). */
static void best_mx_is_kept_when_an_answer_has_more_records_than_fit(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {0};
    static char rrs[42][96];
    unsigned n = 0;
    for (unsigned i = 0; i < 40; i++) {
        (void)snprintf(rrs[n], sizeof(rrs[n]), "example.com. 300 IN MX 50 filler%02u.example.com.",
                       i);
        z.rrs[n] = rrs[n];
        n++;
    }
    (void)snprintf(rrs[n], sizeof(rrs[n]), "example.com. 300 IN MX 5 best.example.com.");
    z.rrs[n] = rrs[n];
    n++;
    (void)snprintf(rrs[n], sizeof(rrs[n]), "best.example.com. 300 IN A 192.0.2.1");
    z.rrs[n] = rrs[n];
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_int_equal(g->hosts[0].pref, 5);
    h_free(h);
}

static void duplicate_mx_hosts_keep_the_best_preference(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 20 mx.example.com.",
                             "example.com. 300 IN MX 10 MX.example.com.",
                             "mx.example.com. 300 IN A 192.0.2.1"}};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->nhost, 1);
    assert_int_equal(g->hosts[0].pref, 10);
    h_free(h);
}

static void host_whose_aaaa_times_out_keeps_its_a(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {
        .rrs = {"example.com. 300 IN MX 10 mx.example.com.", "mx.example.com. 300 IN A 192.0.2.1"},
        .drop = {"mx.example.com. AAAA"}};
    start_route(h, "example.com");
    zone_serve(h, &z);
    assert_int_equal(h->ndone, 0);
    for (int i = 0; i < 10 && h->ndone == 0; i++) {
        advance(h, DNS_ATTEMPT_TIMEOUT_MS_DEFAULT);
        zone_serve(h, &z);
    }
    struct got *g = last_done(h);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_int_equal(g->hosts[0].status, DNS_HOST_OK);
    assert_true(g->hosts[0].partial);
    assert_int_equal(g->hosts[0].fail, DNS_FAIL_TIMEOUT);
    assert_string_equal(g->hosts[0].addrs, "192.0.2.1");
    h_free(h);
}

static void host_failing_temporarily_is_kept_and_others_used(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 10 bad.example.com.",
                             "example.com. 300 IN MX 20 good.example.com.",
                             "good.example.com. 300 IN A 192.0.2.1"},
                     .servfail = {"bad.example.com. A", "bad.example.com. AAAA"}};
    start_route(h, "example.com");
    zone_serve(h, &z);
    struct got *g = last_done(h);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_int_equal(g->nhost, 2);
    assert_string_equal(g->hosts[0].name, "bad.example.com");
    assert_int_equal(g->hosts[0].status, DNS_HOST_TEMPFAIL);
    assert_int_equal(g->hosts[0].fail, DNS_FAIL_SERVFAIL);
    assert_int_equal(g->hosts[1].status, DNS_HOST_OK);
    h_free(h);
}

static void hosts_without_addresses_give_nohosts(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 10 gone.example.com.",
                             "example.com. 300 IN MX 20 bare.example.com.",
                             "bare.example.com. 300 IN TXT \"no address\""}};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_NOHOSTS);
    assert_int_equal(g->nhost, 2);
    assert_int_equal(g->hosts[0].status, DNS_HOST_NOADDR);
    assert_int_equal(g->hosts[1].status, DNS_HOST_NOADDR);
    h_free(h);
}

static void no_address_with_a_temporary_failure_gives_tempfail(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 10 gone.example.com.",
                             "example.com. 300 IN MX 20 flaky.example.com."},
                     .servfail = {"flaky.example.com. A"}};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_TEMPFAIL);
    assert_int_equal(g->hosts[0].status, DNS_HOST_NOADDR);
    assert_int_equal(g->hosts[1].status, DNS_HOST_TEMPFAIL);
    h_free(h);
}

static void mx_servfail_everywhere_gives_tempfail(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    struct zone z = {.servfail = {"example.com. MX"}};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_TEMPFAIL);
    assert_int_equal(g->fail, DNS_FAIL_SERVFAIL);
    assert_int_equal(h->udp_count, 2 * DNS_ROUNDS_DEFAULT); /* each server, each round */
    assert_int_equal(stats(h).server_errors, 2 * DNS_ROUNDS_DEFAULT);
    h_free(h);
}

/* ---- CNAMEs --------------------------------------------------------------- */

static void cname_chain_in_one_answer_is_followed(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {
                         "example.com. 300 IN MX 10 alias.example.com.",
                         "alias.example.com. 30 IN CNAME alias2.example.net.",
                         "alias2.example.net. 200 IN CNAME real.example.net.",
                         "real.example.net. 300 IN A 192.0.2.5",
                     }};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_int_equal(g->outcome, DNS_ROUTE_OK);
    assert_string_equal(g->hosts[0].name, "alias.example.com");
    assert_string_equal(g->hosts[0].addrs, "192.0.2.5");
    assert_int_equal(g->ttl_s, 30); /* the first CNAME's, below the SOA minimum's 60 */
    assert_int_equal(h->udp_count, 3);
    h_free(h);
}

static void cname_chain_across_queries_is_followed(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "www.example.com", DNS_T_A);
    struct q q;
    take_expect(h, &q, "www.example.com.", DNS_T_A);
    /* the answer stops at the CNAME, no SOA: ask for the target */
    answer(h, &q, LDNS_RCODE_NOERROR, false, "www.example.com. 300 IN CNAME web.example.net.",
           NULL);
    assert_int_equal(h->ndone, 0);
    take_expect(h, &q, "web.example.net.", DNS_T_A);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "web.example.net. 50 IN A 192.0.2.80", NULL);
    struct got *g = last_done(h);
    assert_int_equal(g->outcome, DNS_OUT_RECORDS);
    assert_int_equal(g->count, 1);
    assert_string_equal(g->recs[0], "192.0.2.80");
    assert_int_equal(g->ttl_s, 50);
    /* the whole chain is cached under the name asked for */
    assert_int_equal(start_lookup(h, "www.example.com", DNS_T_A), DNS_DONE);
    assert_string_equal(last_done(h)->recs[0], "192.0.2.80");
    h_free(h);
}

static void cname_then_nodata_with_soa_is_nodata_without_requery(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "www.example.com", DNS_T_AAAA);
    struct q q;
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "www.example.com. 300 IN CNAME web.example.com.",
           SOA_EX, NULL);
    assert_int_equal(pending(h), 0);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_NODATA);
    h_free(h);
}

static void cname_loop_gives_tempfail(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    /* within one answer */
    start_lookup(h, "a.example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "a.example.com. 300 IN CNAME b.example.com.",
           "b.example.com. 300 IN CNAME A.example.com.", NULL);
    assert_int_equal(pending(h), 0);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_TEMPFAIL);
    assert_int_equal(last_done(h)->fail, DNS_FAIL_CNAME);
    /* across queries */
    start_lookup(h, "x.example.com", DNS_T_A);
    take_expect(h, &q, "x.example.com.", DNS_T_A);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "x.example.com. 300 IN CNAME y.example.com.", NULL);
    take_expect(h, &q, "y.example.com.", DNS_T_A);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "y.example.com. 300 IN CNAME x.example.com.", NULL);
    assert_int_equal(pending(h), 0);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_TEMPFAIL);
    assert_int_equal(last_done(h)->fail, DNS_FAIL_CNAME);
    assert_int_equal(stats(h).cname_errors, 2);
    /* loops are not cached */
    assert_int_equal(start_lookup(h, "x.example.com", DNS_T_A), 0);
    h_free(h);
}

/* A chain of n CNAMEs c0 -> c1 -> ... -> cn, cn has the A record. */
static int cname_chain_of(unsigned n)
{
    struct h *h = h_new(1);
    struct zone z = {0};
    char rrs[16][80];
    for (unsigned i = 0; i < n; i++) {
        (void)snprintf(rrs[i], 80, "c%u.example.com. 300 IN CNAME c%u.example.com.", i, i + 1);
        z.rrs[i] = rrs[i];
    }
    (void)snprintf(rrs[n], 80, "c%u.example.com. 300 IN A 192.0.2.1", n);
    z.rrs[n] = rrs[n];
    start_lookup(h, "c0.example.com", DNS_T_A);
    zone_serve(h, &z);
    int out = last_done(h)->outcome;
    h_free(h);
    return out;
}

static void cname_chain_of_max_links_works_one_more_fails(void **state)
{
    (void)state;
    assert_int_equal(cname_chain_of(DNS_CNAME_MAX), DNS_OUT_RECORDS);
    assert_int_equal(cname_chain_of(DNS_CNAME_MAX + 1), DNS_OUT_TEMPFAIL);
}

/* ---- servers, retries, TCP ------------------------------------------------ */

static void query_has_rd_do_edns_1232_and_lower_case_name(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "MiXeD.Example.COM.", DNS_T_MX);
    struct q q;
    take(h, &q);
    assert_int_equal(q.io.kind, DNS_IO_UDP);
    assert_int_equal(q.io.server, 0);
    assert_string_equal(q.name, "mixed.example.com.");
    assert_true(ldns_pkt_rd(q.pkt));
    assert_false(ldns_pkt_qr(q.pkt));
    assert_true(ldns_pkt_edns(q.pkt));
    assert_true(ldns_pkt_edns_do(q.pkt));
    assert_int_equal(ldns_pkt_edns_udp_size(q.pkt), DNS_EDNS_UDP_SIZE);
    assert_int_equal(ldns_rr_get_class(ldns_rr_list_rr(ldns_pkt_question(q.pkt), 0)),
                     LDNS_RR_CLASS_IN);
    assert_true(q.io.wire.len <= DNS_QUERY_WIRE_MAX);
    q_free(&q);
    h_free(h);
}

static void query_ids_vary(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    h->o.cache_entries = 0;
    uint16_t ids[16];
    for (unsigned i = 0; i < 16; i++) {
        char name[32];
        (void)snprintf(name, sizeof(name), "n%u.example.com", i);
        if (i % 8 == 0) {
            dns_free(h->r);
            h->o.seed = i;
            h_start(h);
        }
        start_lookup(h, name, DNS_T_A);
        struct q q;
        take(h, &q);
        ids[i] = q.id;
        q_free(&q);
    }
    unsigned same = 0;
    for (unsigned i = 0; i < 16; i++)
        for (unsigned k = i + 1; k < 16; k++)
            same += ids[i] == ids[k];
    assert_true(same <= 1);
    h_free(h);
}

static void servfail_moves_to_the_next_server(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    assert_int_equal(q.io.server, 0);
    assert_int_equal(answer(h, &q, LDNS_RCODE_SERVFAIL, false, NULL), 0);
    take(h, &q);
    assert_int_equal(q.io.server, 1);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_RECORDS);
    assert_int_equal(stats(h).server_errors, 1);
    h_free(h);
}

static void refused_and_referral_move_to_the_next_server(void **state)
{
    (void)state;
    struct h *h = h_new(3);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    answer(h, &q, LDNS_RCODE_REFUSED, false, NULL);
    take(h, &q);
    assert_int_equal(q.io.server, 1);
    /* a non-recursive server: empty answer, NS in authority, no SOA */
    answer(h, &q, LDNS_RCODE_NOERROR, false, "AUTH example.com. 300 IN NS ns.example.com.", NULL);
    take(h, &q);
    assert_int_equal(q.io.server, 2);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_RECORDS);
    assert_int_equal(stats(h).server_errors, 2);
    h_free(h);
}

static void all_servers_timing_out_gives_tempfail_after_the_rounds(void **state)
{
    (void)state;
    struct h *h = h_new(3);
    start_lookup(h, "example.com", DNS_T_A);
    const unsigned attempts = 3 * DNS_ROUNDS_DEFAULT;
    for (unsigned i = 0; i < attempts; i++) {
        assert_int_equal(pending(h), 1);
        struct q q;
        take(h, &q);
        assert_int_equal(q.io.server, i % 3);
        q_free(&q);
        assert_int_equal(dns_next_deadline(h->r), h->now + DNS_ATTEMPT_TIMEOUT_MS_DEFAULT);
        advance(h, DNS_ATTEMPT_TIMEOUT_MS_DEFAULT - 1);
        assert_int_equal(pending(h), 0); /* not yet */
        advance(h, 1);
    }
    assert_int_equal(pending(h), 0);
    assert_int_equal(h->ndone, 1);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_TEMPFAIL);
    assert_int_equal(last_done(h)->fail, DNS_FAIL_TIMEOUT);
    assert_int_equal(dns_next_deadline(h->r), UINT64_MAX);
    assert_int_equal(stats(h).timeouts, attempts);
    assert_int_equal(stats(h).udp_sent, attempts);
    /* TEMPFAIL is not cached */
    assert_int_equal(start_lookup(h, "example.com", DNS_T_A), 0);
    h_free(h);
}

static void late_answer_from_an_earlier_server_is_taken(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q0;
    struct q q1;
    take(h, &q0);
    advance(h, DNS_ATTEMPT_TIMEOUT_MS_DEFAULT);
    take(h, &q1);
    assert_int_equal(q1.io.server, 1);
    assert_int_equal(
        answer(h, &q0, LDNS_RCODE_NOERROR, false, "example.com. 1 IN A 192.0.2.1", NULL), 0);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_RECORDS);
    assert_int_equal(
        answer(h, &q1, LDNS_RCODE_NOERROR, false, "example.com. 1 IN A 192.0.2.1", NULL),
        DNS_ERR_NOMATCH);
    assert_int_equal(h->ndone, 1);
    h_free(h);
}

static void send_failure_moves_to_the_next_server_at_once(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    dns_udp_send_failed(h->r, q.io.query, -101 /* ENETUNREACH */, h->now);
    pump(h);
    dns_udp_send_failed(h->r, q.io.query, -101, h->now); /* stale: ignored */
    pump(h);
    q_free(&q);
    assert_int_equal(pending(h), 1);
    take(h, &q);
    assert_int_equal(q.io.server, 1);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_RECORDS);
    h_free(h);
}

static void truncated_answer_asks_for_tcp_which_completes(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    start_lookup(h, "example.com", DNS_T_TXT);
    struct q q;
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    ldns_pkt_set_tc(p, true);
    assert_int_equal(deliver(h, &q, p), 0);
    q_free(&q);
    assert_int_equal(h->ndone, 0);
    assert_int_equal(stats(h).truncated, 1);
    take(h, &q);
    assert_int_equal(q.io.kind, DNS_IO_TCP);
    assert_int_equal(q.io.server, 0); /* the same server */
    assert_string_equal(q.name, "example.com.");
    assert_int_equal(q.type, DNS_T_TXT);
    answer(h, &q, LDNS_RCODE_NOERROR, true, "example.com. 300 IN TXT \"v=spf1 \" \"-all\"", NULL);
    struct got *g = last_done(h);
    assert_int_equal(g->outcome, DNS_OUT_RECORDS);
    assert_string_equal(g->recs[0], "v=spf1 -all");
    assert_true(g->secure);
    assert_int_equal(stats(h).tcp_sent, 1);
    h_free(h);
}

static void tcp_failure_or_timeout_moves_to_the_next_server(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    ldns_pkt_set_tc(p, true);
    deliver(h, &q, p);
    q_free(&q);
    take(h, &q);
    assert_int_equal(q.io.kind, DNS_IO_TCP);
    uint64_t tcp_query = q.io.query;
    dns_tcp_failed(h->r, tcp_query, -111 /* ECONNREFUSED */, h->now);
    pump(h);
    q_free(&q);
    take(h, &q);
    assert_int_equal(q.io.kind, DNS_IO_UDP);
    assert_int_equal(q.io.server, 1);
    p = reply_new(&q, LDNS_RCODE_NOERROR);
    ldns_pkt_set_tc(p, true);
    deliver(h, &q, p);
    q_free(&q);
    take(h, &q);
    assert_int_equal(q.io.kind, DNS_IO_TCP);
    assert_int_equal(q.io.server, 1);
    /* the resolver gives up on the exchange after tcp_timeout_ms */
    advance(h, DNS_TCP_TIMEOUT_MS_DEFAULT);
    assert_int_equal(stats(h).timeouts, 1);
    assert_int_equal(
        answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL),
        DNS_ERR_STALE);
    take(h, &q); /* round two, server 0 */
    assert_int_equal(q.io.kind, DNS_IO_UDP);
    assert_int_equal(q.io.server, 0);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_RECORDS);
    h_free(h);
}

static void a_server_that_timed_out_is_asked_last_for_a_while(void **state)
{
    (void)state;
    struct h *h = h_new(3);
    struct q q;
    start_lookup(h, "a.example.com", DNS_T_A);
    take(h, &q);
    assert_int_equal(q.io.server, 0);
    q_free(&q);
    advance(h, DNS_ATTEMPT_TIMEOUT_MS_DEFAULT);
    take(h, &q);
    assert_int_equal(q.io.server, 1);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "a.example.com. 300 IN A 192.0.2.1", NULL);
    /* within the hold-off: server 1 first, then round the list (2, 0) */
    start_lookup(h, "b.example.com", DNS_T_A);
    take(h, &q);
    assert_int_equal(q.io.server, 1);
    q_free(&q);
    advance(h, DNS_ATTEMPT_TIMEOUT_MS_DEFAULT);
    take(h, &q);
    assert_int_equal(q.io.server, 2);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "b.example.com. 300 IN A 192.0.2.2", NULL);
    /* servers 0 and 1 held off: server 2 */
    start_lookup(h, "c.example.com", DNS_T_A);
    take(h, &q);
    assert_int_equal(q.io.server, 2);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "c.example.com. 300 IN A 192.0.2.3", NULL);
    /* once the hold-off is over: server 0 first again */
    h->now += DNS_SERVER_HOLDOFF_MS;
    start_lookup(h, "d.example.com", DNS_T_A);
    struct q q0;
    take(h, &q0);
    assert_int_equal(q0.io.server, 0);
    advance(h, DNS_ATTEMPT_TIMEOUT_MS_DEFAULT); /* held off again */
    take(h, &q);
    assert_int_equal(q.io.server, 1);
    q_free(&q);
    /* its late answer clears the hold-off */
    answer(h, &q0, LDNS_RCODE_NOERROR, false, "d.example.com. 300 IN A 192.0.2.4", NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_RECORDS);
    start_lookup(h, "e.example.com", DNS_T_A);
    take(h, &q);
    assert_int_equal(q.io.server, 0);
    q_free(&q);
    h_free(h);
}

static void answers_with_wrong_id_question_or_source_are_ignored(void **state)
{
    (void)state;
    struct h *h = h_new(2);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    const char *rr = "example.com. 300 IN A 192.0.2.1";
    socklen_t alen;

    /* wrong ID */
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, rr);
    ldns_pkt_set_id(p, (uint16_t)(q.id + 1));
    assert_int_equal(deliver(h, &q, p), DNS_ERR_NOMATCH);

    /* wrong name, type, class */
    const char *wrong_q[] = {"example.org. IN A", "example.com. IN AAAA", "example.com. CH A",
                             "xexample.com. IN A"};
    for (unsigned i = 0; i < RM_ARRAY_LEN(wrong_q); i++) {
        p = ldns_pkt_new();
        ldns_pkt_set_id(p, q.id);
        ldns_pkt_set_qr(p, true);
        ldns_rr *qr = NULL;
        assert_int_equal(ldns_rr_new_question_frm_str(&qr, wrong_q[i], NULL, NULL), LDNS_STATUS_OK);
        ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, qr);
        add_rr(p, LDNS_SECTION_ANSWER, rr);
        assert_int_equal(deliver(h, &q, p), DNS_ERR_NOMATCH);
    }

    /* right packet, wrong sources: another server it was not sent to, another
     * port, another address */
    p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, rr);
    size_t len;
    uint8_t *w = to_wire(p, &len);
    ldns_pkt_free(p);
    const struct sockaddr *other = server_addr(h, 1, &alen);
    assert_int_equal(dns_udp_input(h->r, other, alen, w, len, h->now), DNS_ERR_NOMATCH);
    struct dns_server fake;
    server_set(&fake, "127.0.0.1", 5353, true);
    assert_int_equal(
        dns_udp_input(h->r, (const struct sockaddr *)&fake.addr, fake.addr_len, w, len, h->now),
        DNS_ERR_NOMATCH);
    server_set(&fake, "127.0.0.9", 53, true);
    assert_int_equal(
        dns_udp_input(h->r, (const struct sockaddr *)&fake.addr, fake.addr_len, w, len, h->now),
        DNS_ERR_NOMATCH);
    /* a query (QR clear) echoed back */
    w[2] &= 0x7f;
    const struct sockaddr *a0 = server_addr(h, 0, &alen);
    assert_int_equal(dns_udp_input(h->r, a0, alen, w, len, h->now), DNS_ERR_NOMATCH);
    w[2] |= 0x80;
    pump(h);
    assert_int_equal(h->ndone, 0);
    assert_int_equal(stats(h).unmatched, 9);

    /* the right one, with the name in another case */
    p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, rr);
    free(w);
    w = to_wire(p, &len);
    ldns_pkt_free(p);
    w[13] = 'E'; /* "example" -> "Example" in the question */
    assert_int_equal(dns_udp_input(h->r, a0, alen, w, len, h->now), 0);
    free(w);
    pump(h);
    assert_int_equal(h->ndone, 1);
    assert_string_equal(last_done(h)->recs[0], "192.0.2.1");
    q_free(&q);
    h_free(h);
}

static void every_truncation_of_a_valid_answer_is_ignored(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_route(h, "example.com");
    struct q q;
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, "example.com. 300 IN MX 10 mx1.example.com.");
    add_rr(p, LDNS_SECTION_ANSWER, "example.com. 300 IN MX 20 mx2.example.com.");
    add_rr(p, LDNS_SECTION_AUTHORITY, SOA_EX + 5);
    add_rr(p, LDNS_SECTION_ADDITIONAL, "mx1.example.com. 300 IN A 192.0.2.1");
    size_t len;
    uint8_t *w = to_wire(p, &len);
    ldns_pkt_free(p);
    socklen_t alen;
    const struct sockaddr *a = server_addr(h, 0, &alen);
    for (size_t n = 0; n < len; n++) {
        /* exactly n bytes in a buffer of their own, so ASan sees any overread */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, w, n);
        int rc = dns_udp_input(h->r, a, alen, cut, n, h->now);
        assert_true(rc == DNS_ERR_NOMATCH || rc == DNS_ERR_MALFORMED);
        free(cut);
        pump(h);
        assert_int_equal(pending(h), 0);
    }
    assert_true(stats(h).malformed > 0);
    assert_int_equal(dns_udp_input(h->r, a, alen, w, len, h->now), 0);
    free(w);
    pump(h);
    assert_int_equal(pending(h), 4); /* AAAA and A of two hosts */
    q_free(&q);
    h_free(h);
}

static uint64_t xs(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void random_byte_flips_never_crash(void **state)
{
    (void)state;
    struct h *h = h_alloc();
    opts_small(h, 2);
    h->o.cache_entries = 4;
    h->o.lookups_max = 2;
    h_start(h);
    static const char *const rrs[] = {
        "example.com. 300 IN MX 10 mx1.example.com.",
        "example.com. 300 IN CNAME other.example.com.",
        "example.com. 300 IN A 192.0.2.1",
        "example.com. 300 IN AAAA 2001:db8::1",
        "example.com. 300 IN TXT \"hello\" \"world\"",
        "example.com. 300 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef",
        "example.com. 300 IN MX 0 .",
    };
    static const uint16_t types[] = {DNS_T_MX, DNS_T_A, DNS_T_AAAA, DNS_T_TXT, DNS_T_TLSA};
    uint64_t rnd = 0x9e3779b97f4a7c15ull;
    for (unsigned it = 0; it < 3000; it++) {
        uint64_t lk;
        int rc;
        if (it % 3 == 0)
            rc = dns_route(h->r, "example.com", 11, it, h->now, &lk);
        else
            rc = dns_lookup(h->r, "example.com", 11, types[it % RM_ARRAY_LEN(types)], it, h->now,
                            &lk);
        assert_true(rc == 0 || rc == DNS_DONE);
        pump(h);
        for (int round = 0; round < 4 && pending(h) > 0; round++) {
            struct q q;
            take(h, &q);
            ldns_pkt *p = reply_new(&q, (uint8_t)(xs(&rnd) % 8 == 0 ? LDNS_RCODE_NXDOMAIN : 0));
            ldns_pkt_set_tc(p, xs(&rnd) % 16 == 0);
            for (unsigned k = 0; k < 1 + xs(&rnd) % 4; k++)
                add_rr(p, LDNS_SECTION_ANSWER, rrs[xs(&rnd) % RM_ARRAY_LEN(rrs)]);
            if (xs(&rnd) % 2)
                add_rr(p, LDNS_SECTION_AUTHORITY, SOA_EX + 5);
            size_t len;
            uint8_t *w = to_wire(p, &len);
            ldns_pkt_free(p);
            unsigned flips = 1 + (unsigned)(xs(&rnd) % 4);
            for (unsigned f = 0; f < flips; f++) {
                /* mostly past the header and question, where ldns must cope */
                size_t at = xs(&rnd) % len;
                w[at] ^= (uint8_t)(1u << (xs(&rnd) % 8));
            }
            if (q.io.kind == DNS_IO_TCP) {
                (void)dns_tcp_input(h->r, q.io.query, w, len, h->now);
            } else {
                socklen_t alen;
                const struct sockaddr *a = server_addr(h, q.io.server, &alen);
                (void)dns_udp_input(h->r, a, alen, w, len, h->now);
            }
            free(w);
            q_free(&q);
            pump(h);
        }
        dns_cancel(h->r, lk);
        pump(h);
        h->sent_head = h->sent_tail; /* forget what the cancelled lookup asked for */
        h->ndone = 0;
        h->now += 1000;
    }
    struct dns_stats s = stats(h);
    assert_true(s.malformed > 0);
    assert_true(s.answers > 0);
    h_free(h);
}

static void garbage_datagrams_are_ignored(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    socklen_t alen;
    const struct sockaddr *a = server_addr(h, 0, &alen);
    uint8_t buf[600];
    uint64_t rnd = 7;
    for (unsigned i = 0; i < 500; i++) {
        size_t len = xs(&rnd) % sizeof(buf);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)xs(&rnd);
        if (len >= 2 && i % 2) { /* the right ID, so it goes deeper */
            buf[0] = (uint8_t)(q.id >> 8);
            buf[1] = (uint8_t)q.id;
        }
        int rc = dns_udp_input(h->r, a, alen, buf, len, h->now);
        assert_true(rc == DNS_ERR_NOMATCH || rc == DNS_ERR_MALFORMED);
    }
    assert_int_equal(dns_udp_input(h->r, a, alen, NULL, 0, h->now), DNS_ERR_NOMATCH);
    pump(h);
    assert_int_equal(h->ndone, 0);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(h->ndone, 1);
    h_free(h);
}

static void records_with_bad_rdata_make_the_answer_malformed(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, "example.com. 300 IN A 192.0.2.1");
    size_t len;
    uint8_t *w = to_wire(p, &len);
    ldns_pkt_free(p);
    /* rdlength 4 -> 0: an A record without its address */
    assert_int_equal(w[len - 6], 0);
    assert_int_equal(w[len - 5], 4);
    w[len - 5] = 0;
    socklen_t alen;
    const struct sockaddr *a = server_addr(h, 0, &alen);
    assert_int_equal(dns_udp_input(h->r, a, alen, w, len - 4, h->now), DNS_ERR_MALFORMED);
    free(w);
    pump(h);
    assert_int_equal(h->ndone, 0);
    q_free(&q);
    h_free(h);
}

static void big_answers_are_capped_and_not_cached(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    /* DNS_ANSWER_RECORDS_MAX + 8 A records: the first DNS_ANSWER_RECORDS_MAX kept */
    start_lookup(h, "many.example.com", DNS_T_A);
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    for (unsigned i = 0; i < DNS_ANSWER_RECORDS_MAX + 8; i++) {
        char rr[80];
        (void)snprintf(rr, sizeof(rr), "many.example.com. 300 IN A 10.0.%u.%u", i / 200, i % 200);
        add_rr(p, LDNS_SECTION_ANSWER, rr);
    }
    deliver(h, &q, p);
    q_free(&q);
    struct got *g = last_done(h);
    assert_int_equal(g->count, DNS_ANSWER_RECORDS_MAX);
    assert_true(g->partial);
    assert_string_equal(g->recs[0], "10.0.0.0");
    assert_int_equal(start_lookup(h, "many.example.com", DNS_T_A), DNS_DONE); /* 192 octets */
    /* 29 AAAA records are 29 * 18 = 522 octets: over DNS_CACHE_BYTES_MAX */
    start_lookup(h, "six.example.com", DNS_T_AAAA);
    take(h, &q);
    p = reply_new(&q, LDNS_RCODE_NOERROR);
    for (unsigned i = 0; i < 29; i++) {
        char rr[80];
        (void)snprintf(rr, sizeof(rr), "six.example.com. 300 IN AAAA 2001:db8::%u", i + 1);
        add_rr(p, LDNS_SECTION_ANSWER, rr);
    }
    deliver(h, &q, p);
    q_free(&q);
    assert_int_equal(last_done(h)->count, 29);
    assert_false(last_done(h)->partial);
    assert_int_equal(stats(h).cache_too_big, 1);
    assert_int_equal(start_lookup(h, "six.example.com", DNS_T_AAAA), 0);
    h_free(h);
}

static void mx_hosts_that_are_not_host_names_are_dropped(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    start_lookup(h, "example.com", DNS_T_MX);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN MX 10 bad\\032host.example.com.",
           "example.com. 300 IN MX 20 good.example.com.", NULL);
    struct got *g = last_done(h);
    assert_int_equal(g->count, 1);
    assert_string_equal(g->recs[0], "20 good.example.com");
    assert_true(g->partial);
    /* only unusable hosts: no records to give */
    start_lookup(h, "example.net", DNS_T_MX);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.net. 300 IN MX 10 a\\.b.example.net.", NULL);
    g = last_done(h);
    assert_int_equal(g->outcome, DNS_OUT_NODATA);
    assert_true(g->partial);
    /* as a route: no host at all, which is permanent */
    start_route(h, "example.org");
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.org. 300 IN MX 10 a\\000b.example.org.",
           NULL);
    assert_int_equal(pending(h), 0);
    assert_int_equal(last_done(h)->outcome, DNS_ROUTE_NOHOSTS);
    h_free(h);
}

static void completions_queue_oldest_first(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    const char *names[] = {"a.example.com", "b.example.com", "c.example.com"};
    uint64_t lk[3];
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(dns_lookup(h->r, names[i], 13, DNS_T_A, i, h->now, &lk[i]), 0);
    struct dns_io io;
    struct q qs[3];
    for (unsigned i = 0; i < 3; i++) {
        assert_true(dns_next_io(h->r, &io));
        h->sent[h->sent_tail % SENT_MAX].io = io;
        memcpy(h->sent[h->sent_tail % SENT_MAX].wire, io.wire.p, io.wire.len);
        h->sent[h->sent_tail % SENT_MAX].io.wire =
            rm_span_make(h->sent[h->sent_tail % SENT_MAX].wire, io.wire.len);
        h->sent_tail++;
    }
    for (unsigned i = 0; i < 3; i++)
        take(h, &qs[i]);
    /* answered in the order c, a, b, with no dns_poll in between */
    static const unsigned order[] = {2, 0, 1};
    for (unsigned k = 0; k < 3; k++) {
        struct q *q = &qs[order[k]];
        ldns_pkt *p = reply_new(q, LDNS_RCODE_NOERROR);
        char rr[DNS_NAME_MAX + 64];
        (void)snprintf(rr, sizeof(rr), "%s 300 IN A 192.0.2.%u", q->name, order[k] + 1);
        add_rr(p, LDNS_SECTION_ANSWER, rr);
        size_t len;
        uint8_t *w = to_wire(p, &len);
        ldns_pkt_free(p);
        socklen_t alen;
        const struct sockaddr *a = server_addr(h, 0, &alen);
        assert_int_equal(dns_udp_input(h->r, a, alen, w, len, h->now), 0);
        free(w);
        q_free(q);
    }
    struct dns_done d;
    for (unsigned k = 0; k < 3; k++) {
        assert_true(dns_poll(h->r, &d));
        assert_int_equal(d.tag, order[k]);
        assert_int_equal(d.lookup, lk[order[k]]);
    }
    assert_false(dns_poll(h->r, &d));
    h_free(h);
}

static void v4_mapped_source_matches_an_ipv4_server(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, "example.com. 300 IN A 192.0.2.1");
    size_t len;
    uint8_t *w = to_wire(p, &len);
    ldns_pkt_free(p);
    struct dns_server mapped;
    server_set(&mapped, "::ffff:127.0.0.1", DNS_PORT, true);
    assert_int_equal(
        dns_udp_input(h->r, (const struct sockaddr *)&mapped.addr, mapped.addr_len, w, len, h->now),
        0);
    free(w);
    q_free(&q);
    pump(h);
    assert_int_equal(h->ndone, 1);
    h_free(h);
}

static void short_mx_rdata_makes_the_answer_malformed(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "example.com", DNS_T_MX);
    struct q q;
    take(h, &q);
    ldns_pkt *p = reply_new(&q, LDNS_RCODE_NOERROR);
    add_rr(p, LDNS_SECTION_ANSWER, "example.com. 300 IN MX 10 .");
    size_t len;
    uint8_t *w = to_wire(p, &len);
    ldns_pkt_free(p);
    /* rdata: preference (2) and the root (1); rdlength 3 -> 2 and cut the root */
    assert_int_equal(w[len - 5], 0);
    assert_int_equal(w[len - 4], 3);
    w[len - 4] = 2;
    socklen_t alen;
    const struct sockaddr *a = server_addr(h, 0, &alen);
    assert_int_equal(dns_udp_input(h->r, a, alen, w, len - 1, h->now), DNS_ERR_MALFORMED);
    free(w);
    pump(h);
    assert_int_equal(h->ndone, 0);
    q_free(&q);
    h_free(h);
}

static void every_error_code_has_a_name(void **state)
{
    (void)state;
    for (int e = DNS_ERR_STALE; e <= DNS_ERR_OPTS; e++) {
        const char *t = dns_strerror(e);
        assert_non_null(t);
        assert_true(strlen(t) > 0);
        for (int f = e + 1; f <= DNS_ERR_OPTS; f++)
            assert_string_not_equal(t, dns_strerror(f));
    }
    assert_string_equal(dns_strerror(-ENOMEM), strerrordesc_np(ENOMEM));
}

/* ---- DNSSEC --------------------------------------------------------------- */

static void ad_is_believed_only_from_trusted_servers(void **state)
{
    (void)state;
    struct h *h = h_alloc();
    opts_small(h, 2);
    server_set(&h->sv[1], "192.0.2.53", DNS_PORT, false);
    assert_true(h->sv[0].trusted);
    h_start(h);
    struct q q;
    start_lookup(h, "a.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, true, "a.example.com. 300 IN A 192.0.2.1", NULL);
    assert_true(last_done(h)->secure);

    start_lookup(h, "b.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "b.example.com. 300 IN A 192.0.2.1", NULL);
    assert_false(last_done(h)->secure);

    start_lookup(h, "c.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_SERVFAIL, false, NULL);
    take(h, &q);
    assert_int_equal(q.io.server, 1); /* untrusted */
    answer(h, &q, LDNS_RCODE_NOERROR, true, "c.example.com. 300 IN A 192.0.2.1", NULL);
    assert_false(last_done(h)->secure);

    /* the cache keeps the flag */
    assert_int_equal(start_lookup(h, "a.example.com", DNS_T_A), DNS_DONE);
    assert_true(last_done(h)->secure);
    assert_int_equal(start_lookup(h, "c.example.com", DNS_T_A), DNS_DONE);
    assert_false(last_done(h)->secure);
    h_free(h);
}

static void route_is_secure_only_when_every_answer_is(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 10 mx1.example.com.",
                             "example.com. 300 IN MX 20 mx2.example.com.",
                             "mx1.example.com. 300 IN A 192.0.2.1",
                             "mx2.example.com. 300 IN A 192.0.2.2"},
                     .ad = true};
    struct got *g = route_via_zone(h, "example.com", &z);
    assert_true(g->secure);
    assert_true(g->mx_secure);
    assert_true(g->hosts[0].secure && g->hosts[1].secure);

    /* mx2's AAAA answer comes without AD */
    struct h *h2 = h_new(1);
    start_route(h2, "example.com");
    for (int guard = 0; pending(h2) > 0; guard++) {
        assert_true(guard < 20);
        struct q q;
        take(h2, &q);
        z.ad = !(strcmp(q.name, "mx2.example.com.") == 0 && q.type == DNS_T_AAAA);
        zone_answer(h2, &z, &q);
    }
    g = last_done(h2);
    assert_true(g->mx_secure);
    assert_true(g->hosts[0].secure);
    assert_false(g->hosts[1].secure);
    assert_false(g->secure);
    h_free(h2);
    h_free(h);
}

/* ---- the cache ------------------------------------------------------------ */

static void cached_route_completes_without_io(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {.rrs = {"example.com. 300 IN MX 10 mx.example.com.",
                             "mx.example.com. 300 IN A 192.0.2.1",
                             "mx.example.com. 300 IN AAAA 2001:db8::1"}};
    route_via_zone(h, "example.com", &z);
    unsigned sent = h->udp_count;
    uint64_t lk;
    h->now += 10000;
    assert_int_equal(dns_route(h->r, "example.com", 11, 77, h->now, &lk), DNS_DONE);
    struct dns_io io;
    assert_false(dns_next_io(h->r, &io));
    struct dns_done d;
    assert_true(dns_poll(h->r, &d));
    assert_int_equal(d.tag, 77);
    assert_int_equal(d.lookup, lk);
    assert_int_equal(d.route->outcome, DNS_ROUTE_OK);
    assert_int_equal(d.route->hosts[0].addr_count, 2);
    assert_int_equal(d.route->ttl_s, 290); /* what is left */
    assert_false(dns_poll(h->r, &d));
    assert_int_equal(h->udp_count, sent);
    assert_int_equal(stats(h).cache_hits, 3);
    h_free(h);
}

static void ttl_expiry_causes_a_new_query(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    start_lookup(h, "example.com", DNS_T_A);
    struct q q;
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 60 IN A 192.0.2.1", NULL);
    h->now += 59999;
    assert_int_equal(start_lookup(h, "example.com", DNS_T_A), DNS_DONE);
    assert_int_equal(last_done(h)->ttl_s, 1);
    h->now += 1;
    assert_int_equal(start_lookup(h, "example.com", DNS_T_A), 0);
    take(h, &q);
    q_free(&q);
    h_free(h);
}

static void ttls_are_clamped(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    start_lookup(h, "zero.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "zero.example.com. 0 IN A 192.0.2.1", NULL);
    assert_int_equal(last_done(h)->ttl_s, DNS_TTL_MIN_S_DEFAULT);
    start_lookup(h, "long.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "long.example.com. 9999999 IN A 192.0.2.1", NULL);
    assert_int_equal(last_done(h)->ttl_s, DNS_TTL_MAX_S_DEFAULT);
    h->now += DNS_TTL_MIN_S_DEFAULT * 1000 - 1;
    assert_int_equal(start_lookup(h, "zero.example.com", DNS_T_A), DNS_DONE);
    h->now += 1;
    assert_int_equal(start_lookup(h, "zero.example.com", DNS_T_A), 0);
    h_free(h);
}

static void negative_answers_are_cached_by_the_soa_minimum(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    /* NXDOMAIN: min(SOA TTL 3600, minimum 60) = 60 s */
    start_lookup(h, "gone.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NXDOMAIN, false, SOA_EX, NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_NXDOMAIN);
    assert_int_equal(last_done(h)->ttl_s, 60);
    /* NODATA: the SOA's own TTL when smaller (30 s) */
    start_lookup(h, "example.com", DNS_T_AAAA);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false,
           "AUTH example.com. 30 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60",
           NULL);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_NODATA);
    assert_int_equal(last_done(h)->ttl_s, 30);
    /* without a SOA: the default */
    start_lookup(h, "nosoa.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NXDOMAIN, false, NULL);
    assert_int_equal(last_done(h)->ttl_s, DNS_NEG_TTL_S_DEFAULT);

    h->now += 29999;
    assert_int_equal(start_lookup(h, "example.com", DNS_T_AAAA), DNS_DONE);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_NODATA);
    h->now += 1;
    assert_int_equal(start_lookup(h, "example.com", DNS_T_AAAA), 0);
    h->now += 30000 - 1;
    assert_int_equal(start_lookup(h, "gone.example.com", DNS_T_A), DNS_DONE);
    assert_int_equal(last_done(h)->outcome, DNS_OUT_NXDOMAIN);
    h->now += 1;
    assert_int_equal(start_lookup(h, "gone.example.com", DNS_T_A), 0);
    assert_int_equal(start_lookup(h, "nosoa.example.com", DNS_T_A), DNS_DONE);
    struct dns_stats s = stats(h);
    assert_int_equal(s.nxdomain, 4);
    assert_int_equal(s.nodata, 2);
    h_free(h);
}

static void negative_ttl_is_capped(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    start_lookup(h, "gone.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NXDOMAIN, false,
           "AUTH example.com. 86400 IN SOA ns.example.com. host.example.com. 1 2 3 4 86400", NULL);
    assert_int_equal(last_done(h)->ttl_s, DNS_NEG_TTL_MAX_S_DEFAULT);
    h_free(h);
}

static void full_cache_evicts_the_least_recently_used(void **state)
{
    (void)state;
    struct h *h = h_alloc();
    opts_small(h, 1);
    h->o.cache_entries = 3;
    h_start(h);
    const char *names[] = {"n0.example.com", "n1.example.com", "n2.example.com"};
    struct q q;
    for (unsigned i = 0; i < 3; i++) {
        start_lookup(h, names[i], DNS_T_A);
        take(h, &q);
        char rr[80];
        (void)snprintf(rr, sizeof(rr), "%s. 300 IN A 192.0.2.%u", names[i], i + 1);
        answer(h, &q, LDNS_RCODE_NOERROR, false, rr, NULL);
    }
    /* N entries: all cached; touch n0 so n1 is the least recently used */
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(start_lookup(h, names[i], DNS_T_A), DNS_DONE);
    assert_int_equal(start_lookup(h, names[0], DNS_T_A), DNS_DONE);
    /* N+1: evicts n1 */
    start_lookup(h, "n3.example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "n3.example.com. 300 IN A 192.0.2.4", NULL);
    assert_int_equal(stats(h).cache_evictions, 1);
    assert_int_equal(start_lookup(h, names[0], DNS_T_A), DNS_DONE);
    assert_int_equal(start_lookup(h, names[2], DNS_T_A), DNS_DONE);
    assert_int_equal(start_lookup(h, "n3.example.com", DNS_T_A), DNS_DONE);
    assert_int_equal(start_lookup(h, names[1], DNS_T_A), 0);
    h_free(h);
}

static void cache_keys_are_name_and_type_case_insensitive(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    start_lookup(h, "Example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(start_lookup(h, "EXAMPLE.COM.", DNS_T_A), DNS_DONE);
    assert_int_equal(start_lookup(h, "example.com", DNS_T_AAAA), 0);
    h_free(h);
}

static void zero_cache_entries_disables_the_cache(void **state)
{
    (void)state;
    struct h *h = h_alloc();
    opts_small(h, 1);
    h->o.cache_entries = 0;
    h_start(h);
    struct q q;
    start_lookup(h, "example.com", DNS_T_A);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(start_lookup(h, "example.com", DNS_T_A), 0);
    h_free(h);
}

/* ---- typed records and the generic lookup --------------------------------- */

static void tlsa_and_mx_records_are_typed(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct q q;
    start_lookup(h, "_25._tcp.mx.example.com", DNS_T_TLSA);
    take_expect(h, &q, "_25._tcp.mx.example.com.", DNS_T_TLSA);
    answer(h, &q, LDNS_RCODE_NOERROR, true,
           "_25._tcp.mx.example.com. 300 IN TLSA 3 1 1 "
           "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
           "_25._tcp.mx.example.com. 300 IN TLSA 2 0 1 aabb", NULL);
    struct got *g = last_done(h);
    assert_int_equal(g->count, 2);
    assert_string_equal(g->recs[0],
                        "3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    assert_string_equal(g->recs[1], "2 0 1 aabb");
    assert_true(g->secure);

    start_lookup(h, "example.com", DNS_T_MX);
    take(h, &q);
    answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN MX 10 MX1.Example.COM.",
           "example.com. 300 IN MX 0 .",
           "example.com. 300 IN RRSIG MX 13 2 300 20380101000000 "
           "20200101000000 1234 example.com. AAAA",
           NULL);
    g = last_done(h);
    assert_int_equal(g->count, 2);
    assert_string_equal(g->recs[0], "10 mx1.example.com");
    assert_string_equal(g->recs[1], "0 ");
    h_free(h);
}

static void unsupported_types_and_bad_names_are_refused(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    uint64_t lk;
    assert_int_equal(dns_lookup(h->r, "example.com", 11, 5 /* CNAME */, 0, h->now, &lk),
                     DNS_ERR_TYPE);
    char label64[80];
    char name254[300];
    char name253[300];
    memset(label64, 'a', 64);
    memcpy(label64 + 64, ".com", 5);
    /* 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 */
    memset(name253, 'b', 253);
    name253[63] = name253[127] = name253[191] = '.';
    name253[253] = 0;
    memcpy(name254, name253, 253);
    memcpy(name254 + 253, "b", 2);
    const char *bad[] = {"",          ".",         "a..b",          ".a",    "a b.com",
                         "a\x80.com", "[1.2.3.4]", "example.com..", label64, name254};
    for (unsigned i = 0; i < RM_ARRAY_LEN(bad); i++)
        assert_int_equal(dns_route(h->r, bad[i], strlen(bad[i]), 0, h->now, &lk), DNS_ERR_NAME);
    assert_int_equal(dns_lookup(h->r, "a\0b", 3, DNS_T_A, 0, h->now, &lk), DNS_ERR_NAME);
    pump(h);
    assert_int_equal(pending(h), 0);
    assert_int_equal(dns_lookup(h->r, name253, 253, DNS_T_A, 0, h->now, &lk), 0);
    label64[1] = '.'; /* labels of 1 and 62 */
    assert_int_equal(dns_lookup(h->r, label64, strlen(label64), DNS_T_A, 0, h->now, &lk), 0);
    h_free(h);
}

static void lookups_max_busy_at_n_plus_1(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    uint64_t lk[9];
    for (unsigned i = 0; i < h->o.lookups_max; i++) {
        char name[32];
        (void)snprintf(name, sizeof(name), "n%u.example.com", i);
        assert_int_equal(dns_lookup(h->r, name, strlen(name), DNS_T_A, i, h->now, &lk[i]), 0);
    }
    assert_int_equal(dns_lookup(h->r, "x.example.com", 13, DNS_T_A, 9, h->now, &lk[8]),
                     DNS_ERR_BUSY);
    assert_int_equal(stats(h).busy, 1);
    dns_cancel(h->r, lk[3]);
    dns_cancel(h->r, lk[3]); /* stale: nothing */
    assert_int_equal(dns_lookup(h->r, "x.example.com", 13, DNS_T_A, 9, h->now, &lk[8]), 0);
    h_free(h);
}

static void cancel_withdraws_the_completion_and_its_answers(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    uint64_t lk;
    struct q q;
    assert_int_equal(dns_lookup(h->r, "example.com", 11, DNS_T_A, 1, h->now, &lk), 0);
    pump(h);
    take(h, &q);
    dns_cancel(h->r, lk);
    pump(h);
    assert_int_equal(
        answer(h, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL),
        DNS_ERR_NOMATCH);
    assert_int_equal(h->ndone, 0);
    assert_int_equal(dns_next_deadline(h->r), UINT64_MAX);
    /* a completion waiting in dns_poll is withdrawn too */
    struct h *h2 = h_new(1);
    start_lookup(h2, "example.com", DNS_T_A);
    take(h2, &q);
    answer(h2, &q, LDNS_RCODE_NOERROR, false, "example.com. 300 IN A 192.0.2.1", NULL);
    assert_int_equal(dns_lookup(h2->r, "example.com", 11, DNS_T_A, 1, h2->now, &lk), DNS_DONE);
    dns_cancel(h2->r, lk);
    struct dns_done d;
    assert_false(dns_poll(h2->r, &d));
    h_free(h2);
    h_free(h);
}

static void results_stay_valid_until_the_next_poll(void **state)
{
    (void)state;
    struct h *h = h_new(1);
    struct zone z = {
        .rrs = {"example.com. 300 IN MX 10 mx.example.com.", "mx.example.com. 300 IN A 192.0.2.1"}};
    route_via_zone(h, "example.com", &z);
    uint64_t lk;
    assert_int_equal(dns_route(h->r, "example.com", 11, 1, h->now, &lk), DNS_DONE);
    struct dns_done d;
    assert_true(dns_poll(h->r, &d));
    /* starting more lookups does not touch the borrowed result */
    for (unsigned i = 0; i < h->o.lookups_max - 1; i++) {
        char name[32];
        (void)snprintf(name, sizeof(name), "n%u.example.com", i);
        assert_int_equal(dns_lookup(h->r, name, strlen(name), DNS_T_A, i, h->now, &lk), 0);
    }
    assert_int_equal(dns_lookup(h->r, "x.example.com", 13, DNS_T_A, 9, h->now, &lk), DNS_ERR_BUSY);
    assert_int_equal(d.route->hosts[0].addr_count, 1);
    assert_memory_equal(d.route->hosts[0].name.p, "mx.example.com", 14);
    assert_false(dns_poll(h->r, &d)); /* frees the slot */
    assert_int_equal(dns_lookup(h->r, "x.example.com", 13, DNS_T_A, 9, h->now, &lk), 0);
    h_free(h);
}

static void options_out_of_range_are_refused(void **state)
{
    (void)state;
    struct h *h = h_alloc();
    struct dns_resolver *r = NULL;
    opts_small(h, 1);
    h->o.server_count = 0;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->o.server_count = DNS_SERVERS_MAX + 1;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->o.lookups_max = DNS_LOOKUPS_MAX + 1;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->o.rounds = 0;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->o.ttl_min_s = 100;
    h->o.ttl_max_s = 10;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->o.attempt_timeout_ms = DNS_ATTEMPT_TIMEOUT_MS_MIN - 1;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->sv[0].addr.ss_family = AF_UNIX;
    assert_int_equal(dns_new(&r, &h->o), DNS_ERR_OPTS);
    opts_small(h, 1);
    h->o.lookups_max = DNS_LOOKUPS_MAX;
    assert_int_equal(dns_new(&r, &h->o), 0);
    dns_free(r);
    dns_free(NULL);
    assert_non_null(dns_strerror(DNS_ERR_BUSY));
    assert_non_null(dns_strerror(-12345));
    free(h);
}

/* ---- server lists --------------------------------------------------------- */

static void server_text(const struct dns_server *s, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    if (s->addr.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&s->addr;
        assert_int_equal(s->addr_len, sizeof(*a));
        (void)inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        (void)snprintf(out, cap, "%s:%u%s", ip, ntohs(a->sin_port), s->trusted ? " t" : "");
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&s->addr;
        assert_int_equal(s->addr.ss_family, AF_INET6);
        assert_int_equal(s->addr_len, sizeof(*a));
        (void)inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        (void)snprintf(out, cap, "[%s%%%u]:%u%s", ip, a->sin6_scope_id, ntohs(a->sin6_port),
                       s->trusted ? " t" : "");
    }
}

static void resolv_conf_is_parsed_like_the_c_library(void **state)
{
    (void)state;
    const char *text = "# generated\n"
                       "; also a comment\n"
                       "domain example.com\n"
                       "search example.com example.net\n"
                       "nameserver bogus\n"
                       "nameserver\t127.0.0.53   # systemd-resolved\n"
                       "nameserver256.0.0.1\n"
                       "#nameserver 10.9.9.9\n"
                       "nameserver fe80::1%eth0\n"
                       "  nameserver 10.1.1.1\n" /* indented: not a keyword */
                       "nameserver ::1\n"
                       "nameserver fe80::2%3\n"
                       "nameserver 192.0.2.1\n"
                       "options edns0 trust-ad\n"
                       "nameserver 192.0.2.2";
    struct dns_server sv[8];
    int n = dns_parse_resolv_conf(text, strlen(text), sv, 8);
    assert_int_equal(n, DNS_RESOLV_CONF_MAX);
    char t[96];
    server_text(&sv[0], t, sizeof(t));
    assert_string_equal(t, "127.0.0.53:53 t");
    server_text(&sv[1], t, sizeof(t));
    assert_string_equal(t, "[::1%0]:53 t");
    server_text(&sv[2], t, sizeof(t));
    assert_string_equal(t, "[fe80::2%3]:53");
    /* cap below three; no nameserver at all; CRLF and no final newline */
    assert_int_equal(dns_parse_resolv_conf(text, strlen(text), sv, 1), 1);
    assert_int_equal(dns_parse_resolv_conf("search x\n", 9, sv, 8), 0);
    assert_int_equal(dns_parse_resolv_conf("", 0, sv, 8), 0);
    const char *crlf = "nameserver 10.0.0.1\r\nnameserver 10.0.0.2";
    assert_int_equal(dns_parse_resolv_conf(crlf, strlen(crlf), sv, 8), 2);
    server_text(&sv[0], t, sizeof(t));
    assert_string_equal(t, "10.0.0.1:53");
    /* the length bounds the text: no NUL needed */
    assert_int_equal(dns_parse_resolv_conf(crlf, 19, sv, 8), 1);
    assert_int_equal(dns_parse_resolv_conf(crlf, 18, sv, 8), 0); /* "10.0.0." */
}

static void config_resolvers_are_parsed(void **state)
{
    (void)state;
    struct dns_server sv[DNS_SERVERS_MAX];
    char t[96];
    size_t off = 99;
    const char *s = "127.0.0.1:5353, [::1]:53 ,192.0.2.1,::1,[2001:db8::1]";
    int n = dns_parse_servers(s, strlen(s), sv, DNS_SERVERS_MAX, &off);
    assert_int_equal(n, 5);
    server_text(&sv[0], t, sizeof(t));
    assert_string_equal(t, "127.0.0.1:5353 t");
    server_text(&sv[1], t, sizeof(t));
    assert_string_equal(t, "[::1%0]:53 t");
    server_text(&sv[2], t, sizeof(t));
    assert_string_equal(t, "192.0.2.1:53");
    server_text(&sv[3], t, sizeof(t));
    assert_string_equal(t, "[::1%0]:53 t");
    server_text(&sv[4], t, sizeof(t));
    assert_string_equal(t, "[2001:db8::1%0]:53");
    assert_int_equal(dns_parse_servers("127.0.0.1:65535", 15, sv, 1, NULL), 1);
}

static void config_resolvers_errors_name_the_entry(void **state)
{
    (void)state;
    struct dns_server sv[DNS_SERVERS_MAX];
    struct {
        const char *text;
        int err;
        size_t off;
    } cases[] = {
        {"", DNS_ERR_EMPTY, 0},
        {"   ", DNS_ERR_EMPTY, 0},
        {"127.0.0.1,", DNS_ERR_EMPTY, 10},
        {"127.0.0.1, ,::1", DNS_ERR_EMPTY, 11},
        {"127.0.0.1:0", DNS_ERR_PORT, 0},
        {"127.0.0.1:65536", DNS_ERR_PORT, 0},
        {"127.0.0.1:", DNS_ERR_PORT, 0},
        {"127.0.0.1:53x", DNS_ERR_PORT, 0},
        {"::1, 127.0.0.1:-1", DNS_ERR_PORT, 5},
        {"localhost", DNS_ERR_ADDR, 0},
        {"127.1", DNS_ERR_ADDR, 0},
        {"[::1", DNS_ERR_ADDR, 0},
        {"[127.0.0.1]:53", DNS_ERR_ADDR, 0},
        {"[::1]x", DNS_ERR_ADDR, 0},
        {":53", DNS_ERR_ADDR, 0},
        {"1.2.3.4 5.6.7.8", DNS_ERR_ADDR, 0},
        {"1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,5.5.5.5,6.6.6.6,7.7.7.7,8.8.8.8,9.9.9.9",
         DNS_ERR_TOO_MANY, 64},
    };
    for (unsigned i = 0; i < RM_ARRAY_LEN(cases); i++) {
        size_t off = 999;
        int rc = dns_parse_servers(cases[i].text, strlen(cases[i].text), sv, DNS_SERVERS_MAX, &off);
        if (rc != cases[i].err || off != cases[i].off)
            fail_msg("\"%s\": got %d at %zu, want %d at %zu", cases[i].text, rc, off, cases[i].err,
                     cases[i].off);
    }
    /* exactly cap entries fit; one more is too many */
    assert_int_equal(dns_parse_servers("1.1.1.1,2.2.2.2", 15, sv, 2, NULL), 2);
    assert_int_equal(dns_parse_servers("1.1.1.1,2.2.2.2,3.3.3.3", 23, sv, 2, NULL),
                     DNS_ERR_TOO_MANY);
}

static void loopback_addresses_are_recognised(void **state)
{
    (void)state;
    struct dns_server s;
    const char *yes[] = {"127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"};
    const char *no[] = {"128.0.0.1", "::2", "::ffff:10.0.0.1", "10.127.0.1", "::"};
    for (unsigned i = 0; i < RM_ARRAY_LEN(yes); i++) {
        server_set(&s, yes[i], 53, false);
        assert_true(dns_addr_is_loopback((const struct sockaddr *)&s.addr));
    }
    for (unsigned i = 0; i < RM_ARRAY_LEN(no); i++) {
        server_set(&s, no[i], 53, false);
        assert_false(dns_addr_is_loopback((const struct sockaddr *)&s.addr));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mx_hosts_come_in_preference_order),
        cmocka_unit_test(equal_preferences_are_shuffled_across_seeds),
        cmocka_unit_test(equal_preferences_are_reshuffled_on_cached_lookups),
        cmocka_unit_test(nodata_mx_gives_the_domain_as_implicit_mx),
        cmocka_unit_test(sole_null_mx_gives_nullmx),
        cmocka_unit_test(null_mx_among_others_is_dropped),
        cmocka_unit_test(nxdomain_gives_nxdomain),
        cmocka_unit_test(aaaa_and_a_of_each_host_are_interleaved_ipv6_first),
        cmocka_unit_test(addresses_per_host_are_capped),
        cmocka_unit_test(more_mx_hosts_than_max_keeps_the_best),
        cmocka_unit_test(duplicate_mx_hosts_keep_the_best_preference),
        cmocka_unit_test(best_mx_is_kept_when_an_answer_has_more_records_than_fit),
        cmocka_unit_test(host_whose_aaaa_times_out_keeps_its_a),
        cmocka_unit_test(host_failing_temporarily_is_kept_and_others_used),
        cmocka_unit_test(hosts_without_addresses_give_nohosts),
        cmocka_unit_test(no_address_with_a_temporary_failure_gives_tempfail),
        cmocka_unit_test(mx_servfail_everywhere_gives_tempfail),
        cmocka_unit_test(cname_chain_in_one_answer_is_followed),
        cmocka_unit_test(cname_chain_across_queries_is_followed),
        cmocka_unit_test(cname_then_nodata_with_soa_is_nodata_without_requery),
        cmocka_unit_test(cname_loop_gives_tempfail),
        cmocka_unit_test(cname_chain_of_max_links_works_one_more_fails),
        cmocka_unit_test(query_has_rd_do_edns_1232_and_lower_case_name),
        cmocka_unit_test(query_ids_vary),
        cmocka_unit_test(servfail_moves_to_the_next_server),
        cmocka_unit_test(refused_and_referral_move_to_the_next_server),
        cmocka_unit_test(all_servers_timing_out_gives_tempfail_after_the_rounds),
        cmocka_unit_test(late_answer_from_an_earlier_server_is_taken),
        cmocka_unit_test(send_failure_moves_to_the_next_server_at_once),
        cmocka_unit_test(truncated_answer_asks_for_tcp_which_completes),
        cmocka_unit_test(tcp_failure_or_timeout_moves_to_the_next_server),
        cmocka_unit_test(a_server_that_timed_out_is_asked_last_for_a_while),
        cmocka_unit_test(answers_with_wrong_id_question_or_source_are_ignored),
        cmocka_unit_test(every_truncation_of_a_valid_answer_is_ignored),
        cmocka_unit_test(random_byte_flips_never_crash),
        cmocka_unit_test(garbage_datagrams_are_ignored),
        cmocka_unit_test(records_with_bad_rdata_make_the_answer_malformed),
        cmocka_unit_test(big_answers_are_capped_and_not_cached),
        cmocka_unit_test(mx_hosts_that_are_not_host_names_are_dropped),
        cmocka_unit_test(completions_queue_oldest_first),
        cmocka_unit_test(v4_mapped_source_matches_an_ipv4_server),
        cmocka_unit_test(short_mx_rdata_makes_the_answer_malformed),
        cmocka_unit_test(every_error_code_has_a_name),
        cmocka_unit_test(ad_is_believed_only_from_trusted_servers),
        cmocka_unit_test(route_is_secure_only_when_every_answer_is),
        cmocka_unit_test(cached_route_completes_without_io),
        cmocka_unit_test(ttl_expiry_causes_a_new_query),
        cmocka_unit_test(ttls_are_clamped),
        cmocka_unit_test(negative_answers_are_cached_by_the_soa_minimum),
        cmocka_unit_test(negative_ttl_is_capped),
        cmocka_unit_test(full_cache_evicts_the_least_recently_used),
        cmocka_unit_test(cache_keys_are_name_and_type_case_insensitive),
        cmocka_unit_test(zero_cache_entries_disables_the_cache),
        cmocka_unit_test(tlsa_and_mx_records_are_typed),
        cmocka_unit_test(unsupported_types_and_bad_names_are_refused),
        cmocka_unit_test(lookups_max_busy_at_n_plus_1),
        cmocka_unit_test(cancel_withdraws_the_completion_and_its_answers),
        cmocka_unit_test(results_stay_valid_until_the_next_poll),
        cmocka_unit_test(options_out_of_range_are_refused),
        cmocka_unit_test(resolv_conf_is_parsed_like_the_c_library),
        cmocka_unit_test(config_resolvers_are_parsed),
        cmocka_unit_test(config_resolvers_errors_name_the_entry),
        cmocka_unit_test(loopback_addresses_are_recognised),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
