/* mta/smtpd.c: the SMTP server session, sans-I/O (see smtpd.h).
 *
 * Decisions where RFC 5321 and friends leave room (the header is the manual;
 * these are the reasons):
 * - EHLO/HELO take 1..255 octets of printable ASCII (SP included); anything
 *   else is refused with 501 5.5.4 rather than truncated, because the argument
 *   goes into the Received: header and a CR there would inject headers.
 * - ESMTP parameters after HELO: 555 5.5.4 (RFC 5321 4.1.1.11, RFC 1869).
 * - Ill-formed UTF-8 in a path is a syntax error (501 5.1.7 / 501 5.1.3) with
 *   or without SMTPUTF8; well-formed non-ASCII without SMTPUTF8 is 553 5.6.7.
 * - The text line limit counts the line as stored (after dot-unstuffing), so a
 *   client's transparency dot never pushes a legal line over it.
 * - Content errors are sticky: the first one found is the one answered.
 *   Once one is found the body is returned to the pool at once: nothing more
 *   is stored, and a refused 1 GiB message holds no chunks while it is read.
 * - A BDAT chunk whose content fails is answered with the error at the end of
 *   that chunk (RFC 3030 4.2: the client sends no more chunks after an error)
 *   and the transaction is reset; BDAT chunks the client had already
 *   pipelined then meet 503 5.5.1 and are read and dropped.
 * - A BDAT message whose last line lacks CRLF has CRLF appended (as Postfix
 *   does), so stored messages end with CRLF whatever the transfer.
 * - RSET and QUIT with an argument, DATA with one: 501 5.5.4, as Postfix.
 * - Every 4xx/5xx reply counts in stats.errors, the 421s that close too; the
 *   limit check (errors_max) runs after each command and after smtpd_stored.
 * - Received: uses "with UTF8SMTP" for an SMTPUTF8 transaction (RFC 6531
 *   3.7.3), "with ESMTP" after EHLO and "with SMTP" after HELO otherwise.
 *   "for <rcpt>" only with one recipient; with more, the date goes on its own
 *   line after "id <id>;", as Postfix writes it.
 * - Replies are only ever appended after tx->tail: smtpd never compacts tx
 *   (a send may be in flight over tx->data + head); see smtpd_tx_room().
 * - Queue outcomes: Q_ERR_MAP_FULL is 452 4.3.1, anything else 451 4.3.0.
 * - STARTTLS returns right after its line: whatever the client pipelined
 *   behind it arrived in clear and must never run as a command under TLS
 *   (RFC 3207 5, the STARTTLS command injection class), so the caller drops it.
 *   STARTTLS in a transaction is refused (503), as Postfix does: RFC 3207 4.2
 *   would discard the transaction anyway.
 * - AUTH needs EHLO (it is a service extension), is refused in a transaction
 *   and once authenticated (RFC 4954 4), and in clear text with 538 5.7.11
 *   (RFC 4954 6) unless the listener allows it: PLAIN and LOGIN send the
 *   password as it is.
 * - An over-long SASL response line is passed to auth_sasl_feed() by length
 *   only (500 5.5.6) and the rest of it is skipped like an over-long command.
 */
#include "smtpd.h"

#include <time.h>

enum smtpd_state {
    SMTPD_ST_INIT,       /* greeted, no EHLO/HELO yet */
    SMTPD_ST_READY,      /* EHLO/HELO done, no transaction */
    SMTPD_ST_MAIL,       /* MAIL accepted, no recipient yet */
    SMTPD_ST_RCPT,       /* one or more recipients */
    SMTPD_ST_DATA,       /* reading DATA content up to CRLF "." CRLF */
    SMTPD_ST_BDAT,       /* reading the octets of a BDAT chunk of the transaction */
    SMTPD_ST_CHUNKING,   /* between BDAT chunks, in command mode */
    SMTPD_ST_DISCARD,    /* reading and dropping the octets of a refused BDAT */
    SMTPD_ST_STORING,    /* message complete; the store is outstanding */
    SMTPD_ST_AUTH,       /* after a 334: the next line is a SASL response */
    SMTPD_ST_AUTH_CHECK, /* credentials out (EV_AUTH) until smtpd_auth_result() */
    SMTPD_ST_TLS,        /* STARTTLS answered (EV_STARTTLS) until smtpd_tls_started() */
    SMTPD_ST_CLOSED,     /* takes no more input: QUIT or 421 */
};

#define SMTPD_F_ESMTP 0x01u /* EHLO (not HELO): ESMTP parameters allowed */
#define SMTPD_F_SKIP  0x02u /* dropping the rest of an over-long command line */
#define SMTPD_F_DRAIN 0x04u /* close with 421 4.3.2 once no transaction is open */
#define SMTPD_F_LENT  0x08u /* body and envelope lent to the store until smtpd_stored() */
#define SMTPD_F_LAST  0x10u /* the BDAT chunk being read is the LAST one */
#define SMTPD_F_AUTH  0x20u /* authenticated as auth_user_buf */

/* The content scanner. BOL is the start of a line: after CRLF, or right
 * after the 354 (RFC 5321 4.1.1.4: the CRLF ending DATA counts). */
enum smtpd_scan {
    SMTPD_SCAN_BOL,    /* at the start of a line */
    SMTPD_SCAN_DOT,    /* "." at the start of a line, dropped (4.5.2 transparency) */
    SMTPD_SCAN_DOT_CR, /* "." CR at the start of a line: LF ends the message */
    SMTPD_SCAN_TEXT,   /* inside a line */
    SMTPD_SCAN_CR,     /* CR inside a line: LF ends the line, anything else makes it bare */
};

/* Sticky content errors, answered once at the end of the message (chunk). */
enum smtpd_cerr {
    SMTPD_CERR_NONE,
    SMTPD_CERR_BARE,    /* bare CR or bare LF: 550 5.5.2 */
    SMTPD_CERR_NUL,     /* NUL octet: 554 5.6.0 */
    SMTPD_CERR_LINE,    /* line over text_line_max: 554 5.6.0 */
    SMTPD_CERR_SIZE,    /* over message_size_max: 552 5.3.4 */
    SMTPD_CERR_STORAGE, /* chunk pool empty: 452 4.3.1 */
};

enum smtpd_verb {
    SMTPD_V_EHLO,
    SMTPD_V_HELO,
    SMTPD_V_MAIL,
    SMTPD_V_RCPT,
    SMTPD_V_DATA,
    SMTPD_V_BDAT,
    SMTPD_V_RSET,
    SMTPD_V_NOOP,
    SMTPD_V_VRFY,
    SMTPD_V_EXPN,
    SMTPD_V_HELP,
    SMTPD_V_QUIT,
    SMTPD_V_STARTTLS,
    SMTPD_V_AUTH,
    SMTPD_V_UNKNOWN,
};

static const char *const smtpd_verb_names[] = {
    [SMTPD_V_EHLO] = "EHLO",         [SMTPD_V_HELO] = "HELO", [SMTPD_V_MAIL] = "MAIL",
    [SMTPD_V_RCPT] = "RCPT",         [SMTPD_V_DATA] = "DATA", [SMTPD_V_BDAT] = "BDAT",
    [SMTPD_V_RSET] = "RSET",         [SMTPD_V_NOOP] = "NOOP", [SMTPD_V_VRFY] = "VRFY",
    [SMTPD_V_EXPN] = "EXPN",         [SMTPD_V_HELP] = "HELP", [SMTPD_V_QUIT] = "QUIT",
    [SMTPD_V_STARTTLS] = "STARTTLS", [SMTPD_V_AUTH] = "AUTH",
};
static_assert(RM_ARRAY_LEN(smtpd_verb_names) == SMTPD_V_UNKNOWN, "a name per verb");

#define SMTPD_ENVID_MAX 100             /* octets, RFC 3461 4.4 */
#define SMTPD_HOST_MAX  SMTP_DOMAIN_MAX /* hostname octets put in replies and Received: */
#define SMTPD_ADDR_MAX  255             /* peer address octets put in Received: */

/* The tx reserve, worked out. Feeding takes a command only with
 * SMTPD_TX_RESERVE free. The most a command writes without closing is the
 * EHLO reply (8 lines, < 400 octets with a 255-octet hostname); one that
 * closes adds a 421 (< 300) and after it nothing more is written. So what a
 * command leaves free still takes the caller's smtpd_close_with (one line,
 * <= SMTP_REPLY_LINE_MAX) or drain's 421; and STORE is returned with the whole
 * reserve free, for smtpd_stored's reply plus a 421 after it. */
#define SMTPD_EHLO_REPLY_MAX 448 /* 10 lines with STARTTLS and AUTH: < 420 */
static_assert(SMTPD_TX_RESERVE >= SMTPD_EHLO_REPLY_MAX + SMTP_REPLY_LINE_MAX, "see above");

/* ---- the reply table ------------------------------------------------------ */
/* esc {0,0,0}: no enhanced status (greeting, EHLO/HELO lines, 354). A text
 * given as NULL here is made per reply. */

static const struct smtp_reply R_GREETING = {220, {0, 0, 0}, NULL};
static const struct smtp_reply R_EHLO = {250, {0, 0, 0}, NULL};
static const struct smtp_reply R_OK = {250, {2, 0, 0}, "Ok"};
static const struct smtp_reply R_MAIL_OK = {250, {2, 1, 0}, "Ok"};
static const struct smtp_reply R_RCPT_OK = {250, {2, 1, 5}, "Ok"};
static const struct smtp_reply R_CHUNK_OK = {250, {2, 0, 0}, NULL};
static const struct smtp_reply R_QUEUED = {250, {2, 0, 0}, NULL};
static const struct smtp_reply R_VRFY = {252, {2, 5, 2}, "Cannot VRFY, but will try delivery"};
static const struct smtp_reply R_HELP = {214, {2, 0, 0}, "See RFC 5321"};
static const struct smtp_reply R_BYE = {221, {2, 0, 0}, "Bye"};
static const struct smtp_reply R_DATA_GO = {354, {0, 0, 0}, "End data with <CR><LF>.<CR><LF>"};

static const struct smtp_reply R_UNKNOWN = {500, {5, 5, 2}, "Error: command not recognized"};
static const struct smtp_reply R_LINE_LONG = {500, {5, 5, 2}, "Error: line too long"};
static const struct smtp_reply R_LINE_NUL = {500, {5, 5, 2}, "Error: NUL in command line"};
static const struct smtp_reply R_NOT_IMPL = {502, {5, 5, 1}, "Error: command not implemented"};
static const struct smtp_reply R_HELO_FIRST = {503, {5, 5, 1}, "Error: send HELO/EHLO first"};
static const struct smtp_reply R_NESTED = {503, {5, 5, 1}, "Error: nested MAIL command"};
static const struct smtp_reply R_NEED_MAIL = {503, {5, 5, 1}, "Error: need MAIL command"};
static const struct smtp_reply R_NEED_RCPT = {503, {5, 5, 1}, "Error: need RCPT command"};
static const struct smtp_reply R_MIXED = {503, {5, 5, 1}, "Error: DATA after BDAT"};
static const struct smtp_reply R_IN_BDAT = {503, {5, 5, 1}, "Error: BDAT transfer in progress"};
static const struct smtp_reply R_HELO_SYNTAX = {501, {5, 5, 4}, "Syntax: EHLO hostname"};
static const struct smtp_reply R_MAIL_SYNTAX = {501, {5, 5, 4}, "Syntax: MAIL FROM:<address>"};
static const struct smtp_reply R_RCPT_SYNTAX = {501, {5, 5, 4}, "Syntax: RCPT TO:<address>"};
static const struct smtp_reply R_DATA_SYNTAX = {501, {5, 5, 4}, "Syntax: DATA"};
static const struct smtp_reply R_BDAT_SYNTAX = {501, {5, 5, 4}, "Syntax: BDAT size [LAST]"};
static const struct smtp_reply R_RSET_SYNTAX = {501, {5, 5, 4}, "Syntax: RSET"};
static const struct smtp_reply R_QUIT_SYNTAX = {501, {5, 5, 4}, "Syntax: QUIT"};
static const struct smtp_reply R_VRFY_SYNTAX = {501, {5, 5, 4}, "Syntax: VRFY address"};
static const struct smtp_reply R_BAD_SENDER = {501, {5, 1, 7}, "Error: bad sender address"};
static const struct smtp_reply R_BAD_RCPT = {501, {5, 1, 3}, "Error: bad recipient address"};
static const struct smtp_reply R_NO_DOMAIN = {
    501, {5, 1, 3}, "Error: recipient address needs a domain"};
static const struct smtp_reply R_UTF8 = {553, {5, 6, 7}, "Error: non-ASCII address needs SMTPUTF8"};
static const struct smtp_reply R_PARAM_SYNTAX = {501, {5, 5, 4}, "Error: bad parameter syntax"};
static const struct smtp_reply R_PARAM_DUP = {501, {5, 5, 4}, "Error: duplicate parameter"};
static const struct smtp_reply R_PARAM_BAD = {501, {5, 5, 4}, "Error: bad parameter value"};
static const struct smtp_reply R_PARAM_UNKNOWN = {555, {5, 5, 4}, "Error: unsupported parameter"};
static const struct smtp_reply R_BODY_UNKNOWN = {555, {5, 5, 4}, "Error: unsupported BODY type"};
static const struct smtp_reply R_TOO_BIG = {552, {5, 3, 4}, "Error: message too big"};
static const struct smtp_reply R_TOO_MANY_RCPTS = {452, {4, 5, 3}, "Error: too many recipients"};
static const struct smtp_reply R_RELAY = {554, {5, 7, 1}, "Relay access denied"};
static const struct smtp_reply R_NO_STORAGE = {452, {4, 3, 1}, "Insufficient system storage"};
static const struct smtp_reply R_QUEUE_ERR = {451, {4, 3, 0}, "Queue write error"};
static const struct smtp_reply R_BARE = {
    550, {5, 5, 2}, "Error: bare <CR> or <LF> in message content"};
static const struct smtp_reply R_CONTENT_NUL = {554, {5, 6, 0}, "Error: NUL in message content"};
static const struct smtp_reply R_CONTENT_LINE = {554, {5, 6, 0}, "Error: message line too long"};
static const struct smtp_reply R_TOO_MANY_ERRORS = {421, {4, 7, 0}, "Error: too many errors"};
static const struct smtp_reply R_SHUTDOWN = {421, {4, 3, 2}, "Service shutting down"};
static const struct smtp_reply R_TLS_GO = {220, {2, 0, 0}, "Ready to start TLS"};
static const struct smtp_reply R_TLS_ACTIVE = {503, {5, 5, 1}, "Error: TLS already active"};
static const struct smtp_reply R_TLS_SYNTAX = {501, {5, 5, 4}, "Syntax: STARTTLS"};
static const struct smtp_reply R_IN_TX = {503, {5, 5, 1}, "Error: MAIL transaction in progress"};
static const struct smtp_reply R_EHLO_FIRST = {503, {5, 5, 1}, "Error: send EHLO first"};
static const struct smtp_reply R_AUTH_TWICE = {503, {5, 5, 1}, "Error: already authenticated"};
static const struct smtp_reply R_AUTH_SYNTAX = {
    501, {5, 5, 4}, "Syntax: AUTH mechanism [initial-response]"};
static const struct smtp_reply R_AUTH_TLS = {
    538, {5, 7, 11}, "Encryption required for requested authentication mechanism"};
static const struct smtp_reply R_AUTH_CHALLENGE = {334, {0, 0, 0}, NULL};
static const struct smtp_reply R_AUTH_OK = {235, {2, 7, 0}, "Authentication successful"};
static const struct smtp_reply R_AUTH_BAD = {535, {5, 7, 8}, "Authentication credentials invalid"};
static const struct smtp_reply R_AUTH_NEEDED = {530, {5, 7, 0}, "Authentication required"};

/* ---- state ---------------------------------------------------------------- */

static bool smtpd_move_ok(enum smtpd_state from, enum smtpd_state to)
{
    switch (from) {
    case SMTPD_ST_INIT:
        return to == SMTPD_ST_READY || to == SMTPD_ST_DISCARD || to == SMTPD_ST_TLS ||
               to == SMTPD_ST_CLOSED;
    case SMTPD_ST_READY:
        return to == SMTPD_ST_MAIL || to == SMTPD_ST_DISCARD || to == SMTPD_ST_AUTH ||
               to == SMTPD_ST_AUTH_CHECK || to == SMTPD_ST_TLS || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_MAIL:
        return to == SMTPD_ST_READY || to == SMTPD_ST_RCPT || to == SMTPD_ST_DISCARD ||
               to == SMTPD_ST_CLOSED;
    case SMTPD_ST_RCPT:
        return to == SMTPD_ST_READY || to == SMTPD_ST_DATA || to == SMTPD_ST_BDAT ||
               to == SMTPD_ST_CLOSED;
    case SMTPD_ST_DATA:
        return to == SMTPD_ST_READY || to == SMTPD_ST_STORING || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_BDAT:
        return to == SMTPD_ST_READY || to == SMTPD_ST_CHUNKING || to == SMTPD_ST_STORING ||
               to == SMTPD_ST_CLOSED;
    case SMTPD_ST_CHUNKING:
        return to == SMTPD_ST_READY || to == SMTPD_ST_BDAT || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_DISCARD:
        return to == SMTPD_ST_INIT || to == SMTPD_ST_READY || to == SMTPD_ST_MAIL ||
               to == SMTPD_ST_CLOSED;
    case SMTPD_ST_STORING:
        return to == SMTPD_ST_READY || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_AUTH:
        return to == SMTPD_ST_READY || to == SMTPD_ST_AUTH_CHECK || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_AUTH_CHECK:
        return to == SMTPD_ST_READY || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_TLS:
        return to == SMTPD_ST_INIT || to == SMTPD_ST_CLOSED;
    case SMTPD_ST_CLOSED:
        return false;
    }
    return false;
}

static void smtpd_enter(struct smtpd *s, enum smtpd_state to)
{
    RM_ASSERT(smtpd_move_ok((enum smtpd_state)s->state, to));
    s->state = (int)to;
}

static enum smtpd_state smtpd_st(const struct smtpd *s)
{
    return (enum smtpd_state)s->state;
}

/* A transaction is open from MAIL until its end (stored, refused, RSET, EHLO). */
static bool smtpd_in_tx(const struct smtpd *s)
{
    switch (smtpd_st(s)) {
    case SMTPD_ST_INIT:
    case SMTPD_ST_READY:
    case SMTPD_ST_AUTH:
    case SMTPD_ST_AUTH_CHECK:
    case SMTPD_ST_TLS:
    case SMTPD_ST_CLOSED:
        return false;
    case SMTPD_ST_MAIL:
    case SMTPD_ST_RCPT:
    case SMTPD_ST_DATA:
    case SMTPD_ST_BDAT:
    case SMTPD_ST_CHUNKING:
    case SMTPD_ST_STORING:
        return true;
    case SMTPD_ST_DISCARD:
        return s->discard_ret == SMTPD_ST_MAIL;
    }
    return false;
}

/* ---- replies -------------------------------------------------------------- */

static int smtpd_host_len(const struct smtpd *s)
{
    return (int)strnlen(s->cfg->hostname, SMTPD_HOST_MAX);
}

/* Queues one reply line; text, when not NULL, replaces r->text (stats keep
 * r, whose text is static). 4xx/5xx count as errors. */
static void smtpd_put(struct smtpd *s, const struct smtp_reply *r, bool more, const char *text)
{
    struct smtp_reply line = *r;
    if (text)
        line.text = text;
    char buf[SMTP_REPLY_LINE_MAX];
    size_t n = smtp_reply_format(&line, more, buf, sizeof(buf));
    RM_ASSERT(n > 0);
    /* Fits after tail, so rm_buf_append moves nothing (see smtpd_tx_room):
     * feeding stops while less than SMTPD_TX_RESERVE is free after tail, and
     * one command (or smtpd_stored/close/drain after it) writes less. */
    RM_ASSERT(rm_buf_space(s->mem.tx) >= n);
    bool ok = rm_buf_append(s->mem.tx, buf, n);
    RM_ASSERT(ok);
    if (r->code >= 400) {
        s->stats.errors++;
        s->stats.last_error = *r;
    }
}

static void smtpd_reply(struct smtpd *s, const struct smtp_reply *r)
{
    smtpd_put(s, r, false, NULL);
}

/* ---- the transaction ------------------------------------------------------ */

static const uint8_t smtpd_empty[1] = {0}; /* what empty envelope spans point at */

static void smtpd_tx_clear(struct smtpd *s)
{
    RM_ASSERT(!(s->flags & SMTPD_F_LENT));
    rm_pool_put_chain(s->mem.pool, s->body_head);
    s->body_head = NULL;
    s->body_tail = NULL;
    s->body_len = 0;
    s->arena_used = 0;
    memset(&s->id, 0, sizeof(s->id));
    memset(&s->env, 0, sizeof(s->env));
    struct rm_span none = rm_span_make(smtpd_empty, 0);
    s->env.sender = none;
    s->env.envid = none;
    s->env.auth_user = none;
    s->env.client = none;
    s->env.helo = none;
    s->env.listener = none;
    s->env.rcpts = s->mem.rcpts;
    s->content_err = SMTPD_CERR_NONE;
    s->scan = SMTPD_SCAN_BOL;
    s->line_len = 0;
    s->bdat_left = 0;
    s->bdat_size = 0;
    s->flags &= ~SMTPD_F_LAST;
}

/* Ends the transaction, if any: back to READY with the EHLO kept. */
static void smtpd_tx_end(struct smtpd *s)
{
    smtpd_tx_clear(s);
    if (smtpd_st(s) != SMTPD_ST_READY)
        smtpd_enter(s, SMTPD_ST_READY);
}

/* Ends a SASL exchange's hold on the credentials: the decoder's buffer holds
 * the password (explicit_bzero: a plain memset before the buffer's last use
 * may be dropped by the compiler). */
static void smtpd_sasl_wipe(struct smtpd *s)
{
    explicit_bzero(&s->sasl, sizeof(s->sasl));
    s->cred_user = rm_span_make(smtpd_empty, 0);
    s->cred_password = rm_span_make(smtpd_empty, 0);
}

static bool smtpd_tls_on(const struct smtpd *s)
{
    return s->peer.tls_active;
}

/* Closes, with the reply r (text overriding r->text) when r is not NULL. A
 * body lent to the store stays lent: smtpd_stored() takes it back. */
static void smtpd_close(struct smtpd *s, const struct smtp_reply *r, const char *text)
{
    if (smtpd_st(s) == SMTPD_ST_CLOSED)
        return;
    if (!(s->flags & SMTPD_F_LENT))
        smtpd_tx_clear(s);
    smtpd_sasl_wipe(s);
    s->flags &= ~SMTPD_F_SKIP;
    smtpd_enter(s, SMTPD_ST_CLOSED);
    if (r)
        smtpd_put(s, r, false, text);
}

static void smtpd_close_host(struct smtpd *s, const struct smtp_reply *r)
{
    char text[SMTP_REPLY_LINE_MAX - 16];
    int n = snprintf(text, sizeof(text), "%.*s %s", smtpd_host_len(s), s->cfg->hostname, r->text);
    RM_ASSERT(n > 0 && (size_t)n < sizeof(text));
    smtpd_close(s, r, text);
}

/* After each command, content end and store outcome: the error limit, then
 * a pending drain once no transaction is open. */
static void smtpd_settle(struct smtpd *s)
{
    if (smtpd_st(s) == SMTPD_ST_CLOSED)
        return;
    if (s->stats.errors >= s->cfg->errors_max)
        smtpd_close_host(s, &R_TOO_MANY_ERRORS);
    else if ((s->flags & SMTPD_F_DRAIN) && !smtpd_in_tx(s))
        smtpd_close_host(s, &R_SHUTDOWN);
}

/* ---- the arena (envelope strings) ----------------------------------------- */

static bool smtpd_arena_fits(const struct smtpd *s, size_t n)
{
    return s->mem.arena_cap - s->arena_used >= n;
}

static struct rm_span smtpd_arena_put(struct smtpd *s, struct rm_span v)
{
    RM_ASSERT(smtpd_arena_fits(s, v.len));
    uint8_t *d = s->mem.arena + s->arena_used;
    if (v.len > 0)
        memcpy(d, v.p, v.len);
    s->arena_used += v.len;
    return rm_span_make(d, v.len);
}

/* ---- the body ------------------------------------------------------------- */

static void smtpd_content_fail(struct smtpd *s, enum smtpd_cerr e)
{
    if (s->content_err != SMTPD_CERR_NONE)
        return;
    s->content_err = (int)e;
    /* Nothing more is stored: give the chunks back now, not at the end. */
    rm_pool_put_chain(s->mem.pool, s->body_head);
    s->body_head = NULL;
    s->body_tail = NULL;
}

static void smtpd_body_put(struct smtpd *s, const uint8_t *p, size_t n)
{
    if (s->content_err != SMTPD_CERR_NONE || n == 0)
        return;
    RM_ASSERT(s->body_len <= s->cfg->message_size_max);
    if (n > s->cfg->message_size_max - s->body_len) {
        smtpd_content_fail(s, SMTPD_CERR_SIZE);
        return;
    }
    while (n > 0) {
        struct rm_chunk *c = s->body_tail;
        if (c == NULL || c->len == c->cap) {
            c = rm_pool_get(s->mem.pool);
            if (c == NULL) {
                smtpd_content_fail(s, SMTPD_CERR_STORAGE);
                return;
            }
            if (s->body_tail)
                s->body_tail->next = c;
            else
                s->body_head = c;
            s->body_tail = c;
        }
        size_t k = RM_MIN(n, (size_t)(c->cap - c->len));
        memcpy(c->data + c->len, p, k);
        c->len += (uint32_t)k;
        s->body_len += k;
        p += k;
        n -= k;
    }
}

/* "Thu, 01 Jan 1970 00:00:00 +0000" (RFC 5322 3.3), in UTC. */
static void smtpd_date(uint64_t now_ms, char *out, size_t cap)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct rm_utc u;
    rm_utc_from_unix(now_ms / 1000, &u); /* not gmtime_r: it takes a lock */
    if (u.year > 9999) {
        rm_utc_from_unix(0, &u); /* a clock that far off: say 1970, not garbage */
    }
    int n = snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[u.wday % 7], u.day,
                     months[(u.month - 1) % 12], u.year, u.hour, u.min, u.sec);
    RM_ASSERT(n > 0 && (size_t)n < cap);
}

/* Writes the Received: header (RFC 5321 4.4) as the body's first bytes. */
static void smtpd_received(struct smtpd *s)
{
    char id[Q_ID_STR_LEN + 1];
    q_id_format(&s->id, id);
    char date[64];
    smtpd_date(s->now_ms, date, sizeof(date));
    const char *proto = "SMTP";
    bool ext = true; /* RFC 3848's S and A suffixes exist for ESMTP and UTF8SMTP only */
    if (s->env.flags & Q_ENV_SMTPUTF8)
        proto = "UTF8SMTP";
    else if (s->flags & SMTPD_F_ESMTP)
        proto = "ESMTP";
    else
        ext = false;
    char with[16];
    int w = snprintf(with, sizeof(with), "%s%s%s", proto, ext && smtpd_tls_on(s) ? "S" : "",
                     ext && (s->flags & SMTPD_F_AUTH) ? "A" : "");
    RM_ASSERT(w > 0 && (size_t)w < sizeof(with));
    int host_len = smtpd_host_len(s);
    int addr_len = (int)strnlen(s->peer.addr, SMTPD_ADDR_MAX);
    char buf[2048];
    int n;
    if (s->env.rcpt_count == 1) {
        struct rm_span r = s->env.rcpts[0].addr;
        n = snprintf(buf, sizeof(buf),
                     "Received: from %.*s (%.*s)\r\n\tby %.*s (ringmta) with %s id %s\r\n"
                     "\tfor <%.*s>; %s\r\n",
                     (int)s->helo_len, (const char *)s->helo_buf, addr_len, s->peer.addr, host_len,
                     s->cfg->hostname, with, id, (int)r.len, (const char *)r.p, date);
    } else {
        n = snprintf(buf, sizeof(buf),
                     "Received: from %.*s (%.*s)\r\n\tby %.*s (ringmta) with %s id %s;\r\n"
                     "\t%s\r\n",
                     (int)s->helo_len, (const char *)s->helo_buf, addr_len, s->peer.addr, host_len,
                     s->cfg->hostname, with, id, date);
    }
    RM_ASSERT(n > 0 && (size_t)n < sizeof(buf));
    for (int i = 0; i < n; i++) {
        if ((uint8_t)buf[i] >= 0x80) /* a UTF-8 recipient, under SMTPUTF8 */
            s->env.flags |= Q_ENV_8BIT;
    }
    smtpd_body_put(s, (const uint8_t *)buf, (size_t)n);
}

/* At DATA or the first BDAT: the first chunk, the id and the Received:
 * header. False when the pool is empty (nothing taken then). */
static bool smtpd_body_start(struct smtpd *s)
{
    RM_ASSERT(s->body_head == NULL);
    struct rm_chunk *c = rm_pool_get(s->mem.pool);
    if (c == NULL)
        return false;
    s->body_head = c;
    s->body_tail = c;
    q_id_make(s->mem.idgen, s->now_ms, &s->id);
    smtpd_received(s);
    s->line_len = 0;
    return true;
}

/* ---- content -------------------------------------------------------------- */

/* Takes the text up to the next CR or LF (the common case, in bulk). */
static size_t smtpd_text_run(struct smtpd *s, const uint8_t *p, size_t n)
{
    uint8_t any = 0;
    bool nul = false;
    size_t k = 0;
    for (; k < n; k++) {
        uint8_t c = p[k];
        if (c == '\r' || c == '\n')
            break;
        any |= c;
        nul |= c == 0;
    }
    if (k == 0)
        return 0;
    if (any & 0x80)
        s->env.flags |= Q_ENV_8BIT;
    if (nul)
        smtpd_content_fail(s, SMTPD_CERR_NUL);
    s->line_len += k;
    if (s->line_len > s->cfg->text_line_max)
        smtpd_content_fail(s, SMTPD_CERR_LINE);
    smtpd_body_put(s, p, k);
    return k;
}

static void smtpd_crlf(struct smtpd *s)
{
    smtpd_body_put(s, (const uint8_t *)"\r\n", 2);
    s->line_len = 0;
}

/* Scans content p[0..n). With dots (DATA), a line-leading "." is dropped and
 * CRLF "." CRLF ends the message: then *end is set and the octets up to and
 * including that LF are consumed. Without dots (BDAT) all n are consumed.
 * Only CR LF ends a line; a bare CR or LF is an error that ends nothing, so
 * <LF>.<CR><LF> and the like never end a message (SMTP smuggling). */
static size_t smtpd_scan(struct smtpd *s, const uint8_t *p, size_t n, bool dots, bool *end)
{
    *end = false;
    size_t i = 0;
    while (i < n) {
        switch ((enum smtpd_scan)s->scan) {
        case SMTPD_SCAN_BOL:
            if (dots && p[i] == '.') {
                s->scan = SMTPD_SCAN_DOT;
                i++;
            } else {
                s->scan = SMTPD_SCAN_TEXT;
            }
            break;
        case SMTPD_SCAN_DOT:
            if (p[i] == '\r') {
                s->scan = SMTPD_SCAN_DOT_CR;
                i++;
            } else {
                s->scan = SMTPD_SCAN_TEXT; /* the rest of the line, even a second "." */
            }
            break;
        case SMTPD_SCAN_DOT_CR:
            if (p[i] == '\n') {
                *end = true;
                return i + 1;
            }
            smtpd_content_fail(s, SMTPD_CERR_BARE);
            s->scan = SMTPD_SCAN_TEXT;
            break;
        case SMTPD_SCAN_TEXT:
            i += smtpd_text_run(s, p + i, n - i);
            if (i == n)
                break;
            if (p[i] == '\r') {
                s->scan = SMTPD_SCAN_CR;
            } else {
                smtpd_content_fail(s, SMTPD_CERR_BARE);
                s->line_len++;
            }
            i++;
            break;
        case SMTPD_SCAN_CR:
            if (p[i] == '\n') {
                smtpd_crlf(s);
                s->scan = SMTPD_SCAN_BOL;
                i++;
            } else {
                smtpd_content_fail(s, SMTPD_CERR_BARE);
                s->scan = SMTPD_SCAN_TEXT;
            }
            break;
        }
    }
    return i;
}

static const struct smtp_reply *smtpd_cerr_reply(enum smtpd_cerr e)
{
    switch (e) {
    case SMTPD_CERR_NONE:
        break;
    case SMTPD_CERR_BARE:
        return &R_BARE;
    case SMTPD_CERR_NUL:
        return &R_CONTENT_NUL;
    case SMTPD_CERR_LINE:
        return &R_CONTENT_LINE;
    case SMTPD_CERR_SIZE:
        return &R_TOO_BIG;
    case SMTPD_CERR_STORAGE:
        return &R_NO_STORAGE;
    }
    RM_ASSERT(!"a content error to answer");
    return &R_NO_STORAGE;
}

/* The end of DATA or of BDAT LAST: refuse (sticky error) or hand out. */
static void smtpd_message_end(struct smtpd *s)
{
    if (s->content_err != SMTPD_CERR_NONE) {
        smtpd_reply(s, smtpd_cerr_reply((enum smtpd_cerr)s->content_err));
        smtpd_tx_end(s);
        return;
    }
    RM_ASSERT(s->body_head != NULL);
    RM_ASSERT(s->env.rcpt_count >= 1 && s->env.rcpts == s->mem.rcpts);
    s->env.arrival_ms = s->now_ms;
    s->env.next_attempt_ms = s->now_ms;
    s->env.size = s->body_len;
    s->env.attempts = 0;
    s->env.client = rm_span_str(s->peer.addr);
    s->env.helo = rm_span_make(s->helo_buf, s->helo_len);
    if (s->flags & SMTPD_F_AUTH)
        s->env.auth_user = rm_span_make(s->auth_user_buf, s->auth_user_len);
    if (s->cfg->listener)
        s->env.listener = rm_span_str(s->cfg->listener);
    s->flags |= SMTPD_F_LENT;
    smtpd_enter(s, SMTPD_ST_STORING);
}

static void smtpd_bdat_chunk_end(struct smtpd *s)
{
    if (s->flags & SMTPD_F_LAST) {
        if (s->scan == SMTPD_SCAN_CR)
            smtpd_content_fail(s, SMTPD_CERR_BARE);
        else if (s->line_len > 0)
            smtpd_crlf(s); /* the last line had no CRLF */
        smtpd_message_end(s);
        return;
    }
    if (s->content_err != SMTPD_CERR_NONE) {
        smtpd_reply(s, smtpd_cerr_reply((enum smtpd_cerr)s->content_err));
        smtpd_tx_end(s);
        return;
    }
    char text[64];
    int n = snprintf(text, sizeof(text), "%llu octets received", (unsigned long long)s->bdat_size);
    RM_ASSERT(n > 0 && (size_t)n < sizeof(text));
    smtpd_put(s, &R_CHUNK_OK, false, text);
    smtpd_enter(s, SMTPD_ST_CHUNKING);
}

static size_t smtpd_step_data(struct smtpd *s, const uint8_t *p, size_t n)
{
    bool end;
    size_t used = smtpd_scan(s, p, n, true, &end);
    if (end)
        smtpd_message_end(s);
    return used;
}

static size_t smtpd_step_bdat(struct smtpd *s, const uint8_t *p, size_t n)
{
    RM_ASSERT(s->bdat_left > 0);
    size_t k = (size_t)RM_MIN((uint64_t)n, s->bdat_left);
    bool end;
    size_t used = smtpd_scan(s, p, k, false, &end);
    RM_ASSERT(used == k && !end);
    s->bdat_left -= k;
    if (s->bdat_left == 0)
        smtpd_bdat_chunk_end(s);
    return k;
}

static size_t smtpd_step_discard(struct smtpd *s, size_t n)
{
    RM_ASSERT(s->bdat_left > 0);
    size_t k = (size_t)RM_MIN((uint64_t)n, s->bdat_left);
    s->bdat_left -= k;
    if (s->bdat_left == 0)
        smtpd_enter(s, (enum smtpd_state)s->discard_ret);
    return k;
}

/* ---- command arguments ---------------------------------------------------- */

static bool smtpd_is_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Strips a case-insensitive prefix; false when it is not there. */
static bool smtpd_take_prefix(struct rm_span *v, const char *prefix)
{
    size_t n = strlen(prefix);
    if (v->len < n || !rm_span_ieq(rm_span_make(v->p, n), prefix))
        return false;
    v->p += n;
    v->len -= n;
    return true;
}

/* 1..20 decimal digits that fit a uint64_t. */
static bool smtpd_parse_u64(struct rm_span v, uint64_t *out)
{
    if (v.len == 0 || v.len > 20)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return false;
        uint64_t d = (uint64_t)(v.p[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *out = x;
    return true;
}

struct smtpd_param {
    struct rm_span key;
    struct rm_span val;
    bool has_val;
};

/* Takes the next "keyword[=value]" from *rest (RFC 5321 4.1.2 esmtp-param,
 * values widened by RFC 6531 to UTF-8). Returns 1, 0 at the end, -1 on bad
 * syntax. */
static int smtpd_param_next(struct rm_span *rest, struct smtpd_param *pm)
{
    while (rest->len > 0 && rest->p[0] == ' ') {
        rest->p++;
        rest->len--;
    }
    if (rest->len == 0)
        return 0;
    size_t n = 0;
    while (n < rest->len && rest->p[n] != ' ')
        n++;
    struct rm_span tok = rm_span_make(rest->p, n);
    rest->p += n;
    rest->len -= n;

    const uint8_t *eq = memchr(tok.p, '=', tok.len);
    pm->key = rm_span_make(tok.p, eq ? (size_t)(eq - tok.p) : tok.len);
    pm->has_val = eq != NULL;
    pm->val = eq ? rm_span_make(eq + 1, tok.len - pm->key.len - 1) : rm_span_make(tok.p, 0);
    if (pm->key.len == 0 || !smtpd_is_alnum(pm->key.p[0]))
        return -1;
    for (size_t i = 1; i < pm->key.len; i++) {
        if (!smtpd_is_alnum(pm->key.p[i]) && pm->key.p[i] != '-')
            return -1;
    }
    if (pm->has_val && pm->val.len == 0)
        return -1;
    for (size_t i = 0; i < pm->val.len; i++) {
        uint8_t c = pm->val.p[i];
        if (c < 33 || c == '=' || c == 127)
            return -1;
    }
    return 1;
}

struct smtpd_mail_opts {
    uint32_t flags; /* Q_ENV_SMTPUTF8, Q_ENV_8BITMIME */
    uint8_t ret;    /* enum q_ret */
    struct rm_span envid;
};

#define SMTPD_P_SIZE     0x01u
#define SMTPD_P_BODY     0x02u
#define SMTPD_P_SMTPUTF8 0x04u
#define SMTPD_P_RET      0x08u
#define SMTPD_P_ENVID    0x10u
#define SMTPD_P_NOTIFY   0x20u
#define SMTPD_P_ORCPT    0x40u

/* One MAIL parameter; returns the reply that refuses it, or NULL. */
static const struct smtp_reply *smtpd_mail_param(const struct smtpd *s,
                                                 const struct smtpd_param *pm, unsigned *seen,
                                                 struct smtpd_mail_opts *o)
{
    unsigned bit;
    if (rm_span_ieq(pm->key, "SIZE"))
        bit = SMTPD_P_SIZE;
    else if (rm_span_ieq(pm->key, "BODY"))
        bit = SMTPD_P_BODY;
    else if (rm_span_ieq(pm->key, "SMTPUTF8"))
        bit = SMTPD_P_SMTPUTF8;
    else if (rm_span_ieq(pm->key, "RET"))
        bit = SMTPD_P_RET;
    else if (rm_span_ieq(pm->key, "ENVID"))
        bit = SMTPD_P_ENVID;
    else
        return &R_PARAM_UNKNOWN;
    if (*seen & bit)
        return &R_PARAM_DUP;
    *seen |= bit;

    uint64_t size;
    switch (bit) {
    case SMTPD_P_SIZE: /* RFC 1870 */
        if (!smtpd_parse_u64(pm->val, &size))
            return &R_PARAM_BAD;
        if (size > s->cfg->message_size_max)
            return &R_TOO_BIG;
        return NULL;
    case SMTPD_P_BODY: /* RFC 6152; BINARYMIME (RFC 3030) is not offered */
        if (rm_span_ieq(pm->val, "8BITMIME"))
            o->flags |= Q_ENV_8BITMIME;
        else if (!rm_span_ieq(pm->val, "7BIT"))
            return &R_BODY_UNKNOWN;
        return NULL;
    case SMTPD_P_SMTPUTF8: /* RFC 6531 3.4: no value */
        if (pm->has_val)
            return &R_PARAM_BAD;
        o->flags |= Q_ENV_SMTPUTF8;
        return NULL;
    case SMTPD_P_RET: /* RFC 3461 4.3 */
        if (rm_span_ieq(pm->val, "FULL"))
            o->ret = Q_RET_FULL;
        else if (rm_span_ieq(pm->val, "HDRS"))
            o->ret = Q_RET_HDRS;
        else
            return &R_PARAM_BAD;
        return NULL;
    case SMTPD_P_ENVID: /* RFC 3461 4.4 */
        if (pm->val.len == 0 || pm->val.len > SMTPD_ENVID_MAX ||
            !smtp_xtext_valid(pm->val.p, pm->val.len))
            return &R_PARAM_BAD;
        o->envid = pm->val;
        return NULL;
    }
    RM_ASSERT(!"a known MAIL parameter");
    return &R_PARAM_UNKNOWN;
}

/* All parameters of one command, in order; the first refusal wins. */
static const struct smtp_reply *smtpd_params(const struct smtpd *s, struct rm_span rest, bool mail,
                                             struct smtpd_mail_opts *mo, uint8_t *notify,
                                             struct rm_span *orcpt);

/* RFC 3461 4.1: NEVER, or a list of SUCCESS, FAILURE, DELAY. */
static bool smtpd_parse_notify(struct rm_span v, uint8_t *out)
{
    uint8_t bits = 0;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < v.len && v.p[j] != ',')
            j++;
        struct rm_span item = rm_span_make(v.p + i, j - i);
        uint8_t bit;
        if (rm_span_ieq(item, "NEVER"))
            bit = Q_NOTIFY_NEVER;
        else if (rm_span_ieq(item, "SUCCESS"))
            bit = Q_NOTIFY_SUCCESS;
        else if (rm_span_ieq(item, "FAILURE"))
            bit = Q_NOTIFY_FAILURE;
        else if (rm_span_ieq(item, "DELAY"))
            bit = Q_NOTIFY_DELAY;
        else
            return false;
        if (bits & bit)
            return false;
        bits |= bit;
        if (j == v.len)
            break;
        i = j + 1;
    }
    if ((bits & Q_NOTIFY_NEVER) && bits != Q_NOTIFY_NEVER)
        return false;
    *out = bits;
    return true;
}

/* RFC 3461 4.2: addr-type ";" xtext, addr-type an atom; at most 500 octets. */
static bool smtpd_orcpt_valid(struct rm_span v)
{
    if (v.len == 0 || v.len > SMTP_XTEXT_MAX)
        return false;
    const uint8_t *semi = memchr(v.p, ';', v.len);
    if (semi == NULL || semi == v.p)
        return false;
    for (const uint8_t *c = v.p; c < semi; c++) {
        if (!smtpd_is_alnum(*c) && (*c == 0 || !strchr("!#$%&'*+-/=?^_`{|}~", *c)))
            return false;
    }
    size_t xlen = v.len - (size_t)(semi + 1 - v.p);
    return xlen > 0 && smtp_xtext_valid(semi + 1, xlen);
}

static const struct smtp_reply *smtpd_rcpt_param(const struct smtpd_param *pm, unsigned *seen,
                                                 uint8_t *notify, struct rm_span *orcpt)
{
    unsigned bit;
    if (rm_span_ieq(pm->key, "NOTIFY"))
        bit = SMTPD_P_NOTIFY;
    else if (rm_span_ieq(pm->key, "ORCPT"))
        bit = SMTPD_P_ORCPT;
    else
        return &R_PARAM_UNKNOWN;
    if (*seen & bit)
        return &R_PARAM_DUP;
    *seen |= bit;
    if (bit == SMTPD_P_NOTIFY)
        return smtpd_parse_notify(pm->val, notify) ? NULL : &R_PARAM_BAD;
    if (!smtpd_orcpt_valid(pm->val))
        return &R_PARAM_BAD;
    *orcpt = pm->val;
    return NULL;
}

static const struct smtp_reply *smtpd_params(const struct smtpd *s, struct rm_span rest, bool mail,
                                             struct smtpd_mail_opts *mo, uint8_t *notify,
                                             struct rm_span *orcpt)
{
    unsigned seen = 0;
    while (rest.len > 0) { /* each round takes at least one octet */
        struct smtpd_param pm;
        int rc = smtpd_param_next(&rest, &pm);
        if (rc == 0)
            break;
        if (rc < 0)
            return &R_PARAM_SYNTAX;
        if (!(s->flags & SMTPD_F_ESMTP))
            return &R_PARAM_UNKNOWN; /* no service extensions after HELO */
        const struct smtp_reply *err = mail ? smtpd_mail_param(s, &pm, &seen, mo)
                                            : smtpd_rcpt_param(&pm, &seen, notify, orcpt);
        if (err)
            return err;
    }
    return NULL;
}

/* ---- commands ------------------------------------------------------------- */

static bool smtpd_auth_offered(const struct smtpd *s)
{
    return s->cfg->auth != SMTPD_AUTH_NONE && (smtpd_tls_on(s) || s->cfg->auth_ok_without_tls);
}

static void smtpd_cmd_helo(struct smtpd *s, struct rm_span arg, bool esmtp)
{
    bool ok = arg.len > 0 && arg.len <= sizeof(s->helo_buf);
    for (size_t i = 0; ok && i < arg.len; i++)
        ok = arg.p[i] >= 0x20 && arg.p[i] <= 0x7e;
    if (!ok) {
        smtpd_reply(s, &R_HELO_SYNTAX);
        return;
    }
    smtpd_tx_end(s);
    memcpy(s->helo_buf, arg.p, arg.len);
    s->helo_len = arg.len;
    if (esmtp)
        s->flags |= SMTPD_F_ESMTP;
    else
        s->flags &= ~SMTPD_F_ESMTP;

    int host_len = smtpd_host_len(s);
    if (!esmtp) {
        char text[SMTPD_HOST_MAX + 1];
        int n = snprintf(text, sizeof(text), "%.*s", host_len, s->cfg->hostname);
        RM_ASSERT(n >= 0 && (size_t)n < sizeof(text));
        smtpd_put(s, &R_EHLO, false, text);
        return;
    }
    char first[SMTPD_HOST_MAX + 1];
    int n = snprintf(first, sizeof(first), "%.*s", host_len, s->cfg->hostname);
    RM_ASSERT(n >= 0 && (size_t)n < sizeof(first));
    char size[32];
    n = snprintf(size, sizeof(size), "SIZE %llu", (unsigned long long)s->cfg->message_size_max);
    RM_ASSERT(n > 0 && (size_t)n < sizeof(size));
    const char *lines[10];
    size_t k = 0;
    lines[k++] = first;
    lines[k++] = "PIPELINING";
    lines[k++] = size;
    lines[k++] = "8BITMIME";
    lines[k++] = "SMTPUTF8";
    lines[k++] = "ENHANCEDSTATUSCODES";
    lines[k++] = "DSN";
    if (s->cfg->tls == SMTPD_TLS_STARTTLS && !smtpd_tls_on(s))
        lines[k++] = "STARTTLS";
    if (smtpd_auth_offered(s))
        lines[k++] = "AUTH PLAIN LOGIN"; /* never in clear, unless configured (RFC 4954 4) */
    lines[k++] = "CHUNKING";
    RM_ASSERT(k <= RM_ARRAY_LEN(lines));
    for (size_t i = 0; i < k; i++)
        smtpd_put(s, &R_EHLO, i + 1 < k, lines[i]);
}

static void smtpd_cmd_mail(struct smtpd *s, struct rm_span arg)
{
    if (smtpd_st(s) == SMTPD_ST_INIT) {
        smtpd_reply(s, &R_HELO_FIRST);
        return;
    }
    if (smtpd_st(s) != SMTPD_ST_READY) {
        smtpd_reply(s, &R_NESTED);
        return;
    }
    if (s->cfg->auth == SMTPD_AUTH_REQUIRED && !(s->flags & SMTPD_F_AUTH)) {
        smtpd_reply(s, &R_AUTH_NEEDED); /* RFC 4954 6 */
        return;
    }
    if (!smtpd_take_prefix(&arg, "FROM:")) {
        smtpd_reply(s, &R_MAIL_SYNTAX);
        return;
    }
    if (arg.len > 0 && arg.p[0] == ' ') { /* "MAIL FROM: <a@b>", as Postfix allows */
        arg.p++;
        arg.len--;
    }

    /* Parsed with UTF-8 allowed to find where it ends; whether UTF-8 may be
     * there depends on the SMTPUTF8 parameter after it. */
    struct smtp_path path;
    int rc = smtp_path_parse(arg.p, arg.len, true, true, &path);
    if (rc < 0) {
        smtpd_reply(s, rc == SMTP_ADDR_UTF8 ? &R_UTF8 : &R_BAD_SENDER);
        return;
    }
    struct rm_span rest = rm_span_make(arg.p + rc, arg.len - (size_t)rc);
    if (rest.len > 0 && rest.p[0] != ' ') {
        smtpd_reply(s, &R_BAD_SENDER); /* "<a@b>junk" */
        return;
    }
    struct smtpd_mail_opts o = {0, Q_RET_UNSPEC, rm_span_make(smtpd_empty, 0)};
    const struct smtp_reply *err = smtpd_params(s, rest, true, &o, NULL, NULL);
    if (err) {
        smtpd_reply(s, err);
        return;
    }
    if (path.utf8 && !(o.flags & Q_ENV_SMTPUTF8)) {
        smtpd_reply(s, &R_UTF8);
        return;
    }
    if (!smtpd_arena_fits(s, path.mailbox.len + o.envid.len)) {
        smtpd_reply(s, &R_NO_STORAGE); /* cannot happen: the arena holds >= 8 KiB */
        return;
    }
    RM_ASSERT(s->body_head == NULL && s->env.rcpt_count == 0);
    s->env.sender = smtpd_arena_put(s, path.mailbox);
    s->env.envid = smtpd_arena_put(s, o.envid);
    s->env.flags = o.flags;
    s->env.ret = o.ret;
    smtpd_enter(s, SMTPD_ST_MAIL);
    smtpd_reply(s, &R_MAIL_OK);
}

static void smtpd_cmd_rcpt(struct smtpd *s, struct rm_span arg)
{
    if (smtpd_st(s) == SMTPD_ST_CHUNKING) {
        smtpd_reply(s, &R_IN_BDAT);
        return;
    }
    if (smtpd_st(s) != SMTPD_ST_MAIL && smtpd_st(s) != SMTPD_ST_RCPT) {
        smtpd_reply(s, &R_NEED_MAIL);
        return;
    }
    if (!smtpd_take_prefix(&arg, "TO:")) {
        smtpd_reply(s, &R_RCPT_SYNTAX);
        return;
    }
    if (arg.len > 0 && arg.p[0] == ' ') {
        arg.p++;
        arg.len--;
    }
    struct smtp_path path;
    int rc = smtp_path_parse(arg.p, arg.len, true, false, &path);
    if (rc < 0) {
        /* No domain, even <postmaster> (RFC 5321 4.5.1): ringmta is an outbound
         * relay with no local mailboxes, so there is nowhere to deliver it. */
        smtpd_reply(s, rc == SMTP_ADDR_NO_DOMAIN ? &R_NO_DOMAIN
                       : rc == SMTP_ADDR_UTF8    ? &R_UTF8
                                                 : &R_BAD_RCPT);
        return;
    }
    struct rm_span rest = rm_span_make(arg.p + rc, arg.len - (size_t)rc);
    if (rest.len > 0 && rest.p[0] != ' ') {
        smtpd_reply(s, &R_BAD_RCPT);
        return;
    }
    uint8_t notify = 0;
    struct rm_span orcpt = rm_span_make(smtpd_empty, 0);
    const struct smtp_reply *err = smtpd_params(s, rest, false, NULL, &notify, &orcpt);
    if (err) {
        smtpd_reply(s, err);
        return;
    }
    if (path.utf8 && !(s->env.flags & Q_ENV_SMTPUTF8)) {
        smtpd_reply(s, &R_UTF8);
        return;
    }
    uint32_t n = s->env.rcpt_count;
    if (n >= s->cfg->rcpt_max || n >= s->mem.rcpt_cap ||
        !smtpd_arena_fits(s, path.mailbox.len + orcpt.len)) {
        smtpd_reply(s, &R_TOO_MANY_RCPTS);
        return;
    }
    /* Every recipient needs relay permission: ringmta delivers only elsewhere,
     * so this is the one check that keeps it from being an open relay. */
    if (!s->peer.relay_ok && !(s->flags & SMTPD_F_AUTH)) {
        smtpd_reply(s, &R_RELAY);
        return;
    }
    struct q_rcpt *r = &s->mem.rcpts[n];
    memset(r, 0, sizeof(*r));
    r->addr = smtpd_arena_put(s, path.mailbox);
    r->orcpt = smtpd_arena_put(s, orcpt);
    r->last_reply = rm_span_make(smtpd_empty, 0);
    r->notify = notify;
    r->state = Q_RCPT_PENDING;
    s->env.rcpt_count = n + 1;
    if (smtpd_st(s) == SMTPD_ST_MAIL)
        smtpd_enter(s, SMTPD_ST_RCPT);
    smtpd_reply(s, &R_RCPT_OK);
}

static void smtpd_cmd_data(struct smtpd *s, struct rm_span arg)
{
    switch (smtpd_st(s)) {
    case SMTPD_ST_INIT:
    case SMTPD_ST_READY:
        smtpd_reply(s, &R_NEED_MAIL);
        return;
    case SMTPD_ST_MAIL:
        smtpd_reply(s, &R_NEED_RCPT);
        return;
    case SMTPD_ST_CHUNKING:
        smtpd_reply(s, &R_MIXED); /* RFC 3030 2 */
        return;
    case SMTPD_ST_RCPT:
        break;
    case SMTPD_ST_DATA:
    case SMTPD_ST_BDAT:
    case SMTPD_ST_DISCARD:
    case SMTPD_ST_STORING:
    case SMTPD_ST_AUTH:
    case SMTPD_ST_AUTH_CHECK:
    case SMTPD_ST_TLS:
    case SMTPD_ST_CLOSED:
        RM_ASSERT(!"DATA outside command mode");
        return;
    }
    if (arg.len > 0) {
        smtpd_reply(s, &R_DATA_SYNTAX);
        return;
    }
    if (!smtpd_body_start(s)) {
        smtpd_reply(s, &R_NO_STORAGE);
        return;
    }
    s->scan = SMTPD_SCAN_BOL;
    smtpd_enter(s, SMTPD_ST_DATA);
    smtpd_reply(s, &R_DATA_GO);
}

/* "BDAT" SP chunk-size [SP "LAST"] (RFC 3030 2). */
static bool smtpd_parse_bdat(struct rm_span arg, uint64_t *size, bool *last)
{
    size_t n = 0;
    while (n < arg.len && arg.p[n] != ' ')
        n++;
    if (!smtpd_parse_u64(rm_span_make(arg.p, n), size))
        return false;
    struct rm_span rest = rm_span_make(arg.p + n, arg.len - n);
    while (rest.len > 0 && rest.p[0] == ' ') {
        rest.p++;
        rest.len--;
    }
    *last = rest.len > 0;
    return rest.len == 0 || rm_span_ieq(rest, "LAST");
}

static void smtpd_cmd_bdat(struct smtpd *s, struct rm_span arg)
{
    uint64_t size;
    bool last;
    if (!smtpd_parse_bdat(arg, &size, &last)) {
        smtpd_reply(s, &R_BDAT_SYNTAX); /* no size known: nothing to skip */
        return;
    }
    switch (smtpd_st(s)) {
    case SMTPD_ST_INIT:
    case SMTPD_ST_READY:
    case SMTPD_ST_MAIL:
        /* Refused, but its octets follow all the same: read and drop them, or
         * they would run as commands. */
        smtpd_reply(s, smtpd_st(s) == SMTPD_ST_MAIL ? &R_NEED_RCPT : &R_NEED_MAIL);
        if (size > 0) {
            s->discard_ret = s->state;
            s->bdat_left = size;
            smtpd_enter(s, SMTPD_ST_DISCARD);
        }
        return;
    case SMTPD_ST_RCPT:
        s->env.flags |= Q_ENV_BDAT;
        if (!smtpd_body_start(s))
            smtpd_content_fail(s, SMTPD_CERR_STORAGE); /* answered after the chunk */
        s->scan = SMTPD_SCAN_TEXT;
        break;
    case SMTPD_ST_CHUNKING:
        break;
    case SMTPD_ST_DATA:
    case SMTPD_ST_BDAT:
    case SMTPD_ST_DISCARD:
    case SMTPD_ST_STORING:
    case SMTPD_ST_AUTH:
    case SMTPD_ST_AUTH_CHECK:
    case SMTPD_ST_TLS:
    case SMTPD_ST_CLOSED:
        RM_ASSERT(!"BDAT outside command mode");
        return;
    }
    s->bdat_left = size;
    s->bdat_size = size;
    if (last)
        s->flags |= SMTPD_F_LAST;
    else
        s->flags &= ~SMTPD_F_LAST;
    smtpd_enter(s, SMTPD_ST_BDAT);
    if (size == 0)
        smtpd_bdat_chunk_end(s);
}

static void smtpd_cmd_starttls(struct smtpd *s, struct rm_span arg)
{
    if (smtpd_tls_on(s)) {
        smtpd_reply(s, &R_TLS_ACTIVE);
        return;
    }
    if (s->cfg->tls != SMTPD_TLS_STARTTLS) {
        smtpd_reply(s, &R_NOT_IMPL);
        return;
    }
    if (arg.len > 0) {
        smtpd_reply(s, &R_TLS_SYNTAX);
        return;
    }
    if (smtpd_st(s) != SMTPD_ST_INIT && smtpd_st(s) != SMTPD_ST_READY) {
        smtpd_reply(s, &R_IN_TX);
        return;
    }
    smtpd_reply(s, &R_TLS_GO);
    smtpd_enter(s, SMTPD_ST_TLS); /* feed returns right after this line */
}

/* Acts on one step of the SASL exchange. */
static void smtpd_sasl_step(struct smtpd *s, enum auth_sasl_rc rc, const struct auth_sasl_out *out)
{
    switch (rc) {
    case AUTH_SASL_CHALLENGE:
        smtpd_put(s, &R_AUTH_CHALLENGE, false, out->challenge);
        if (smtpd_st(s) != SMTPD_ST_AUTH)
            smtpd_enter(s, SMTPD_ST_AUTH);
        return;
    case AUTH_SASL_DONE:
        s->cred_user = out->user; /* borrowed from s->sasl, which stays untouched */
        s->cred_password = out->password;
        smtpd_enter(s, SMTPD_ST_AUTH_CHECK);
        return;
    case AUTH_SASL_FAIL:
        smtpd_sasl_wipe(s);
        smtpd_reply(s, &out->reply);
        if (smtpd_st(s) != SMTPD_ST_READY)
            smtpd_enter(s, SMTPD_ST_READY);
        return;
    }
    RM_ASSERT(!"a SASL result");
}

static void smtpd_cmd_auth(struct smtpd *s, struct rm_span arg)
{
    if (s->cfg->auth == SMTPD_AUTH_NONE) {
        smtpd_reply(s, &R_NOT_IMPL);
        return;
    }
    if (smtpd_st(s) == SMTPD_ST_INIT || !(s->flags & SMTPD_F_ESMTP)) {
        smtpd_reply(s, &R_EHLO_FIRST);
        return;
    }
    if (smtpd_st(s) != SMTPD_ST_READY) {
        smtpd_reply(s, &R_IN_TX);
        return;
    }
    if (s->flags & SMTPD_F_AUTH) {
        smtpd_reply(s, &R_AUTH_TWICE);
        return;
    }
    if (!smtpd_tls_on(s) && !s->cfg->auth_ok_without_tls) {
        smtpd_reply(s, &R_AUTH_TLS);
        return;
    }
    size_t m = 0;
    while (m < arg.len && arg.p[m] != ' ')
        m++;
    struct rm_span mech = rm_span_make(arg.p, m);
    size_t i = m;
    while (i < arg.len && arg.p[i] == ' ')
        i++;
    struct rm_span ir = rm_span_make(arg.p + i, arg.len - i);
    if (mech.len == 0 || memchr(ir.p, ' ', ir.len) != NULL) {
        smtpd_reply(s, &R_AUTH_SYNTAX);
        return;
    }
    struct auth_sasl_out out;
    enum auth_sasl_rc rc = auth_sasl_start(&s->sasl, mech, ir.len > 0 ? &ir : NULL, &out);
    smtpd_sasl_step(s, rc, &out);
}

static enum smtpd_verb smtpd_verb_of(struct rm_span v)
{
    for (size_t i = 0; i < RM_ARRAY_LEN(smtpd_verb_names); i++) {
        if (rm_span_ieq(v, smtpd_verb_names[i]))
            return (enum smtpd_verb)i;
    }
    return SMTPD_V_UNKNOWN;
}

/* One command line, without its CRLF. */
static void smtpd_command(struct smtpd *s, struct rm_span line)
{
    while (line.len > 0 && (line.p[line.len - 1] == ' ' || line.p[line.len - 1] == '\t'))
        line.len--;
    size_t vlen = 0;
    while (vlen < line.len && line.p[vlen] != ' ')
        vlen++;
    size_t a = vlen;
    while (a < line.len && line.p[a] == ' ')
        a++;
    struct rm_span arg = rm_span_make(line.p + a, line.len - a);

    switch (smtpd_verb_of(rm_span_make(line.p, vlen))) {
    case SMTPD_V_EHLO:
        smtpd_cmd_helo(s, arg, true);
        break;
    case SMTPD_V_HELO:
        smtpd_cmd_helo(s, arg, false);
        break;
    case SMTPD_V_MAIL:
        smtpd_cmd_mail(s, arg);
        break;
    case SMTPD_V_RCPT:
        smtpd_cmd_rcpt(s, arg);
        break;
    case SMTPD_V_DATA:
        smtpd_cmd_data(s, arg);
        break;
    case SMTPD_V_BDAT:
        smtpd_cmd_bdat(s, arg);
        break;
    case SMTPD_V_RSET:
        if (arg.len > 0) {
            smtpd_reply(s, &R_RSET_SYNTAX);
            break;
        }
        if (smtpd_st(s) != SMTPD_ST_INIT)
            smtpd_tx_end(s);
        smtpd_reply(s, &R_OK);
        break;
    case SMTPD_V_NOOP:
        smtpd_reply(s, &R_OK);
        break;
    case SMTPD_V_VRFY:
        smtpd_reply(s, arg.len > 0 ? &R_VRFY : &R_VRFY_SYNTAX);
        break;
    case SMTPD_V_EXPN:
        smtpd_reply(s, &R_NOT_IMPL);
        break;
    case SMTPD_V_STARTTLS:
        smtpd_cmd_starttls(s, arg);
        break;
    case SMTPD_V_AUTH:
        smtpd_cmd_auth(s, arg);
        break;
    case SMTPD_V_HELP:
        smtpd_reply(s, &R_HELP);
        break;
    case SMTPD_V_QUIT:
        if (arg.len > 0) {
            smtpd_reply(s, &R_QUIT_SYNTAX);
            break;
        }
        smtpd_reply(s, &R_BYE);
        smtpd_close(s, NULL, NULL);
        break;
    case SMTPD_V_UNKNOWN:
        smtpd_reply(s, &R_UNKNOWN);
        break;
    }
}

/* Command mode: one line, 0 when it is not complete yet. */
static size_t smtpd_step_command(struct smtpd *s, const uint8_t *p, size_t n)
{
    const uint8_t *lf = memchr(p, '\n', n);
    if (s->flags & SMTPD_F_SKIP) {
        if (lf == NULL)
            return n;
        s->flags &= ~SMTPD_F_SKIP;
        return (size_t)(lf - p) + 1;
    }
    size_t max = s->cfg->command_line_max;
    if (lf == NULL) {
        if (n < max)
            return 0;
        /* The caller's buffer is full and holds no LF: over-long. One reply,
         * then drop octets up to the LF, however many feeds that takes. */
        smtpd_reply(s, &R_LINE_LONG);
        s->flags |= SMTPD_F_SKIP;
        return n;
    }
    size_t used = (size_t)(lf - p) + 1;
    if (used > max) {
        smtpd_reply(s, &R_LINE_LONG);
        return used;
    }
    size_t len = used - 1; /* a bare LF ends a command line too (smtpd.h) */
    if (len > 0 && p[len - 1] == '\r')
        len--;
    if (memchr(p, 0, len) != NULL) {
        smtpd_reply(s, &R_LINE_NUL);
        return used;
    }
    smtpd_command(s, rm_span_make(p, len));
    return used;
}

/* AUTH mode: one SASL response line (RFC 4954 4), 0 when it is not complete. */
static size_t smtpd_step_auth(struct smtpd *s, const uint8_t *p, size_t n)
{
    RM_ASSERT(!(s->flags & SMTPD_F_SKIP));
    const uint8_t *lf = memchr(p, '\n', n);
    size_t max = s->cfg->command_line_max;
    struct auth_sasl_out out;
    /* Over-long: passed by length alone (auth.h: p is not read), 500 5.5.6. */
    struct rm_span toolong = rm_span_make(p, (size_t)AUTH_RESPONSE_MAX + 1);
    if (lf == NULL) {
        if (n < max)
            return 0;
        s->flags |= SMTPD_F_SKIP; /* the rest of the line, in command mode */
        smtpd_sasl_step(s, auth_sasl_feed(&s->sasl, toolong, &out), &out);
        return n;
    }
    size_t used = (size_t)(lf - p) + 1;
    if (used > max) {
        smtpd_sasl_step(s, auth_sasl_feed(&s->sasl, toolong, &out), &out);
        return used;
    }
    size_t len = used - 1;
    if (len > 0 && p[len - 1] == '\r')
        len--;
    smtpd_sasl_step(s, auth_sasl_feed(&s->sasl, rm_span_make(p, len), &out), &out);
    return used;
}

/* Room in tx for one more command's replies. Only the space after tail
 * counts: smtpd never compacts tx, because the worker may have a send in
 * flight that points at tx->data + head, and io_uring reads that memory when
 * the send runs, not when it is queued. The worker compacts when no send is
 * in flight, if it likes; without that, rm_buf_consume empties tx once all
 * is sent, so feeding always resumes. */
static bool smtpd_tx_room(const struct smtpd *s)
{
    return rm_buf_space(s->mem.tx) >= SMTPD_TX_RESERVE;
}

/* ---- the API -------------------------------------------------------------- */

void smtpd_init(struct smtpd *s, const struct smtpd_cfg *cfg, const struct smtpd_mem *mem,
                const struct smtpd_peer *peer, uint64_t now_ms)
{
    RM_ASSERT(cfg != NULL && cfg->hostname != NULL);
    RM_ASSERT(cfg->command_line_max >= SMTPD_COMMAND_LINE_MIN);
    RM_ASSERT(cfg->command_line_max <= SMTPD_COMMAND_LINE_MAX_MAX);
    RM_ASSERT(cfg->text_line_max <= SMTPD_TEXT_LINE_MAX_MAX);
    RM_ASSERT(cfg->message_size_max <= SMTPD_MESSAGE_SIZE_MAX);
    RM_ASSERT(cfg->rcpt_max >= 1 && cfg->rcpt_max <= SMTPD_RCPT_MAX_MAX);
    RM_ASSERT(mem != NULL && mem->tx != NULL && mem->pool != NULL && mem->idgen != NULL);
    RM_ASSERT(rm_buf_valid(mem->tx) && mem->tx->cap >= (size_t)2 * SMTPD_TX_RESERVE);
    RM_ASSERT(mem->arena != NULL && mem->arena_cap >= SMTPD_ARENA_BYTES(cfg->rcpt_max));
    RM_ASSERT(mem->rcpts != NULL && mem->rcpt_cap >= cfg->rcpt_max);
    RM_ASSERT(peer != NULL && peer->addr != NULL);

    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    s->mem = *mem;
    s->peer = *peer;
    s->now_ms = now_ms;
    s->state = SMTPD_ST_INIT;
    s->discard_ret = SMTPD_ST_INIT;
    smtpd_tx_clear(s);
    smtpd_sasl_wipe(s);

    char text[SMTP_REPLY_LINE_MAX - 16];
    int n = snprintf(text, sizeof(text), "%.*s ESMTP ringmta", smtpd_host_len(s), cfg->hostname);
    RM_ASSERT(n > 0 && (size_t)n < sizeof(text));
    smtpd_put(s, &R_GREETING, false, text);
}

size_t smtpd_feed(struct smtpd *s, const uint8_t *in, size_t len, uint64_t now_ms,
                  enum smtpd_ev *ev)
{
    RM_ASSERT_DEBUG(rm_buf_valid(s->mem.tx));
    *ev = SMTPD_EV_NONE;
    s->now_ms = now_ms;
    size_t off = 0;
    for (;;) { /* each round consumes input or returns */
        if (smtpd_st(s) == SMTPD_ST_CLOSED) {
            *ev = SMTPD_EV_CLOSE;
            return off;
        }
        if (smtpd_st(s) == SMTPD_ST_TLS) {
            *ev = SMTPD_EV_STARTTLS; /* nothing after the STARTTLS line is taken */
            return off;
        }
        if (smtpd_st(s) == SMTPD_ST_AUTH_CHECK) {
            *ev = SMTPD_EV_AUTH;
            return off;
        }
        if ((s->flags & SMTPD_F_LENT) || off == len || !smtpd_tx_room(s))
            return off;
        const uint8_t *p = in + off;
        size_t n = len - off;
        size_t used = 0;
        switch (smtpd_st(s)) {
        case SMTPD_ST_INIT:
        case SMTPD_ST_READY:
        case SMTPD_ST_MAIL:
        case SMTPD_ST_RCPT:
        case SMTPD_ST_CHUNKING:
            used = smtpd_step_command(s, p, n);
            break;
        case SMTPD_ST_DATA:
            used = smtpd_step_data(s, p, n);
            break;
        case SMTPD_ST_BDAT:
            used = smtpd_step_bdat(s, p, n);
            break;
        case SMTPD_ST_DISCARD:
            used = smtpd_step_discard(s, n);
            break;
        case SMTPD_ST_AUTH:
            used = smtpd_step_auth(s, p, n);
            break;
        case SMTPD_ST_STORING:
        case SMTPD_ST_AUTH_CHECK:
        case SMTPD_ST_TLS:
        case SMTPD_ST_CLOSED:
            RM_ASSERT(!"feeding a storing or closed session");
            return off;
        }
        RM_ASSERT(used <= n);
        off += used;
        smtpd_settle(s);
        if (smtpd_st(s) == SMTPD_ST_STORING) {
            *ev = SMTPD_EV_STORE;
            return off;
        }
        if (used == 0)
            return off;
    }
}

void smtpd_message(const struct smtpd *s, struct q_id *id, const struct q_env **env,
                   const struct rm_chunk **body)
{
    RM_ASSERT(s->flags & SMTPD_F_LENT);
    RM_ASSERT(s->body_head != NULL && s->env.size == s->body_len);
    *id = s->id;
    *env = &s->env;
    *body = s->body_head;
}

void smtpd_stored(struct smtpd *s, int status, uint64_t now_ms)
{
    RM_ASSERT(s->flags & SMTPD_F_LENT);
    s->now_ms = now_ms;
    s->flags &= ~SMTPD_F_LENT;
    if (smtpd_st(s) == SMTPD_ST_CLOSED) {
        smtpd_tx_clear(s); /* closed while storing: the chunks come home, no reply */
        return;
    }
    RM_ASSERT(smtpd_st(s) == SMTPD_ST_STORING);
    /* The one place queue errors become replies (STYLE.md "Errors"). */
    if (status == 0) {
        char id[Q_ID_STR_LEN + 1];
        q_id_format(&s->id, id);
        char text[64];
        int n = snprintf(text, sizeof(text), "Ok: queued as %s", id);
        RM_ASSERT(n > 0 && (size_t)n < sizeof(text));
        smtpd_put(s, &R_QUEUED, false, text);
        s->stats.messages++;
    } else if (status == Q_ERR_MAP_FULL) {
        smtpd_reply(s, &R_NO_STORAGE);
    } else {
        smtpd_reply(s, &R_QUEUE_ERR);
    }
    smtpd_tx_end(s);
    smtpd_settle(s);
}

void smtpd_tls_started(struct smtpd *s, uint64_t now_ms)
{
    s->now_ms = now_ms;
    if (smtpd_st(s) == SMTPD_ST_CLOSED)
        return;
    RM_ASSERT(smtpd_st(s) == SMTPD_ST_TLS);
    RM_ASSERT(!(s->flags & (SMTPD_F_LENT | SMTPD_F_SKIP)));
    /* RFC 3207 4.2: discard all knowledge obtained from the client. */
    smtpd_tx_clear(s);
    smtpd_sasl_wipe(s);
    s->helo_len = 0;
    s->auth_user_len = 0;
    s->flags &= ~(SMTPD_F_ESMTP | SMTPD_F_AUTH);
    s->peer.tls_active = true;
    s->discard_ret = SMTPD_ST_INIT;
    smtpd_enter(s, SMTPD_ST_INIT);
    smtpd_settle(s);
}

void smtpd_auth_credentials(const struct smtpd *s, struct rm_span *user, struct rm_span *password)
{
    RM_ASSERT(smtpd_st(s) == SMTPD_ST_AUTH_CHECK);
    RM_ASSERT(s->cred_user.len > 0 && s->cred_user.len <= AUTH_USER_MAX);
    *user = s->cred_user;
    *password = s->cred_password;
}

void smtpd_auth_result(struct smtpd *s, bool ok, uint64_t now_ms)
{
    s->now_ms = now_ms;
    if (smtpd_st(s) == SMTPD_ST_CLOSED) {
        smtpd_sasl_wipe(s); /* closed meanwhile: no reply */
        return;
    }
    RM_ASSERT(smtpd_st(s) == SMTPD_ST_AUTH_CHECK);
    if (ok) {
        RM_ASSERT(s->cred_user.len > 0 && s->cred_user.len <= sizeof(s->auth_user_buf));
        memcpy(s->auth_user_buf, s->cred_user.p, s->cred_user.len);
        s->auth_user_len = s->cred_user.len;
        s->flags |= SMTPD_F_AUTH;
    }
    smtpd_sasl_wipe(s);
    smtpd_reply(s, ok ? &R_AUTH_OK : &R_AUTH_BAD);
    smtpd_enter(s, SMTPD_ST_READY);
    smtpd_settle(s);
}

bool smtpd_authenticated(const struct smtpd *s)
{
    return (s->flags & SMTPD_F_AUTH) != 0;
}

void smtpd_close_with(struct smtpd *s, const struct smtp_reply *r)
{
    RM_ASSERT(r != NULL);
    smtpd_close(s, r, NULL);
}

bool smtpd_drain(struct smtpd *s)
{
    s->flags |= SMTPD_F_DRAIN;
    if (!smtpd_in_tx(s))
        smtpd_settle(s);
    return smtpd_closing(s);
}

bool smtpd_closing(const struct smtpd *s)
{
    return smtpd_st(s) == SMTPD_ST_CLOSED;
}

bool smtpd_storing(const struct smtpd *s)
{
    return (s->flags & SMTPD_F_LENT) != 0;
}

void smtpd_fini(struct smtpd *s)
{
    RM_ASSERT(!smtpd_storing(s));
    smtpd_close(s, NULL, NULL);
}
