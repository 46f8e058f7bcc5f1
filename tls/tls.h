/* tls/tls.h: TLS contexts and sans-I/O TLS sessions over caller buffers
 * (wolfSSL underneath; RFC 8446 TLS 1.3, RFC 5246 TLS 1.2, RFC 3207
 * STARTTLS users, RFC 7672 DANE for SMTP).
 *
 * What is here:
 * - Server contexts (struct tls_server_ctx): one or more certificate chains
 *   with their keys (RSA and/or ECDSA), picked by the SNI name the client
 *   sends; the first one is the default. Client contexts (struct
 *   tls_client_ctx): opportunistic (no verification, the default for SMTP,
 *   RFC 7435) or verified against a CA store plus the host name.
 * - Sessions (struct tls_sess): one per connection. A session never touches
 *   a socket, a clock or a log: it reads ciphertext from the caller's rx
 *   buffer and appends ciphertext to the caller's tx buffer; plaintext goes
 *   in and out through tls_write() and tls_read().
 * - Self-signed certificate generation (ECDSA P-256) for a default config.
 * - DANE (RFC 7672) checks of the peer's chain after a client handshake.
 *
 * Threads: contexts are built by the main thread (start-up, SIGHUP) and then
 * only read; any worker may start sessions on them. A session belongs to one
 * worker's connection slot and is used by that thread only. Reference
 * counts on contexts are atomic, so the last session of an old context may
 * end on any worker (see tls_server_ctx_free).
 *
 * Memory: contexts and sessions are heap objects (wolfSSL allocates per
 * session; XXX: this is the one per-connection malloc in the data path, as
 * wolfSSL has no caller-memory API in Debian's build). The rx/tx buffers are
 * the caller's and are borrowed for the session's life.
 *
 * How a worker drives a session:
 *   connect/accept (or the STARTTLS 220):
 *       tls_server_new(ctx, &rx, &tx, &s) or tls_client_new(ctx, sni, &rx, &tx, &s)
 *   loop:
 *       r = tls_handshake(s)          (until it returns TLS_OK)
 *         TLS_WANT_READ:  send tx if not empty; post a recv into rx
 *                         (rm_buf_recv_prep, then rm_buf_produce on the CQE);
 *                         call again.
 *         TLS_WANT_WRITE: tx is full: send it, rm_buf_consume what went out,
 *                         call again.
 *         TLS_OK:         handshake done: send tx (it may still hold the last
 *                         flight); tls_sess_version/cipher/sni describe it.
 *         < 0:            fatal: tls_sess_reason(s) says why; send tx (it may
 *                         hold an alert), close, tls_sess_free().
 *   after TLS_OK, whenever rx got bytes:
 *       r = tls_read(s, buf, cap, &n) until it returns TLS_WANT_READ:
 *         TLS_OK: n > 0 bytes of plaintext in buf; TLS_CLOSED: the peer sent
 *         close_notify; TLS_WANT_WRITE: drain tx, call again; < 0: fatal.
 *   to send plaintext: r = tls_write(s, p, len, &n): n bytes were taken (and
 *       their records appended to tx); TLS_WANT_WRITE with n < len: drain tx
 *       and give the rest again.
 *   to end: tls_close(s) queues close_notify in tx (TLS_OK, or TLS_WANT_WRITE:
 *       drain and call again); send tx; close the socket; tls_sess_free(s).
 * Ciphertext in rx is consumed with rm_buf_skip (head moves, tail never
 * does), so a recv may be in flight at rx's tail at any time. The session
 * only appends after tx->tail; it never moves tx->head, so a send may be in
 * flight over tx. Every function returns without waiting.
 */
#ifndef TLS_H
#define TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"

/* Limits, each with its reason. */
#define TLS_RECORD_PLAIN_MAX 16384u /* plaintext octets per record, RFC 8446 5.1 */
/* Per-record expansion we leave room for before encrypting: header 5, AEAD
 * tag 16, explicit nonce 8 (1.2) or content type 1 (1.3); CBC-SHA384 suites
 * reach 5 + 16 IV + 48 MAC + 16 padding = 85. Rounded up. */
#define TLS_RECORD_OVERHEAD_MAX 256u
/* tx->cap: one full record must fit once tx is drained; tls_write asserts it. */
#define TLS_TX_MIN        ((size_t)TLS_RECORD_PLAIN_MAX + TLS_RECORD_OVERHEAD_MAX)
#define TLS_SNI_NAMES_MAX 64u  /* names per certificate entry; real certificates have few */
#define TLS_CERTS_MAX     32u  /* certificate entries per server context */
#define TLS_NAME_MAX      253u /* octets of a DNS name (RFC 1035 2.3.4, no final dot) */
#define TLS_TLSA_DATA_MAX 64u  /* octets of TLSA data with matching type 1/2 (SHA-512) */
/* Matching type 0 (the full certificate or SPKI): a larger record is
 * compared as unusable, never truncated. */
#define TLS_TLSA_FULL_MAX           8192u
#define TLS_SELFSIGNED_DAYS_DEFAULT 3650 /* 10 years: the default config must not expire */
#define TLS_SAN_MAX                 16u  /* subjectAltName entries in a generated certificate */

/* Protocol versions (the wire values). Only 1.2 and 1.3 are offered or
 * taken: 1.0/1.1 are deprecated by RFC 8996. */
#define TLS_VERSION_1_2 0x0303u
#define TLS_VERSION_1_3 0x0304u

/* Status of session calls (>= 0); errors are the negative enum tls_err or
 * -errno. */
enum tls_status {
    TLS_OK = 0,         /* done (handshake complete, bytes read/written, close queued) */
    TLS_WANT_READ = 1,  /* needs more ciphertext in rx */
    TLS_WANT_WRITE = 2, /* tx is full: send and consume some of it, then call again */
    TLS_CLOSED = 3,     /* the peer sent close_notify (tls_read) */
};

enum tls_err {
    TLS_ERR_LIB = -5001,           /* wolfSSL init or internal failure */
    TLS_ERR_CERT = -5002,          /* a certificate or key file cannot be loaded */
    TLS_ERR_KEY_MISMATCH = -5003,  /* the key does not belong to the certificate */
    TLS_ERR_CONFIG = -5004,        /* bad argument in a config (version, name, count) */
    TLS_ERR_HANDSHAKE = -5005,     /* the handshake failed (alert, bad message, no shared suite) */
    TLS_ERR_VERSION = -5006,       /* the peer offered no version we take */
    TLS_ERR_VERIFY = -5007,        /* the peer's certificate did not verify (CA, dates) */
    TLS_ERR_NAME = -5008,          /* the peer's certificate does not name the host */
    TLS_ERR_PROTO = -5009,         /* a bad record after the handshake (MAC, decode) */
    TLS_ERR_STATE = -5010,         /* called in the wrong state (read before handshake) */
    TLS_ERR_DANE_UNUSABLE = -5011, /* no usable TLSA record (RFC 7672 2.2: treat as none) */
    TLS_ERR_DANE_NOMATCH = -5012,  /* usable records, none matched the chain */
    TLS_ERR_GEN = -5013,           /* certificate generation failed */
};

/* Names a tls_err, a tls_status or a -errno; static string, never NULL. */
const char *tls_strerror(int err);

/* ---- Server contexts ---------------------------------------------------- */

/* One certificate entry: a PEM chain (leaf first) and its PEM key. */
struct tls_cert_cfg {
    const char *cert_file; /* PEM: leaf, then intermediates */
    const char *key_file;  /* PEM: RSA or EC private key, unencrypted */
    /* SNI names this entry serves (exact, case-insensitive; "*.example.org"
     * matches one label). Zero names: only the default (entry 0) uses it. */
    const char *const *names;
    size_t name_count; /* <= TLS_SNI_NAMES_MAX */
};

struct tls_server_cfg {
    const struct tls_cert_cfg *certs; /* [0] is the default for no or unknown SNI */
    size_t cert_count;                /* 1..TLS_CERTS_MAX */
    uint16_t version_min;             /* TLS_VERSION_1_2 or _1_3 */
    uint16_t version_max;             /* >= version_min */
};

struct tls_server_ctx; /* opaque, reference-counted, read-only once built */

/* Builds a server context: loads every chain and key and checks each key
 * matches its certificate. The cfg and its strings are only read during the
 * call. Returns 0 and *out, or TLS_ERR_CERT, TLS_ERR_KEY_MISMATCH,
 * TLS_ERR_CONFIG, TLS_ERR_LIB, -ENOMEM. Main thread. */
RM_MUST_CHECK int tls_server_ctx_new(const struct tls_server_cfg *cfg, struct tls_server_ctx **out);
/* (Each key is proved against its certificate by one handshake in memory:
 * a few ms per entry at start-up, as Debian's wolfSSL_CTX_check_private_key
 * passes an ECDSA key of another certificate.) */

/* Reload (SIGHUP): build a new context with tls_server_ctx_new(), swap the
 * pointer new sessions use, and tls_server_ctx_free() the old one. Freeing
 * drops the owner's reference only: each session holds one too, so the old
 * context lives on until its last session is freed, on whatever worker that
 * is, and is released there. If the new context fails to build, keep the
 * old one (the caller logs the error). tls_server_ctx_free(NULL) does
 * nothing. */
void tls_server_ctx_free(struct tls_server_ctx *ctx);

/* ---- Client contexts ---------------------------------------------------- */

enum tls_verify {
    TLS_VERIFY_NONE = 0, /* opportunistic: any certificate (DANE may check it later) */
    TLS_VERIFY_CA = 1,   /* chain to a CA in the store, and the host name */
};

struct tls_client_cfg {
    enum tls_verify verify;
    /* TLS_VERIFY_CA: the store. ca_file (a PEM bundle) if not NULL, else
     * ca_dir, else TLS_CA_DIR_DEFAULT. Ignored with TLS_VERIFY_NONE. */
    const char *ca_file;
    const char *ca_dir;
    uint16_t version_min; /* TLS_VERSION_1_2 or _1_3 */
    uint16_t version_max; /* >= version_min */
};

#define TLS_CA_DIR_DEFAULT "/etc/ssl/certs" /* Debian's hashed system store */

struct tls_client_ctx; /* opaque, reference-counted like the server's */

/* Builds a client context. Returns 0 and *out, or TLS_ERR_CERT (the CA
 * store cannot be loaded), TLS_ERR_CONFIG, TLS_ERR_LIB, -ENOMEM. */
RM_MUST_CHECK int tls_client_ctx_new(const struct tls_client_cfg *cfg, struct tls_client_ctx **out);

/* Drops the owner's reference, as tls_server_ctx_free. NULL does nothing. */
void tls_client_ctx_free(struct tls_client_ctx *ctx);

/* ---- Sessions ----------------------------------------------------------- */

struct tls_sess; /* opaque; one per connection, used by one thread */

/* Starts a server session on ctx (takes a reference). rx and tx are the
 * caller's ciphertext buffers, borrowed until tls_sess_free(); tx->cap >=
 * TLS_TX_MIN, and rx->cap should be too: the certificate is chosen by SNI
 * once the first record (the ClientHello) is whole in rx, before wolfSSL
 * sees it, so any mix of RSA and ECDSA entries works under TLS 1.2 as well
 * (a first record rx cannot hold gets the default entry). Returns 0 and
 * *out, or -ENOMEM. Nothing is sent until tls_handshake(). */
RM_MUST_CHECK int tls_server_new(struct tls_server_ctx *ctx, struct rm_buf *rx, struct rm_buf *tx,
                                 struct tls_sess **out);

/* Starts a client session. sni: the name to send in server_name (the MX
 * host name, RFC 7672 8.1) or NULL to send none; with TLS_VERIFY_CA it is
 * also the name the certificate must carry (NULL is then TLS_ERR_CONFIG).
 * Copied. Returns as tls_server_new, or TLS_ERR_CONFIG for a name longer
 * than TLS_NAME_MAX. */
RM_MUST_CHECK int tls_client_new(struct tls_client_ctx *ctx, const char *sni, struct rm_buf *rx,
                                 struct rm_buf *tx, struct tls_sess **out);

/* Frees the session and drops its context reference (maybe the last one).
 * Sends nothing: call tls_close() first for a clean close. NULL: nothing. */
void tls_sess_free(struct tls_sess *s);

/* Advances the handshake: consumes from rx, appends to tx. Returns TLS_OK
 * (done; again TLS_OK if called after), TLS_WANT_READ, TLS_WANT_WRITE, or
 * a fatal error (TLS_ERR_HANDSHAKE, TLS_ERR_VERSION, TLS_ERR_VERIFY,
 * TLS_ERR_NAME) after which only tls_sess_reason() and tls_sess_free() are
 * useful; tx may then hold an alert worth sending. */
RM_MUST_CHECK int tls_handshake(struct tls_sess *s);

/* Decrypts into out[0..cap), cap > 0 (asserted): TLS_OK with *n > 0 bytes, TLS_WANT_READ (*n =
 * 0: rx holds no whole record), TLS_WANT_WRITE (a post-handshake reply needs
 * tx room), TLS_CLOSED (close_notify received; no more data), or fatal
 * (TLS_ERR_PROTO: a bad record; TLS_ERR_STATE before the handshake ended).
 * Bytes of a record that do not fit in cap are kept for the next call. */
RM_MUST_CHECK int tls_read(struct tls_sess *s, uint8_t *out, size_t cap, size_t *n);

/* Encrypts from in[0..len) into tx, as much as fits whole (records of at
 * most TLS_RECORD_PLAIN_MAX): TLS_OK with *n == len, or TLS_WANT_WRITE with
 * *n < len (drain tx, give the rest). Fatal errors as tls_read. Never keeps
 * a pointer to in. */
RM_MUST_CHECK int tls_write(struct tls_sess *s, const uint8_t *in, size_t len, size_t *n);

/* Queues our close_notify in tx (RFC 8446 6.1). TLS_OK, TLS_WANT_WRITE
 * (drain tx, call again), or fatal. We do not wait for the peer's. */
RM_MUST_CHECK int tls_close(struct tls_sess *s);

/* After the handshake: "TLSv1.3" / "TLSv1.2"; wolfSSL's cipher suite name
 * ("TLS13-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"); the SNI name the client
 * sent (server sessions; NULL if none) or was given (client sessions).
 * Static or session-owned strings, valid until tls_sess_free(); "" / NULL
 * before the handshake completed. */
const char *tls_sess_version(const struct tls_sess *s);
const char *tls_sess_cipher(const struct tls_sess *s);
const char *tls_sess_sni(const struct tls_sess *s);
bool tls_sess_done(const struct tls_sess *s); /* handshake complete */

/* Why the last fatal error happened: wolfSSL's text ("peer did not return a
 * certificate", "domain name mismatch", ...). Static string, never NULL;
 * "" if none. */
const char *tls_sess_reason(const struct tls_sess *s);

/* ---- DANE (RFC 7672) ------------------------------------------------------ */

/* One TLSA record (RFC 6698 2.1), as DNS gave it. */
struct tls_tlsa {
    uint8_t usage;       /* 2 DANE-TA, 3 DANE-EE; 0 and 1 are unusable for SMTP (RFC 7672 3.1.3) */
    uint8_t selector;    /* 0 full certificate, 1 SubjectPublicKeyInfo */
    uint8_t mtype;       /* 0 exact, 1 SHA-256, 2 SHA-512 */
    const uint8_t *data; /* borrowed for the call */
    size_t len;
};

/* Checks a client session's peer chain (after TLS_OK from tls_handshake)
 * against the TLSA records (RFC 7672 3.1):
 * - 3 x x (DANE-EE): the leaf certificate or its SPKI matches; no name,
 *   date or chain check (RFC 7672 3.1.1).
 * - 2 x x (DANE-TA): some certificate the peer sent (not the leaf alone)
 *   matches, the chain from it down to the leaf verifies (signatures and
 *   dates), and the leaf names one of names[0..name_count) (SAN DNS, else
 *   CN; "*." wildcards; RFC 7672 3.2.2: the TLSA base domain and the MX
 *   host name). A bare trust-anchor key not sent in the chain is not used.
 * Records with other usages, selectors or matching types, or a data length
 * that does not fit the matching type, are unusable and skipped.
 * Returns 0 (*matched_usage = 2 or 3 if not NULL), TLS_ERR_DANE_UNUSABLE
 * (no usable record: RFC 7672 2.2 says go on as if there were none),
 * TLS_ERR_DANE_NOMATCH, TLS_ERR_STATE (no completed handshake, not a
 * client), -ENOMEM. Never blocks; allocates only briefly. */
RM_MUST_CHECK int tls_dane_verify(struct tls_sess *s, const struct tls_tlsa *recs, size_t count,
                                  const char *const *names, size_t name_count, int *matched_usage);

/* ---- Self-signed certificates -------------------------------------------- */

/* Generates an ECDSA P-256 key and a self-signed certificate for the
 * default config (and tests): subject CN = cn, subjectAltName from san[]:
 * "DNS:name" or "IP:a.b.c.d" / "IP:v6" (<= TLS_SAN_MAX entries), valid from
 * now for `days`, SHA-256 signature. Writes PEM to cert_path and key_path
 * (each through a temporary file renamed over it, mode 0600). Main thread
 * at start-up: it reads the RNG and writes files. Returns 0, TLS_ERR_CONFIG
 * (bad SAN entry or count, cn too long), TLS_ERR_GEN, or -errno from the
 * file system. */
RM_MUST_CHECK int tls_selfsigned_write(const char *cert_path, const char *key_path, const char *cn,
                                       const char *const *san, size_t san_count, int days);

#endif /* TLS_H */
