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
 */
#ifndef SMTPD_H
#define SMTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../common/rm_pool.h"
#include "../queue/q.h"
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
    SMTPD_EV_NONE = 0,  /* need more input (or tx space) */
    SMTPD_EV_STORE = 1, /* a message is complete: store it, then smtpd_stored() */
    SMTPD_EV_CLOSE = 2, /* flush tx, then close: QUIT, 421, too many errors */
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
    bool relay_ok;    /* may relay: client in trusted_networks (later: or authenticated) */
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
    uint8_t helo_buf[SMTP_DOMAIN_MAX]; /* EHLO/HELO argument, kept across transactions */
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
