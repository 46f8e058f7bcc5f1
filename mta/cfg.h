/* mta/cfg.h: the configuration: built-in defaults, the INI file, validation.
 *
 * Loaded once by the main thread before any worker starts; read-only after
 * that, so workers read it without locks. Errors name the file, the line and
 * what is wrong ("ringmta.conf:12: [server] workers: expected auto or 1..256").
 * Names of keys are the interface users and tests rely on (DESIGN.md
 * "Configuration"); see docs/configuration.md for every key.
 */
#ifndef CFG_H
#define CFG_H

#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../common/rm.h"

#define CFG_LISTENERS_MAX              16   /* [listen NAME] sections */
#define CFG_LISTEN_ADDRS_MAX           8    /* addresses of one listener */
#define CFG_NETS_MAX                   64   /* trusted_networks entries */
#define CFG_NAME_MAX                   64   /* listener names */
#define CFG_WORKERS_MAX                256  /* one per CPU; bounded by Q_WORKERS_MAX */
#define CFG_SESSIONS_DEFAULT           8192 /* all workers together */
#define CFG_SESSIONS_MAX               (1u << 20)
#define CFG_SESSIONS_PER_IP_DEFAULT    200            /* loopback load tests use one IP */
#define CFG_IDLE_TIMEOUT_DEFAULT_MS    (300u * 1000u) /* RFC 5321 4.5.3.2.7: 5 minutes */
#define CFG_SHUTDOWN_GRACE_DEFAULT_MS  (30u * 1000u)
#define CFG_MAP_SIZE_DEFAULT           (16ull << 30) /* sparse: costs disk only as used */
#define CFG_BODY_MEMORY_DEFAULT        (1ull << 30)  /* per worker, virtual (MAP_NORESERVE) */
#define CFG_DOMAINS_MAX                1024          /* [domain X] sections */
#define CFG_RETRY_TEXT_MAX             256
#define CFG_RESOLVERS_TEXT_MAX         256
#define CFG_LIFETIME_DEFAULT_MS        (5ull * 86400 * 1000) /* max_queue_lifetime: 5 days */
#define CFG_DEST_CONNECTIONS_DEFAULT   20  /* per destination, all workers together */
#define CFG_MSGS_PER_CONN_DEFAULT      100 /* then QUIT and reconnect */
#define CFG_CONNECT_TIMEOUT_DEFAULT_MS (30u * 1000u)
#define CFG_CONN_IDLE_DEFAULT_MS       (10u * 1000u) /* a pooled connection waits this long for reuse */
#define CFG_OUTBOUND_DEFAULT           2000 /* outbound connections, all workers together */
#define CFG_INFLIGHT_DEFAULT           4096 /* messages being delivered, all workers together */

enum cfg_tls { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT };
enum cfg_auth { CFG_AUTH_NONE, CFG_AUTH_OPTIONAL, CFG_AUTH_REQUIRED };

struct cfg_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[64]; /* as written, e.g. "127.0.0.1:587" or "[::1]:587" */
};

struct cfg_net {
    sa_family_t family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];   /* network address, host bits cleared */
    uint8_t prefix;     /* prefix length in bits */
};

struct cfg_listener {
    char name[CFG_NAME_MAX];
    struct cfg_addr addrs[CFG_LISTEN_ADDRS_MAX];
    unsigned naddrs;
    enum cfg_tls tls;
    enum cfg_auth auth;
    bool proxy_protocol;
    unsigned line; /* where it was defined, 0 for a built-in one */
};

enum cfg_dns_trust { CFG_DNS_TRUST_LOOPBACK, CFG_DNS_TRUST_ALL, CFG_DNS_TRUST_NONE };

/* [domain NAME]: per-destination policy. */
struct cfg_domain {
    char name[256];           /* lower case, no trailing dot */
    char route_host[256];     /* "" = MX lookup; an IP literal or a host name (A/AAAA, no MX) */
    uint16_t route_port;      /* 0 = [delivery] port */
    uint32_t max_connections; /* 0 = [delivery] max_connections */
};

struct cfg {
    char path[PATH_MAX]; /* the file, or "(built-in defaults)" */
    char hostname[256];  /* EHLO name and Received: by */
    unsigned workers;    /* resolved: 1..CFG_WORKERS_MAX ("auto" = online CPUs) */
    char queue_dir[PATH_MAX];
    uint64_t queue_map_size; /* bytes */
    struct cfg_net trusted[CFG_NETS_MAX];
    unsigned ntrusted;
    char delivery_log[PATH_MAX]; /* "stdout", "stderr", "none" or a file path */
    /* [server] limits */
    uint64_t message_size_max; /* octets, Received: included */
    uint32_t rcpt_max;
    uint32_t command_line_max; /* octets incl. CRLF */
    uint32_t text_line_max;    /* octets excl. CRLF */
    uint32_t errors_max;
    uint32_t sessions_max;        /* all workers together */
    uint32_t sessions_per_ip_max; /* all workers together */
    uint64_t idle_timeout_ms;
    uint64_t shutdown_grace_ms;
    uint64_t body_memory; /* bytes of body chunks per worker */
    struct cfg_listener listeners[CFG_LISTENERS_MAX];
    unsigned nlisteners;
    /* [delivery] */
    uint16_t delivery_port;         /* remote port, 25 */
    char retry[CFG_RETRY_TEXT_MAX]; /* "1m 5m 15m 30m 1h 2h": parsed by retry_parse() */
    uint64_t max_queue_lifetime_ms;
    uint32_t dest_connections_max; /* per destination, all workers together */
    uint32_t msgs_per_connection_max;
    uint64_t connect_timeout_ms;
    uint64_t conn_idle_ms;
    uint32_t outbound_max; /* all workers together */
    uint32_t inflight_max; /* all workers together */
    /* [domain X] */
    struct cfg_domain domains[CFG_DOMAINS_MAX];
    unsigned ndomains;
    /* [dns] */
    char resolvers[CFG_RESOLVERS_TEXT_MAX]; /* "" = the nameservers of /etc/resolv.conf */
    enum cfg_dns_trust dns_trust;
    unsigned size_rule_line; /* private to cfg.c: where max_message_size/body_memory was last set */
    bool listeners_from_file; /* private to cfg.c: the first [listen] drops the defaults */
};

/* Fills c with the built-in defaults: listeners on 127.0.0.1:587 (starttls),
 * :465 (implicit) and :2525 (starttls), queue in ./var/queue, hostname from
 * gethostname(). Main thread. */
void cfg_defaults(struct cfg *c);

/* Reads path over the defaults already in c, then validates the whole.
 * Returns 0, or -1 with a message "path:line: what is wrong" in err. */
RM_MUST_CHECK int cfg_load(struct cfg *c, const char *path, char *err, size_t err_len);

/* Checks cross-key rules and resolves "auto"; cfg_load calls it, callers of
 * cfg_defaults alone call it too. Returns 0 or -1 with err. */
RM_MUST_CHECK int cfg_finish(struct cfg *c, char *err, size_t err_len);

/* Value parsers, exposed for tests. Each returns 0 or -1. */
RM_MUST_CHECK int cfg_parse_size(const char *s, uint64_t *out); /* "16G", "50M", "64k", "123" */
RM_MUST_CHECK int
cfg_parse_duration(const char *s,
                   uint64_t *out_ms); /* "300s", "5m", "1h", "5d", "250ms", "300" (s) */
RM_MUST_CHECK int cfg_parse_net(const char *s,
                                struct cfg_net *out); /* "127.0.0.0/8", "::1", "10.1.2.3" */
RM_MUST_CHECK int cfg_parse_addr(const char *s,
                                 struct cfg_addr *out); /* "127.0.0.1:587", "[::1]:587" */

/* The [domain X] section for a destination domain (case-insensitive), or NULL. */
const struct cfg_domain *cfg_domain_find(const struct cfg *c, const char *domain, size_t len);

/* True when sa is inside one of nets[0..n). Pure, any thread. */
bool cfg_net_match(const struct cfg_net *nets, unsigned n, const struct sockaddr *sa);

#endif /* CFG_H */
