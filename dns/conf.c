/* dns/conf.c: server lists from resolv.conf text and from the config. Pure:
 * inet_pton only, no system calls. */
#include <arpa/inet.h>
#include <string.h>

#include "dns_internal.h"

#define ADDR_TEXT_MAX 64 /* longest address text taken: IPv6 with a %scope */

bool dns_addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* Parses an address text (no port) t[0..len) into s with port. A '%'
 * suffix on IPv6 must be a decimal scope id when allow_scope. Returns false
 * when it is not an address. */
static bool addr_parse(const char *t, size_t len, uint16_t port, bool allow_scope,
                       struct dns_server *s)
{
    char buf[ADDR_TEXT_MAX];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, t, len);
    buf[len] = 0;
    memset(s, 0, sizeof(*s));
    struct sockaddr_in *a4 = (struct sockaddr_in *)(void *)&s->addr;
    if (inet_pton(AF_INET, buf, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        s->addr_len = sizeof(*a4);
        s->trusted = dns_addr_is_loopback((const struct sockaddr *)a4);
        return true;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)(void *)&s->addr;
    char *pct = memchr(buf, '%', len);
    uint32_t scope = 0;
    if (pct) {
        if (!allow_scope || pct[1] == 0)
            return false;
        for (const char *p = pct + 1; *p; p++) {
            if (*p < '0' || *p > '9' || scope > 0x0fffffffu)
                return false; /* a named scope needs if_nametoindex(): skipped */
            scope = scope * 10 + (uint32_t)(*p - '0');
        }
        *pct = 0;
    }
    if (inet_pton(AF_INET6, buf, &a6->sin6_addr) != 1)
        return false;
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    a6->sin6_scope_id = scope;
    s->addr_len = sizeof(*a6);
    s->trusted = dns_addr_is_loopback((const struct sockaddr *)a6);
    return true;
}

int dns_parse_resolv_conf(const char *text, size_t len, struct dns_server *out, unsigned cap)
{
    static const char kw[] = "nameserver";
    const size_t kwlen = sizeof(kw) - 1;
    unsigned n = 0;
    size_t i = 0;
    cap = RM_MIN(cap, DNS_RESOLV_CONF_MAX);
    while (i < len && n < cap) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        i += ll + (nl ? 1 : 0);
        /* Like glibc's res_init: the keyword at the very start of the line,
         * then blanks, then the address up to the next blank. */
        if (ll <= kwlen || memcmp(line, kw, kwlen) != 0 || !is_space(line[kwlen]))
            continue;
        size_t p = kwlen;
        while (p < ll && is_space(line[p]))
            p++;
        size_t e = p;
        while (e < ll && !is_space(line[e]) && line[e] != '#' && line[e] != ';')
            e++;
        if (addr_parse(line + p, e - p, DNS_PORT, true, &out[n]))
            n++;
    }
    return (int)n;
}

/* Parses one entry t[0..len) (trimmed, non-empty) of the config form. */
static int entry_parse(const char *t, size_t len, struct dns_server *s)
{
    const char *addr = t;
    size_t alen = len;
    const char *port = NULL;
    size_t plen = 0;
    bool bracket = false;
    if (t[0] == '[') {
        const char *rb = memchr(t, ']', len);
        if (!rb)
            return DNS_ERR_ADDR;
        bracket = true;
        addr = t + 1;
        alen = (size_t)(rb - addr);
        size_t rest = len - (size_t)(rb + 1 - t);
        if (rest > 0) {
            if (rb[1] != ':')
                return DNS_ERR_ADDR;
            port = rb + 2;
            plen = rest - 1;
        }
    } else {
        const char *c1 = memchr(t, ':', len);
        /* One colon: IPv4 and a port. More: a bare IPv6 address, no port. */
        if (c1 && !memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - t))) {
            alen = (size_t)(c1 - t);
            port = c1 + 1;
            plen = len - alen - 1;
        }
    }
    uint32_t pv = DNS_PORT;
    if (port) {
        if (plen == 0 || plen > 5)
            return DNS_ERR_PORT;
        pv = 0;
        for (size_t k = 0; k < plen; k++) {
            if (port[k] < '0' || port[k] > '9')
                return DNS_ERR_PORT;
            pv = pv * 10 + (uint32_t)(port[k] - '0');
        }
        if (pv == 0 || pv > 65535)
            return DNS_ERR_PORT;
    }
    if (!addr_parse(addr, alen, (uint16_t)pv, false, s))
        return DNS_ERR_ADDR;
    if (bracket && s->addr.ss_family != AF_INET6)
        return DNS_ERR_ADDR;
    return 0;
}

int dns_parse_servers(const char *text, size_t len, struct dns_server *out, unsigned cap,
                      size_t *err_off)
{
    size_t dummy;
    if (!err_off)
        err_off = &dummy;
    *err_off = 0;
    size_t i = 0;
    while (i < len && is_space(text[i]))
        i++;
    if (i == len)
        return DNS_ERR_EMPTY;
    unsigned n = 0;
    i = 0;
    for (;;) {
        while (i < len && is_space(text[i]))
            i++;
        size_t start = i;
        const char *comma = memchr(text + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - text) : len;
        size_t e = end;
        while (e > start && is_space(text[e - 1]))
            e--;
        *err_off = start;
        if (e == start)
            return DNS_ERR_EMPTY;
        if (n == cap)
            return DNS_ERR_TOO_MANY;
        int rc = entry_parse(text + start, e - start, &out[n]);
        if (rc < 0)
            return rc;
        n++;
        if (!comma)
            break;
        i = end + 1;
    }
    *err_off = 0;
    return (int)n;
}
