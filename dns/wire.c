/* dns/wire.c: DNS messages through ldns: queries built, answers parsed.
 *
 * The only file of ringmta that includes ldns (its headers pull in OpenSSL's,
 * which clash with wolfSSL's). No ldns_resolver_* here: those block. ldns
 * allocates while it builds and parses; everything is freed before return.
 * Nothing in an answer is trusted: every record used is checked for shape.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
/* After <stdbool.h>: without it ldns/common.h makes bool a signed char. */
#include <ldns/ldns.h>

#include "dns_internal.h"

#ifdef _Bool
#error "ldns redefined bool: include <stdbool.h> before <ldns/ldns.h>"
#endif

/* RFC 2181 8: a TTL with the top bit set is treated as zero. */
static uint32_t ttl_sane(uint32_t ttl)
{
    return ttl > 0x7fffffffu ? 0 : ttl;
}

int dns_wire_query(uint8_t *out, size_t cap, uint16_t id, const uint8_t *qname, size_t qlen,
                   uint16_t qtype)
{
    ldns_rdf *name = ldns_rdf_new_frm_data(LDNS_RDF_TYPE_DNAME, qlen, qname);
    if (!name)
        return -ENOMEM;
    ldns_pkt *p = ldns_pkt_query_new(name, (ldns_rr_type)qtype, LDNS_RR_CLASS_IN, LDNS_RD);
    if (!p) {
        ldns_rdf_deep_free(name);
        return -ENOMEM;
    }
    ldns_pkt_set_id(p, id);
    ldns_pkt_set_edns_udp_size(p, DNS_EDNS_UDP_SIZE);
    ldns_pkt_set_edns_do(p, true); /* RFC 3225: we want the AD bit */
    uint8_t *w = NULL;
    size_t n = 0;
    int rc;
    if (ldns_pkt2wire(&w, p, &n) != LDNS_STATUS_OK || !w)
        rc = -ENOMEM;
    else if (n > cap)
        rc = -ENOSPC;
    else {
        memcpy(out, w, n);
        rc = (int)n;
    }
    free(w);
    ldns_pkt_free(p);
    return rc;
}

static bool owner_is(const ldns_rr *rr, const uint8_t *name, size_t len)
{
    const ldns_rdf *o = ldns_rr_owner(rr);
    return o && dns_name_eq(ldns_rdf_data(o), ldns_rdf_size(o), name, len);
}

static const ldns_rdf *rdf_sized(const ldns_rr *rr, size_t i, size_t size)
{
    const ldns_rdf *f = ldns_rr_rdf(rr, i);
    return f && ldns_rdf_size(f) == size ? f : NULL;
}

/* Appends one record's payload, or marks the set partial when it is full. */
static void rrset_add(struct dns_rrset *s, const uint8_t *a, size_t alen, const uint8_t *b,
                      size_t blen)
{
    size_t n = alen + blen;
    if (s->count == DNS_ANSWER_RECORDS_MAX || n > UINT16_MAX ||
        (size_t)s->len + 2 + n > sizeof(s->data)) {
        s->partial = true;
        return;
    }
    uint8_t *d = s->data + s->len;
    d[0] = (uint8_t)(n >> 8);
    d[1] = (uint8_t)n;
    if (alen)
        memcpy(d + 2, a, alen);
    if (blen)
        memcpy(d + 2 + alen, b, blen);
    s->len = (uint16_t)(s->len + 2 + n);
    s->count++;
}

/* Adds rr (of the type asked for) to s. Returns false when its rdata does not
 * have the type's shape: the whole answer is then malformed. */
static bool record_add(struct dns_rrset *s, uint16_t type, const ldns_rr *rr)
{
    const ldns_rdf *f;
    switch (type) {
    case DNS_T_A:
        if (ldns_rr_rd_count(rr) != 1 || !(f = rdf_sized(rr, 0, 4)))
            return false;
        rrset_add(s, ldns_rdf_data(f), 4, NULL, 0);
        return true;
    case DNS_T_AAAA:
        if (ldns_rr_rd_count(rr) != 1 || !(f = rdf_sized(rr, 0, 16)))
            return false;
        rrset_add(s, ldns_rdf_data(f), 16, NULL, 0);
        return true;
    case DNS_T_MX: {
        const ldns_rdf *pref = rdf_sized(rr, 0, 2);
        const ldns_rdf *host = ldns_rr_rdf(rr, 1);
        if (ldns_rr_rd_count(rr) != 2 || !pref || !host ||
            ldns_rdf_get_type(host) != LDNS_RDF_TYPE_DNAME)
            return false;
        char text[DNS_NAME_WIRE_MAX];
        int n = dns_name_to_text(ldns_rdf_data(host), ldns_rdf_size(host), text, sizeof(text));
        if (n < 0 || n > (int)DNS_NAME_MAX) {
            s->partial = true; /* not a host name we could look up */
            return true;
        }
        rrset_add(s, ldns_rdf_data(pref), 2, (const uint8_t *)text, (size_t)n);
        return true;
    }
    case DNS_T_TLSA: {
        const ldns_rdf *data = ldns_rr_rdf(rr, 3);
        if (ldns_rr_rd_count(rr) != 4 || !rdf_sized(rr, 0, 1) || !rdf_sized(rr, 1, 1) ||
            !rdf_sized(rr, 2, 1) || !data)
            return false;
        uint8_t head[3] = {*ldns_rdf_data(ldns_rr_rdf(rr, 0)), *ldns_rdf_data(ldns_rr_rdf(rr, 1)),
                           *ldns_rdf_data(ldns_rr_rdf(rr, 2))};
        rrset_add(s, head, 3, ldns_rdf_data(data), ldns_rdf_size(data));
        return true;
    }
    case DNS_T_TXT: {
        uint8_t buf[DNS_ANSWER_BYTES_MAX];
        size_t n = 0;
        bool fits = true;
        for (size_t i = 0; i < ldns_rr_rd_count(rr); i++) {
            f = ldns_rr_rdf(rr, i);
            if (!f || ldns_rdf_size(f) < 1 || ldns_rdf_data(f)[0] != ldns_rdf_size(f) - 1)
                return false;
            size_t k = ldns_rdf_size(f) - 1;
            if (n + k > sizeof(buf))
                fits = false;
            else
                memcpy(buf + n, ldns_rdf_data(f) + 1, k);
            n += k;
        }
        if (ldns_rr_rd_count(rr) == 0)
            return false;
        if (!fits)
            s->partial = true;
        else
            rrset_add(s, buf, n, NULL, 0);
        return true;
    }
    default:
        return false;
    }
}

static bool chain_seen(const struct dns_chain *c, uint64_t h)
{
    for (unsigned i = 0; i <= c->links; i++)
        if (c->visited[i] == h)
            return true;
    return false;
}

/* The SOA of the authority section: min(its TTL, its MINIMUM), RFC 2308 5. */
static uint32_t soa_ttl(const ldns_pkt *p)
{
    const ldns_rr_list *auth = ldns_pkt_authority(p);
    for (size_t i = 0; i < ldns_rr_list_rr_count(auth); i++) {
        const ldns_rr *rr = ldns_rr_list_rr(auth, i);
        if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_SOA || ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN)
            continue;
        const ldns_rdf *min = rdf_sized(rr, 6, 4);
        if (ldns_rr_rd_count(rr) != 7 || !min)
            continue; /* a broken SOA is as good as none */
        const uint8_t *d = ldns_rdf_data(min);
        uint32_t m = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
        return RM_MIN(ttl_sane(ldns_rr_ttl(rr)), ttl_sane(m));
    }
    return UINT32_MAX;
}

static bool has_ns_authority(const ldns_pkt *p)
{
    const ldns_rr_list *auth = ldns_pkt_authority(p);
    for (size_t i = 0; i < ldns_rr_list_rr_count(auth); i++)
        if (ldns_rr_get_type(ldns_rr_list_rr(auth, i)) == LDNS_RR_TYPE_NS)
            return true;
    return false;
}

/* An MX record's preference, or UINT32_MAX when it has none (malformed:
 * record_add says so). */
static uint32_t mx_pref(const ldns_rr *rr)
{
    const ldns_rdf *pref = rdf_sized(rr, 0, 2);
    return pref ? (uint32_t)ldns_rdf_data(pref)[0] << 8 | ldns_rdf_data(pref)[1] : UINT32_MAX;
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/* When an MX answer holds more records than an rrset keeps, the kept ones
 * must be the best preferences, not the first in wire order (servers rotate
 * the order): a dropped best MX could leave only hosts without addresses,
 * a permanent failure. Returns the preference of the last record that fits
 * (UINT32_MAX: all fit). */
static uint32_t mx_cutoff(const ldns_rr_list *ans, const uint8_t *name, size_t len)
{
    uint16_t prefs[DNS_MX_SCAN_MAX];
    size_t n = 0;
    for (size_t i = 0; i < ldns_rr_list_rr_count(ans) && n < DNS_MX_SCAN_MAX; i++) {
        const ldns_rr *rr = ldns_rr_list_rr(ans, i);
        if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_MX || !owner_is(rr, name, len))
            continue;
        uint32_t pf = mx_pref(rr);
        if (pf != UINT32_MAX)
            prefs[n++] = (uint16_t)pf;
    }
    if (n <= DNS_ANSWER_RECORDS_MAX)
        return UINT32_MAX;
    qsort(prefs, n, sizeof(prefs[0]), cmp_u16);
    return prefs[DNS_ANSWER_RECORDS_MAX - 1];
}

/* Walks the answer section from qname through CNAMEs. Returns false when a
 * record in use is malformed. */
static bool walk(const ldns_pkt *p, uint8_t rcode, const uint8_t *qname, size_t qlen,
                 uint16_t qtype, uint64_t seed, struct dns_parsed *out, struct dns_rrset *rrs)
{
    const ldns_rr_list *ans = ldns_pkt_answer(p);
    size_t count = ldns_rr_list_rr_count(ans);
    uint8_t cur[DNS_NAME_WIRE_MAX];
    size_t cur_len = qlen;
    memcpy(cur, qname, qlen);
    for (;;) {
        bool found = false;
        const ldns_rr *cname = NULL;
        uint32_t cutoff = qtype == DNS_T_MX ? mx_cutoff(ans, cur, cur_len) : UINT32_MAX;
        /* Pass 0 takes MX preferences below the cut-off, pass 1 those at it
         * (ties at the cut-off must not crowd out better ones); one pass
         * takes everything when all fit. */
        for (int pass = cutoff == UINT32_MAX ? 1 : 0; pass < 2; pass++) {
            for (size_t i = 0; i < count; i++) {
                const ldns_rr *rr = ldns_rr_list_rr(ans, i);
                if (ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN || !owner_is(rr, cur, cur_len))
                    continue;
                uint16_t t = (uint16_t)ldns_rr_get_type(rr);
                if (t == qtype) {
                    uint32_t pf = cutoff == UINT32_MAX ? 0 : mx_pref(rr);
                    if (cutoff != UINT32_MAX && pf != UINT32_MAX &&
                        (pass == 0 ? pf >= cutoff : pf != cutoff)) {
                        if (pf > cutoff)
                            rrs->partial = true; /* dropped: worse than what is kept */
                        continue;
                    }
                    if (!record_add(rrs, qtype, rr))
                        return false;
                    out->chain_ttl_s = RM_MIN(out->chain_ttl_s, ttl_sane(ldns_rr_ttl(rr)));
                    found = true;
                } else if (pass == 1 && t == LDNS_RR_TYPE_CNAME && !cname) {
                    cname = rr;
                }
            }
        }
        if (found) {
            out->kind = DNS_PK_RECORDS;
            return true;
        }
        if (!cname)
            break;
        const ldns_rdf *target = ldns_rr_rdf(cname, 0);
        if (ldns_rr_rd_count(cname) != 1 || !target ||
            ldns_rdf_get_type(target) != LDNS_RDF_TYPE_DNAME)
            return false;
        int n = dns_name_copy_lower(ldns_rdf_data(target), ldns_rdf_size(target), cur);
        if (n < 0)
            return false;
        cur_len = (size_t)n;
        uint64_t h = dns_name_hash(cur, cur_len, seed);
        if (out->chain.links >= DNS_CNAME_MAX || chain_seen(&out->chain, h)) {
            out->kind = DNS_PK_CNAME_ERROR;
            return true;
        }
        out->chain.visited[++out->chain.links] = h;
        out->chain_ttl_s = RM_MIN(out->chain_ttl_s, ttl_sane(ldns_rr_ttl(cname)));
    }
    /* Nothing of the type at cur. RFC 6604 2.1: the RCODE speaks of the last
     * name of the chain. */
    out->soa_ttl_s = soa_ttl(p);
    bool moved = !dns_name_eq(cur, cur_len, qname, qlen);
    bool soa = out->soa_ttl_s != UINT32_MAX;
    if (rcode == LDNS_RCODE_NXDOMAIN) {
        out->kind = DNS_PK_NXDOMAIN;
    } else if (!soa && moved) {
        /* The server stopped at a CNAME without saying why: ask for the target. */
        out->kind = DNS_PK_REQUERY;
        memcpy(out->target, cur, cur_len);
        out->target_len = (uint8_t)cur_len;
    } else if (!soa && count == 0 && has_ns_authority(p)) {
        out->kind = DNS_PK_SERVER_ERROR; /* a referral: this server does not recurse */
    } else {
        out->kind = DNS_PK_NODATA; /* without a SOA: the default negative TTL */
    }
    return true;
}

int dns_wire_parse(const uint8_t *pkt, size_t len, uint8_t rcode, const uint8_t *qname, size_t qlen,
                   uint16_t qtype, uint64_t hash_seed, struct dns_parsed *out,
                   struct dns_rrset *rrs)
{
    ldns_pkt *p = NULL;
    if (ldns_wire2pkt(&p, pkt, len) != LDNS_STATUS_OK || !p) {
        ldns_pkt_free(p);
        return DNS_ERR_MALFORMED;
    }
    out->ad = ldns_pkt_ad(p);
    out->chain_ttl_s = UINT32_MAX;
    out->soa_ttl_s = UINT32_MAX;
    out->target_len = 0;
    rrs->count = 0;
    rrs->len = 0;
    rrs->partial = false;
    bool ok = walk(p, rcode, qname, qlen, qtype, hash_seed, out, rrs);
    ldns_pkt_free(p);
    return ok ? 0 : DNS_ERR_MALFORMED;
}
