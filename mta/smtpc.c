/* mta/smtpc.c: the outbound SMTP client session, sans-I/O (see smtpc.h).
 *
 * Decisions where RFC 5321 and friends leave room (the header is the manual;
 * these are the reasons):
 * - Output is a sequence of spans, not a copy: commands are built in tx, the
 *   body is offered as slices of the caller's chunks with 1-octet static "."
 *   spans where a line needs stuffing and a static terminator. A 1 GiB body
 *   costs no copy and no tx space, and io_uring sends the spans with one
 *   sendmsg (or SEND_ZC). The price is that the cursor walks the body twice
 *   (once to describe it, once when it is reported sent), which is a memchr.
 * - The pipelined burst goes out in pieces when tx is small: commands are
 *   written only while whole ones fit after tx->tail, and the rest follows
 *   smtpc_sent(). A reply may arrive before the send of its command is
 *   reported (io_uring completions are not ordered between recv and send),
 *   so replies are matched to commands written, not commands reported sent.
 * - While the body is being sent no reply is read (smtpc_feed consumes
 *   nothing): the end-of-data reply may legitimately be processed before the
 *   last send's completion, and reading it then would end the transaction
 *   with body spans still owed. XXX: a server that rejects early and closes
 *   (RFC 5321 4.1.1.4 has it reply after the end of data) costs a TEMP
 *   "lost connection" instead of its 5xx: the message is retried, not
 *   bounced, until it expires.
 * - RSET goes before every transaction but the first on a connection, also
 *   after one that succeeded: cheap with PIPELINING, and it brings the
 *   server back to a known state whatever happened before (Postfix does the
 *   same for cached connections). A refused RSET closes the session and
 *   makes the recipients TEMP whatever its class: they were never tried.
 * - A transaction that sent nothing (refused locally: SMTPUTF8, SIZE, bad
 *   address) needs no RSET before the next one.
 * - CHUNKING is recorded, BDAT never used: DATA with dot-stuffing is one
 *   code path for every server, and stored bodies are already CRLF-clean.
 * - An 8-bit body to a server without 8BITMIME is sent as it is, without
 *   BODY=8BITMIME, and never converted to quoted-printable. RFC 6152 would
 *   have the client convert or return it; practice (Postfix sends 8-bit mail
 *   that was not declared 8BITMIME as it is) is that such servers take it,
 *   and a refusal is a reply like any other. XXX: Postfix does convert
 *   declared 8BITMIME MIME content to 7bit by default; we do not convert.
 * - SMTPUTF8 (RFC 6531): a message needs it when flagged Q_ENV_SMTPUTF8 or
 *   when the sender or one of its recipients here is non-ASCII (an envelope
 *   from another path than smtpd may lack the flag). Without the extension
 *   the client must not send it (RFC 6531 3.2, 3.7.4): it fails permanently
 *   with the codes RFC 6531 registered: X.6.7 "Non-ASCII addresses not
 *   permitted for that sender/recipient" when the sender's or that
 *   recipient's address is non-ASCII, X.6.9 "UTF-8 header message cannot be
 *   transferred to one or more recipients" when only the content needs it.
 * - Envelope strings come from our own queue (smtpd checked them) but are
 *   checked again before they go on the wire: an address with a control
 *   octet is refused locally (5.1.7 sender, 5.1.3 recipient) rather than
 *   let it inject commands; an ENVID or ORCPT that is not printable ASCII or
 *   is over 500 octets is left out (they are optional information).
 * - Replies: a bare LF ends a line (as Postfix reads them); the second digit
 *   of a code may be any digit; the enhanced status is read from the first
 *   line only, and only when ENHANCEDSTATUSCODES was offered (RFC 2034).
 *   Subject and detail are kept when <= 99 (smtp_reply_format's range).
 * - A reply of a class that makes no sense for its command (3xx to MAIL or
 *   RCPT, 2xx or 3xx other than 354 to DATA, 3xx to the end of data) is
 *   TEMP, and the session closes after the transaction: the server's state
 *   is not what we think.
 * - A 421 ends the session at once (RFC 5321 3.8); a malformed reply, a
 *   timeout or a lost connection too. QUIT is sent only after a well-formed
 *   refusal, when nothing else is outstanding (else it would be read as
 *   message content or answer the wrong command).
 * - Local texts follow Postfix's wording, so log readers and bounce parsers
 *   that know Postfix know ours. The enhanced statuses: 4.4.2 (bad
 *   connection) for timeouts and lost connections, 4.5.0 (protocol) for
 *   malformed replies, 4.3.0 for the caller's abort.
 */
#include "smtpc.h"

#include <stdarg.h>

enum smtpc_state {
    SMTPC_ST_GREETING, /* waiting for the 220 */
    SMTPC_ST_EHLO,     /* EHLO sent */
    SMTPC_ST_HELO,     /* HELO sent, after EHLO was refused */
    SMTPC_ST_READY,    /* idle, a message may be given */
    SMTPC_ST_CMDS,     /* a transaction's RSET/MAIL/RCPT/DATA written and answered */
    SMTPC_ST_BODY,     /* after the 354: the body and the final "." being sent */
    SMTPC_ST_DOT,      /* all sent; waiting for the end-of-data reply */
    SMTPC_ST_QUIT,     /* QUIT written, waiting for the 221 */
    SMTPC_ST_CLOSED,   /* takes no more input */
};

#define SMTPC_F_RSET  0x01u /* a MAIL went out on this connection: RSET before the next */
#define SMTPC_F_STOP  0x02u /* write no more commands in this transaction (MAIL refused) */
#define SMTPC_F_UTF8  0x04u /* this transaction uses SMTPUTF8 */
#define SMTPC_F_CLOSE 0x08u /* close when this transaction ends (an unexpected reply) */

#define SMTPC_RF_ESC 0x01u /* reply_esc holds the reply's enhanced status */

/* Positions in a transaction's command sequence: [RSET] MAIL RCPT.. DATA.
 * Recipients refused before sending (bad address) keep their position but
 * are skipped: nothing is written, no reply awaited. */
#define SMTPC_POS_RSET  0u
#define SMTPC_POS_MAIL  1u
#define SMTPC_POS_RCPT0 2u

/* The longest commands, worked out (octets): */
#define SMTPC_ADDR_MAX (SMTP_PATH_MAX - 2) /* a mailbox without its <> */
#define SMTPC_MAIL_MAX                                                                             \
    (11 + SMTPC_ADDR_MAX + 1 + 26 + 14 + 9 + 9 + 7 + SMTP_XTEXT_MAX + 2) /* "MAIL FROM:<" a ">"    \
    " SIZE=" 20 digits, " BODY=8BITMIME", " SMTPUTF8", " RET=HDRS", " ENVID=" x, CRLF */
#define SMTPC_RCPT_CMD_MAX                                                                         \
    (9 + SMTPC_ADDR_MAX + 1 + 29 + 7 + SMTP_XTEXT_MAX + 2) /* "RCPT TO:<" a ">" " NOTIFY=SUCCESS,  \
    FAILURE,DELAY" " ORCPT=" x CRLF */
static_assert(SMTPC_MAIL_MAX <= SMTPC_CMD_MAX, "MAIL fits SMTPC_CMD_MAX");
static_assert(SMTPC_RCPT_CMD_MAX <= SMTPC_CMD_MAX, "RCPT fits SMTPC_CMD_MAX");
static_assert(5 + SMTP_DOMAIN_MAX + 2 <= SMTPC_CMD_MAX, "EHLO fits SMTPC_CMD_MAX");
static_assert(SMTPC_TEXT_MAX >= SMTPC_REPLY_LINE_MAX - 2, "a whole reply line is kept");

static const uint8_t smtpc_dot[1] = {'.'};
static const uint8_t smtpc_term[5] = {'\r', '\n', '.', '\r', '\n'}; /* +2: ".\r\n" alone */

/* ---- state ---------------------------------------------------------------- */

static bool smtpc_move_ok(enum smtpc_state from, enum smtpc_state to)
{
    switch (from) {
    case SMTPC_ST_GREETING:
        return to == SMTPC_ST_EHLO || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_EHLO:
        return to == SMTPC_ST_HELO || to == SMTPC_ST_READY || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_HELO:
        return to == SMTPC_ST_READY || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_READY:
        return to == SMTPC_ST_CMDS || to == SMTPC_ST_QUIT || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_CMDS:
        return to == SMTPC_ST_READY || to == SMTPC_ST_BODY || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_BODY:
        return to == SMTPC_ST_DOT || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_DOT:
        return to == SMTPC_ST_READY || to == SMTPC_ST_CLOSED;
    case SMTPC_ST_QUIT:
        return to == SMTPC_ST_CLOSED;
    case SMTPC_ST_CLOSED:
        return false;
    }
    return false;
}

static void smtpc_enter(struct smtpc *s, enum smtpc_state to)
{
    RM_ASSERT(smtpc_move_ok((enum smtpc_state)s->state, to));
    s->state = (int)to;
}

static enum smtpc_state smtpc_st(const struct smtpc *s)
{
    return (enum smtpc_state)s->state;
}

/* ---- names, texts, timeouts ---------------------------------------------- */

const char *smtpc_cmd_name(enum smtpc_cmd c)
{
    switch (c) {
    case SMTPC_CMD_NONE:
        return "none";
    case SMTPC_CMD_GREETING:
        return "greeting";
    case SMTPC_CMD_EHLO:
        return "EHLO";
    case SMTPC_CMD_HELO:
        return "HELO";
    case SMTPC_CMD_RSET:
        return "RSET";
    case SMTPC_CMD_MAIL:
        return "MAIL FROM";
    case SMTPC_CMD_RCPT:
        return "RCPT TO";
    case SMTPC_CMD_DATA:
        return "DATA";
    case SMTPC_CMD_BODY:
        return "message body";
    case SMTPC_CMD_DOT:
        return "end of DATA";
    case SMTPC_CMD_QUIT:
        return "QUIT";
    }
    return "?";
}

/* "... while <step>", as Postfix words it. */
static const char *smtpc_step(enum smtpc_cmd c)
{
    switch (c) {
    case SMTPC_CMD_NONE:
        return "idle";
    case SMTPC_CMD_GREETING:
        return "receiving the initial server greeting";
    case SMTPC_CMD_EHLO:
        return "performing the EHLO handshake";
    case SMTPC_CMD_HELO:
        return "performing the HELO handshake";
    case SMTPC_CMD_RSET:
        return "sending RSET";
    case SMTPC_CMD_MAIL:
        return "sending MAIL FROM";
    case SMTPC_CMD_RCPT:
        return "sending RCPT TO";
    case SMTPC_CMD_DATA:
        return "sending DATA command";
    case SMTPC_CMD_BODY:
        return "sending message body";
    case SMTPC_CMD_DOT:
        return "sending end of data -- message may be sent more than once";
    case SMTPC_CMD_QUIT:
        return "sending QUIT";
    }
    return "?";
}

static uint32_t smtpc_limit_ms(const struct smtpc *s, enum smtpc_cmd c)
{
    const struct smtpc_cfg *cfg = s->cfg;
    switch (c) {
    case SMTPC_CMD_GREETING:
        return cfg->greeting_timeout_ms;
    case SMTPC_CMD_EHLO:
    case SMTPC_CMD_HELO:
        return cfg->helo_timeout_ms;
    case SMTPC_CMD_RSET:
        return cfg->rset_timeout_ms;
    case SMTPC_CMD_MAIL:
        return cfg->mail_timeout_ms;
    case SMTPC_CMD_RCPT:
        return cfg->rcpt_timeout_ms;
    case SMTPC_CMD_DATA:
        return cfg->data_timeout_ms;
    case SMTPC_CMD_BODY:
        return cfg->block_timeout_ms;
    case SMTPC_CMD_DOT:
        return cfg->dot_timeout_ms;
    case SMTPC_CMD_QUIT:
        return cfg->quit_timeout_ms;
    case SMTPC_CMD_NONE:
        break;
    }
    RM_ASSERT(!"no timeout for this step");
    return 0;
}

/* ---- the transaction's command sequence --------------------------------- */

static uint32_t smtpc_pos_data(const struct smtpc *s)
{
    return SMTPC_POS_RCPT0 + s->msg.rcpt_count;
}

static enum smtpc_cmd smtpc_kind(const struct smtpc *s, uint32_t pos)
{
    if (pos == SMTPC_POS_RSET)
        return SMTPC_CMD_RSET;
    if (pos == SMTPC_POS_MAIL)
        return SMTPC_CMD_MAIL;
    if (pos < smtpc_pos_data(s))
        return SMTPC_CMD_RCPT;
    RM_ASSERT(pos == smtpc_pos_data(s));
    return SMTPC_CMD_DATA;
}

/* Refused before anything was sent: no RCPT for it. */
static bool smtpc_refused_locally(const struct smtpc_result *r)
{
    return r->outcome != SMTPC_PENDING && r->cmd == SMTPC_CMD_NONE;
}

/* pos, or the first position after it that is not a skipped recipient. */
static uint32_t smtpc_skip(const struct smtpc *s, uint32_t pos)
{
    while (pos >= SMTPC_POS_RCPT0 && pos < smtpc_pos_data(s) &&
           smtpc_refused_locally(&s->mem.results[pos - SMTPC_POS_RCPT0]))
        pos++;
    return pos;
}

/* What the session is doing, for texts and timeouts. */
static enum smtpc_cmd smtpc_current(const struct smtpc *s)
{
    switch (smtpc_st(s)) {
    case SMTPC_ST_GREETING:
        return SMTPC_CMD_GREETING;
    case SMTPC_ST_EHLO:
        return SMTPC_CMD_EHLO;
    case SMTPC_ST_HELO:
        return SMTPC_CMD_HELO;
    case SMTPC_ST_CMDS:
        /* The reply awaited; with none awaited, the command to write next. */
        return smtpc_kind(s, s->answered);
    case SMTPC_ST_BODY:
        return SMTPC_CMD_BODY;
    case SMTPC_ST_DOT:
        return SMTPC_CMD_DOT;
    case SMTPC_ST_QUIT:
        return SMTPC_CMD_QUIT;
    case SMTPC_ST_READY:
    case SMTPC_ST_CLOSED:
        return SMTPC_CMD_NONE;
    }
    return SMTPC_CMD_NONE;
}

static void smtpc_rearm(struct smtpc *s, uint64_t now_ms)
{
    s->deadline_ms = now_ms + smtpc_limit_ms(s, smtpc_current(s));
}

/* ---- the arena ------------------------------------------------------------ */

/* Copies p[0..n) (n <= SMTPC_TEXT_MAX) into the arena. The arena holds one
 * text per result-bearing reply (SMTPC_ARENA_BYTES), so this cannot fail. */
static struct rm_span smtpc_keep(struct smtpc *s, const uint8_t *p, size_t n)
{
    RM_ASSERT(n <= SMTPC_TEXT_MAX);
    RM_ASSERT(s->arena_used + n <= s->mem.arena_cap);
    uint8_t *dst = s->mem.arena + s->arena_used;
    if (n > 0)
        memcpy(dst, p, n);
    s->arena_used += n;
    return rm_span_make(dst, n);
}

__attribute__((format(printf, 2, 3))) static struct rm_span smtpc_keepf(struct smtpc *s,
                                                                        const char *fmt, ...)
{
    char text[SMTPC_TEXT_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    RM_ASSERT(n >= 0);
    /* A long peer name cuts the sentence; the text stays bounded. */
    return smtpc_keep(s, (const uint8_t *)text, RM_MIN((size_t)n, (size_t)SMTPC_TEXT_MAX));
}

/* ---- results ---------------------------------------------------------------- */

static uint8_t smtpc_class_digit(enum smtpc_outcome o)
{
    switch (o) {
    case SMTPC_OK:
        return 2;
    case SMTPC_TEMP:
        return 4;
    case SMTPC_PERM:
        return 5;
    case SMTPC_PENDING:
        break;
    }
    RM_ASSERT(!"no class for a pending outcome");
    return 0;
}

/* A refusal's outcome: 5xx permanent, anything else (4xx, or a class that
 * makes no sense for the command) temporary. */
static enum smtpc_outcome smtpc_refusal(uint16_t code)
{
    return code / 100 == 5 ? SMTPC_PERM : SMTPC_TEMP;
}

static void smtpc_set(struct smtpc *s, uint32_t i, enum smtpc_outcome o, enum smtpc_cmd cmd,
                      uint16_t code, const uint8_t esc[3], struct rm_span text)
{
    struct smtpc_result *r = &s->mem.results[i];
    RM_ASSERT(r->outcome == SMTPC_PENDING);
    RM_ASSERT(o != SMTPC_PENDING && esc[0] == smtpc_class_digit(o));
    if (r->cmd == SMTPC_CMD_RCPT && r->code / 100 == 2) {
        RM_ASSERT(s->accepted > 0);
        s->accepted--;
    }
    r->outcome = o;
    r->cmd = cmd;
    r->code = code;
    memcpy(r->esc, esc, 3);
    r->text = text;
    RM_ASSERT(s->unresolved > 0);
    s->unresolved--;
}

/* The enhanced status of the reply just read, for an outcome o: the reply's
 * when the server uses them and it is of o's class, else x.0.0. */
static void smtpc_reply_esc(const struct smtpc *s, enum smtpc_outcome o, uint8_t esc[3])
{
    uint8_t cls = smtpc_class_digit(o);
    if ((s->caps.flags & SMTPC_CAP_ENHANCEDSTATUSCODES) && (s->reply_flags & SMTPC_RF_ESC) &&
        s->reply_esc[0] == cls) {
        memcpy(esc, s->reply_esc, 3);
        return;
    }
    esc[0] = cls;
    esc[1] = 0;
    esc[2] = 0;
}

/* Resolves recipient i (or, with all, every unresolved one) with the reply
 * just read. Its text is copied once. */
static void smtpc_by_reply(struct smtpc *s, uint32_t i, bool all, enum smtpc_outcome o,
                           enum smtpc_cmd cmd)
{
    if (s->unresolved == 0)
        return;
    uint8_t esc[3];
    smtpc_reply_esc(s, o, esc);
    struct rm_span text = smtpc_keep(s, s->reply_text, s->reply_len);
    if (!all) {
        smtpc_set(s, i, o, cmd, s->reply_code, esc, text);
        return;
    }
    for (uint32_t k = 0; k < s->msg.rcpt_count; k++) {
        if (s->mem.results[k].outcome == SMTPC_PENDING)
            smtpc_set(s, k, o, cmd, s->reply_code, esc, text);
    }
}

static void smtpc_by_local(struct smtpc *s, enum smtpc_outcome o, enum smtpc_cmd cmd,
                           const uint8_t esc[3], struct rm_span text)
{
    for (uint32_t k = 0; k < s->msg.rcpt_count; k++) {
        if (s->mem.results[k].outcome == SMTPC_PENDING)
            smtpc_set(s, k, o, cmd, 0, esc, text);
    }
}

/* ---- output --------------------------------------------------------------- */

/* Appends a command after tx->tail if it fits there whole; never compacts
 * (a send may be in flight over tx->data + head). */
static bool smtpc_put(struct smtpc *s, const char *p, size_t n)
{
    RM_ASSERT(n <= SMTPC_CMD_MAX);
    if (rm_buf_space(s->mem.tx) < n)
        return false;
    bool ok = rm_buf_append(s->mem.tx, p, n);
    RM_ASSERT(ok);
    return true;
}

/* A small appender for building one command line. */
struct smtpc_line {
    char b[SMTPC_CMD_MAX];
    size_t n;
};

static void line_add(struct smtpc_line *l, const void *p, size_t n)
{
    RM_ASSERT(l->n + n <= sizeof(l->b));
    if (n > 0)
        memcpy(l->b + l->n, p, n);
    l->n += n;
}

static void line_str(struct smtpc_line *l, const char *str)
{
    line_add(l, str, strlen(str));
}

static void line_span(struct smtpc_line *l, struct rm_span sp)
{
    line_add(l, sp.p, sp.len);
}

/* Closes the session. polite: say QUIT first, when nothing else is owed
 * (no reply outstanding, tx empty: the QUIT cannot be taken for content or
 * answer the wrong command). */
static void smtpc_close(struct smtpc *s, bool polite)
{
    if (smtpc_st(s) == SMTPC_ST_CLOSED)
        return;
    bool idle = smtpc_st(s) != SMTPC_ST_CMDS || s->answered == s->queued;
    if (polite && idle && smtpc_st(s) != SMTPC_ST_BODY && rm_buf_len(s->mem.tx) == 0) {
        bool ok = smtpc_put(s, "QUIT\r\n", 6);
        RM_ASSERT(ok); /* tx is empty and at least SMTPC_TX_MIN */
    }
    smtpc_enter(s, SMTPC_ST_CLOSED);
    s->deadline_ms = UINT64_MAX;
}

static void smtpc_hello(struct smtpc *s, const char *verb)
{
    struct smtpc_line l = {.n = 0};
    line_str(&l, verb);
    line_str(&l, " ");
    line_str(&l, s->cfg->helo_name);
    line_str(&l, "\r\n");
    /* tx holds at most the previous EHLO: it fits (SMTPC_TX_MIN). */
    bool ok = smtpc_put(s, l.b, l.n);
    RM_ASSERT(ok);
}

/* ---- envelope checks ---------------------------------------------------- */

static bool smtpc_ascii(struct rm_span sp)
{
    for (size_t i = 0; i < sp.len; i++) {
        if (sp.p[i] >= 0x80)
            return false;
    }
    return true;
}

/* May go between <> on the wire: bounded, no control octet (CR, LF, NUL
 * would end or split the command). */
static bool smtpc_addr_ok(struct rm_span sp)
{
    if (sp.len > SMTPC_ADDR_MAX)
        return false;
    for (size_t i = 0; i < sp.len; i++) {
        if (sp.p[i] < 0x20 || sp.p[i] == 0x7f)
            return false;
    }
    return true;
}

/* An ENVID or ORCPT value worth sending: printable ASCII without SP. */
static bool smtpc_xtext_ok(struct rm_span sp)
{
    if (sp.len == 0 || sp.len > SMTP_XTEXT_MAX)
        return false;
    for (size_t i = 0; i < sp.len; i++) {
        if (sp.p[i] <= 0x20 || sp.p[i] >= 0x7f)
            return false;
    }
    return true;
}

static const struct q_rcpt *smtpc_rcpt(const struct smtpc *s, uint32_t i)
{
    return &s->msg.env->rcpts[s->msg.rcpt_idx[i]];
}

/* ---- commands ------------------------------------------------------------- */

static void smtpc_mail_line(const struct smtpc *s, struct smtpc_line *l)
{
    const struct q_env *env = s->msg.env;
    uint32_t caps = s->caps.flags;
    line_str(l, "MAIL FROM:<");
    line_span(l, env->sender);
    line_str(l, ">");
    if (caps & SMTPC_CAP_SIZE) {
        char num[32];
        int n = snprintf(num, sizeof(num), " SIZE=%llu", (unsigned long long)env->size);
        RM_ASSERT(n > 0 && (size_t)n < sizeof(num));
        line_add(l, num, (size_t)n);
    }
    /* 8-bit without 8BITMIME offered: sent without the parameter (top). */
    if ((env->flags & (Q_ENV_8BITMIME | Q_ENV_8BIT)) && (caps & SMTPC_CAP_8BITMIME))
        line_str(l, " BODY=8BITMIME");
    if (s->flags & SMTPC_F_UTF8)
        line_str(l, " SMTPUTF8");
    if (caps & SMTPC_CAP_DSN) {
        if (env->ret == Q_RET_FULL)
            line_str(l, " RET=FULL");
        else if (env->ret == Q_RET_HDRS)
            line_str(l, " RET=HDRS");
        if (smtpc_xtext_ok(env->envid)) {
            line_str(l, " ENVID=");
            line_span(l, env->envid);
        }
    }
    line_str(l, "\r\n");
}

static void smtpc_rcpt_line(const struct smtpc *s, uint32_t i, struct smtpc_line *l)
{
    const struct q_rcpt *r = smtpc_rcpt(s, i);
    line_str(l, "RCPT TO:<");
    line_span(l, r->addr);
    line_str(l, ">");
    if (s->caps.flags & SMTPC_CAP_DSN) {
        if (r->notify & Q_NOTIFY_NEVER) {
            line_str(l, " NOTIFY=NEVER");
        } else if (r->notify != 0) {
            const char *sep = " NOTIFY=";
            if (r->notify & Q_NOTIFY_SUCCESS) {
                line_str(l, sep);
                line_str(l, "SUCCESS");
                sep = ",";
            }
            if (r->notify & Q_NOTIFY_FAILURE) {
                line_str(l, sep);
                line_str(l, "FAILURE");
                sep = ",";
            }
            if (r->notify & Q_NOTIFY_DELAY) {
                line_str(l, sep);
                line_str(l, "DELAY");
            }
        }
        if (smtpc_xtext_ok(r->orcpt)) {
            line_str(l, " ORCPT=");
            line_span(l, r->orcpt);
        }
    }
    line_str(l, "\r\n");
}

static void smtpc_command(const struct smtpc *s, uint32_t pos, struct smtpc_line *l)
{
    switch (smtpc_kind(s, pos)) {
    case SMTPC_CMD_RSET:
        line_str(l, "RSET\r\n");
        return;
    case SMTPC_CMD_MAIL:
        smtpc_mail_line(s, l);
        return;
    case SMTPC_CMD_RCPT:
        smtpc_rcpt_line(s, pos - SMTPC_POS_RCPT0, l);
        return;
    case SMTPC_CMD_DATA:
        line_str(l, "DATA\r\n");
        return;
    case SMTPC_CMD_NONE:
    case SMTPC_CMD_GREETING:
    case SMTPC_CMD_EHLO:
    case SMTPC_CMD_HELO:
    case SMTPC_CMD_BODY:
    case SMTPC_CMD_DOT:
    case SMTPC_CMD_QUIT:
        break;
    }
    RM_ASSERT(!"not a transaction command");
}

/* Writes the transaction's next commands: with PIPELINING as many as fit
 * (RFC 2920: DATA last in the group, and it is the last command), else one
 * when no reply is outstanding. DATA only while a recipient may still be
 * accepted. */
static void smtpc_pump(struct smtpc *s, uint64_t now_ms)
{
    RM_ASSERT(smtpc_st(s) == SMTPC_ST_CMDS);
    bool pipelining = (s->caps.flags & SMTPC_CAP_PIPELINING) != 0;
    while (s->queued < s->seq_len && !(s->flags & SMTPC_F_STOP)) {
        bool idle = s->answered == s->queued;
        if (!pipelining && !idle)
            return;
        if (s->queued == smtpc_pos_data(s) && idle && s->accepted == 0)
            return; /* every RCPT answered, none accepted: no DATA */
        struct smtpc_line l = {.n = 0};
        smtpc_command(s, s->queued, &l);
        if (!smtpc_put(s, l.b, l.n))
            return; /* tx full: the rest after smtpc_sent() */
        s->queued = smtpc_skip(s, s->queued + 1);
        if (idle)
            smtpc_rearm(s, now_ms); /* the first reply awaited since */
    }
}

/* Nothing is outstanding and nothing more will be written. */
static bool smtpc_cmds_over(const struct smtpc *s)
{
    if (s->answered != s->queued)
        return false;
    if (s->flags & SMTPC_F_STOP)
        return true;
    return s->queued == smtpc_pos_data(s) && s->accepted == 0;
}

/* ---- the body cursor ------------------------------------------------------ */

/* Moves to the next non-empty chunk, or to the end (seg NULL). */
static void cur_next_seg(struct smtpc_cursor *c)
{
    while (c->next != NULL && c->next->len == 0)
        c->next = c->next->next;
    if (c->next == NULL) {
        c->seg = NULL;
        c->seg_len = 0;
        c->off = 0;
        return;
    }
    c->seg = c->next->data;
    c->seg_len = c->next->len;
    c->off = 0;
    c->next = c->next->next;
}

/* The span at the cursor: a stuffing ".", a run of body octets up to (not
 * including) the next line that starts with ".", or the rest of the
 * terminator; empty at the very end. RFC 5321 4.5.2: a line starting with
 * "." gets one more; the body's first line counts (the CRLF ending DATA
 * precedes it). The terminator is CRLF "." CRLF, with the CRLF only when
 * the body does not end with one (4.1.1.4). */
static struct rm_span cur_span(const struct smtpc_cursor *c)
{
    if (c->seg == NULL) {
        size_t len = c->bol ? 3 : 5;
        const uint8_t *t = c->bol ? smtpc_term + 2 : smtpc_term;
        RM_ASSERT(c->term_off <= len);
        return rm_span_make(t + c->term_off, len - c->term_off);
    }
    RM_ASSERT(c->off < c->seg_len);
    const uint8_t *p = c->seg + c->off;
    size_t left = c->seg_len - c->off;
    if (c->bol && !c->stuffed && p[0] == '.')
        return rm_span_make(smtpc_dot, 1);
    size_t i = 0;
    while (i < left) {
        const uint8_t *lf = memchr(p + i, '\n', left - i);
        if (lf == NULL)
            break;
        i = (size_t)(lf - p) + 1;
        if (i < left && p[i] == '.')
            return rm_span_make(p, i);
    }
    return rm_span_make(p, left);
}

/* Moves the cursor n octets on, n <= cur_span(c).len. */
static void cur_advance(struct smtpc_cursor *c, size_t n)
{
    if (n == 0)
        return;
    if (c->seg == NULL) {
        c->term_off = (uint8_t)(c->term_off + n);
        return;
    }
    if (c->bol && !c->stuffed && c->seg[c->off] == '.') {
        RM_ASSERT(n == 1);
        c->stuffed = true;
        return;
    }
    RM_ASSERT(n <= c->seg_len - c->off);
    c->off += n;
    c->bol = c->seg[c->off - 1] == '\n';
    c->stuffed = false;
    if (c->off == c->seg_len)
        cur_next_seg(c); /* bol carries over: it depends on the octet before */
}

static bool cur_done(const struct smtpc_cursor *c)
{
    return c->seg == NULL && c->term_off == (c->bol ? 3 : 5);
}

/* After the 354: the body (or, with no recipient accepted, nothing) and the
 * final ".". */
static void smtpc_body_start(struct smtpc *s, bool with_body, uint64_t now_ms)
{
    struct smtpc_cursor *c = &s->cur;
    memset(c, 0, sizeof(*c));
    c->bol = true;
    if (with_body) {
        if (s->msg.body != NULL) {
            c->next = s->msg.body;
            cur_next_seg(c);
        } else if (s->msg.body_flat.len > 0) {
            c->seg = s->msg.body_flat.p;
            c->seg_len = s->msg.body_flat.len;
        }
    }
    smtpc_enter(s, SMTPC_ST_BODY);
    smtpc_rearm(s, now_ms);
}

/* ---- ending things ---------------------------------------------------------- */

/* The transaction is over (every recipient resolved): ready again, or
 * closed when asked or when a reply made the server's state unclear. */
static enum smtpc_ev smtpc_done(struct smtpc *s, bool close, bool polite)
{
    RM_ASSERT(s->unresolved == 0);
    if (close || (s->flags & SMTPC_F_CLOSE)) {
        smtpc_close(s, polite);
    } else {
        smtpc_enter(s, SMTPC_ST_READY);
        s->deadline_ms = UINT64_MAX;
    }
    return SMTPC_EV_DONE;
}

/* A connection-level failure from the reply just read. */
static enum smtpc_ev smtpc_fail_reply(struct smtpc *s, enum smtpc_cmd cmd)
{
    struct smtpc_result *f = &s->failure;
    f->outcome = smtpc_refusal(s->reply_code);
    f->cmd = cmd;
    f->code = s->reply_code;
    smtpc_reply_esc(s, f->outcome, f->esc);
    f->text = smtpc_keep(s, s->reply_text, s->reply_len);
    smtpc_close(s, s->reply_code != 421);
    return SMTPC_EV_FAILED;
}

enum smtpc_cause { SMTPC_TIMEOUT, SMTPC_LOST, SMTPC_ABORT, SMTPC_MALFORMED };

/* Ends the session for a local cause. In a transaction the unresolved
 * recipients become TEMP; before READY it is a connection failure. */
static enum smtpc_ev smtpc_end(struct smtpc *s, enum smtpc_cause cause, const char *why)
{
    enum smtpc_cmd cmd = smtpc_current(s);
    const char *peer = s->peer;
    const char *step = smtpc_step(cmd);
    uint8_t esc[3] = {4, 4, 2};
    switch (smtpc_st(s)) {
    case SMTPC_ST_READY:
    case SMTPC_ST_QUIT:
        smtpc_close(s, false);
        return SMTPC_EV_CLOSE;
    case SMTPC_ST_CLOSED:
        return SMTPC_EV_CLOSE;
    case SMTPC_ST_GREETING:
    case SMTPC_ST_EHLO:
    case SMTPC_ST_HELO:
    case SMTPC_ST_CMDS:
    case SMTPC_ST_BODY:
    case SMTPC_ST_DOT:
        break;
    }
    struct rm_span text = {NULL, 0};
    switch (cause) {
    case SMTPC_TIMEOUT:
        text = smtpc_keepf(s, "conversation with %s timed out while %s", peer, step);
        break;
    case SMTPC_LOST:
        text = smtpc_keepf(s, "lost connection with %s while %s", peer, step);
        break;
    case SMTPC_ABORT:
        text = smtpc_keepf(s, "delivery to %s aborted while %s", peer, step);
        esc[1] = 3;
        esc[2] = 0;
        break;
    case SMTPC_MALFORMED:
        text = smtpc_keepf(s, "malformed reply from %s while %s (%s)", peer, step, why);
        esc[1] = 5;
        esc[2] = 0;
        break;
    }
    bool connecting = smtpc_st(s) == SMTPC_ST_GREETING || smtpc_st(s) == SMTPC_ST_EHLO ||
                      smtpc_st(s) == SMTPC_ST_HELO;
    if (connecting) {
        s->failure = (struct smtpc_result){SMTPC_TEMP, cmd, 0, {esc[0], esc[1], esc[2]}, text};
        smtpc_close(s, false);
        return SMTPC_EV_FAILED;
    }
    smtpc_by_local(s, SMTPC_TEMP, cmd, esc, text);
    return smtpc_done(s, true, false);
}

/* ---- replies ---------------------------------------------------------------- */

static void smtpc_reply_reset(struct smtpc *s)
{
    s->reply_code = 0;
    s->reply_flags = 0;
    s->reply_lines = 0;
    s->reply_len = 0;
}

static bool smtpc_is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

/* Reads 1-3 digits at p[*i..len) (RFC 3463: subject and detail); false
 * when there are none, more, or the value is over 99. */
static bool smtpc_esc_num(const uint8_t *p, size_t len, size_t *i, uint8_t *out)
{
    unsigned v = 0;
    unsigned n = 0;
    while (*i < len && smtpc_is_digit(p[*i]) && n < 4) {
        v = v * 10 + (unsigned)(p[*i] - '0');
        (*i)++;
        n++;
    }
    if (n == 0 || n > 3 || v > 99)
        return false;
    *out = (uint8_t)v;
    return true;
}

/* "x.y.z" then SP or the end, at the start of a line's text (RFC 2034 4). */
static bool smtpc_parse_esc(const uint8_t *p, size_t len, uint8_t esc[3])
{
    if (len < 5 || (p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
        return false;
    esc[0] = (uint8_t)(p[0] - '0');
    size_t i = 2;
    if (!smtpc_esc_num(p, len, &i, &esc[1]) || i >= len || p[i] != '.')
        return false;
    i++;
    if (!smtpc_esc_num(p, len, &i, &esc[2]))
        return false;
    return i == len || p[i] == ' ';
}

/* Decimal, no sign; false on junk or overflow. */
static bool smtpc_parse_u64(struct rm_span sp, uint64_t *out)
{
    if (sp.len == 0 || sp.len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < sp.len; i++) {
        if (!smtpc_is_digit(sp.p[i]))
            return false;
        uint64_t d = (uint64_t)(sp.p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* One EHLO keyword line (RFC 5321 4.1.1.1: ehlo-keyword *(SP ehlo-param)). */
static void smtpc_ehlo_keyword(struct smtpc *s, struct rm_span text)
{
    size_t k = 0;
    while (k < text.len && text.p[k] != ' ')
        k++;
    struct rm_span kw = rm_span_make(text.p, k);
    static const struct {
        const char *name;
        uint32_t flag;
    } table[] = {
        {"PIPELINING", SMTPC_CAP_PIPELINING},
        {"SIZE", SMTPC_CAP_SIZE},
        {"8BITMIME", SMTPC_CAP_8BITMIME},
        {"SMTPUTF8", SMTPC_CAP_SMTPUTF8},
        {"ENHANCEDSTATUSCODES", SMTPC_CAP_ENHANCEDSTATUSCODES},
        {"DSN", SMTPC_CAP_DSN},
        {"CHUNKING", SMTPC_CAP_CHUNKING},
        {"STARTTLS", SMTPC_CAP_STARTTLS},
    };
    for (size_t t = 0; t < RM_ARRAY_LEN(table); t++) {
        if (!rm_span_ieq(kw, table[t].name))
            continue;
        s->caps.flags |= table[t].flag;
        if (table[t].flag != SMTPC_CAP_SIZE)
            return;
        /* RFC 1870 4: "SIZE" [SP number]; 0 or none means no fixed limit.
         * Junk counts as none: better to try than to refuse on a typo. */
        while (k < text.len && text.p[k] == ' ')
            k++;
        uint64_t v = 0;
        if (!smtpc_parse_u64(rm_span_make(text.p + k, text.len - k), &v))
            v = 0;
        s->caps.size_max = v;
        return;
    }
}

/* Adds a line to the reply's text: lines joined by SP, control octets as
 * '?', cut at SMTPC_TEXT_MAX. */
static void smtpc_text_add(struct smtpc *s, const uint8_t *p, size_t len)
{
    if (s->reply_lines > 1 && s->reply_len < SMTPC_TEXT_MAX)
        s->reply_text[s->reply_len++] = ' ';
    for (size_t i = 0; i < len && s->reply_len < SMTPC_TEXT_MAX; i++) {
        uint8_t c = p[i];
        s->reply_text[s->reply_len++] = (c < 0x20 || c == 0x7f) ? '?' : c;
    }
}

/* One reply line without its line end. Returns 1 when it ends the reply, 0
 * when more lines follow, -1 when malformed (*why says how). RFC 5321 4.2:
 * Reply-code [ ("-" / SP) textstring ] CRLF, the same code on every line. */
static int smtpc_line(struct smtpc *s, const uint8_t *p, size_t len, const char **why)
{
    if (len < 3 || p[0] < '2' || p[0] > '5' || !smtpc_is_digit(p[1]) || !smtpc_is_digit(p[2]) ||
        (len > 3 && p[3] != ' ' && p[3] != '-')) {
        *why = "bad reply code";
        return -1;
    }
    uint16_t code = (uint16_t)((p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0'));
    if (s->reply_lines >= SMTPC_REPLY_LINES_MAX) {
        *why = "too many reply lines";
        return -1;
    }
    if (s->reply_lines > 0 && code != s->reply_code) {
        *why = "reply codes differ between lines";
        return -1;
    }
    s->reply_lines++;
    s->reply_code = code;
    const uint8_t *text = p + RM_MIN(len, (size_t)4);
    size_t text_len = len - RM_MIN(len, (size_t)4);
    if (s->reply_lines == 1 && smtpc_parse_esc(text, text_len, s->reply_esc) &&
        s->reply_esc[0] == p[0] - '0')
        s->reply_flags |= SMTPC_RF_ESC;
    /* EHLO keywords follow the first line (which names the server). */
    if (smtpc_st(s) == SMTPC_ST_EHLO && code == 250 && s->reply_lines > 1)
        smtpc_ehlo_keyword(s, rm_span_make(text, text_len));
    smtpc_text_add(s, p, len);
    return (len == 3 || p[3] == ' ') ? 1 : 0;
}

static enum smtpc_ev smtpc_on_greeting(struct smtpc *s, uint64_t now_ms)
{
    /* RFC 5321 3.1: 220, or 554 (and a 421 when busy). Anything else is a
     * failure too: the next MX host may be better. */
    if (s->reply_code != 220)
        return smtpc_fail_reply(s, SMTPC_CMD_GREETING);
    smtpc_hello(s, "EHLO");
    smtpc_enter(s, SMTPC_ST_EHLO);
    smtpc_rearm(s, now_ms);
    return SMTPC_EV_NONE;
}

static enum smtpc_ev smtpc_on_ehlo(struct smtpc *s, uint64_t now_ms)
{
    uint16_t code = s->reply_code;
    if (code / 100 == 2) {
        s->caps.flags |= SMTPC_CAP_ESMTP;
        smtpc_enter(s, SMTPC_ST_READY);
        s->deadline_ms = UINT64_MAX;
        return SMTPC_EV_READY;
    }
    if (code / 100 == 5) {
        /* RFC 5321 3.2: a server without EHLO refuses it; try HELO. */
        memset(&s->caps, 0, sizeof(s->caps));
        smtpc_hello(s, "HELO");
        smtpc_enter(s, SMTPC_ST_HELO);
        smtpc_rearm(s, now_ms);
        return SMTPC_EV_NONE;
    }
    memset(&s->caps, 0, sizeof(s->caps));
    return smtpc_fail_reply(s, SMTPC_CMD_EHLO);
}

static enum smtpc_ev smtpc_on_helo(struct smtpc *s)
{
    if (s->reply_code / 100 == 2) {
        smtpc_enter(s, SMTPC_ST_READY);
        s->deadline_ms = UINT64_MAX;
        return SMTPC_EV_READY;
    }
    return smtpc_fail_reply(s, SMTPC_CMD_HELO);
}

/* A reply to RCPT i. 2xx accepts (the outcome waits for the end of data). */
static void smtpc_on_rcpt(struct smtpc *s, uint32_t i)
{
    struct smtpc_result *r = &s->mem.results[i];
    if (r->outcome != SMTPC_PENDING)
        return; /* resolved by the MAIL refusal: this is its 503 */
    uint16_t code = s->reply_code;
    if (code / 100 == 2) {
        r->cmd = SMTPC_CMD_RCPT;
        r->code = code;
        s->accepted++;
        return;
    }
    if (code / 100 == 3)
        s->flags |= SMTPC_F_CLOSE;
    smtpc_by_reply(s, i, false, smtpc_refusal(code), SMTPC_CMD_RCPT);
}

/* A reply in a transaction's command phase, matched to the oldest command
 * written and not answered (RFC 2920 3.1: replies come in order). */
static enum smtpc_ev smtpc_on_cmd(struct smtpc *s, uint64_t now_ms)
{
    if (s->answered == s->queued)
        return smtpc_end(s, SMTPC_MALFORMED, "unsolicited reply");
    uint32_t pos = s->answered;
    enum smtpc_cmd cmd = smtpc_kind(s, pos);
    uint16_t code = s->reply_code;
    s->answered = smtpc_skip(s, pos + 1);
    if (code == 421) {
        smtpc_by_reply(s, 0, true, SMTPC_TEMP, cmd);
        return smtpc_done(s, true, false);
    }
    switch (cmd) {
    case SMTPC_CMD_RSET:
        if (code / 100 != 2) {
            smtpc_by_reply(s, 0, true, SMTPC_TEMP, cmd);
            return smtpc_done(s, true, true);
        }
        break;
    case SMTPC_CMD_MAIL:
        if (code / 100 != 2) {
            if (code / 100 == 3)
                s->flags |= SMTPC_F_CLOSE;
            smtpc_by_reply(s, 0, true, smtpc_refusal(code), cmd);
            s->flags |= SMTPC_F_STOP;
        }
        break;
    case SMTPC_CMD_RCPT:
        smtpc_on_rcpt(s, pos - SMTPC_POS_RCPT0);
        break;
    case SMTPC_CMD_DATA:
        if (code == 354) {
            /* RFC 2920 3.1: with no recipient accepted, just the ".". */
            smtpc_body_start(s, s->accepted > 0, now_ms);
            return SMTPC_EV_NONE;
        }
        if (code / 100 != 4 && code / 100 != 5)
            s->flags |= SMTPC_F_CLOSE;
        smtpc_by_reply(s, 0, true, smtpc_refusal(code), cmd);
        return smtpc_done(s, false, true);
    case SMTPC_CMD_NONE:
    case SMTPC_CMD_GREETING:
    case SMTPC_CMD_EHLO:
    case SMTPC_CMD_HELO:
    case SMTPC_CMD_BODY:
    case SMTPC_CMD_DOT:
    case SMTPC_CMD_QUIT:
        RM_ASSERT(!"not a transaction command");
        break;
    }
    smtpc_pump(s, now_ms);
    if (smtpc_cmds_over(s))
        return smtpc_done(s, false, true);
    smtpc_rearm(s, now_ms);
    return SMTPC_EV_NONE;
}

static enum smtpc_ev smtpc_on_dot(struct smtpc *s)
{
    uint16_t code = s->reply_code;
    enum smtpc_outcome o = code / 100 == 2 ? SMTPC_OK : smtpc_refusal(code);
    if (code / 100 == 3)
        s->flags |= SMTPC_F_CLOSE;
    smtpc_by_reply(s, 0, true, o, SMTPC_CMD_DOT);
    return smtpc_done(s, code == 421, code != 421);
}

/* A complete reply. */
static enum smtpc_ev smtpc_dispatch(struct smtpc *s, uint64_t now_ms)
{
    switch (smtpc_st(s)) {
    case SMTPC_ST_GREETING:
        return smtpc_on_greeting(s, now_ms);
    case SMTPC_ST_EHLO:
        return smtpc_on_ehlo(s, now_ms);
    case SMTPC_ST_HELO:
        return smtpc_on_helo(s);
    case SMTPC_ST_CMDS:
        return smtpc_on_cmd(s, now_ms);
    case SMTPC_ST_DOT:
        return smtpc_on_dot(s);
    case SMTPC_ST_READY: /* unasked: typically "421 idle timeout"; either way, done */
    case SMTPC_ST_QUIT:  /* the 221, or whatever comes: the session is over */
        smtpc_close(s, false);
        return SMTPC_EV_CLOSE;
    case SMTPC_ST_BODY:
    case SMTPC_ST_CLOSED:
        break;
    }
    RM_ASSERT(!"no reply is read in this state");
    return SMTPC_EV_NONE;
}

/* ---- the API -------------------------------------------------------------- */

void smtpc_cfg_defaults(struct smtpc_cfg *cfg, const char *helo_name)
{
    *cfg = (struct smtpc_cfg){
        .helo_name = helo_name,
        .greeting_timeout_ms = SMTPC_GREETING_TIMEOUT_MS_DEFAULT,
        .helo_timeout_ms = SMTPC_HELO_TIMEOUT_MS_DEFAULT,
        .mail_timeout_ms = SMTPC_MAIL_TIMEOUT_MS_DEFAULT,
        .rcpt_timeout_ms = SMTPC_RCPT_TIMEOUT_MS_DEFAULT,
        .data_timeout_ms = SMTPC_DATA_TIMEOUT_MS_DEFAULT,
        .block_timeout_ms = SMTPC_BLOCK_TIMEOUT_MS_DEFAULT,
        .dot_timeout_ms = SMTPC_DOT_TIMEOUT_MS_DEFAULT,
        .rset_timeout_ms = SMTPC_RSET_TIMEOUT_MS_DEFAULT,
        .quit_timeout_ms = SMTPC_QUIT_TIMEOUT_MS_DEFAULT,
    };
}

static bool smtpc_timeout_ok(uint32_t ms)
{
    return ms >= 1 && ms <= SMTPC_TIMEOUT_MS_MAX;
}

static bool smtpc_cfg_valid(const struct smtpc_cfg *cfg)
{
    if (cfg->helo_name == NULL)
        return false;
    size_t n = strnlen(cfg->helo_name, SMTP_DOMAIN_MAX + 1);
    if (n == 0 || n > SMTP_DOMAIN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)cfg->helo_name[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
    }
    return smtpc_timeout_ok(cfg->greeting_timeout_ms) && smtpc_timeout_ok(cfg->helo_timeout_ms) &&
           smtpc_timeout_ok(cfg->mail_timeout_ms) && smtpc_timeout_ok(cfg->rcpt_timeout_ms) &&
           smtpc_timeout_ok(cfg->data_timeout_ms) && smtpc_timeout_ok(cfg->block_timeout_ms) &&
           smtpc_timeout_ok(cfg->dot_timeout_ms) && smtpc_timeout_ok(cfg->rset_timeout_ms) &&
           smtpc_timeout_ok(cfg->quit_timeout_ms);
}

void smtpc_init(struct smtpc *s, const struct smtpc_cfg *cfg, const struct smtpc_mem *mem,
                const char *peer, uint64_t now_ms)
{
    RM_ASSERT(cfg != NULL && smtpc_cfg_valid(cfg)); /* checked at config load */
    RM_ASSERT(mem != NULL && mem->tx != NULL && rm_buf_valid(mem->tx));
    RM_ASSERT(mem->tx->cap >= SMTPC_TX_MIN && rm_buf_len(mem->tx) == 0);
    RM_ASSERT(mem->rcpt_cap >= 1 && mem->rcpt_cap <= SMTPC_RCPT_MAX);
    RM_ASSERT(mem->results != NULL);
    RM_ASSERT(mem->arena != NULL && mem->arena_cap >= SMTPC_ARENA_BYTES(mem->rcpt_cap));
    RM_ASSERT(peer != NULL);

    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    s->mem = *mem;
    s->peer = peer;
    s->state = SMTPC_ST_GREETING;
    smtpc_reply_reset(s);
    smtpc_rearm(s, now_ms);
}

size_t smtpc_feed(struct smtpc *s, const uint8_t *in, size_t len, uint64_t now_ms,
                  enum smtpc_ev *ev)
{
    RM_ASSERT_DEBUG(rm_buf_valid(s->mem.tx));
    *ev = SMTPC_EV_NONE;
    size_t off = 0;
    for (;;) { /* each round takes one line or returns */
        if (smtpc_st(s) == SMTPC_ST_CLOSED) {
            *ev = SMTPC_EV_CLOSE;
            return off;
        }
        if (smtpc_st(s) == SMTPC_ST_BODY || off == len)
            return off;
        const uint8_t *p = in + off;
        size_t n = len - off;
        const uint8_t *lf = memchr(p, '\n', RM_MIN(n, (size_t)SMTPC_REPLY_LINE_MAX));
        if (lf == NULL) {
            if (n < SMTPC_REPLY_LINE_MAX)
                return off; /* a line not complete yet */
            *ev = smtpc_end(s, SMTPC_MALFORMED, "reply line too long");
            return len;
        }
        size_t used = (size_t)(lf - p) + 1;
        size_t line_len = used - 1;
        if (line_len > 0 && p[line_len - 1] == '\r')
            line_len--;
        off += used;
        const char *why = NULL;
        int r = smtpc_line(s, p, line_len, &why);
        if (r < 0) {
            *ev = smtpc_end(s, SMTPC_MALFORMED, why);
            return off;
        }
        if (r == 0)
            continue;
        *ev = smtpc_dispatch(s, now_ms);
        smtpc_reply_reset(s);
        if (*ev != SMTPC_EV_NONE)
            return off;
    }
}

/* Resolves, before anything is sent, what cannot go to this server: bad
 * addresses, SMTPUTF8 needed but not offered, too big. Sets SMTPC_F_UTF8
 * when the transaction needs SMTPUTF8. */
static void smtpc_refuse_locally(struct smtpc *s)
{
    static const uint8_t esc_sender[3] = {5, 1, 7};
    static const uint8_t esc_rcpt[3] = {5, 1, 3};
    static const uint8_t esc_addr8[3] = {5, 6, 7};
    static const uint8_t esc_content8[3] = {5, 6, 9};
    static const uint8_t esc_size[3] = {5, 3, 4};
    const struct q_env *env = s->msg.env;
    uint32_t n = s->msg.rcpt_count;
    if (!smtpc_addr_ok(env->sender)) {
        smtpc_by_local(s, SMTPC_PERM, SMTPC_CMD_NONE, esc_sender,
                       rm_span_str("bad sender address syntax"));
        return;
    }
    bool sender8 = !smtpc_ascii(env->sender);
    bool utf8 = (env->flags & Q_ENV_SMTPUTF8) || sender8;
    for (uint32_t i = 0; i < n; i++) {
        struct rm_span a = smtpc_rcpt(s, i)->addr;
        if (!smtpc_addr_ok(a))
            smtpc_set(s, i, SMTPC_PERM, SMTPC_CMD_NONE, 0, esc_rcpt,
                      rm_span_str("bad recipient address syntax"));
        else if (!smtpc_ascii(a))
            utf8 = true;
    }
    if (utf8 && !(s->caps.flags & SMTPC_CAP_SMTPUTF8)) {
        /* RFC 6531 3.2 / 3.7.4 and its X.6.7 / X.6.9 codes: see the top. */
        struct rm_span text =
            smtpc_keepf(s, "SMTPUTF8 is required, but was not offered by host %s", s->peer);
        for (uint32_t i = 0; i < n; i++) {
            if (s->mem.results[i].outcome != SMTPC_PENDING)
                continue;
            bool addr8 = sender8 || !smtpc_ascii(smtpc_rcpt(s, i)->addr);
            smtpc_set(s, i, SMTPC_PERM, SMTPC_CMD_NONE, 0, addr8 ? esc_addr8 : esc_content8, text);
        }
    }
    if (utf8)
        s->flags |= SMTPC_F_UTF8;
    if ((s->caps.flags & SMTPC_CAP_SIZE) && s->caps.size_max != 0 && env->size > s->caps.size_max &&
        s->unresolved > 0) {
        /* RFC 1870: do not send what the server announced it refuses. */
        struct rm_span text = smtpc_keepf(
            s, "message size %llu exceeds size limit %llu of server %s",
            (unsigned long long)env->size, (unsigned long long)s->caps.size_max, s->peer);
        smtpc_by_local(s, SMTPC_PERM, SMTPC_CMD_NONE, esc_size, text);
    }
}

enum smtpc_ev smtpc_message(struct smtpc *s, const struct smtpc_msg *m, uint64_t now_ms)
{
    RM_ASSERT(smtpc_st(s) == SMTPC_ST_READY);
    RM_ASSERT(m != NULL && m->env != NULL && m->rcpt_idx != NULL);
    RM_ASSERT(m->rcpt_count >= 1 && m->rcpt_count <= s->mem.rcpt_cap);
    for (uint32_t i = 0; i < m->rcpt_count; i++)
        RM_ASSERT(m->rcpt_idx[i] < m->env->rcpt_count);

    s->msg = *m;
    s->arena_used = 0;
    memset(s->mem.results, 0, sizeof(*s->mem.results) * m->rcpt_count);
    s->unresolved = m->rcpt_count;
    s->accepted = 0;
    s->flags &= ~(SMTPC_F_STOP | SMTPC_F_UTF8 | SMTPC_F_CLOSE);
    smtpc_refuse_locally(s);
    if (s->unresolved == 0)
        return SMTPC_EV_DONE; /* nothing sent: the session stays ready, no RSET owed */

    s->seq_len = smtpc_pos_data(s) + 1;
    s->queued = (s->flags & SMTPC_F_RSET) ? SMTPC_POS_RSET : SMTPC_POS_MAIL;
    s->answered = s->queued;
    s->flags |= SMTPC_F_RSET;
    smtpc_enter(s, SMTPC_ST_CMDS);
    smtpc_rearm(s, now_ms);
    smtpc_pump(s, now_ms);
    return SMTPC_EV_NONE;
}

const struct smtpc_result *smtpc_result(const struct smtpc *s, uint32_t i)
{
    RM_ASSERT(i < s->msg.rcpt_count);
    return &s->mem.results[i];
}

const struct smtpc_result *smtpc_failure(const struct smtpc *s)
{
    return &s->failure;
}

const struct smtpc_caps *smtpc_caps(const struct smtpc *s)
{
    return &s->caps;
}

size_t smtpc_output(const struct smtpc *s, struct rm_span *iov, size_t max)
{
    size_t k = 0;
    if (max == 0)
        return 0;
    if (rm_buf_len(s->mem.tx) > 0)
        iov[k++] = rm_span_make(rm_buf_rptr(s->mem.tx), rm_buf_len(s->mem.tx));
    if (smtpc_st(s) != SMTPC_ST_BODY)
        return k;
    struct smtpc_cursor c = s->cur; /* walk a copy: output changes nothing */
    while (k < max) {
        struct rm_span sp = cur_span(&c);
        if (sp.len == 0)
            break;
        iov[k++] = sp;
        cur_advance(&c, sp.len);
    }
    return k;
}

void smtpc_sent(struct smtpc *s, size_t n, uint64_t now_ms)
{
    size_t from_tx = RM_MIN(n, rm_buf_len(s->mem.tx));
    if (from_tx > 0)
        rm_buf_consume(s->mem.tx, from_tx);
    size_t left = n - from_tx;
    switch (smtpc_st(s)) {
    case SMTPC_ST_BODY:
        while (left > 0) {
            struct rm_span sp = cur_span(&s->cur);
            RM_ASSERT(sp.len > 0); /* never more than smtpc_output() gave */
            size_t take = RM_MIN(left, sp.len);
            cur_advance(&s->cur, take);
            left -= take;
        }
        if (n > 0)
            smtpc_rearm(s, now_ms); /* 4.5.3.2.5: per data block sent */
        if (cur_done(&s->cur)) {
            smtpc_enter(s, SMTPC_ST_DOT);
            smtpc_rearm(s, now_ms);
        }
        break;
    case SMTPC_ST_CMDS:
        smtpc_pump(s, now_ms);
        break;
    case SMTPC_ST_CLOSED:
        /* Closed (timeout, loss, abort) with a body send in flight: its
         * completion still comes, for octets no longer offered. */
        left = 0;
        break;
    case SMTPC_ST_GREETING:
    case SMTPC_ST_EHLO:
    case SMTPC_ST_HELO:
    case SMTPC_ST_READY:
    case SMTPC_ST_DOT:
    case SMTPC_ST_QUIT:
        break;
    }
    RM_ASSERT(left == 0); /* never more than smtpc_output() gave */
}

uint64_t smtpc_deadline(const struct smtpc *s)
{
    return s->deadline_ms;
}

enum smtpc_ev smtpc_timeout(struct smtpc *s, uint64_t now_ms)
{
    if (now_ms < s->deadline_ms)
        return SMTPC_EV_NONE;
    return smtpc_end(s, SMTPC_TIMEOUT, NULL);
}

enum smtpc_ev smtpc_lost(struct smtpc *s, uint64_t now_ms)
{
    (void)now_ms;
    return smtpc_end(s, SMTPC_LOST, NULL);
}

enum smtpc_ev smtpc_quit(struct smtpc *s, uint64_t now_ms)
{
    switch (smtpc_st(s)) {
    case SMTPC_ST_READY:
        if (!smtpc_put(s, "QUIT\r\n", 6)) {
            smtpc_close(s, false); /* tx still full: skip the courtesy */
            return SMTPC_EV_CLOSE;
        }
        smtpc_enter(s, SMTPC_ST_QUIT);
        smtpc_rearm(s, now_ms);
        return SMTPC_EV_NONE;
    case SMTPC_ST_GREETING:
    case SMTPC_ST_EHLO:
    case SMTPC_ST_HELO:
    case SMTPC_ST_CLOSED:
        smtpc_close(s, false);
        return SMTPC_EV_CLOSE;
    case SMTPC_ST_CMDS:
    case SMTPC_ST_BODY:
    case SMTPC_ST_DOT:
        return smtpc_end(s, SMTPC_ABORT, NULL);
    case SMTPC_ST_QUIT:
        return SMTPC_EV_NONE;
    }
    return SMTPC_EV_NONE;
}

bool smtpc_closing(const struct smtpc *s)
{
    return smtpc_st(s) == SMTPC_ST_CLOSED;
}

bool smtpc_ready(const struct smtpc *s)
{
    return smtpc_st(s) == SMTPC_ST_READY;
}
