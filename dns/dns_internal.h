/* dns/dns_internal.h: what the files of dns/ share; nothing outside dns/ uses it.
 *
 * Files: dns.c (the resolver: lookups, retries, routes, completions), wire.c
 * (the only file that includes ldns: builds queries, parses answers),
 * cache.c (the per-resolver TTL cache), name.c (domain names as text and
 * wire), conf.c (server lists). All single-threaded, per resolver.
 *
 * A file that includes <ldns/ldns.h> must include <stdbool.h> before it:
 * otherwise ldns/common.h defines bool as a signed char (wire.c checks).
 */
#ifndef DNS_INTERNAL_H
#define DNS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "dns.h"

#define DNS_NIL       UINT32_MAX /* end of an index-linked list */
#define DNS_HDR_BYTES 12u        /* RFC 1035 4.1.1 */

/* ---- names (name.c) ------------------------------------------------------- */

/* Text name (see dns.h) to lower-case wire form in out[0..DNS_NAME_WIRE_MAX).
 * Returns the wire length (>= 2), or -1 when text is not a valid name. */
int dns_name_from_text(const char *text, size_t len, uint8_t *out);

/* Wire name (uncompressed) to lower-case text without the final dot, into
 * out[0..cap). Returns the text length (0 for the root), or -1 when the wire
 * form is broken, does not fit, or a label holds anything but letters, digits,
 * '-' and '_' (such a name could not be asked for again). */
int dns_name_to_text(const uint8_t *wire, size_t len, char *out, size_t cap);

/* Copies a valid uncompressed wire name lower-cased into out[0..DNS_NAME_WIRE_MAX).
 * Returns its length, or -1 when it is broken. */
int dns_name_copy_lower(const uint8_t *wire, size_t len, uint8_t *out);

/* ASCII case-insensitive equality of two wire names. */
bool dns_name_eq(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

/* Seeded FNV-1a of a name's lower-cased octets; the seed keeps hostile names
 * from being picked to collide. */
uint64_t dns_name_hash(const uint8_t *name, size_t len, uint64_t seed);

/* ---- record sets ---------------------------------------------------------- */

/* Records of one answer, packed: per record a 2-byte big-endian payload
 * length, then the payload: A 4 octets; AAAA 16; MX 2 (preference) + host
 * text (lower case, no final dot, empty for "."); TLSA usage, selector,
 * mtype, then the data; TXT the strings concatenated. Only the type asked for. */
struct dns_rrset {
    uint16_t count; /* records */
    uint16_t len;   /* octets used in data */
    bool partial;   /* records were dropped (no room, or an unusable MX host) */
    uint8_t data[DNS_ANSWER_BYTES_MAX];
};

/* A borrowed view of packed records (from a dns_rrset or a cache entry). */
struct dns_rrview {
    const uint8_t *data;
    uint16_t len;
    uint16_t count;
    bool partial;
};

/* ---- answers (wire.c) ----------------------------------------------------- */

/* Builds the query for (qname, qtype, class IN) with ID id: RD, EDNS0 with DO
 * and a DNS_EDNS_UDP_SIZE payload size. Writes out[0..cap). Returns the
 * length, or -ENOMEM / -ENOSPC. */
int dns_wire_query(uint8_t *out, size_t cap, uint16_t id, const uint8_t *qname, size_t qlen,
                   uint16_t qtype);

enum dns_pkind {
    DNS_PK_RECORDS,      /* rrset holds records of the type */
    DNS_PK_NODATA,       /* no records of the type at the final name */
    DNS_PK_NXDOMAIN,     /* the final name does not exist */
    DNS_PK_REQUERY,      /* the answer stops at a CNAME: ask for target */
    DNS_PK_SERVER_ERROR, /* a referral: the server does not recurse */
    DNS_PK_CNAME_ERROR,  /* a CNAME loop or too many links */
};

/* The CNAME chain of one (name, type) resolution so far. */
struct dns_chain {
    uint8_t links;                       /* CNAMEs followed, <= DNS_CNAME_MAX */
    uint64_t visited[DNS_CNAME_MAX + 1]; /* dns_name_hash of every name in it */
};

struct dns_parsed {
    enum dns_pkind kind;
    bool ad;                /* the AD bit (trusted or not is the caller's business) */
    uint32_t chain_ttl_s;   /* smallest TTL of the records and CNAMEs used; UINT32_MAX if none */
    uint32_t soa_ttl_s;     /* min(SOA TTL, SOA MINIMUM) of the authority SOA; UINT32_MAX if none */
    struct dns_chain chain; /* in: the chain so far; out: extended */
    uint8_t target[DNS_NAME_WIRE_MAX]; /* REQUERY: the name to ask for, lower case */
    uint8_t target_len;
};

/* Parses an answer to (qname, qtype) whose header and question the caller
 * has matched and whose RCODE is NOERROR or NXDOMAIN (rcode says which).
 * Follows CNAMEs from qname within the answer section. Writes records to
 * rrs. Returns 0, or DNS_ERR_MALFORMED (ldns could not parse it, or a record
 * in use had the wrong shape). Frees everything ldns allocated. */
int dns_wire_parse(const uint8_t *pkt, size_t len, uint8_t rcode, const uint8_t *qname, size_t qlen,
                   uint16_t qtype, uint64_t hash_seed, struct dns_parsed *out,
                   struct dns_rrset *rrs);

/* ---- the cache (cache.c) -------------------------------------------------- */

struct dns_cache_entry {
    uint32_t hnext;      /* next entry in the hash bucket, or on the free list */
    uint32_t prev, next; /* LRU list: prev is more recent */
    uint64_t hash;
    uint64_t expires_ms; /* the caller's clock */
    uint16_t type;
    uint16_t count, len; /* records, octets of data */
    uint8_t name_len;
    uint8_t outcome; /* enum dns_outcome, never TEMPFAIL */
    bool secure;
    bool partial;
    bool used;
    uint8_t name[DNS_NAME_WIRE_MAX]; /* lower-case wire form */
    uint8_t data[DNS_CACHE_BYTES_MAX];
};

struct dns_cache {
    struct dns_cache_entry *e; /* owned: cap entries */
    uint32_t *bucket;          /* owned: mask + 1 heads */
    uint32_t cap;
    uint32_t mask;
    uint32_t lru_head, lru_tail; /* most, least recently used */
    uint32_t free_head;
    uint64_t seed;
};

/* Allocates room for cap entries (0: a cache that holds nothing). Returns 0 or -ENOMEM. */
int dns_cache_init(struct dns_cache *c, uint32_t cap, uint64_t seed);
void dns_cache_fini(struct dns_cache *c);
/* The live entry for (name, type), made most recently used; an expired one
 * is dropped. NULL when none. The entry is valid until the next put. */
const struct dns_cache_entry *dns_cache_get(struct dns_cache *c, const uint8_t *name, size_t len,
                                            uint16_t type, uint64_t now_ms);
/* Stores (replacing any entry for the key). Returns 1 when a live entry was
 * evicted to make room, 0 when stored, -1 when it does not fit an entry
 * (rrs->len > DNS_CACHE_BYTES_MAX) or the cache has no room at all. */
int dns_cache_put(struct dns_cache *c, const uint8_t *name, size_t len, uint16_t type,
                  enum dns_outcome outcome, bool secure, const struct dns_rrview *rrs,
                  uint64_t expires_ms, uint64_t now_ms);

#endif /* DNS_INTERNAL_H */
