/* dns/dns.h: the DNS stub resolver of one worker, sans-I/O.
 *
 * What it does: asks recursive resolvers (the config's `resolvers`, default the
 * nameservers of /etc/resolv.conf) for A, AAAA, MX, TLSA and TXT records, with
 * RD set and EDNS0 (DO bit, 1232-byte UDP payload); retries and fails over
 * across the servers; falls back to TCP when an answer is truncated; caches
 * answers by TTL, negative ones too (RFC 2308); and runs the whole MX route
 * lookup of a mail domain (RFC 5321 5.1, RFC 7505): MX, then A and AAAA of
 * every MX host. ldns builds the queries and parses the answers.
 *
 * What it never does: open or touch a socket, read a clock (now_ms is passed
 * in: any monotonic millisecond clock, the same one for every call), log,
 * block, or allocate after dns_new() (ldns allocates and frees inside a call
 * while it builds or parses a packet; nothing of it outlives the call).
 *
 * Threads: one resolver per worker, created, used and freed by that worker's
 * thread only. There is no global state.
 *
 * DNSSEC: there is no signature validation here. An answer is "secure" when
 * it came with the AD bit from a server marked trusted (by default the
 * loopback ones): a validating resolver on loopback is trusted the way
 * Postfix does it (../shared/TESTING.md says why that is the robust choice).
 * The AD bit of any other server is ignored.
 *
 * The caller's loop (the worker's io_uring loop):
 *   dns_new()               at start-up, with the servers and the sizes.
 *   dns_lookup(), dns_route()
 *                           start a lookup; 1 (DNS_DONE) means it was answered
 *                           from the cache and is already waiting in dns_poll();
 *                           0 means I/O was asked for.
 *   after EVERY call that can make progress (start, input, tick, cancel):
 *     while (dns_next_io(r, &io))  copy io.wire into a send buffer and submit:
 *        DNS_IO_UDP   sendmsg(io.wire) to io.addr on the UDP socket of its
 *                     family; on a send error dns_udp_send_failed().
 *        DNS_IO_TCP   one TCP exchange with io.addr: connect, send io.wire (it
 *                     already carries the 2-byte length), read a 2-byte length
 *                     and that many bytes, close; then dns_tcp_input() with
 *                     the answer (without its length) or dns_tcp_failed().
 *     while (dns_poll(r, &done))   hand the result to done.tag's owner.
 *   on a received UDP datagram:  dns_udp_input() with its source address.
 *   timers:                      arm a timeout for dns_next_deadline(); when
 *                                it fires (or any time) call dns_tick(now).
 *   dns_free()                   at shutdown.
 *
 * Sockets: one unconnected UDP socket per address family in use (AF_INET,
 * AF_INET6), bound to an ephemeral port, receiving with recvmsg (the source
 * address matters: answers are matched by source address, DNS ID and
 * question). A datagram that matches nothing outstanding is ignored and
 * counted, whatever it holds. TCP sockets are per exchange.
 *
 * Names are given and returned as text: ASCII, case-insensitive (lower-cased
 * here), without a final dot (one is accepted on input), at most
 * DNS_NAME_MAX octets, labels of 1..63 octets of letters, digits, '-' and '_'.
 * Internationalised names must be converted to A-labels by the caller.
 */
#ifndef DNS_H
#define DNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../common/rm.h"

/* ---- limits, each with its reason ----------------------------------------- */

#define DNS_PORT            53u   /* RFC 1035 4.2 */
#define DNS_NAME_MAX        253u  /* text octets without the final dot (255 on the wire) */
#define DNS_NAME_WIRE_MAX   255u  /* RFC 1035 2.3.4 */
#define DNS_SERVERS_MAX     8u    /* tried in turn: more only lengthens a failing lookup */
#define DNS_RESOLV_CONF_MAX 3u    /* MAXNS of <resolv.h>: the C library reads three */
#define DNS_EDNS_UDP_SIZE   1232u /* DNS flag day 2020: no IP fragmentation */
/* The receive buffer to give recvmsg: a server that ignores our 1232 is still
 * read whole (and parsed). */
#define DNS_UDP_RX_BYTES   4096u
#define DNS_QUERY_WIRE_MAX 320u   /* header 12 + name 255 + 4 + OPT 11 = 282 */
#define DNS_TCP_ANSWER_MAX 65535u /* the 2-byte length prefix, RFC 1035 4.2.2 */
#define DNS_CNAME_MAX      8u     /* CNAME links followed per name (glibc, unbound: ~8-11) */
/* MX hosts kept, best preference first: no sender tries more in one attempt. */
#define DNS_ROUTE_HOSTS_MAX    10u
#define DNS_HOST_ADDRS_MAX     16u   /* addresses kept per MX host, both families */
#define DNS_ANSWER_RECORDS_MAX 32u   /* records kept of one answer (dns_lookup) */
#define DNS_ANSWER_BYTES_MAX   4096u /* record data kept of one answer (dns_lookup) */
#define DNS_MX_SCAN_MAX                                                                            \
    4096u /* MX records ranked by preference in one answer: a                                      \
           * 64 KiB answer holds at most ~4,000 */
/* Record data in one cache entry: fits 16 AAAA or a big provider's MX set;
 * bigger answers are used but not cached (stats.cache_too_big). */
#define DNS_CACHE_BYTES_MAX            512u
#define DNS_LOOKUPS_DEFAULT            64u   /* concurrent lookups per worker; most hit the cache */
#define DNS_LOOKUPS_MAX                1024u /* each ~22 KiB (64: 1.4 MiB); 16-bit IDs stay sparse */
#define DNS_CACHE_ENTRIES_DEFAULT      4096u /* 816 octets each: ~3.3 MiB per worker */
#define DNS_CACHE_ENTRIES_MAX          (1u << 20)
#define DNS_ATTEMPT_TIMEOUT_MS_DEFAULT 2000u /* per server per round; glibc uses 5 s */
#define DNS_ATTEMPT_TIMEOUT_MS_MIN     50u
#define DNS_ATTEMPT_TIMEOUT_MS_MAX     30000u
#define DNS_TCP_TIMEOUT_MS_DEFAULT     5000u /* one whole TCP exchange */
#define DNS_ROUNDS_DEFAULT             2u    /* passes over the server list (glibc attempts:2) */
#define DNS_ROUNDS_MAX                 5u
/* A server whose UDP attempt timed out is asked last for this long: a dead
 * first nameserver then costs one timeout per 30 s, not one per query
 * (unbound's infra cache does the same; glibc does not). */
#define DNS_SERVER_HOLDOFF_MS     30000u
#define DNS_TTL_MIN_S_DEFAULT     5u      /* answers with TTL 0 are still reused a little */
#define DNS_TTL_MAX_S_DEFAULT     86400u  /* a day: bounds staleness after a DNS change */
#define DNS_NEG_TTL_S_DEFAULT     300u    /* negative answer without a SOA (RFC 2308 5) */
#define DNS_NEG_TTL_MAX_S_DEFAULT 3600u   /* RFC 2308 5: one to three hours work well */
#define DNS_TTL_MAX_S_MAX         604800u /* a week: RFC 8767 4 caps TTLs lower still */

/* ---- errors --------------------------------------------------------------- */

/* Negative; other negative values are -errno. */
enum dns_err {
    DNS_ERR_OPTS = -11001,      /* dns_new: an option is out of range */
    DNS_ERR_NAME = -11002,      /* not a valid domain name (see the top of this file) */
    DNS_ERR_TYPE = -11003,      /* a record type dns_lookup does not do */
    DNS_ERR_BUSY = -11004,      /* every lookup slot is in use: retry after dns_poll */
    DNS_ERR_ADDR = -11005,      /* server list: not an IPv4/IPv6 address */
    DNS_ERR_PORT = -11006,      /* server list: port not 1..65535 */
    DNS_ERR_TOO_MANY = -11007,  /* server list: more than the room given */
    DNS_ERR_EMPTY = -11008,     /* server list: empty, or an empty entry */
    DNS_ERR_NOMATCH = -11009,   /* input: answers nothing outstanding; ignored */
    DNS_ERR_MALFORMED = -11010, /* input: does not parse, or is inconsistent; ignored */
    DNS_ERR_STALE = -11011,     /* input: the query handle is no longer waiting; ignored */
};

/* Names a DNS_ERR_* or -errno code; static string. */
const char *dns_strerror(int err);

/* ---- servers -------------------------------------------------------------- */

struct dns_server {
    struct sockaddr_storage addr; /* AF_INET or AF_INET6, with the port */
    socklen_t addr_len;           /* sizeof(struct sockaddr_in) or _in6 */
    bool trusted;                 /* believe its AD bit */
};

/* True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. Pure. */
bool dns_addr_is_loopback(const struct sockaddr *sa);

/* Parses resolv.conf text[0..len): "nameserver ADDR" lines, ADDR IPv4 or IPv6
 * (a numeric %scope is kept; a named one is skipped, as it would need a
 * system call). Lines starting with '#' or ';' are comments; other keywords
 * are ignored, as are bad addresses. Like the C library it keeps the first
 * DNS_RESOLV_CONF_MAX. Each entry gets port 53 and trusted = loopback.
 * Writes at most cap entries to out; returns how many (0 when there are none:
 * the C library then uses 127.0.0.1, and so should the caller). Pure. */
int dns_parse_resolv_conf(const char *text, size_t len, struct dns_server *out, unsigned cap);

/* Parses the config form text[0..len): comma-separated entries, spaces
 * around them allowed: "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]",
 * "[::1]:53" (an IPv6 address with a port needs the brackets). Default port
 * 53; trusted = loopback (the caller may override it afterwards).
 * Returns the count (1..cap), or DNS_ERR_EMPTY, DNS_ERR_ADDR, DNS_ERR_PORT,
 * DNS_ERR_TOO_MANY; on error *err_off (if not NULL) is the offset of the
 * entry at fault in text. Pure. */
RM_MUST_CHECK int dns_parse_servers(const char *text, size_t len, struct dns_server *out,
                                    unsigned cap, size_t *err_off);

/* ---- the resolver --------------------------------------------------------- */

struct dns_opts {
    const struct dns_server *servers; /* copied by dns_new */
    unsigned server_count;            /* 1..DNS_SERVERS_MAX */
    uint32_t lookups_max;             /* concurrent lookups, 1..DNS_LOOKUPS_MAX */
    uint32_t cache_entries;           /* 0 (no cache)..DNS_CACHE_ENTRIES_MAX */
    uint32_t attempt_timeout_ms;      /* per UDP attempt, DNS_ATTEMPT_TIMEOUT_MS_MIN..MAX */
    uint32_t tcp_timeout_ms;          /* per TCP exchange, same range */
    uint32_t rounds;                  /* passes over the servers, 1..DNS_ROUNDS_MAX */
    uint32_t ttl_min_s;               /* TTLs are clamped to [ttl_min_s, ttl_max_s]... */
    uint32_t ttl_max_s;               /* ...ttl_min_s <= ttl_max_s <= DNS_TTL_MAX_S_MAX */
    uint32_t neg_ttl_s;               /* negative answers without a SOA */
    uint32_t neg_ttl_max_s;           /* cap of negative TTLs, >= ttl_min_s */
    uint64_t seed;                    /* PRNG seed: from getrandom() at start-up */
};

/* Fills o with the *_DEFAULT values; servers NULL, seed 0: the caller sets them. */
void dns_opts_default(struct dns_opts *o);

struct dns_resolver; /* opaque */

/* Creates a resolver, allocating everything it will use (lookup slots, cache,
 * tables). Returns 0 and *out, DNS_ERR_OPTS or -ENOMEM. */
RM_MUST_CHECK int dns_new(struct dns_resolver **out, const struct dns_opts *o);
/* Frees r and everything in it; outstanding lookups just vanish (no
 * completion). Borrowed results die with it. dns_free(NULL) does nothing. */
void dns_free(struct dns_resolver *r);

/* ---- lookups -------------------------------------------------------------- */

/* Record types dns_lookup does (values are the RR type codes). */
enum dns_type {
    DNS_T_A = 1,
    DNS_T_MX = 15,
    DNS_T_TXT = 16,
    DNS_T_AAAA = 28,
    DNS_T_TLSA = 52, /* RFC 6698 */
};

enum dns_outcome {
    DNS_OUT_RECORDS = 0,  /* records of the type: count >= 1 */
    DNS_OUT_NODATA = 1,   /* the name exists, without records of the type */
    DNS_OUT_NXDOMAIN = 2, /* the name does not exist (after CNAMEs: RFC 6604 2.1) */
    DNS_OUT_TEMPFAIL = 3, /* no usable answer now: see enum dns_fail */
};

/* Why a lookup failed temporarily (for the caller's log line). */
enum dns_fail {
    DNS_FAIL_NONE = 0,
    DNS_FAIL_TIMEOUT = 1,  /* no answer from any server in every round */
    DNS_FAIL_SERVFAIL = 2, /* servers answered SERVFAIL, REFUSED, ... or referrals (others
                            * may have timed out); a validating resolver's SERVFAIL is
                            * also how bogus DNSSEC data shows; also an ldns allocation
                            * failure */
    DNS_FAIL_CNAME = 3,    /* a CNAME loop, or more than DNS_CNAME_MAX links */
};

/* One record of a dns_lookup answer. Spans are borrowed like the answer. */
struct dns_record {
    union {
        uint8_t a[4];     /* DNS_T_A: network order */
        uint8_t aaaa[16]; /* DNS_T_AAAA */
        struct {
            uint16_t pref;
            struct rm_span host; /* lower case, no final dot; empty for "." (null MX) */
        } mx;
        struct {
            uint8_t usage, selector, mtype; /* RFC 6698 2.1.1-2.1.3 */
            struct rm_span data;            /* certificate association data */
        } tlsa;
        struct rm_span txt; /* the record's character-strings concatenated, as SPF
                             * (RFC 7208 3.3) and DKIM (RFC 6376 3.6.2.2) read them */
    } u;
};

/* The result of dns_lookup. */
struct dns_answer {
    enum dns_outcome outcome;
    enum dns_fail fail; /* DNS_FAIL_NONE unless TEMPFAIL */
    uint16_t type;      /* enum dns_type asked for */
    bool secure;        /* every packet used had AD from a trusted server */
    bool partial;       /* records were dropped: over DNS_ANSWER_RECORDS_MAX or
                         * DNS_ANSWER_BYTES_MAX, or an MX host that is not a
                         * plain host name (when that drops them all, the
                         * outcome is NODATA with partial set) */
    uint32_t ttl_s;     /* remaining lifetime: the smallest TTL of the records and
                         * CNAMEs used (negative: RFC 2308 5), clamped; 0 on TEMPFAIL */
    unsigned count;     /* records[0..count), RECORDS only */
    const struct dns_record *records;
};

/* One address of an MX host. */
struct dns_addr {
    sa_family_t family; /* AF_INET6 or AF_INET */
    uint8_t ip[16];     /* network order; AF_INET uses ip[0..4) */
};

enum dns_host_status {
    DNS_HOST_OK = 0,       /* addr_count >= 1 */
    DNS_HOST_NOADDR = 1,   /* A and AAAA both answered NODATA or NXDOMAIN */
    DNS_HOST_TEMPFAIL = 2, /* no address; an address lookup failed temporarily */
};

/* One MX host of a route. */
struct dns_host {
    struct rm_span name; /* lower case, no final dot */
    uint16_t pref;
    enum dns_host_status status;
    enum dns_fail fail;           /* why, for TEMPFAIL or partial */
    bool partial;                 /* OK, but the A or the AAAA lookup failed temporarily:
                                   * the other family's addresses are all there is */
    bool secure;                  /* its A/AAAA answers that came were all secure (and one
                                   * came; a failed one does not count): with
                                   * dns_route.mx_secure, the DANE precondition of
                                   * RFC 7672 2.2 for a TLSA lookup of _25._tcp.<name> */
    unsigned addr_count;          /* 0..DNS_HOST_ADDRS_MAX */
    const struct dns_addr *addrs; /* in the order to try: IPv6 and IPv4 interleaved,
                                   * IPv6 first (RFC 8305 4), each family shuffled */
};

enum dns_route_outcome {
    DNS_ROUTE_OK = 0,       /* at least one host with an address: deliver */
    DNS_ROUTE_NULLMX = 1,   /* the only MX is "." (RFC 7505): permanent, 5.1.10 */
    DNS_ROUTE_NXDOMAIN = 2, /* the domain does not exist: permanent, 5.1.2 */
    DNS_ROUTE_NOHOSTS = 3,  /* every MX host (or the implicit one) definitely has no
                             * address: permanent, 5.4.4 as Postfix says "Host or
                             * domain name not found"; a temporary failure anywhere
                             * makes it TEMPFAIL instead */
    DNS_ROUTE_TEMPFAIL = 4, /* the MX lookup failed, or no host has an address and
                             * some host failed temporarily: retry later, 4.4.3 */
};

/* The result of dns_route: the hosts in the order to try. */
struct dns_route {
    enum dns_route_outcome outcome;
    enum dns_fail fail;  /* for TEMPFAIL: the MX lookup's, or the first host's */
    bool implicit;       /* no MX records: the domain itself at preference 0
                          * (RFC 5321 5.1) */
    bool mx_secure;      /* the MX answer (or the NODATA that made it implicit) was secure */
    bool secure;         /* mx_secure and every OK host secure: every answer used
                          * came with AD from a trusted server */
    uint32_t ttl_s;      /* smallest remaining TTL of the answers used, negative
                          * ones included (0 on TEMPFAIL) */
    unsigned host_count; /* 0..DNS_ROUTE_HOSTS_MAX */
    const struct dns_host *hosts; /* by preference, equal preferences in random order;
                                   * hosts of any status are listed */
};

#define DNS_DONE 1 /* a start call's "answered from the cache, already in dns_poll" */

/* Starts a lookup of (name[0..len), type); type is an enum dns_type. tag is
 * the caller's, returned untouched with the completion (e.g. slot index and
 * generation). *lookup gets a handle for dns_cancel.
 * Returns DNS_DONE when the cache answered it: the completion is already queued
 * for dns_poll and no I/O was asked for; 0 when it is under way (drain
 * dns_next_io); DNS_ERR_NAME, DNS_ERR_TYPE or DNS_ERR_BUSY (nothing started).
 * CNAMEs are followed, within the answer and by asking for the target. */
RM_MUST_CHECK int dns_lookup(struct dns_resolver *r, const char *name, size_t len, uint16_t type,
                             uint64_t tag, uint64_t now_ms, uint64_t *lookup);

/* Starts the route lookup of mail domain[0..len): MX (NODATA: the domain
 * itself, RFC 5321 5.1; a sole "." MX: NULLMX; NXDOMAIN: NXDOMAIN), then
 * AAAA and A of each of the DNS_ROUTE_HOSTS_MAX best hosts, all at once,
 * each through the cache. An MX "." among other MX records is dropped (it
 * cannot be connected to); duplicate hosts keep their best preference.
 * Returns like dns_lookup (DNS_ERR_TYPE aside). An address literal
 * ("[192.0.2.1]") is the caller's business: it is not a name. */
RM_MUST_CHECK int dns_route(struct dns_resolver *r, const char *domain, size_t len, uint64_t tag,
                            uint64_t now_ms, uint64_t *lookup);

/* Abandons a lookup: no completion comes for it (one already queued is
 * withdrawn); answers for its queries are then ignored as unmatched, a TCP
 * exchange for it gets DNS_ERR_STALE. A stale handle does nothing. */
void dns_cancel(struct dns_resolver *r, uint64_t lookup);

enum dns_kind { DNS_KIND_LOOKUP = 1, DNS_KIND_ROUTE = 2 };

/* A completed lookup, from dns_poll. */
struct dns_done {
    uint64_t tag;    /* as given to the start call */
    uint64_t lookup; /* the start call's handle */
    enum dns_kind kind;
    const struct dns_answer *answer; /* DNS_KIND_LOOKUP, else NULL */
    const struct dns_route *route;   /* DNS_KIND_ROUTE, else NULL */
};

/* Takes the next completed lookup, oldest first; returns false when there is
 * none. answer/route and everything they point to are borrowed from the
 * resolver until the next dns_poll call (or dns_free): copy what must live
 * longer. The lookup's slot is free again from that next call on. */
bool dns_poll(struct dns_resolver *r, struct dns_done *out);

/* ---- transport ------------------------------------------------------------ */

enum dns_io_kind {
    DNS_IO_UDP = 1, /* send the datagram */
    DNS_IO_TCP = 2, /* run one TCP exchange (the UDP answer was truncated) */
};

struct dns_io {
    enum dns_io_kind kind;
    uint64_t query;              /* handle for dns_udp_send_failed and dns_tcp_* */
    const struct sockaddr *addr; /* the server; borrowed for the resolver's life */
    socklen_t addr_len;
    unsigned server;     /* its index in dns_opts.servers */
    struct rm_span wire; /* UDP: the whole datagram. TCP: the 2-byte length
                          * and the query, to send as they are. Borrowed
                          * until any call other than dns_next_io,
                          * dns_next_deadline or dns_stats_get: copy it
                          * into a buffer that lives until the send
                          * completes. <= DNS_QUERY_WIRE_MAX + 2 octets */
};

/* Takes the next I/O the resolver wants, oldest first; returns false when
 * there is none. Call it until false after every dns_lookup, dns_route,
 * dns_udp_input, dns_tcp_input, dns_tcp_failed, dns_udp_send_failed and
 * dns_tick. The resolver counts the send as done when it is taken: the
 * attempt's timeout runs from the call that asked for it.
 * Order of servers: a new query starts with the first server in the list
 * that has not timed out within DNS_SERVER_HOLDOFF_MS (any answer from a
 * server clears that), then goes round the list from there. */
bool dns_next_io(struct dns_resolver *r, struct dns_io *out);

/* A datagram received on a DNS UDP socket, from src. It is used when src is a
 * server the matching query was sent to, its ID and question (name compared
 * case-insensitively, type, class IN) match an outstanding query, and it
 * parses. SERVFAIL, REFUSED and other error codes move the query to the next
 * server at once; TC asks for a TCP exchange with the same server.
 * Returns 0 (it answered a query), DNS_ERR_NOMATCH or DNS_ERR_MALFORMED
 * (ignored: the query waits on for a good answer or its timeout). Every
 * outcome is counted; the caller may ignore the return value. Never trusts
 * the bytes: any length and content is safe. pkt is only read during the call. */
int dns_udp_input(struct dns_resolver *r, const struct sockaddr *src, socklen_t src_len,
                  const uint8_t *pkt, size_t len, uint64_t now_ms);

/* The UDP send of a DNS_IO_UDP failed (the CQE's -errno): the query moves to
 * its next server at once instead of waiting for the timeout. A stale handle
 * (the query has moved on) is ignored. */
void dns_udp_send_failed(struct dns_resolver *r, uint64_t query, int err, uint64_t now_ms);

/* The answer of the TCP exchange for query (without the 2-byte length),
 * len <= DNS_TCP_ANSWER_MAX. Returns 0, DNS_ERR_STALE (the resolver gave up on
 * this exchange: its tcp_timeout_ms passed, the lookup was cancelled or
 * answered otherwise), DNS_ERR_NOMATCH or DNS_ERR_MALFORMED (the query moves
 * to its next server). */
int dns_tcp_input(struct dns_resolver *r, uint64_t query, const uint8_t *pkt, size_t len,
                  uint64_t now_ms);

/* The TCP exchange for query failed (connect, I/O, early EOF, the caller's own
 * timeout; err is -errno or 0): the query moves to its next server. A stale
 * handle is ignored. The caller bounds each exchange by tcp_timeout_ms; the
 * resolver gives up on it at that point anyway. */
void dns_tcp_failed(struct dns_resolver *r, uint64_t query, int err, uint64_t now_ms);

/* The earliest time (ms, the caller's clock) at which dns_tick has work:
 * an attempt's timeout. UINT64_MAX when nothing waits. */
uint64_t dns_next_deadline(const struct dns_resolver *r);

/* Handles every timeout due at now_ms: a timed-out UDP attempt goes to the
 * next server (rounds times round the list), then the query fails with
 * TEMPFAIL (DNS_FAIL_TIMEOUT); a timed-out TCP exchange goes on likewise.
 * Cheap when nothing is due. */
void dns_tick(struct dns_resolver *r, uint64_t now_ms);

/* ---- counters ------------------------------------------------------------- */

/* Plain counters, written by the owning thread only; the worker copies them
 * into its metrics. Lookups count once; queries once per name and type asked
 * of the servers; everything else per event. */
struct dns_stats {
    uint64_t lookups;    /* dns_lookup + dns_route accepted */
    uint64_t busy;       /* starts refused with DNS_ERR_BUSY */
    uint64_t queries;    /* (name, type) questions that missed the cache */
    uint64_t udp_sent;   /* datagrams handed out, retransmissions included */
    uint64_t tcp_sent;   /* TCP exchanges asked for */
    uint64_t cache_hits; /* (name, type) answered from the cache */
    uint64_t cache_misses;
    uint64_t cache_evictions; /* live entries pushed out by the LRU */
    uint64_t cache_too_big;   /* answers over DNS_CACHE_BYTES_MAX, not cached */
    uint64_t answers;         /* datagrams/TCP answers that answered a query */
    uint64_t unmatched;       /* input that matched no outstanding query */
    uint64_t malformed;       /* input that matched but did not parse or was inconsistent */
    uint64_t truncated;       /* UDP answers with TC */
    uint64_t timeouts;        /* attempts (UDP or TCP) that timed out */
    uint64_t send_errors;     /* dns_udp_send_failed + dns_tcp_failed */
    uint64_t server_errors;   /* answers with SERVFAIL, REFUSED or another error rcode,
                               * and referrals (a server that does not recurse) */
    uint64_t nxdomain;        /* (name, type) outcomes, cache hits included */
    uint64_t nodata;
    uint64_t tempfail;
    uint64_t cname_errors; /* loops and over-long chains */
};

void dns_stats_get(const struct dns_resolver *r, struct dns_stats *out);

#endif /* DNS_H */
