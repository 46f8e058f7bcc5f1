/* mta/auth.h: SMTP AUTH (RFC 4954): SASL PLAIN and LOGIN decoding, the users
 * file, password verification with a per-worker cache, and `ringmta passwd`.
 *
 * Three parts, three threading rules:
 *
 * 1. struct auth_sasl: the SASL exchange, sans-I/O. It takes the mechanism,
 *    the optional initial response and each client line, and returns the next
 *    334 challenge, the credentials, or the error reply. Caller memory (one
 *    per session slot), one thread, never allocates, logs, blocks or reads a
 *    clock.
 *
 * 2. struct auth_table: the users file, loaded by the main thread (may block,
 *    allocates), then read-only and shared by every worker. A reload loads a
 *    new table; the caller swaps the pointer and frees the old table once no
 *    worker uses it. Each table has a fresh generation and SipHash key, so a
 *    reload invalidates every worker's cache.
 *
 * 3. struct auth_cache: per-worker verification state (crypt scratch and a
 *    bounded cache of successful verifications). Only its worker touches it.
 *    auth_verify() runs crypt_rn(), which costs milliseconds (see below) unless
 *    the cache hits, and which allocates inside libxcrypt for yescrypt.
 *
 * How the SMTP session drives the exchange (after it checked that AUTH is
 * allowed: TLS, not yet authenticated, no transaction; those replies are the
 * session's):
 *
 *   "AUTH mech [ir]"  r = auth_sasl_start(&a, mech, ir ? &ir : NULL, &out);
 *   loop:
 *     r == AUTH_SASL_CHALLENGE  send "334 " out.challenge CRLF; read one line
 *                               (CRLF stripped; a line longer than the
 *                               session's buffer is passed with its true
 *                               length, see auth_sasl_feed);
 *                               r = auth_sasl_feed(&a, line, &out); loop.
 *     r == AUTH_SASL_FAIL       send out.reply; the exchange is over.
 *     r == AUTH_SASL_DONE       rc = auth_verify(table, cache, out.user,
 *                               out.password); send *auth_verify_reply(rc);
 *                               on AUTH_OK the session is authenticated as
 *                               out.user (copy it: it is borrowed).
 *
 * Commands pipelined after AUTH are a client error (RFC 4954 4): the lines
 * after "AUTH" are responses until the exchange ends.
 */
#ifndef AUTH_H
#define AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "smtp.h"

/* ---- limits ---------------------------------------------------------------- */

#define AUTH_USER_MAX     255u /* octets, authcid and authzid; users file names */
#define AUTH_PASSWORD_MAX 511u /* octets; libxcrypt refuses >= CRYPT_MAX_PASSPHRASE_SIZE */
/* Largest decoded SASL message: PLAIN authzid NUL authcid NUL passwd. */
#define AUTH_DECODED_MAX (AUTH_USER_MAX + 1u + AUTH_USER_MAX + 1u + AUTH_PASSWORD_MAX)
/* Longest base64 response (or initial response) accepted, octets without CRLF.
 * RFC 4954 4 lets the AUTH line be 12288 octets; a response longer than this
 * cannot hold credentials within the limits above, so it gets 500 5.5.6
 * (RFC 4954 6) without being decoded. 1364 octets. */
#define AUTH_RESPONSE_MAX          1364u   /* 4 * ceil(AUTH_DECODED_MAX / 3) */
#define AUTH_FILE_LINE_MAX         1024u   /* octets incl. LF in the users file */
#define AUTH_USERS_MAX             100000u /* entries in one users file */
#define AUTH_CACHE_ENTRIES_DEFAULT 1024u   /* per worker; a miss costs one crypt */
#define AUTH_CACHE_ENTRIES_MAX     (1u << 20)
#define AUTH_PASSWD_LINE_MAX       (AUTH_USER_MAX + 1u + 384u + 2u) /* user:hash LF NUL */

/* ---- SASL exchange (sans-I/O) ------------------------------------------------ */

enum auth_sasl_rc {
    AUTH_SASL_CHALLENGE = 1, /* send "334 " out->challenge, feed the next line */
    AUTH_SASL_DONE = 2,      /* out->user, out->password hold the credentials */
    AUTH_SASL_FAIL = 3,      /* send out->reply; the exchange is over */
};

/* Result of one step. The spans are borrowed from the struct auth_sasl and
 * valid until its next auth_sasl_start() or auth_sasl_feed(). */
struct auth_sasl_out {
    const char *challenge;   /* CHALLENGE: base64 text after "334 " (static) */
    struct rm_span user;     /* DONE: authcid, 1..AUTH_USER_MAX octets, no NUL */
    struct rm_span password; /* DONE: 1..AUTH_PASSWORD_MAX octets, no NUL */
    struct smtp_reply reply; /* FAIL: the reply to send (static text) */
};

/* One exchange's state; caller memory (the session slot), no init needed
 * before auth_sasl_start(). Fields are private. */
struct auth_sasl {
    uint8_t state;                 /* enum auth_sasl_state in auth.c */
    uint16_t user_len;             /* LOGIN: octets of the user at buf[0] */
    uint8_t buf[AUTH_DECODED_MAX]; /* decoded credentials */
};

/* Starts an exchange for mech (the AUTH argument, ASCII case-insensitive) with
 * the initial response ir, or ir == NULL when the AUTH line had none. An ir of
 * "=" is the empty initial response (RFC 4954 4).
 *   PLAIN (RFC 4616) with ir: DONE or FAIL; without: CHALLENGE "" (an empty
 *     "334 ").
 *   LOGIN with ir (the user name): CHALLENGE "UGFzc3dvcmQ6" ("Password:");
 *     without: CHALLENGE "VXNlcm5hbWU6" ("Username:").
 * Replies on FAIL:
 *   504 5.5.4  mechanism not PLAIN or LOGIN (RFC 4954 4)
 *   501 5.5.2  not strict base64 (alphabet, padding, zero pad bits, length a
 *              multiple of 4; no whitespace), or a malformed message: PLAIN
 *              without exactly two NULs, an empty authcid or password (RFC
 *              4616 2: 1*SAFE), a NUL in a LOGIN user or password
 *   500 5.5.6  ir or response longer than AUTH_RESPONSE_MAX (RFC 4954 6)
 *   535 5.7.8  authzid not empty and not equal to authcid (we do not let one
 *              user act as another), or an authcid or password over
 *              AUTH_USER_MAX / AUTH_PASSWORD_MAX (no such credentials exist)
 * "*" is not a cancel in the initial response (only after a 334): 501 5.5.2. */
enum auth_sasl_rc auth_sasl_start(struct auth_sasl *a, struct rm_span mech,
                                  const struct rm_span *ir, struct auth_sasl_out *out);

/* Feeds the client's response line (without CRLF) after a CHALLENGE. Must only
 * be called after a CHALLENGE. "*" cancels: 501 5.7.0 (RFC 4954 4). A line
 * with line.len > AUTH_RESPONSE_MAX gets 500 5.5.6 and line.p is not read, so
 * a session that dropped an over-long line may pass its length with any p.
 * Other replies as for auth_sasl_start(). */
enum auth_sasl_rc auth_sasl_feed(struct auth_sasl *a, struct rm_span line,
                                 struct auth_sasl_out *out);

/* ---- users file -------------------------------------------------------------- */

/* The users file: one "user:hash" per line; '#' as the first non-blank octet
 * starts a comment line; blank lines (spaces, tabs) are skipped; a CR before
 * the LF is ignored. user: 1..AUTH_USER_MAX octets, no ':', no control octets,
 * no spaces. hash: crypt(3) output of SHA-512-crypt ("$6$"), yescrypt
 * ("$y$"), gost-yescrypt ("$gy$"), scrypt ("$7$") or bcrypt ("$2b$"), which
 * libxcrypt's crypt_checksalt() must accept. A user named twice is an error
 * (which line would win is a guess we refuse to make). */
struct auth_table;

enum auth_err {
    AUTH_OK = 0,
    AUTH_ERR_USER = -1001,     /* auth_verify: no such user */
    AUTH_ERR_PASSWORD = -1002, /* auth_verify: wrong password */
    AUTH_ERR_SYNTAX = -1003,   /* load: a bad line; err says file:line */
    AUTH_ERR_DUP = -1004,      /* load: a user named twice */
    AUTH_ERR_LIMIT = -1005,    /* load: a line or the file over a limit */
    AUTH_ERR_CRYPT = -1006,    /* crypt_rn/crypt_gensalt_rn failed */
};

/* Loads path into a new table (*out; free with auth_table_free()). Main
 * thread: reads the file, allocates, calls getrandom for the table's SipHash
 * key. Returns 0, -errno (open/read/getrandom/ENOMEM), AUTH_ERR_SYNTAX,
 * AUTH_ERR_DUP or AUTH_ERR_LIMIT; on error *out is NULL and err (NUL
 * terminated, truncated to err_cap) says "path:line: what" or "path: what".
 * An empty file is a valid, empty table. */
RM_MUST_CHECK int auth_table_load(const char *path, struct auth_table **out, char *err,
                                  size_t err_cap);

/* Frees t; NULL does nothing. No worker may use t any more. */
void auth_table_free(struct auth_table *t);

/* Entries in t. */
size_t auth_table_count(const struct auth_table *t);

/* True when t has user. Any thread; never blocks. */
bool auth_table_has(const struct auth_table *t, struct rm_span user);

/* ---- verification -------------------------------------------------------------- */

/* Per-worker verification state. */
struct auth_cache;

/* Allocates a cache of `entries` (0..AUTH_CACHE_ENTRIES_MAX; 0 disables
 * caching but keeps the crypt scratch, about 32 KiB). Returns NULL on ENOMEM
 * or a bad count. Start-up only. */
struct auth_cache *auth_cache_new(uint32_t entries);
void auth_cache_free(struct auth_cache *c); /* NULL does nothing */

/* Verifies user/password against t with crypt_rn(), thread-safe as long as c
 * is this thread's. Returns AUTH_OK, AUTH_ERR_USER, AUTH_ERR_PASSWORD or
 * AUTH_ERR_CRYPT (e.g. ENOMEM in yescrypt). An unknown user still costs one
 * crypt (against another entry's setting) so timing does not tell users apart.
 *
 * The cache: on success it stores, for the user, SipHash-2-4 under t's random
 * 128-bit key of user NUL password. A later call for that user whose password
 * hashes to the stored tag (compared in constant time) succeeds without
 * crypt; any other password runs the full crypt, so a wrong password is never
 * accepted from the cache. Failures are never stored. Entries of an older
 * table (a reload) never match. Direct-mapped, so a bounded number of users
 * stay fast; others just cost a crypt.
 *
 * Measured (AMD EPYC, RelWithDebInfo, one thread): $6$ with 5000 rounds
 * 1.24 ms per crypt; $y$ at libxcrypt's default cost ("j9T") 17.3 ms and a
 * 16 MiB allocation inside libxcrypt; a cache hit about 50 ns. A crypt stalls
 * every other session of the worker for that long, and failures (which are
 * never cached) always pay it: prefer $6$ for now. XXX: moving crypt off the
 * worker (a verifier thread answering via MSG_RING) and per-IP failure limits
 * are for later. */
RM_MUST_CHECK int auth_verify(const struct auth_table *t, struct auth_cache *c, struct rm_span user,
                              struct rm_span password);

/* The reply for auth_verify()'s result: 235 2.7.0 on AUTH_OK, 535 5.7.8 on
 * AUTH_ERR_USER/AUTH_ERR_PASSWORD (the same, RFC 4954 6), 454 4.7.0 otherwise.
 * Static. */
const struct smtp_reply *auth_verify_reply(int rc);

/* Counters of c, for tests and metrics (owner thread only). */
struct auth_cache_stats {
    uint64_t hits;   /* verifications answered by the cache */
    uint64_t crypts; /* crypt_rn calls */
};
struct auth_cache_stats auth_cache_stats(const struct auth_cache *c);

/* ---- ringmta passwd ------------------------------------------------------------ */

/* Writes "user:hash\n" (NUL terminated) into out[0..cap) for password with a
 * fresh salt: prefix "$6$" (SHA-512-crypt, 5000 rounds) or "$y$" (yescrypt,
 * libxcrypt's default cost); salt entropy from getrandom. The user must be
 * valid for the users file and the password 1..AUTH_PASSWORD_MAX octets
 * without NUL. Blocks (getrandom) and runs one crypt: main thread or tool.
 * Returns the line's length (without NUL), or AUTH_ERR_SYNTAX (bad user,
 * password or prefix), AUTH_ERR_LIMIT (cap too small; AUTH_PASSWD_LINE_MAX is
 * enough), AUTH_ERR_CRYPT, -errno. */
RM_MUST_CHECK int auth_passwd_line(struct rm_span user, struct rm_span password, const char *prefix,
                                   char *out, size_t cap);

/* Names an auth_err or -errno; static. */
const char *auth_strerror(int err);

/* SipHash-2-4 (Aumasson, Bernstein 2012) with a 128-bit key, 64-bit output;
 * exposed for its test vectors. Any thread. */
uint64_t auth_siphash24(const uint8_t key[16], const void *in, size_t len);

#endif
