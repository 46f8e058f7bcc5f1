/* mta/smtpd.h: the SMTP server session, sans-I/O (RFC 5321).
 *
 * A session turns received bytes into replies and events. It never touches a
 * socket, io_uring, a clock (the time is passed in), never logs and never
 * allocates: all memory comes from the caller (struct smtpd_mem). One session
 * belongs to one worker's connection slot and is used by that thread only.
 *
 * The caller's loop:
 *   smtpd_init()                  queues the 220 greeting
 *   on received bytes:            n = smtpd_feed(s, rx, len, now, &ev); consume n from rx
 *     ev == SMTPD_EV_STORE        a message is complete: smtpd_message() gives id,
 *                                 envelope and body; store it; then smtpd_stored()
 *                                 with the outcome; then feed the rest of rx again.
 *     ev == SMTPD_EV_STARTTLS     the 220 to STARTTLS is in tx and feed consumed
 *                                 exactly through the STARTTLS line: send tx (in
 *                                 clear), DISCARD every byte left in rx (bytes a
 *                                 client pipelined after STARTTLS are the
 *                                 command-injection class, RFC 3207 5; CVE-2011-0411),
 *                                 do the TLS handshake, then smtpd_tls_started().
 *     ev == SMTPD_EV_AUTH         an AUTH exchange produced credentials:
 *                                 smtpd_auth_credentials() gives them; verify
 *                                 (auth_verify); then smtpd_auth_result(); then
 *                                 feed the rest of rx again.
 *     ev == SMTPD_EV_CLOSE        send what is in tx, then close the connection.
 *   after every send completion:  feed again if rx holds bytes (feeding stops
 *                                 early while tx is nearly full).
 *
 * Replies are appended to mem->tx; the caller sends them and consumes them
 * from tx. Feeding stops (returns early, ev NONE) when tx has less than
 * SMTPD_TX_RESERVE bytes free, so pipelined input cannot overflow tx.
 *
 * Input rules:
 * - Command lines end with CRLF; a bare LF also ends a command line (Postfix's
 *   "normalize"), which is harmless outside DATA. A line with NUL, or longer
 *   than cfg->command_line_max, gets one 500 5.5.2 and is skipped to its LF.
 * - In command mode a line that is not complete is left unconsumed, unless
 *   len >= cfg->command_line_max (the caller's buffer is full), in which case it
 *   is consumed as an over-long line. So rx must hold >= command_line_max bytes.
 * - In DATA and BDAT everything up to the end of the message is consumed.
 *   The end of DATA is <CRLF>.<CRLF> and nothing else. A bare CR or bare LF in
 *   the content (the "SMTP smuggling" class, e.g. <LF>.<CR><LF>) never ends the
 *   message and never starts a command: the message reads on to the real end
 *   and is refused with 550 5.5.2. Stored messages therefore hold CRLF line
 *   ends only, for DATA and BDAT alike.
 * - After "AUTH" with a 334 challenge, the next line is the SASL response (not
 *   a command), decoded by auth.h; "*" cancels (501 5.7.0).
 *
 * TLS and AUTH (RFC 3207, RFC 4954). With cfg->tls, cfg->auth and
 * cfg->auth_ok_without_tls at zero, STARTTLS and AUTH get 502 5.5.1 and nothing
 * else changes.
 * - EHLO offers STARTTLS when cfg->tls is SMTPD_TLS_STARTTLS and TLS is not
 *   active; "AUTH PLAIN LOGIN" when cfg->auth is not NONE and TLS is active (or
 *   cfg->auth_ok_without_tls).
 * - STARTTLS: 503 5.5.1 when TLS is already active, 502 5.5.1 when not offered,
 *   501 5.5.4 with an argument, 503 5.5.1 in a transaction; else 220 2.0.0 and
 *   SMTPD_EV_STARTTLS.
 * - AUTH: 502 5.5.1 when cfg->auth is NONE; 503 5.5.1 before EHLO, in a
 *   transaction or when already authenticated; 538 5.7.11 without TLS (unless
 *   auth_ok_without_tls); 501 5.5.4 bad syntax; then auth_sasl_start's replies
 *   (504 5.5.4 unknown mechanism, 334, 501, 500 5.5.6, 535 5.7.8).
 * - The credentials' outcome: 235 2.7.0 or 535 5.7.8 (an error). Once
 *   authenticated, relaying is permitted (as relay_ok) and each message's
 *   env.auth_user names the user. The password never outlives
 *   smtpd_auth_result() in the session's memory.
 * - MAIL on an SMTPD_AUTH_REQUIRED listener before AUTH: 530 5.7.0.
 * - Received: "with ESMTPS" under TLS, "ESMTPA" authenticated, "ESMTPSA" both
 *   (RFC 3848); UTF8SMTPS/UTF8SMTPA/UTF8SMTPSA alike (RFC 6531).
 */
#ifndef SMTPD_H
#define SMTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../common/rm_pool.h"
#include "../queue/q.h"
#include "auth.h"
#include "smtp.h"

#define SMTPD_COMMAND_LINE_MAX_DEFAULT 2048u /* octets incl. CRLF; Postfix line_length_limit */
#define SMTPD_COMMAND_LINE_MIN         512u  /* RFC 5321 4.5.3.1.4 */
#define SMTPD_COMMAND_LINE_MAX_MAX     8192u /* must fit the worker's rx buffer */
#define SMTPD_TEXT_LINE_MAX_DEFAULT    998u  /* octets excl. CRLF, RFC 5322 2.1.1 */
#define SMTPD_TEXT_LINE_MAX_MAX        65536u
#define SMTPD_RCPT_MAX_DEFAULT         1000u /* RFC 5321 4.5.3.1.8 asks for at least 100 */
#define SMTPD_RCPT_MAX_MAX             50000u
#define SMTPD_MESSAGE_SIZE_DEFAULT     (50ull << 20) /* octets stored, Received: included */
#define SMTPD_MESSAGE_SIZE_MAX         (1ull << 30)
#define SMTPD_ERRORS_MAX_DEFAULT       20u /* error replies before 421 4.7.0; Postfix hard limit */
#define SMTPD_TX_RESERVE               1024u /* tx space needed to take one more command */
#define SMTPD_ARENA_BYTES(rcpt_max)    (8192u + (size_t)(rcpt_max)*768u) /* envelope strings */

/* Events returned by smtpd_feed. */
enum smtpd_ev {
    SMTPD_EV_NONE = 0,     /* need more input (or tx space) */
    SMTPD_EV_STORE = 1,    /* a message is complete: store it, then smtpd_stored() */
    SMTPD_EV_CLOSE = 2,    /* flush tx, then close: QUIT, 421, too many errors */
    SMTPD_EV_STARTTLS = 3, /* send tx, discard the rest of rx, handshake, smtpd_tls_started() */
    SMTPD_EV_AUTH = 4,     /* smtpd_auth_credentials(), verify, smtpd_auth_result() */
};

/* TLS on a listener; values as enum cfg_tls (mta/cfg.h). */
enum smtpd_tls {
    SMTPD_TLS_NONE = 0,     /* clear text only: STARTTLS gets 502 */
    SMTPD_TLS_STARTTLS = 1, /* offered after EHLO (RFC 3207) */
    SMTPD_TLS_IMPLICIT = 2, /* TLS from the first byte: the caller sets peer->tls_active */
};

/* AUTH on a listener; values as enum cfg_auth (mta/cfg.h). */
enum smtpd_auth {
    SMTPD_AUTH_NONE = 0,     /* AUTH gets 502 */
    SMTPD_AUTH_OPTIONAL = 1, /* offered under TLS; relay needs relay_ok or AUTH */
    SMTPD_AUTH_REQUIRED = 2, /* MAIL needs AUTH first: 530 5.7.0 */
};

/* Per listener, read-only, outlives every session on it. */
struct smtpd_cfg {
    const char *hostname;      /* greeting, EHLO reply, Received: by */
    const char *listener;      /* [listen NAME], recorded in the envelope */
    uint64_t message_size_max; /* octets; SIZE advertises it; 552 5.3.4 beyond */
    uint32_t rcpt_max;         /* per transaction; 452 4.5.3 beyond */
    uint32_t command_line_max; /* octets incl. CRLF; 500 5.5.2 beyond */
    uint32_t text_line_max;    /* octets excl. CRLF in the content; 554 5.6.0 beyond */
    uint32_t errors_max;       /* error replies (4xx/5xx to commands) before 421 4.7.0 */
    enum smtpd_tls tls;        /* NONE by default */
    enum smtpd_auth auth;      /* NONE by default */
    bool auth_ok_without_tls;  /* offer and take AUTH in clear text too (tests, loopback) */
};

/* Per session memory, owned by the caller's connection slot; must outlive
 * the session. */
struct smtpd_mem {
    struct rm_buf *tx;     /* replies are appended here; cap >= 2 * SMTPD_TX_RESERVE */
    struct rm_pool *pool;  /* the worker's body chunk pool */
    uint8_t *arena;        /* envelope strings; reset per transaction */
    size_t arena_cap;      /* >= SMTPD_ARENA_BYTES(cfg->rcpt_max) */
    struct q_rcpt *rcpts;  /* recipient records */
    uint32_t rcpt_cap;     /* >= cfg->rcpt_max */
    struct q_idgen *idgen; /* the worker's queue id generator */
};

struct smtpd_peer {
    const char *addr; /* client IP as text, NUL-terminated, outlives the session */
    bool relay_ok;    /* may relay: client in trusted_networks (or authenticated, see AUTH) */
    bool tls_active;  /* TLS from the start (implicit TLS); smtpd_tls_started() sets it too */
};

/* Counters of one session, for the caller's one log line at close. */
struct smtpd_stats {
    uint32_t messages;            /* messages stored (250 after DATA/BDAT) */
    uint32_t errors;              /* 4xx/5xx replies sent */
    struct smtp_reply last_error; /* the last of them (code 0 if none) */
};

/* The session. Embed it in the caller's slot; its fields are private to
 * smtpd.c: use the functions. */
struct smtpd {
    const struct smtpd_cfg *cfg;
    struct smtpd_mem mem;
    struct smtpd_peer peer;
    struct smtpd_stats stats;
    /* --- private --- */
    int state;                  /* enum smtpd_state in smtpd.c; changed only by smtpd_enter() */
    int discard_ret;            /* state to go back to once a refused BDAT chunk is read */
    uint32_t flags;             /* SMTPD_F_* in smtpd.c */
    int scan;                   /* enum smtpd_scan in smtpd.c: where the content scanner is */
    int content_err;            /* enum smtpd_cerr in smtpd.c: sticky, answered at the end */
    size_t arena_used;          /* octets of mem.arena in use, <= mem.arena_cap */
    uint64_t now_ms;            /* unix ms of the call in progress */
    uint64_t line_len;          /* octets of the current content line, unstuffed, w/o CRLF */
    uint64_t bdat_left;         /* octets of the current BDAT chunk still to read */
    uint64_t bdat_size;         /* octets of the current BDAT chunk, for its 250 */
    struct rm_chunk *body_head; /* owned: from mem.pool; lent out from STORE to stored() */
    struct rm_chunk *body_tail; /* last chunk of body_head's chain, or NULL */
    uint64_t body_len;          /* octets in the chain, Received: included */
    struct q_id id;             /* of the current transaction, made at DATA/first BDAT */
    struct q_env env;           /* being built; strings in mem.arena, helo in helo_buf */
    size_t helo_len;            /* octets in helo_buf; 0 before EHLO/HELO */
    uint8_t helo_buf[SMTP_DOMAIN_MAX];    /* EHLO/HELO argument, kept across transactions */
    struct rm_span cred_user;             /* borrowed from sasl: from EV_AUTH to auth_result */
    struct rm_span cred_password;         /* borrowed from sasl: from EV_AUTH to auth_result */
    size_t auth_user_len;                 /* octets in auth_user_buf; 0 unless authenticated */
    uint8_t auth_user_buf[AUTH_USER_MAX]; /* the authenticated user, until TLS starts */
    struct auth_sasl sasl;                /* the exchange; wiped when it ends (holds a password) */
};

/* Starts a session: queues "220 hostname ESMTP ringmta". */
void smtpd_init(struct smtpd *s, const struct smtpd_cfg *cfg, const struct smtpd_mem *mem,
                const struct smtpd_peer *peer, uint64_t now_ms);

/* Consumes in[0..len); returns the bytes consumed. Sets *ev. Never consumes
 * past the end of a message (ev STORE) and nothing after CLOSE. */
size_t smtpd_feed(struct smtpd *s, const uint8_t *in, size_t len, uint64_t now_ms,
                  enum smtpd_ev *ev);

/* After SMTPD_EV_STORE and until smtpd_stored(): the message to store.
 * All three are borrowed from the session; the envelope's next_attempt_ms is
 * its arrival time (deliver at once). */
void smtpd_message(const struct smtpd *s, struct q_id *id, const struct q_env **env,
                   const struct rm_chunk **body);

/* The store outcome (a q_req status): 0 queues "250 2.0.0 Ok: queued as <id>",
 * Q_ERR_MAP_FULL "452 4.3.1 Insufficient system storage", any other error
 * (Q_ERR_IO, a failed submission) "451 4.3.0 Queue write error". This is the
 * one place where queue errors become replies. Returns the body chunks to the
 * pool and resets the transaction (the session keeps its EHLO). After
 * smtpd_close_with() during a store it queues nothing, but must still be called. */
void smtpd_stored(struct smtpd *s, int status, uint64_t now_ms);

/* After SMTPD_EV_STARTTLS, once the TLS handshake is done: resets the session
 * as after a fresh connection but without a greeting (RFC 3207 4.2: the EHLO,
 * any transaction and any authentication are forgotten; the client must send
 * EHLO again) and marks TLS active. The caller must have discarded every rx
 * byte after the STARTTLS line. On a closed session (drained meanwhile) it
 * does nothing. */
void smtpd_tls_started(struct smtpd *s, uint64_t now_ms);

/* After SMTPD_EV_AUTH and until smtpd_auth_result(): the credentials, user
 * and password (1..AUTH_USER_MAX / 1..AUTH_PASSWORD_MAX octets, no NUL, not
 * NUL-terminated). Borrowed from the session; never log the password. */
void smtpd_auth_credentials(const struct smtpd *s, struct rm_span *user, struct rm_span *password);

/* The verification outcome: ok queues "235 2.7.0 Authentication successful"
 * and the session is authenticated as the user (kept across transactions,
 * recorded as env.auth_user, relaying permitted); not ok queues "535 5.7.8
 * Authentication credentials invalid" (an error, counted for errors_max).
 * Either way the credentials are wiped from the session's memory. After
 * smtpd_close_with() during the exchange it queues nothing, but still wipes.
 * Must be called once after each SMTPD_EV_AUTH. */
void smtpd_auth_result(struct smtpd *s, bool ok, uint64_t now_ms);

/* True once AUTH succeeded (until TLS starts). */
bool smtpd_authenticated(const struct smtpd *s);

/* Queues r (a 421) and closes: feed consumes nothing more and returns
 * SMTPD_EV_CLOSE. Used for the idle timeout (421 4.4.2), refused connections
 * (421 4.7.0) and the end of the shutdown grace period (421 4.3.2). */
void smtpd_close_with(struct smtpd *s, const struct smtp_reply *r);

/* Graceful shutdown: closes with 421 4.3.2 at once when no transaction is in
 * progress, else right after the current one ends. Returns true when the
 * session is already closing. */
bool smtpd_drain(struct smtpd *s);

/* True once the session takes no more input (QUIT, 421): send tx, then close. */
bool smtpd_closing(const struct smtpd *s);

/* True while a store is outstanding (between EV_STORE and smtpd_stored). */
bool smtpd_storing(const struct smtpd *s);

/* Ends the session without a reply (the peer is gone): returns any body
 * chunks to the pool. Not while storing. The session is unusable after. */
void smtpd_fini(struct smtpd *s);

#endif /* SMTPD_H */
