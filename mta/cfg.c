/* mta/cfg.c: defaults, INI parsing (inih) and validation. Main thread only. */
#include "cfg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <sched.h>
#include <stdarg.h>
#include <strings.h>
#include <unistd.h>

#include "../queue/q.h"
#include "smtpd.h"

/* The first error of a parse: inih reports its line number, we keep the text. */
struct cfg_parse {
    struct cfg *c;
    FILE *f;
    unsigned line;      /* the line being parsed (counted by cfg_reader) */
    unsigned fail_line; /* the first error's line */
    char msg[256];
    bool failed;
    bool trusted_seen; /* trusted_networks given in the file: later lines append */
};

static void cfg_listener_default(struct cfg_listener *l, const char *name, const char *addr,
                                 enum cfg_tls tls)
{
    memset(l, 0, sizeof(*l));
    snprintf(l->name, sizeof(l->name), "%s", name);
    int rc = cfg_parse_addr(addr, &l->addrs[0]);
    RM_ASSERT(rc == 0);
    l->naddrs = 1;
    l->tls = tls;
    l->auth = CFG_AUTH_REQUIRED;
}

void cfg_defaults(struct cfg *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->path, sizeof(c->path), "(built-in defaults)");
    if (gethostname(c->hostname, sizeof(c->hostname) - 1) != 0 || c->hostname[0] == '\0')
        snprintf(c->hostname, sizeof(c->hostname), "localhost");
    c->workers = 0; /* auto */
    snprintf(c->queue_dir, sizeof(c->queue_dir), "./var/queue");
    c->queue_map_size = CFG_MAP_SIZE_DEFAULT;
    int rc = cfg_parse_net("127.0.0.0/8", &c->trusted[0]);
    rc |= cfg_parse_net("::1", &c->trusted[1]);
    RM_ASSERT(rc == 0);
    c->ntrusted = 2;
    snprintf(c->delivery_log, sizeof(c->delivery_log), "stdout");
    c->message_size_max = SMTPD_MESSAGE_SIZE_DEFAULT;
    c->rcpt_max = SMTPD_RCPT_MAX_DEFAULT;
    c->command_line_max = SMTPD_COMMAND_LINE_MAX_DEFAULT;
    c->text_line_max = SMTPD_TEXT_LINE_MAX_DEFAULT;
    c->errors_max = SMTPD_ERRORS_MAX_DEFAULT;
    c->sessions_max = CFG_SESSIONS_DEFAULT;
    c->sessions_per_ip_max = CFG_SESSIONS_PER_IP_DEFAULT;
    c->idle_timeout_ms = CFG_IDLE_TIMEOUT_DEFAULT_MS;
    c->shutdown_grace_ms = CFG_SHUTDOWN_GRACE_DEFAULT_MS;
    c->body_memory = CFG_BODY_MEMORY_DEFAULT;
    c->delivery_port = 25;
    snprintf(c->retry, sizeof(c->retry), "1m 5m 15m 30m 1h 2h");
    c->max_queue_lifetime_ms = CFG_LIFETIME_DEFAULT_MS;
    c->dest_connections_max = CFG_DEST_CONNECTIONS_DEFAULT;
    c->msgs_per_connection_max = CFG_MSGS_PER_CONN_DEFAULT;
    c->connect_timeout_ms = CFG_CONNECT_TIMEOUT_DEFAULT_MS;
    c->conn_idle_ms = CFG_CONN_IDLE_DEFAULT_MS;
    c->outbound_max = CFG_OUTBOUND_DEFAULT;
    c->inflight_max = CFG_INFLIGHT_DEFAULT;
    c->dns_trust = CFG_DNS_TRUST_LOOPBACK;
    cfg_listener_default(&c->listeners[0], "submission", "127.0.0.1:587", CFG_TLS_STARTTLS);
    cfg_listener_default(&c->listeners[1], "submissions", "127.0.0.1:465", CFG_TLS_IMPLICIT);
    cfg_listener_default(&c->listeners[2], "alt", "127.0.0.1:2525", CFG_TLS_STARTTLS);
    c->nlisteners = 3;
}

int cfg_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    unsigned shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    case 't':
    case 'T':
        shift = 40;
        end++;
        break;
    default:
        return -1;
    }
    if (*end == 'b' || *end == 'B' || (*end == 'i' && (end[1] == 'B' || end[1] == 'b')))
        end += *end == 'i' ? 2 : 1;
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

int cfg_parse_duration(const char *s, uint64_t *out_ms)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    uint64_t mult;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60ull * 1000;
    else if (strcmp(end, "h") == 0)
        mult = 3600ull * 1000;
    else if (strcmp(end, "d") == 0)
        mult = 86400ull * 1000;
    else
        return -1;
    if (v > UINT64_MAX / mult)
        return -1;
    *out_ms = (uint64_t)v * mult;
    return 0;
}

int cfg_parse_net(const char *s, struct cfg_net *out)
{
    char buf[128];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    memset(out, 0, sizeof(*out));
    unsigned maxbits;
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        maxbits = 128;
    } else {
        return -1;
    }
    unsigned long bits = maxbits;
    if (slash) {
        char *end;
        if (slash[1] < '0' || slash[1] > '9')
            return -1;
        bits = strtoul(slash + 1, &end, 10);
        if (*end != '\0' || bits > maxbits)
            return -1;
    }
    out->prefix = (uint8_t)bits;
    for (unsigned i = 0; i < maxbits; i++) /* clear host bits: 10.1.2.3/8 means 10/8 */
        if (i >= bits)
            out->addr[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
    return 0;
}

int cfg_parse_addr(const char *s, struct cfg_addr *out)
{
    char host[64];
    const char *port;
    memset(out, 0, sizeof(*out));
    if (strlen(s) >= sizeof(out->text))
        return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
            return -1;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host) || strchr(s, ':') != colon)
            return -1;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
    }
    char *end;
    if (*port < '0' || *port > '9')
        return -1;
    unsigned long p = strtoul(port, &end, 10);
    if (*end != '\0' || p == 0 || p > 65535)
        return -1;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->ss;
    if (s[0] != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
        out->len = sizeof(*in4);
    } else if (s[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        out->len = sizeof(*in6);
    } else {
        return -1;
    }
    snprintf(out->text, sizeof(out->text), "%s", s);
    return 0;
}

bool cfg_net_match(const struct cfg_net *nets, unsigned n, const struct sockaddr *sa)
{
    uint8_t a[16];
    sa_family_t fam = sa->sa_family;
    if (fam == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (fam == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) { /* ::ffff:a.b.c.d matches IPv4 networks */
            fam = AF_INET;
            memcpy(a, a6->s6_addr + 12, 4);
        } else {
            memcpy(a, a6->s6_addr, 16);
        }
    } else {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        if (nets[i].family != fam)
            continue;
        unsigned bits = nets[i].prefix, full = bits / 8, rest = bits % 8;
        if (memcmp(a, nets[i].addr, full) != 0)
            continue;
        if (rest && ((a[full] ^ nets[i].addr[full]) & (uint8_t)(0xffu << (8 - rest))))
            continue;
        return true;
    }
    return false;
}

static int cfg_fail(struct cfg_parse *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int cfg_fail(struct cfg_parse *p, const char *fmt, ...)
{
    if (!p->failed) { /* inih reports the first error's line: keep the first text */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
        va_end(ap);
        p->failed = true;
        p->fail_line = p->line;
    }
    return 0;
}

static int cfg_u32(struct cfg_parse *p, const char *sec, const char *name, const char *v,
                   uint64_t min, uint64_t max, uint32_t *out)
{
    uint64_t x;
    if (cfg_parse_size(v, &x) != 0 || x < min || x > max)
        return cfg_fail(p, "[%s] %s: expected a number from %llu to %llu, got \"%s\"", sec, name,
                        (unsigned long long)min, (unsigned long long)max, v);
    *out = (uint32_t)x;
    return 1;
}

static int cfg_ms(struct cfg_parse *p, const char *sec, const char *name, const char *v,
                  uint64_t min_ms, uint64_t max_ms, uint64_t *out)
{
    uint64_t x;
    if (cfg_parse_duration(v, &x) != 0 || x < min_ms || x > max_ms)
        return cfg_fail(p,
                        "[%s] %s: expected a duration like 300s, 5m, 1h or 250ms (%llu ms to "
                        "%llu s), got \"%s\"",
                        sec, name, (unsigned long long)min_ms, (unsigned long long)max_ms / 1000,
                        v);
    *out = x;
    return 1;
}

static int cfg_path(struct cfg_parse *p, const char *sec, const char *name, const char *v,
                    char *out, size_t cap)
{
    if (v[0] == '\0' || strlen(v) >= cap)
        return cfg_fail(p, "[%s] %s: expected a path shorter than %zu bytes", sec, name, cap);
    snprintf(out, cap, "%s", v);
    return 1;
}

/* Calls fn for each comma-separated, space-trimmed item of v. */
static int cfg_list(struct cfg_parse *p, const char *v,
                    int (*fn)(struct cfg_parse *p, const char *item, void *ctx), void *ctx)
{
    char item[256];
    const char *s = v;
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        const char *e = s;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if (t > s) {
            if ((size_t)(t - s) >= sizeof(item))
                return cfg_fail(p, "list item too long: \"%.40s...\"", s);
            memcpy(item, s, (size_t)(t - s));
            item[t - s] = '\0';
            if (!fn(p, item, ctx))
                return 0;
        }
        s = e;
    }
    return 1;
}

static int cfg_add_net(struct cfg_parse *p, const char *item, void *ctx)
{
    (void)ctx;
    struct cfg *c = p->c;
    if (c->ntrusted >= CFG_NETS_MAX)
        return cfg_fail(p, "[server] trusted_networks: more than %d networks", CFG_NETS_MAX);
    if (cfg_parse_net(item, &c->trusted[c->ntrusted]) != 0)
        return cfg_fail(p,
                        "[server] trusted_networks: \"%s\" is not an address or network "
                        "(like 127.0.0.0/8 or ::1)",
                        item);
    c->ntrusted++;
    return 1;
}

static int cfg_add_addr(struct cfg_parse *p, const char *item, void *ctx)
{
    struct cfg_listener *l = ctx;
    if (l->naddrs >= CFG_LISTEN_ADDRS_MAX)
        return cfg_fail(p, "[listen %s] address: more than %d addresses", l->name,
                        CFG_LISTEN_ADDRS_MAX);
    if (cfg_parse_addr(item, &l->addrs[l->naddrs]) != 0)
        return cfg_fail(p,
                        "[listen %s] address: \"%s\" is not host:port (like 0.0.0.0:587 "
                        "or [::]:587)",
                        l->name, item);
    l->naddrs++;
    return 1;
}

static int cfg_server_key(struct cfg_parse *p, const char *name, const char *v)
{
    struct cfg *c = p->c;
    const char *S = "server";
    uint64_t x;
    if (strcmp(name, "hostname") == 0) {
        if (v[0] == '\0' || strlen(v) >= sizeof(c->hostname) || strpbrk(v, " \t<>[]()\""))
            return cfg_fail(p, "[server] hostname: expected a host name, got \"%s\"", v);
        snprintf(c->hostname, sizeof(c->hostname), "%s", v);
        return 1;
    }
    if (strcmp(name, "workers") == 0) {
        if (strcmp(v, "auto") == 0) {
            c->workers = 0;
            return 1;
        }
        return cfg_u32(p, S, name, v, 1, CFG_WORKERS_MAX, &c->workers);
    }
    if (strcmp(name, "queue_dir") == 0)
        return cfg_path(p, S, name, v, c->queue_dir, sizeof(c->queue_dir));
    if (strcmp(name, "delivery_log") == 0)
        return cfg_path(p, S, name, v, c->delivery_log, sizeof(c->delivery_log));
    if (strcmp(name, "queue_map_size") == 0) {
        if (cfg_parse_size(v, &x) != 0 || x < Q_MAP_SIZE_MIN)
            return cfg_fail(
                p, "[server] queue_map_size: expected a size like 16G (at least 1M), got \"%s\"",
                v);
        c->queue_map_size = x;
        return 1;
    }
    if (strcmp(name, "trusted_networks") == 0) {
        if (!p->trusted_seen) /* the file's list replaces the default; an indented */
            c->ntrusted = 0;  /* continuation line comes as a second call: append */
        p->trusted_seen = true;
        return cfg_list(p, v, cfg_add_net, NULL);
    }
    if (strcmp(name, "max_message_size") == 0) {
        if (cfg_parse_size(v, &x) != 0 || x < 1024 || x > SMTPD_MESSAGE_SIZE_MAX)
            return cfg_fail(
                p, "[server] max_message_size: expected a size from 1k to 1G, got \"%s\"", v);
        c->message_size_max = x;
        c->size_rule_line = p->line;
        return 1;
    }
    if (strcmp(name, "max_recipients") == 0)
        return cfg_u32(p, S, name, v, 1, SMTPD_RCPT_MAX_MAX, &c->rcpt_max);
    if (strcmp(name, "max_command_line") == 0)
        return cfg_u32(p, S, name, v, SMTPD_COMMAND_LINE_MIN, SMTPD_COMMAND_LINE_MAX_MAX,
                       &c->command_line_max);
    if (strcmp(name, "max_text_line") == 0)
        return cfg_u32(p, S, name, v, 78, SMTPD_TEXT_LINE_MAX_MAX, &c->text_line_max);
    if (strcmp(name, "max_errors") == 0)
        return cfg_u32(p, S, name, v, 1, 1000, &c->errors_max);
    if (strcmp(name, "max_sessions") == 0)
        return cfg_u32(p, S, name, v, 1, CFG_SESSIONS_MAX, &c->sessions_max);
    if (strcmp(name, "max_sessions_per_ip") == 0)
        return cfg_u32(p, S, name, v, 1, CFG_SESSIONS_MAX, &c->sessions_per_ip_max);
    if (strcmp(name, "idle_timeout") == 0)
        return cfg_ms(p, S, name, v, 100, 86400ull * 1000, &c->idle_timeout_ms);
    if (strcmp(name, "shutdown_grace") == 0)
        return cfg_ms(p, S, name, v, 0, 3600ull * 1000, &c->shutdown_grace_ms);
    if (strcmp(name, "body_memory") == 0) {
        if (cfg_parse_size(v, &x) != 0 || x < (1u << 20) || x > (1ull << 40))
            return cfg_fail(p, "[server] body_memory: expected a size from 1M to 1T, got \"%s\"",
                            v);
        c->body_memory = x;
        c->size_rule_line = p->line;
        return 1;
    }
    return cfg_fail(p, "[server] unknown key \"%s\"", name);
}

/* Index of v in names[0..n) (the enum's order), or -1. */
static int cfg_keyword(const char *v, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v, names[i]) == 0)
            return (int)i;
    return -1;
}

static struct cfg_listener *cfg_listener_get(struct cfg_parse *p, const char *name)
{
    struct cfg *c = p->c;
    if (!c->listeners_from_file) { /* listeners in the file replace the built-in ones */
        c->listeners_from_file = true;
        c->nlisteners = 0;
    }
    for (unsigned i = 0; i < c->nlisteners; i++)
        if (strcmp(c->listeners[i].name, name) == 0)
            return &c->listeners[i];
    if (c->nlisteners >= CFG_LISTENERS_MAX) {
        cfg_fail(p, "more than %d [listen] sections", CFG_LISTENERS_MAX);
        return NULL;
    }
    if (name[0] == '\0' || strlen(name) >= CFG_NAME_MAX || strpbrk(name, " \t\"\\")) {
        cfg_fail(p, "[listen NAME]: NAME must be 1 to %d characters without spaces or quotes",
                 CFG_NAME_MAX - 1);
        return NULL;
    }
    struct cfg_listener *l = &c->listeners[c->nlisteners++];
    memset(l, 0, sizeof(*l));
    snprintf(l->name, sizeof(l->name), "%s", name);
    l->tls = CFG_TLS_NONE;
    l->auth = CFG_AUTH_REQUIRED;
    l->line = p->line;
    return l;
}

static int cfg_listen_key(struct cfg_parse *p, const char *lname, const char *name, const char *v)
{
    struct cfg_listener *l = cfg_listener_get(p, lname);
    if (!l)
        return 0;
    if (strcmp(name, "address") == 0) /* repeated or continued lines append */
        return cfg_list(p, v, cfg_add_addr, l);
    if (strcmp(name, "tls") == 0) {
        static const char *const tls[] = {"none", "starttls", "implicit"}; /* enum cfg_tls */
        int k = cfg_keyword(v, tls, RM_ARRAY_LEN(tls));
        if (k < 0)
            return cfg_fail(p, "[listen %s] tls: expected none, starttls or implicit, got \"%s\"",
                            lname, v);
        l->tls = (enum cfg_tls)k;
        return 1;
    }
    if (strcmp(name, "auth") == 0) {
        static const char *const auth[] = {"none", "optional", "required"}; /* enum cfg_auth */
        int k = cfg_keyword(v, auth, RM_ARRAY_LEN(auth));
        if (k < 0)
            return cfg_fail(p, "[listen %s] auth: expected none, optional or required, got \"%s\"",
                            lname, v);
        l->auth = (enum cfg_auth)k;
        return 1;
    }
    if (strcmp(name, "proxy_protocol") == 0) {
        if (strcmp(v, "no") == 0) {
            l->proxy_protocol = false;
            return 1;
        }
        return cfg_fail(p, "[listen %s] proxy_protocol: only \"no\" is supported so far", lname);
    }
    return cfg_fail(p, "[listen %s] unknown key \"%s\"", lname, name);
}

static int cfg_delivery_key(struct cfg_parse *p, const char *name, const char *v)
{
    struct cfg *c = p->c;
    const char *S = "delivery";
    uint32_t port = 0;
    if (strcmp(name, "port") == 0) {
        if (!cfg_u32(p, S, name, v, 1, 65535, &port))
            return 0;
        c->delivery_port = (uint16_t)port;
        return 1;
    }
    if (strcmp(name, "retry") == 0) /* checked whole by retry_parse() at start-up */
        return cfg_path(p, S, name, v, c->retry, sizeof(c->retry));
    if (strcmp(name, "max_queue_lifetime") == 0)
        return cfg_ms(p, S, name, v, 1000, 365 * 86400ull * 1000, &c->max_queue_lifetime_ms);
    if (strcmp(name, "max_connections") == 0)
        return cfg_u32(p, S, name, v, 1, 100000, &c->dest_connections_max);
    if (strcmp(name, "max_messages_per_connection") == 0)
        return cfg_u32(p, S, name, v, 1, 1000000, &c->msgs_per_connection_max);
    if (strcmp(name, "connect_timeout") == 0)
        return cfg_ms(p, S, name, v, 100, 3600ull * 1000, &c->connect_timeout_ms);
    if (strcmp(name, "connection_idle") == 0)
        return cfg_ms(p, S, name, v, 0, 3600ull * 1000, &c->conn_idle_ms);
    if (strcmp(name, "max_outbound") == 0)
        return cfg_u32(p, S, name, v, 1, CFG_SESSIONS_MAX, &c->outbound_max);
    if (strcmp(name, "max_inflight") == 0)
        return cfg_u32(p, S, name, v, 1, CFG_SESSIONS_MAX, &c->inflight_max);
    if (strcmp(name, "tls") == 0)
        return cfg_fail(p, "[delivery] tls: outbound TLS arrives with issue 5");
    return cfg_fail(p, "[delivery] unknown key \"%s\"", name);
}

/* "host", "host:port", "[v6]:port" or "[v6]": the route of a [domain X]. */
static int cfg_route(struct cfg_parse *p, struct cfg_domain *d, const char *v)
{
    const char *host = v, *port = NULL;
    size_t hlen;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close || (close[1] != '\0' && close[1] != ':'))
            return cfg_fail(p, "[domain %s] route: expected host[:port] or [ipv6]:port", d->name);
        host = v + 1;
        hlen = (size_t)(close - host);
        port = close[1] == ':' ? close + 2 : NULL;
    } else {
        const char *colon = strchr(v, ':');
        hlen = colon ? (size_t)(colon - v) : strlen(v);
        port = colon ? colon + 1 : NULL;
    }
    if (hlen == 0 || hlen >= sizeof(d->route_host) || memchr(host, ' ', hlen))
        return cfg_fail(p, "[domain %s] route: expected host[:port], got \"%s\"", d->name, v);
    memcpy(d->route_host, host, hlen);
    d->route_host[hlen] = '\0';
    d->route_port = 0;
    if (port) {
        char *end;
        unsigned long n = strtoul(port, &end, 10);
        if (*port < '0' || *port > '9' || *end != '\0' || n == 0 || n > 65535)
            return cfg_fail(p, "[domain %s] route: bad port in \"%s\"", d->name, v);
        d->route_port = (uint16_t)n;
    }
    return 1;
}

static struct cfg_domain *cfg_domain_get(struct cfg_parse *p, const char *name)
{
    struct cfg *c = p->c;
    char lower[256];
    size_t n = strlen(name);
    if (n && name[n - 1] == '.')
        n--;
    if (n == 0 || n >= sizeof(lower) || strpbrk(name, " \t\"\\@")) {
        cfg_fail(p, "[domain NAME]: NAME must be a domain name");
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        lower[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
    lower[n] = '\0';
    for (unsigned i = 0; i < c->ndomains; i++)
        if (strcmp(c->domains[i].name, lower) == 0)
            return &c->domains[i];
    if (c->ndomains >= CFG_DOMAINS_MAX) {
        cfg_fail(p, "more than %d [domain] sections", CFG_DOMAINS_MAX);
        return NULL;
    }
    struct cfg_domain *d = &c->domains[c->ndomains++];
    memset(d, 0, sizeof(*d));
    memcpy(d->name, lower, n + 1);
    return d;
}

static int cfg_domain_key(struct cfg_parse *p, const char *dname, const char *name, const char *v)
{
    struct cfg_domain *d = cfg_domain_get(p, dname);
    if (!d)
        return 0;
    if (strcmp(name, "route") == 0)
        return cfg_route(p, d, v);
    if (strcmp(name, "max_connections") == 0)
        return cfg_u32(p, "domain", name, v, 1, 100000, &d->max_connections);
    if (strcmp(name, "tls") == 0)
        return cfg_fail(p, "[domain %s] tls: outbound TLS arrives with issue 5", d->name);
    return cfg_fail(p, "[domain %s] unknown key \"%s\"", d->name, name);
}

static int cfg_dns_key(struct cfg_parse *p, const char *name, const char *v)
{
    struct cfg *c = p->c;
    if (strcmp(name, "resolvers") == 0) /* checked by the resolver's parser at start-up */
        return cfg_path(p, "dns", name, v, c->resolvers, sizeof(c->resolvers));
    if (strcmp(name, "trusted") == 0) {
        static const char *const trust[] = {"loopback", "all", "none"}; /* enum cfg_dns_trust */
        int k = cfg_keyword(v, trust, RM_ARRAY_LEN(trust));
        if (k < 0)
            return cfg_fail(p, "[dns] trusted: expected loopback, all or none, got \"%s\"", v);
        c->dns_trust = (enum cfg_dns_trust)k;
        return 1;
    }
    return cfg_fail(p, "[dns] unknown key \"%s\"", name);
}

const struct cfg_domain *cfg_domain_find(const struct cfg *c, const char *domain, size_t len)
{
    if (len && domain[len - 1] == '.')
        len--;
    for (unsigned i = 0; i < c->ndomains; i++) {
        const char *n = c->domains[i].name;
        if (strlen(n) == len && strncasecmp(n, domain, len) == 0)
            return &c->domains[i];
    }
    return NULL;
}

static int cfg_handler(void *user, const char *section, const char *name, const char *value)
{
    struct cfg_parse *p = user;
    if (p->failed)
        return 1; /* report only the first error, at fail_line */
    if (strcmp(section, "server") == 0)
        return cfg_server_key(p, name, value);
    if (strncmp(section, "listen ", 7) == 0)
        return cfg_listen_key(p, section + 7, name, value);
    if (strcmp(section, "delivery") == 0)
        return cfg_delivery_key(p, name, value);
    if (strncmp(section, "domain ", 7) == 0)
        return cfg_domain_key(p, section + 7, name, value);
    if (strcmp(section, "dns") == 0)
        return cfg_dns_key(p, name, value);
    if (strcmp(section, "") == 0)
        return cfg_fail(p, "key \"%s\" outside any [section]", name);
    return cfg_fail(p, "unknown section [%s]", section);
}

int cfg_finish(struct cfg *c, char *err, size_t err_len)
{
    if (c->workers == 0) {
        cpu_set_t set;
        int n = 1;
        if (sched_getaffinity(0, sizeof(set), &set) == 0)
            n = CPU_COUNT(&set);
        c->workers = (unsigned)RM_MAX(1, RM_MIN(n, (int)CFG_WORKERS_MAX));
    }
    if (c->nlisteners == 0) {
        snprintf(err, err_len, "%s: no [listen NAME] section: nothing to listen on", c->path);
        return -1;
    }
    for (unsigned i = 0; i < c->nlisteners; i++) {
        if (c->listeners[i].naddrs == 0) {
            snprintf(err, err_len, "%s:%u: [listen %s] needs an address", c->path,
                     c->listeners[i].line, c->listeners[i].name);
            return -1;
        }
    }
    /* A message must fit the worker's body pool with room for others. */
    if (c->body_memory < 2 * c->message_size_max) {
        snprintf(err, err_len,
                 "%s:%u: [server] body_memory (%llu) must be at least twice "
                 "max_message_size (%llu)",
                 c->path, c->size_rule_line, (unsigned long long)c->body_memory,
                 (unsigned long long)c->message_size_max);
        return -1;
    }
    if (c->sessions_max < c->workers)
        c->sessions_max = c->workers;
    return 0;
}

/* inih's reader, counting lines so that errors name the line the handler is
 * on (inih's own count is off for continuation lines and later errors). */
static char *cfg_reader(char *str, int num, void *stream)
{
    struct cfg_parse *p = stream;
    char *r = fgets(str, num, p->f);
    if (r && (strchr(r, '\n') || feof(p->f)))
        p->line++;
    return r;
}

int cfg_load(struct cfg *c, const char *path, char *err, size_t err_len)
{
    struct cfg_parse p = {.c = c};
    snprintf(c->path, sizeof(c->path), "%s", path);
    p.f = fopen(path, "r");
    if (!p.f) {
        snprintf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    /* The reader's line counter is the line of the line just read: the
     * handler runs right after. */
    int rc = ini_parse_stream(cfg_reader, &p, cfg_handler, &p);
    fclose(p.f);
    if (rc == -2) {
        snprintf(err, err_len, "%s: out of memory while parsing", path);
        return -1;
    }
    if (rc > 0 && (!p.failed || (unsigned)rc < p.fail_line)) { /* a syntax error came first */
        snprintf(err, err_len, "%s:%d: syntax error (expected [section] or key = value)", path, rc);
        return -1;
    }
    if (p.failed) {
        snprintf(err, err_len, "%s:%u: %s", path, p.fail_line, p.msg);
        return -1;
    }
    return cfg_finish(c, err, err_len);
}
