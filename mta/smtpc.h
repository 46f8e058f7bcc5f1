/* mta/smtpc.h: the outbound SMTP client session, sans-I/O (RFC 5321).
 *
 * One session per outbound connection: it turns the server's replies into
 * events and per-recipient results, and the messages to deliver into the
 * bytes to send. It never touches a socket, io_uring or a clock (the time
 * is passed in), never logs and never allocates: all memory is the
 * caller's (struct smtpc_mem). A session belongs to one worker's connection
 * slot and is used by that thread only.
 *
 * The caller's loop (an io_uring worker):
 *   connect() completes           smtpc_init(); keep a recv posted from now on.
 *   on received bytes:            n = smtpc_feed(s, rx, len, now, &ev); consume
 *                                 n from rx; act on ev; feed again while n > 0.
 *     SMTPC_EV_READY              greeting and EHLO (or HELO) done: smtpc_caps()
 *                                 says what the server offers. Give a message
 *                                 with smtpc_message(), or end with smtpc_quit().
 *     SMTPC_EV_DONE               the transaction ended: smtpc_result(s, i) per
 *                                 recipient, readable until the next
 *                                 smtpc_message(). Then, if smtpc_closing():
 *                                 send the output and close; else the session
 *                                 is ready for the next message to the same
 *                                 destination (RSET goes first, by itself).
 *     SMTPC_EV_FAILED             connection-level failure (greeting, EHLO/HELO,
 *                                 or lost/timed out before READY):
 *                                 smtpc_failure() says why; no recipient was
 *                                 tried. Send the output (maybe a QUIT), close,
 *                                 try the next MX host.
 *     SMTPC_EV_CLOSE              the session is over with nothing to report
 *                                 (221 to our QUIT, a 421 or anything else while
 *                                 idle): send the output, close.
 *   whenever smtpc_output() is not empty and no send is in flight:
 *                                 k = smtpc_output(s, iov, max); sendmsg() the
 *                                 k spans; on its completion smtpc_sent(s, res,
 *                                 now); then feed again if rx holds bytes (the
 *                                 session reads no reply while the message body
 *                                 is still being sent: see smtpc_feed).
 *   recv returns 0 or an error, or a send fails:
 *                                 ev = smtpc_lost(s, now): DONE (unresolved
 *                                 recipients TEMP 4.4.2), FAILED or CLOSE.
 *   a timer at smtpc_deadline():  ev = smtpc_timeout(s, now), the same way.
 *
 * Output: smtpc_output() describes the bytes to send as spans, in order:
 * first commands (from mem->tx), then, during DATA, the message body as
 * slices of the caller's chunk chain with the dot-stuffing dots and the
 * final "." between them as 1-3 octet static spans. The body is never copied
 * (it may be 1 GiB): io_uring can send it with sendmsg, or SEND_ZC. smtpc
 * appends to tx and consumes from it in smtpc_sent(); the caller never
 * touches tx. smtpc only ever appends after tx->tail (never compacts), as a
 * send may be in flight over tx->data + head; a full tx is back-pressure:
 * the rest of a pipelined burst goes out after smtpc_sent() drains it.
 *
 * Input rules:
 * - A reply line ends with CRLF (a bare LF is taken too, as Postfix does).
 *   A line that is not complete is left unconsumed unless len >=
 *   SMTPC_REPLY_LINE_MAX, so rx must hold at least SMTPC_REPLY_LINE_MAX.
 * - Malformed replies (a code that is not 2xx-5xx digits, a separator other
 *   than SP or "-", different codes in one multi-line reply, a line longer
 *   than SMTPC_REPLY_LINE_MAX, more than SMTPC_REPLY_LINES_MAX lines, a reply
 *   nobody asked for during a transaction) end the session: unresolved
 *   recipients get TEMP 4.5.0 with a text saying what was wrong.
 * - A 421 to anything ends the session (RFC 5321 3.8): unresolved recipients
 *   get TEMP with the 421's text.
 *
 * Protocol (the reasons are in smtpc.c):
 * - PIPELINING (RFC 2920): [RSET] MAIL, every RCPT and DATA go in one burst
 *   (as much of it as tx holds at a time), then the replies are read in
 *   order; without it, lock-step. DATA is not sent when every RCPT reply is
 *   in and none accepted; a 354 after all were refused gets a lone "."
 *   (RFC 2920 3.1). CHUNKING is recorded but BDAT is not used: DATA always.
 * - SMTPUTF8 needed (Q_ENV_SMTPUTF8, or a non-ASCII sender or recipient) but
 *   not offered: nothing is sent, every recipient gets PERM 5.6.7 (its
 *   address or the sender's is non-ASCII) or 5.6.9 (only the content needs
 *   it). SIZE offered with a limit below env->size: PERM 5.3.4 for all.
 * - MAIL gets SIZE= (SIZE offered), BODY=8BITMIME (8-bit message, 8BITMIME
 *   offered; an 8-bit message to a server without 8BITMIME is sent anyway,
 *   without the parameter and unconverted, as Postfix does with mail not
 *   declared 8BITMIME), SMTPUTF8 (needed and offered),
 *   RET= and ENVID= (DSN offered). RCPT gets NOTIFY= and ORCPT= (DSN).
 * - Outcomes: 2xx OK, 4xx TEMP, 5xx PERM; a MAIL refusal applies to every
 *   recipient, DATA and end-of-data replies to the accepted ones, a RCPT
 *   reply to its recipient. A reply of a class that makes no sense for its
 *   command (3xx to RCPT) is TEMP. The enhanced status comes from the reply
 *   when the server offered ENHANCEDSTATUSCODES and the reply carries one of
 *   the outcome's class; otherwise it is x.0.0 of the outcome's class.
 *
 * STARTTLS (RFC 3207) is recorded in the capabilities, not done. The hook
 * for the TLS issue: at SMTPC_EV_READY the caller sees SMTPC_CAP_STARTTLS
 * before any mail is sent; a future smtpc_starttls() will queue STARTTLS
 * from READY and report its 220 as an event, and smtpc_tls_up() will send
 * EHLO again and forget the capabilities learnt in clear (RFC 3207 4.2).
 */
#ifndef SMTPC_H
#define SMTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../common/rm_pool.h"
#include "../queue/q.h"
#include "smtp.h"

/* Limits, each with its reason. */
#define SMTPC_REPLY_LINE_MAX  SMTP_REPLY_LINE_MAX /* 512 octets incl. CRLF, RFC 5321 4.5.3.1.5 */
#define SMTPC_REPLY_LINES_MAX 64u  /* lines in one reply; real EHLO replies have < 20 */
#define SMTPC_TEXT_MAX        512u /* octets of reply text kept per result; the rest is cut */
/* Recipients per transaction: servers must take 100 (RFC 5321 4.5.3.1.8)
 * and 452 the rest, which come back TEMP; the caller splits bigger groups. */
#define SMTPC_RCPT_MAX 1000u
#define SMTPC_CMD_MAX  1024u /* longest command written (MAIL with every parameter) */
#define SMTPC_TX_MIN   ((size_t)2 * SMTPC_CMD_MAX) /* mem.tx->cap: any command fits once drained */
/* mem.arena: one reply text per result-bearing reply (each RCPT, and MAIL,
 * DATA, end of data, RSET, a local cause) plus the connection failure. */
#define SMTPC_ARENA_BYTES(rcpt_cap) (((size_t)(rcpt_cap) + 5u) * SMTPC_TEXT_MAX)

/* Timeouts, RFC 5321 4.5.3.2 where it gives one; each may be set from 1 ms
 * to SMTPC_TIMEOUT_MS_MAX (checked at config load, asserted here). */
#define SMTPC_GREETING_TIMEOUT_MS_DEFAULT 300000u  /* 5 min, 4.5.3.2.1 initial 220 */
#define SMTPC_HELO_TIMEOUT_MS_DEFAULT     300000u  /* 5 min: none given; Postfix's */
#define SMTPC_MAIL_TIMEOUT_MS_DEFAULT     300000u  /* 5 min, 4.5.3.2.2 MAIL */
#define SMTPC_RCPT_TIMEOUT_MS_DEFAULT     300000u  /* 5 min, 4.5.3.2.3 RCPT */
#define SMTPC_DATA_TIMEOUT_MS_DEFAULT     120000u  /* 2 min, 4.5.3.2.4 DATA initiation */
#define SMTPC_BLOCK_TIMEOUT_MS_DEFAULT    180000u  /* 3 min, 4.5.3.2.5 data block */
#define SMTPC_DOT_TIMEOUT_MS_DEFAULT      600000u  /* 10 min, 4.5.3.2.6 DATA termination */
#define SMTPC_RSET_TIMEOUT_MS_DEFAULT     20000u   /* 20 s: none given; Postfix's */
#define SMTPC_QUIT_TIMEOUT_MS_DEFAULT     10000u   /* 10 s: the 221 is a courtesy */
#define SMTPC_TIMEOUT_MS_MAX              3600000u /* 1 h */

/* Per destination (or per worker), read-only, outlives every session on it. */
struct smtpc_cfg {
    const char *helo_name;        /* EHLO/HELO argument, NUL-terminated, 1..255 octets */
    uint32_t greeting_timeout_ms; /* waiting for the 220 */
    uint32_t helo_timeout_ms;     /* for the EHLO or HELO reply */
    uint32_t mail_timeout_ms;     /* for the MAIL reply */
    uint32_t rcpt_timeout_ms;     /* for each RCPT reply */
    uint32_t data_timeout_ms;     /* for the 354 */
    uint32_t block_timeout_ms;    /* between two sends' progress while sending the body */
    uint32_t dot_timeout_ms;      /* for the reply to the final "." */
    uint32_t rset_timeout_ms;     /* for the RSET reply */
    uint32_t quit_timeout_ms;     /* for the 221 after our QUIT */
};

/* Fills every timeout with its _DEFAULT and sets helo_name (borrowed). */
void smtpc_cfg_defaults(struct smtpc_cfg *cfg, const char *helo_name);

/* Server capabilities from the EHLO reply (RFC 5321 4.1.1.1). */
#define SMTPC_CAP_ESMTP               0x001u /* EHLO was accepted (else HELO) */
#define SMTPC_CAP_PIPELINING          0x002u /* RFC 2920 */
#define SMTPC_CAP_SIZE                0x004u /* RFC 1870 */
#define SMTPC_CAP_8BITMIME            0x008u /* RFC 6152 */
#define SMTPC_CAP_SMTPUTF8            0x010u /* RFC 6531 */
#define SMTPC_CAP_ENHANCEDSTATUSCODES 0x020u /* RFC 2034 */
#define SMTPC_CAP_DSN                 0x040u /* RFC 3461 */
#define SMTPC_CAP_CHUNKING            0x080u /* RFC 3030; recorded, not used */
#define SMTPC_CAP_STARTTLS            0x100u /* RFC 3207; recorded, see the top */

struct smtpc_caps {
    uint32_t flags;    /* SMTPC_CAP_* */
    uint64_t size_max; /* octets from "SIZE n"; 0: no SIZE, "SIZE" alone, "SIZE 0" or junk */
};

/* Events returned by smtpc_feed, smtpc_timeout, smtpc_lost, smtpc_quit and
 * smtpc_message. See the top for what the caller does with each. */
enum smtpc_ev {
    SMTPC_EV_NONE = 0,   /* need more input, or output to be sent */
    SMTPC_EV_READY = 1,  /* connected: give a message (once per session) */
    SMTPC_EV_DONE = 2,   /* a transaction ended: results; close if smtpc_closing() */
    SMTPC_EV_FAILED = 3, /* connection-level failure: smtpc_failure(); close */
    SMTPC_EV_CLOSE = 4,  /* over, nothing to report: send the output, close */
};

enum smtpc_outcome {
    SMTPC_PENDING = 0, /* not resolved yet (never after SMTPC_EV_DONE) */
    SMTPC_OK = 1,      /* delivered: 250 to the end of data */
    SMTPC_TEMP = 2,    /* try again later */
    SMTPC_PERM = 3,    /* permanent failure: DSN */
};

/* What a result (or failure) answered; SMTPC_CMD_BODY is the content sent
 * after the 354, for a connection lost or timed out then. */
enum smtpc_cmd {
    SMTPC_CMD_NONE = 0, /* decided before sending anything (SMTPUTF8, SIZE, bad address) */
    SMTPC_CMD_GREETING,
    SMTPC_CMD_EHLO,
    SMTPC_CMD_HELO,
    SMTPC_CMD_RSET,
    SMTPC_CMD_MAIL,
    SMTPC_CMD_RCPT,
    SMTPC_CMD_DATA,
    SMTPC_CMD_BODY,
    SMTPC_CMD_DOT,
    SMTPC_CMD_QUIT,
};

/* Names a command as Postfix logs "(in reply to X command)": "MAIL FROM",
 * "RCPT TO", "end of DATA", ...; static string. */
const char *smtpc_cmd_name(enum smtpc_cmd c);

/* The outcome for one recipient, or of the connection (smtpc_failure). */
struct smtpc_result {
    enum smtpc_outcome outcome;
    enum smtpc_cmd cmd; /* the command answered, or in progress when lost / timed out */
    uint16_t code;      /* the server's reply code; 0 when the cause is local (no reply) */
    uint8_t esc[3];     /* enhanced status (RFC 3463), class == outcome's (2, 4 or 5) */
    /* The server's reply as received, lines joined by one SP ("550-5.1.1 a
     * 550 5.1.1 b"), at most SMTPC_TEXT_MAX octets, control octets as '?';
     * or, for a local cause, a sentence naming the peer ("lost connection
     * with mx.example.net[192.0.2.1] while sending RCPT TO"). Borrowed: in
     * mem.arena or static, valid until the next smtpc_message() / smtpc_init(). */
    struct rm_span text;
};

/* Per session memory, owned by the caller's connection slot; must outlive
 * the session. */
struct smtpc_mem {
    struct rm_buf *tx;            /* commands; cap >= SMTPC_TX_MIN; only smtpc touches it */
    uint8_t *arena;               /* reply texts of results; reset by smtpc_message() */
    size_t arena_cap;             /* >= SMTPC_ARENA_BYTES(rcpt_cap) */
    struct smtpc_result *results; /* one per recipient of the transaction */
    uint32_t rcpt_cap;            /* entries in results, 1..SMTPC_RCPT_MAX */
};

/* One message for one destination. Everything is borrowed until the
 * transaction's SMTPC_EV_DONE (or the session closes), unchanged. */
struct smtpc_msg {
    const struct q_env *env;     /* sender, envid, ret, flags, size (as SIZE= and the check) */
    const uint32_t *rcpt_idx;    /* indexes into env->rcpts: this destination's recipients */
    uint32_t rcpt_count;         /* 1..mem.rcpt_cap; result i is env->rcpts[rcpt_idx[i]]'s */
    const struct rm_chunk *body; /* the message as stored (CRLF only, Received: first) */
    struct rm_span body_flat;    /* used when body is NULL: one span (e.g. LMDB map bytes) */
};

/* The session. Embed it in the caller's slot; its fields are private to
 * smtpc.c: use the functions. */
struct smtpc_cursor {            /* where the body output stands; see smtpc.c */
    const uint8_t *seg;          /* current segment: a chunk's data or body_flat; NULL at end */
    size_t seg_len;              /* octets in seg */
    size_t off;                  /* octets of seg already sent */
    const struct rm_chunk *next; /* the chunk after seg, or NULL */
    bool bol;                    /* seg[off] starts a line */
    bool stuffed;                /* the stuffing "." of that line was sent */
    uint8_t term_off;            /* octets of the terminator sent (at the end) */
};

struct smtpc {
    const struct smtpc_cfg *cfg;
    struct smtpc_mem mem;
    const char *peer; /* "host[addr]" for texts, NUL-terminated, outlives the session */
    struct smtpc_caps caps;
    /* --- private --- */
    int state;            /* enum smtpc_state in smtpc.c; changed only by smtpc_enter() */
    uint32_t flags;       /* SMTPC_F_* in smtpc.c */
    uint64_t deadline_ms; /* unix ms; UINT64_MAX: none */
    uint16_t reply_code;  /* of the reply being read; 0 before its first line */
    uint8_t reply_esc[3]; /* its enhanced status, if reply_flags says so */
    uint8_t reply_flags;  /* SMTPC_RF_* in smtpc.c */
    uint32_t reply_lines; /* lines of it read so far */
    size_t reply_len;     /* octets in reply_text */
    uint8_t reply_text[SMTPC_TEXT_MAX]; /* its lines, joined, cut at SMTPC_TEXT_MAX */
    struct smtpc_msg msg;        /* the transaction's message (copied; its pointers borrowed) */
    uint32_t unresolved;         /* results still SMTPC_PENDING */
    uint32_t accepted;           /* pending results whose RCPT got 2xx */
    uint32_t seq_len;            /* commands in the transaction: [RSET] MAIL RCPT.. DATA */
    uint32_t queued;             /* of them written to tx */
    uint32_t answered;           /* of them answered */
    size_t arena_used;           /* octets of mem.arena in use */
    struct smtpc_result failure; /* after SMTPC_EV_FAILED */
    struct smtpc_cursor cur;     /* the body output */
};

/* Starts a session on a connected socket: waits for the greeting (deadline
 * now + greeting_timeout_ms). peer names the server in texts. Asserts cfg and
 * mem meet the limits above. */
void smtpc_init(struct smtpc *s, const struct smtpc_cfg *cfg, const struct smtpc_mem *mem,
                const char *peer, uint64_t now_ms);

/* Consumes in[0..len) (server replies); returns the bytes consumed and sets
 * *ev. Stops right after a reply that makes an event. Consumes nothing
 * while the message body is being sent (a reply then waits in rx for the
 * body's last smtpc_sent(): feed again after each send completion), nor
 * once closed (then *ev is SMTPC_EV_CLOSE). May queue commands. */
size_t smtpc_feed(struct smtpc *s, const uint8_t *in, size_t len, uint64_t now_ms,
                  enum smtpc_ev *ev);

/* Starts a transaction. Only when ready (after SMTPC_EV_READY, or after a
 * SMTPC_EV_DONE with !smtpc_closing()). Resets mem.arena and the results.
 * Returns SMTPC_EV_NONE (commands queued: send the output, feed the
 * replies) or SMTPC_EV_DONE when every recipient is resolved without
 * sending anything (SMTPUTF8 not offered, too big, bad addresses); the
 * session then stays ready. */
enum smtpc_ev smtpc_message(struct smtpc *s, const struct smtpc_msg *m, uint64_t now_ms);

/* The result of recipient i (0..rcpt_count) of the last transaction. After
 * SMTPC_EV_DONE, and until the next smtpc_message(). */
const struct smtpc_result *smtpc_result(const struct smtpc *s, uint32_t i);

/* After SMTPC_EV_FAILED: why the connection failed (outcome TEMP or PERM,
 * cmd GREETING, EHLO or HELO). The caller tries the next MX host either way;
 * PERM tells that this host refused us (5xx greeting or HELO). */
const struct smtpc_result *smtpc_failure(const struct smtpc *s);

/* The capabilities, valid from SMTPC_EV_READY on. */
const struct smtpc_caps *smtpc_caps(const struct smtpc *s);

/* Fills iov[0..max) with the next bytes to send, in order; returns how many
 * spans (0: nothing to send now). Spans point into mem.tx, the message body
 * or static storage; they stay valid until smtpc_sent() accounts for them.
 * The same spans come back until then (the call changes nothing). */
size_t smtpc_output(const struct smtpc *s, struct rm_span *iov, size_t max);

/* n octets of the output were sent (a send CQE's res). n may be less than
 * what smtpc_output() gave; never more. Consumes them from tx (which may
 * then take more pipelined commands) or moves through the body. Also after
 * the session closed: a send in flight then still reports its octets. */
void smtpc_sent(struct smtpc *s, size_t n, uint64_t now_ms);

/* Unix ms by which the awaited reply (or, while sending the body, the next
 * send progress) must come; UINT64_MAX when nothing is awaited (ready, or
 * closed): an idle connection's lifetime is the caller's policy. */
uint64_t smtpc_deadline(const struct smtpc *s);

/* The caller's timer passed smtpc_deadline(). Returns SMTPC_EV_NONE when
 * now_ms is before it (a stale timer). Otherwise the session closes:
 * SMTPC_EV_DONE (unresolved recipients TEMP 4.4.2 "conversation with <peer>
 * timed out while <step>"), SMTPC_EV_FAILED (before READY) or
 * SMTPC_EV_CLOSE (waiting for the 221). */
enum smtpc_ev smtpc_timeout(struct smtpc *s, uint64_t now_ms);

/* The connection is gone (recv returned 0 or an error, a send failed). Feed
 * what rx holds first. Then the session closes: SMTPC_EV_DONE (unresolved
 * TEMP 4.4.2 "lost connection with <peer> while <step>"), SMTPC_EV_FAILED
 * (before READY), or SMTPC_EV_CLOSE (idle, quitting, already closed). */
enum smtpc_ev smtpc_lost(struct smtpc *s, uint64_t now_ms);

/* Ends the session on the caller's request. Ready: queues QUIT and waits at
 * most quit_timeout_ms for the 221 (SMTPC_EV_CLOSE then, or on timeout or
 * loss); returns SMTPC_EV_NONE. Before READY: closes at once, returns
 * SMTPC_EV_CLOSE. In a transaction (shutdown's grace period over): closes
 * at once without QUIT, unresolved recipients TEMP 4.3.0 "delivery to
 * <peer> aborted", returns SMTPC_EV_DONE. Closed: returns SMTPC_EV_CLOSE. */
enum smtpc_ev smtpc_quit(struct smtpc *s, uint64_t now_ms);

/* True once the session takes no more input: send what smtpc_output()
 * still gives (if the peer is there), then close the socket. */
bool smtpc_closing(const struct smtpc *s);

/* True when smtpc_message() may be called. */
bool smtpc_ready(const struct smtpc *s);

#endif /* SMTPC_H */
