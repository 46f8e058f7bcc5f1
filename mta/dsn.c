/* mta/dsn.c: delivery status notifications; the contract is in dsn.h.
 *
 * The message is written once per boundary candidate straight into pool
 * chunks by a small writer (struct dsn_w) that also watches every octet it
 * writes: it counts occurrences of the boundary, tracks the line length and
 * notes 8-bit octets. The boundary is "=_rm_<id>_<k>": '=' occurs in it only
 * at the start (the id is [A-Za-z0-9.-]), so a one-state matcher that
 * restarts on '=' finds every occurrence, across chunk edges too. If the
 * count exceeds what we wrote on purpose, the content held the boundary and
 * the message is built again with the next k (RFC 2046 5.1.1).
 */
#include "dsn.h"

#include <errno.h>
#include <stdio.h>

static const uint8_t dsn_empty[1] = {0}; /* non-NULL pointer for empty spans */

#define DSN_BOUNDARY_MAX (5 + DSN_ID_MAX + 2) /* "=_rm_" id "_" k, k one digit */
#define DSN_DATE_MAX     96 /* "Sun, 19 Nov 2023 22:13:20 +0000"; room for any uint64_t */
#define DSN_TEXT_INDENT  4  /* continuation lines of a recipient paragraph */
#define DSN_FOLD_INDENT  1  /* continuation lines of a folded field, RFC 5322 2.2.3 */

static_assert(DSN_BOUNDARY_MAX <= 70, "RFC 2046 5.1.1: a boundary has at most 70 chars");
static_assert(DSN_BOUNDARY_TRIES <= 10, "k is one digit");
static_assert(DSN_WRAP_COLS < DSN_LINE_MAX, "wrapping stays within the line limit");

const char *dsn_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case DSN_ERR_NULL_SENDER:
        return "the message has a null sender: no DSN";
    case DSN_ERR_NOT_REQUESTED:
        return "no recipient asked for this DSN";
    case DSN_ERR_BOUNDARY:
        return "every MIME boundary occurs in the content";
    case -ENOMEM:
        return "out of memory: chunk pool empty";
    case -EINVAL:
        return "invalid argument";
    default:
        return "unknown error";
    }
}

bool dsn_is_bounce(const struct q_env *env)
{
    return env->sender.len == 0;
}

/* RFC 3461 4.1: no NOTIFY means FAILURE,DELAY; NEVER is alone (smtpd checks). */
bool dsn_notify_wants(uint8_t notify, enum dsn_action action)
{
    if (notify == 0)
        notify = Q_NOTIFY_FAILURE | Q_NOTIFY_DELAY;
    if (notify & Q_NOTIFY_NEVER)
        return false;
    switch (action) {
    case DSN_ACTION_FAILED:
        return (notify & Q_NOTIFY_FAILURE) != 0;
    case DSN_ACTION_DELAYED:
        return (notify & Q_NOTIFY_DELAY) != 0;
    }
    RM_ASSERT(!"a known dsn_action");
    return false;
}

/* ---- the writer --------------------------------------------------------------- */

struct dsn_w {
    struct rm_pool *pool;
    struct rm_chunk *head; /* owned until handed to the caller */
    struct rm_chunk *tail;
    uint64_t len;    /* octets written */
    int err;         /* 0 or -ENOMEM, sticky: later writes do nothing */
    const char *bnd; /* the boundary; bnd[0] == '=' occurs nowhere else in it */
    size_t bnd_len;
    size_t bnd_at;     /* octets of bnd matched so far */
    uint32_t bnd_seen; /* occurrences of bnd in the output */
    uint32_t bnd_put;  /* occurrences written on purpose */
    size_t col;        /* octets on the current line, CRLF excluded */
    bool raw;          /* copying the original: its line lengths are smtpd's */
    bool eight;        /* an octet >= 0x80 was written */
};

static void w_watch(struct dsn_w *w, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        w->eight |= c >= 0x80;
        if (c == (uint8_t)w->bnd[w->bnd_at]) {
            if (++w->bnd_at == w->bnd_len) {
                w->bnd_seen++;
                w->bnd_at = 0;
            }
        } else {
            w->bnd_at = c == (uint8_t)w->bnd[0];
        }
        if (c == '\n' || c == '\r') {
            w->col = 0;
        } else {
            w->col++;
            RM_ASSERT_DEBUG(w->raw || w->col <= DSN_LINE_MAX);
        }
    }
}

static void w_put(struct dsn_w *w, const void *data, size_t n)
{
    const uint8_t *p = data;
    if (w->err != 0)
        return;
    w_watch(w, p, n);
    while (n > 0) {
        if (w->tail == NULL || w->tail->len == w->tail->cap) {
            struct rm_chunk *c = rm_pool_get(w->pool);
            if (c == NULL) {
                w->err = -ENOMEM;
                return;
            }
            if (w->tail)
                w->tail->next = c;
            else
                w->head = c;
            w->tail = c;
        }
        size_t k = RM_MIN(n, (size_t)(w->tail->cap - w->tail->len));
        memcpy(w->tail->data + w->tail->len, p, k);
        w->tail->len += (uint32_t)k;
        w->len += k;
        p += k;
        n -= k;
    }
}

static void w_str(struct dsn_w *w, const char *s)
{
    w_put(w, s, strlen(s));
}

static void w_span(struct dsn_w *w, struct rm_span s)
{
    w_put(w, s.p, s.len);
}

static void w_crlf(struct dsn_w *w)
{
    w_put(w, "\r\n", 2);
}

static void w_boundary(struct dsn_w *w)
{
    w_put(w, w->bnd, w->bnd_len);
    w->bnd_put++;
}

/* "--boundary" CRLF, or the closing "--boundary--" CRLF (RFC 2046 5.1.1). */
static void w_delimiter(struct dsn_w *w, bool close)
{
    w_str(w, "--");
    w_boundary(w);
    if (close)
        w_str(w, "--");
    w_crlf(w);
}

/* ---- text cleaning --------------------------------------------------------------- */

/* Octets of the well-formed UTF-8 sequence at p[0..n), or 0. */
static size_t dsn_utf8_seq(const uint8_t *p, size_t n)
{
    size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc0 ? 2 : 0;
    if (len == 0 || len > n || !smtp_utf8_valid(p, len))
        return 0;
    return len;
}

/* Writes p[0..n) with controls as spaces and, unless utf8 allows the
 * well-formed sequences, octets >= 0x80 as '?': one octet out per octet in,
 * so a field can never be ended or a header injected by what we report. */
static void w_clean(struct dsn_w *w, const uint8_t *p, size_t n, bool utf8)
{
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x7f)
            run++;
        w_put(w, p + i, run - i);
        i = run;
        if (i == n)
            break;
        size_t seq = utf8 && p[i] >= 0x80 ? dsn_utf8_seq(p + i, n - i) : 0;
        if (seq > 0) {
            w_put(w, p + i, seq);
            i += seq;
        } else {
            w_put(w, p[i] < 0x80 ? " " : "?", 1);
            i++;
        }
    }
}

static bool dsn_is_space(uint8_t c)
{
    return c <= 0x20 || c == 0x7f;
}

/* ---- wrapping and folding --------------------------------------------------------- */

/* Words written with single spaces between them, breaking lines before
 * DSN_WRAP_COLS (a folded field's continuation starts with a space, RFC 5322
 * 2.2.3; a paragraph's with `indent` spaces). A word that cannot fit in
 * DSN_LINE_MAX is split. */
struct dsn_wrap {
    struct dsn_w *w;
    size_t indent;
    bool utf8;
    bool started; /* a word is on the line: the next needs a space */
};

static void wrap_newline(struct dsn_wrap *x)
{
    static const char spaces[] = "        ";
    static_assert(sizeof(spaces) - 1 >= DSN_TEXT_INDENT, "indent fits");
    w_crlf(x->w);
    w_put(x->w, spaces, x->indent);
}

static void wrap_word(struct dsn_wrap *x, const uint8_t *p, size_t n)
{
    struct dsn_w *w = x->w;
    if (x->started) {
        if (w->col + 1 + n > DSN_WRAP_COLS)
            wrap_newline(x);
        else
            w_put(w, " ", 1);
    }
    /* XXX: a word longer than a line is split by a fold, which a reader of
     * a header field unfolds into a space; only a >900-octet token does it. */
    while (w->col + n > DSN_LINE_MAX) {
        size_t k = DSN_LINE_MAX - w->col;
        w_clean(w, p, k, x->utf8);
        wrap_newline(x);
        p += k;
        n -= k;
    }
    w_clean(w, p, n, x->utf8);
    x->started = true;
}

static void wrap_words(struct dsn_wrap *x, const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (;;) {
        while (i < n && dsn_is_space(p[i]))
            i++;
        if (i == n)
            return;
        size_t j = i;
        while (j < n && !dsn_is_space(p[j]))
            j++;
        wrap_word(x, p + i, j - i);
        i = j;
    }
}

static void wrap_str(struct dsn_wrap *x, const char *s)
{
    wrap_words(x, (const uint8_t *)s, strlen(s));
}

static void wrap_begin(struct dsn_wrap *x, struct dsn_w *w, size_t indent, bool utf8)
{
    x->w = w;
    x->indent = indent;
    x->utf8 = utf8;
    x->started = false;
}

/* ---- dates (RFC 5322 3.3), UTC, without the C library's time zone state ---------- */

static void dsn_date(uint64_t ms, char out[DSN_DATE_MAX])
{
    static const char wday[7][4] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
    static const char mon[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    uint64_t secs = ms / 1000;
    uint64_t days = secs / 86400;
    uint64_t sod = secs % 86400;
    /* Civil from days (H. Hinnant's algorithm), on unsigned values as
     * days >= 0; era arithmetic cannot overflow for any uint64_t ms. */
    uint64_t z = days + 719468;
    uint64_t era = z / 146097;
    uint64_t doe = z - era * 146097;
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    uint64_t d = doy - (153 * mp + 2) / 5 + 1;
    uint64_t m = mp < 10 ? mp + 3 : mp - 9;
    uint64_t y = yoe + era * 400 + (m <= 2);
    (void)snprintf(out, DSN_DATE_MAX, "%s, %02u %s %04llu %02u:%02u:%02u +0000", wday[days % 7],
                   (unsigned)d, mon[m - 1], (unsigned long long)y, (unsigned)(sod / 3600),
                   (unsigned)(sod / 60 % 60), (unsigned)(sod % 60));
}

static void w_date_field(struct dsn_w *w, const char *name, uint64_t ms)
{
    char d[DSN_DATE_MAX];
    dsn_date(ms, d);
    w_str(w, name);
    w_str(w, d);
    w_crlf(w);
}

/* ---- xtext (RFC 3461 4) and the utf-8 address type (RFC 6533 3) ------------------- */

static int dsn_hex(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes xtext p[0..n) into out[0..n); returns the length, or -1. */
static int dsn_xtext_decode(const uint8_t *p, size_t n, uint8_t *out)
{
    if (!smtp_xtext_valid(p, n))
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '+') {
            int hi = dsn_hex(p[i + 1]);
            int lo = dsn_hex(p[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            out[o++] = (uint8_t)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = p[i];
        }
    }
    return (int)o;
}

/* Decodes the "\x{HEX}" escapes of utf-8-addr-unitext/xtext (RFC 6533 3)
 * in place into UTF-8; the result is never longer. Returns the length, or
 * -1 for a malformed escape. The caller checks the result is valid UTF-8. */
static int dsn_unitext_decode(uint8_t *p, size_t n)
{
    size_t o = 0;
    size_t i = 0;
    while (i < n) {
        if (p[i] != '\\' || i + 3 >= n || p[i + 1] != 'x' || p[i + 2] != '{') {
            p[o++] = p[i++];
            continue;
        }
        size_t j = i + 3;
        uint32_t cp = 0;
        while (j < n && j < i + 9 && dsn_hex(p[j]) >= 0)
            cp = cp << 4 | (uint32_t)dsn_hex(p[j++]);
        if (j == i + 3 || j >= n || p[j] != '}' || cp > 0x10ffff)
            return -1;
        if (cp < 0x80) {
            p[o++] = (uint8_t)cp;
        } else if (cp < 0x800) {
            p[o++] = (uint8_t)(0xc0 | cp >> 6);
            p[o++] = (uint8_t)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            p[o++] = (uint8_t)(0xe0 | cp >> 12);
            p[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
            p[o++] = (uint8_t)(0x80 | (cp & 0x3f));
        } else {
            p[o++] = (uint8_t)(0xf0 | cp >> 18);
            p[o++] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
            p[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
            p[o++] = (uint8_t)(0x80 | (cp & 0x3f));
        }
        i = j + 1;
    }
    return (int)o;
}

/* True when p[0..n) may stand in a field as it is: visible ASCII, or with
 * utf8 also well-formed UTF-8 (which has no C1 controls to worry about in
 * a field: those are >= 0x80 only as U+0080..U+009F, harmless here). */
static bool dsn_printable(const uint8_t *p, size_t n, bool utf8)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] <= 0x20 || p[i] == 0x7f || (p[i] >= 0x80 && !utf8))
            return false;
    return !utf8 || smtp_utf8_valid(p, n);
}

/* Writes an xtext value decoded, as the sender gave it, when that is
 * printable, else as received (RFC 3464 2.2.1: preserve the envelope id).
 * With unitext, "\x{HEX}" escapes are decoded too (RFC 6533 3). */
static void w_xtext(struct dsn_w *w, struct rm_span v, bool unitext, bool utf8)
{
    uint8_t buf[SMTP_XTEXT_MAX];
    if (v.len <= sizeof(buf)) {
        int n = dsn_xtext_decode(v.p, v.len, buf);
        if (n >= 0 && unitext)
            n = dsn_unitext_decode(buf, (size_t)n);
        if (n >= 0 && dsn_printable(buf, (size_t)n, utf8)) {
            w_put(w, buf, (size_t)n);
            return;
        }
    }
    w_clean(w, v.p, RM_MIN(v.len, (size_t)SMTP_XTEXT_MAX), false);
}

/* ---- the plan: what goes in, decided before the first octet ------------------------ */

struct dsn_plan {
    const struct dsn_in *in;
    bool global;        /* SMTPUTF8 original: RFC 6533 types */
    bool any_failed;    /* else only delayed recipients */
    bool ret_8bit;      /* the returned octets hold octets >= 0x80 */
    uint8_t returned;   /* enum dsn_return */
    bool cut;           /* the header section was cut to return_size_max */
    uint32_t reported;  /* recipients whose NOTIFY asks */
    struct rm_span ret; /* the returned octets of the original */
};

static bool dsn_wanted(const struct dsn_in *in, const struct dsn_rcpt *r)
{
    return dsn_notify_wants(in->env->rcpts[r->rcpt].notify, r->action);
}

/* The header section: up to and including the CRLF before the empty line,
 * or everything when there is no empty line (RFC 5322 2.1). */
static size_t dsn_header_len(struct rm_span m)
{
    if (m.len >= 2 && m.p[0] == '\r' && m.p[1] == '\n')
        return 0;
    if (m.len < 4)
        return m.len; /* and memmem() never sees a NULL pointer */
    const uint8_t *e = memmem(m.p, m.len, "\r\n\r\n", 4);
    return e ? (size_t)(e - m.p) + 2 : m.len;
}

/* The longest prefix of p[0..n) ending in CRLF that fits max octets. */
static size_t dsn_cut_at_line(const uint8_t *p, size_t n, uint64_t max)
{
    size_t k = (size_t)RM_MIN((uint64_t)n, max);
    while (k >= 2 && !(p[k - 2] == '\r' && p[k - 1] == '\n'))
        k--;
    return k >= 2 ? k : 0;
}

static void dsn_plan_return(struct dsn_plan *pl)
{
    const struct dsn_in *in = pl->in;
    bool full = pl->any_failed && in->env->ret != Q_RET_HDRS; /* RFC 3461 4.3 */
    if (full && in->msg.len <= in->return_size_max) {
        pl->returned = DSN_RETURN_FULL;
        pl->ret = in->msg;
    } else {
        pl->returned = full ? DSN_RETURN_OVERSIZE : DSN_RETURN_HDRS;
        size_t h = dsn_header_len(in->msg);
        if (h > in->return_size_max) {
            h = dsn_cut_at_line(in->msg.p, h, in->return_size_max);
            pl->cut = true;
        }
        pl->ret = rm_span_make(in->msg.p, h);
    }
    for (size_t i = 0; i < pl->ret.len && !pl->ret_8bit; i++)
        pl->ret_8bit = pl->ret.p[i] >= 0x80;
}

static bool dsn_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* Checks the input; fills pl. Returns 0 or a dsn_build() code. */
static int dsn_plan(const struct dsn_in *in, struct dsn_plan *pl)
{
    memset(pl, 0, sizeof(*pl));
    pl->in = in;
    if (dsn_is_bounce(in->env))
        return DSN_ERR_NULL_SENDER; /* RFC 5321 4.5.5, 6.1 */
    if (!dsn_name_ok(in->host, SMTP_DOMAIN_MAX) || !dsn_name_ok(in->id, DSN_ID_MAX) ||
        in->env->sender.len > SMTP_PATH_MAX || in->return_size_max == 0 ||
        in->return_size_max > DSN_RETURN_SIZE_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < in->rcpt_count; i++) {
        const struct dsn_rcpt *r = &in->rcpts[i];
        RM_ASSERT(r->rcpt < in->env->rcpt_count);
        RM_ASSERT(r->action == DSN_ACTION_FAILED || r->action == DSN_ACTION_DELAYED);
        if (r->status[0] != 4 && r->status[0] != 5)
            return -EINVAL;
        if (!dsn_wanted(in, r))
            continue;
        pl->reported++;
        pl->any_failed |= r->action == DSN_ACTION_FAILED;
    }
    if (pl->reported == 0)
        return DSN_ERR_NOT_REQUESTED;
    pl->global = (in->env->flags & Q_ENV_SMTPUTF8) != 0;
    dsn_plan_return(pl);
    return 0;
}

/* ---- the message -------------------------------------------------------------------- */

static void dsn_write_header(const struct dsn_plan *pl, struct dsn_w *w)
{
    const struct dsn_in *in = pl->in;
    char d[DSN_DATE_MAX];
    w_str(w, "From: Mail Delivery System <MAILER-DAEMON@");
    w_str(w, in->host);
    w_str(w, ">\r\nTo: <");
    w_clean(w, in->env->sender.p, in->env->sender.len, pl->global);
    w_str(w, ">\r\nSubject: ");
    w_str(w, pl->any_failed ? "Undelivered Mail Returned to Sender"
                            : "Delayed Mail (still being retried)");
    dsn_date(in->now_ms, d);
    w_str(w, "\r\nDate: ");
    w_str(w, d);
    w_str(w, "\r\nMessage-ID: <");
    w_str(w, in->id);
    w_str(w, "@");
    w_str(w, in->host);
    /* RFC 3834 5: auto-replied, so that vacation responders stay quiet. */
    w_str(w, ">\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    /* RFC 6522 3: report-type names the second part's subtype. */
    w_str(w, pl->global ? "Content-Type: multipart/report; report-type=global-delivery-status;"
                        : "Content-Type: multipart/report; report-type=delivery-status;");
    w_str(w, "\r\n boundary=\"");
    w_boundary(w);
    w_str(w, "\"\r\n");
    if (pl->global || pl->ret_8bit)
        w_str(w, "Content-Transfer-Encoding: 8bit\r\n"); /* RFC 2045 6.4 */
    w_str(w, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");
}

/* RFC 3463 3.x names for reports without a reply text. */
static const char *dsn_status_text(const uint8_t st[3])
{
    static const struct {
        uint8_t subject, detail;
        const char *text;
    } known[] = {
        {1, 1, "bad destination mailbox address"},
        {1, 2, "bad destination system address"},
        {1, 10, "the recipient domain accepts no mail (null MX)"}, /* RFC 7505 4.2 */
        {2, 2, "mailbox full"},
        {3, 4, "message too big for system"},
        {4, 1, "no answer from host"},
        {4, 2, "bad connection"},
        {4, 3, "directory server failure"},
        {4, 4, "unable to route"},
        {4, 7, "delivery time expired"},
    };
    static const char *const subject[] = {
        "other or undefined status",
        "addressing status",
        "mailbox status",
        "mail system status",
        "network and routing status",
        "mail delivery protocol status",
        "message content or media status",
        "security or policy status",
    };
    for (size_t i = 0; i < RM_ARRAY_LEN(known); i++)
        if (known[i].subject == st[1] && known[i].detail == st[2])
            return known[i].text;
    return st[1] < RM_ARRAY_LEN(subject) ? subject[st[1]] : subject[0];
}

static void dsn_status_str(const uint8_t st[3], char out[16])
{
    (void)snprintf(out, 16, "%u.%u.%u", st[0], st[1], st[2]);
}

/* A word made of prefix, text and suffix (an address in <>, "host:"). */
static void wrap_affixed(struct dsn_wrap *x, const char *pre, struct rm_span s, size_t max,
                         const char *suf)
{
    uint8_t buf[4 + SMTP_XTEXT_MAX];
    size_t n = 0;
    size_t ln = RM_MIN(s.len, max);
    RM_ASSERT(strlen(pre) + max + strlen(suf) <= sizeof(buf));
    for (const char *c = pre; *c; c++)
        buf[n++] = (uint8_t)*c;
    if (ln > 0)
        memcpy(buf + n, s.p, ln);
    n += ln;
    for (const char *c = suf; *c; c++)
        buf[n++] = (uint8_t)*c;
    wrap_words(x, buf, n);
}

/* "<addr>: host mx said: 550 5.1.1 text" or "<addr>: reason (4.4.7)". */
static void dsn_write_rcpt_text(const struct dsn_plan *pl, struct dsn_w *w,
                                const struct dsn_rcpt *r)
{
    struct dsn_wrap x;
    char st[16];
    struct rm_span diag = r->diag_text;
    diag.len = RM_MIN(diag.len, (size_t)DSN_DIAG_TEXT_MAX);
    wrap_begin(&x, w, DSN_TEXT_INDENT, pl->global);
    wrap_affixed(&x, "<", pl->in->env->rcpts[r->rcpt].addr, SMTP_PATH_MAX, ">:");
    if (r->remote_mta.len > 0) {
        wrap_str(&x, "host");
        wrap_affixed(&x, "", r->remote_mta, SMTP_DOMAIN_MAX, r->diag_code ? " said:" : ":");
    }
    if (r->diag_code != 0) {
        char code[8];
        (void)snprintf(code, sizeof(code), "%u", r->diag_code);
        wrap_str(&x, code);
        wrap_words(&x, diag.p, diag.len);
    } else {
        if (diag.len > 0)
            wrap_words(&x, diag.p, diag.len);
        else
            wrap_str(&x, dsn_status_text(r->status));
        dsn_status_str(r->status, st);
        wrap_affixed(&x, "(", rm_span_str(st), sizeof(st), ")");
    }
    if (r->action == DSN_ACTION_DELAYED)
        wrap_str(&x, "(still being retried)");
    w_crlf(w);
}

static void dsn_write_paragraph(struct dsn_w *w, const char *text)
{
    struct dsn_wrap x;
    wrap_begin(&x, w, 0, false);
    wrap_str(&x, text);
    w_crlf(w);
}

static void dsn_write_intro(const struct dsn_plan *pl, struct dsn_w *w)
{
    const struct dsn_in *in = pl->in;
    struct dsn_wrap x;
    wrap_begin(&x, w, 0, false);
    wrap_str(&x, "This is the mail delivery system at");
    wrap_affixed(&x, "", rm_span_str(in->host), SMTP_DOMAIN_MAX, ".");
    w_str(w, "\r\n\r\n");
    wrap_begin(&x, w, 0, false);
    if (pl->any_failed) {
        wrap_str(&x, "Your message could not be delivered to one or more recipients. The "
                     "reasons are below; the attached delivery report has the details.");
    } else {
        wrap_str(&x, "Your message has not yet been delivered to the recipients below. "
                     "Delivery is still being");
        if (in->will_retry_until_ms != 0) {
            char d[DSN_DATE_MAX];
            dsn_date(in->will_retry_until_ms, d);
            wrap_str(&x, "retried until");
            wrap_affixed(&x, "", rm_span_str(d), DSN_DATE_MAX, ";");
        } else {
            wrap_str(&x, "retried;");
        }
        wrap_str(&x, "there is no need to send it again.");
    }
    w_str(w, "\r\n\r\n");
}

static void dsn_write_outro(const struct dsn_plan *pl, struct dsn_w *w)
{
    char buf[256] = "";
    unsigned long long max = (unsigned long long)pl->in->return_size_max;
    switch ((enum dsn_return)pl->returned) {
    case DSN_RETURN_FULL:
        (void)snprintf(buf, sizeof(buf), "Your message is attached.");
        break;
    case DSN_RETURN_HDRS:
        (void)snprintf(buf, sizeof(buf), "The header section of your message is attached.");
        break;
    case DSN_RETURN_OVERSIZE:
        (void)snprintf(buf, sizeof(buf),
                       "Your message is larger than %llu octets, so only its header section is "
                       "attached.",
                       max);
        break;
    }
    if (pl->cut) {
        size_t n = strlen(buf);
        (void)snprintf(buf + n, sizeof(buf) - n,
                       " The header section is cut short to fit in %llu octets.", max);
    }
    dsn_write_paragraph(w, buf);
}

/* Part 1: for people (RFC 6522 3: the first part is human readable). */
static void dsn_write_text(const struct dsn_plan *pl, struct dsn_w *w)
{
    w_delimiter(w, false);
    w_str(w, "Content-Description: Notification\r\n");
    w_str(w, pl->global ? "Content-Type: text/plain; charset=utf-8\r\n"
                        : "Content-Type: text/plain; charset=us-ascii\r\n");
    if (pl->global)
        w_str(w, "Content-Transfer-Encoding: 8bit\r\n");
    w_crlf(w);
    dsn_write_intro(pl, w);
    for (uint32_t i = 0; i < pl->in->rcpt_count; i++) {
        const struct dsn_rcpt *r = &pl->in->rcpts[i];
        if (!dsn_wanted(pl->in, r))
            continue;
        dsn_write_rcpt_text(pl, w, r);
        w_crlf(w);
    }
    dsn_write_outro(pl, w);
}

static bool dsn_has_8bit(struct rm_span s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.p[i] >= 0x80)
            return true;
    return false;
}

/* RFC 3464 2.3.1: Original-Recipient: addr-type ";" the address, decoded. */
static void dsn_write_orcpt(const struct dsn_plan *pl, struct dsn_w *w, struct rm_span orcpt)
{
    const uint8_t *semi = orcpt.len ? memchr(orcpt.p, ';', orcpt.len) : NULL;
    if (semi == NULL)
        return; /* smtpd stores none without one (RFC 3461 4.2) */
    struct rm_span type = rm_span_make(orcpt.p, (size_t)(semi - orcpt.p));
    struct rm_span addr = rm_span_make(semi + 1, orcpt.len - type.len - 1);
    w_str(w, "Original-Recipient: ");
    w_clean(w, type.p, RM_MIN(type.len, (size_t)SMTP_XTEXT_MAX), false);
    w_str(w, ";");
    /* The utf-8 type (RFC 6533 3) becomes a raw UTF-8 address in a global
     * DSN; elsewhere it stays in its ASCII form, like other types. */
    bool utf8 = pl->global && rm_span_ieq(type, "utf-8");
    w_xtext(w, addr, utf8, utf8);
    w_crlf(w);
}

static void dsn_write_diag(const struct dsn_plan *pl, struct dsn_w *w, const struct dsn_rcpt *r)
{
    struct rm_span diag = r->diag_text;
    diag.len = RM_MIN(diag.len, (size_t)DSN_DIAG_TEXT_MAX);
    if (r->diag_code == 0 && diag.len == 0)
        return;
    struct dsn_wrap x;
    w_str(w, "Diagnostic-Code: ");
    wrap_begin(&x, w, DSN_FOLD_INDENT, pl->global);
    if (r->diag_code != 0) { /* RFC 3464 2.3.6, diagnostic-type "smtp" */
        char code[8];
        (void)snprintf(code, sizeof(code), "%u", r->diag_code);
        wrap_str(&x, "smtp;");
        wrap_str(&x, code);
    } else { /* not a reply: our own words (Postfix says "X-Postfix;") */
        wrap_str(&x, "X-ringmta;");
    }
    wrap_words(&x, diag.p, diag.len);
    w_crlf(w);
}

/* RFC 3464 2.3: one block of per-recipient fields, in the ABNF's order. */
static void dsn_write_rcpt_fields(const struct dsn_plan *pl, struct dsn_w *w,
                                  const struct dsn_rcpt *r)
{
    const struct q_rcpt *q = &pl->in->env->rcpts[r->rcpt];
    char st[16];
    w_crlf(w);
    if (q->orcpt.len > 0)
        dsn_write_orcpt(pl, w, q->orcpt);
    /* RFC 6533 3: "utf-8" for addresses that need it; ASCII ones keep the
     * rfc822 type every reader knows. */
    w_str(w, pl->global && dsn_has_8bit(q->addr) ? "Final-Recipient: utf-8; "
                                                 : "Final-Recipient: rfc822; ");
    w_clean(w, q->addr.p, RM_MIN(q->addr.len, (size_t)SMTP_PATH_MAX), pl->global);
    w_str(w, r->action == DSN_ACTION_FAILED ? "\r\nAction: failed\r\nStatus: "
                                            : "\r\nAction: delayed\r\nStatus: ");
    dsn_status_str(r->status, st);
    w_str(w, st);
    w_crlf(w);
    if (r->remote_mta.len > 0) {
        w_str(w, "Remote-MTA: dns; ");
        w_clean(w, r->remote_mta.p, RM_MIN(r->remote_mta.len, (size_t)SMTP_DOMAIN_MAX), false);
        w_crlf(w);
    }
    dsn_write_diag(pl, w, r);
    if (r->last_attempt_ms != 0)
        w_date_field(w, "Last-Attempt-Date: ", r->last_attempt_ms);
    if (r->action == DSN_ACTION_DELAYED && pl->in->will_retry_until_ms != 0)
        w_date_field(w, "Will-Retry-Until: ", pl->in->will_retry_until_ms);
}

/* Part 2: for programs (RFC 3464 2, RFC 6533 6.1). */
static void dsn_write_status(const struct dsn_plan *pl, struct dsn_w *w)
{
    const struct dsn_in *in = pl->in;
    w_str(w, "\r\n");
    w_delimiter(w, false);
    w_str(w, "Content-Description: Delivery report\r\n");
    if (pl->global)
        w_str(w, "Content-Type: message/global-delivery-status\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\n");
    else
        w_str(w, "Content-Type: message/delivery-status\r\n\r\n");
    if (in->env->envid.len > 0) { /* RFC 3464 2.2.1 */
        w_str(w, "Original-Envelope-Id: ");
        w_xtext(w, in->env->envid, false, false);
        w_crlf(w);
    }
    w_str(w, "Reporting-MTA: dns; ");
    w_str(w, in->host);
    w_crlf(w);
    w_date_field(w, "Arrival-Date: ", in->env->arrival_ms);
    for (uint32_t i = 0; i < in->rcpt_count; i++)
        if (dsn_wanted(in, &in->rcpts[i]))
            dsn_write_rcpt_fields(pl, w, &in->rcpts[i]);
}

/* Part 3: the original, or its header section (RFC 3462/6522, RFC 6533 6.3). */
static void dsn_write_original(const struct dsn_plan *pl, struct dsn_w *w)
{
    bool full = pl->returned == DSN_RETURN_FULL;
    w_str(w, "\r\n");
    w_delimiter(w, false);
    w_str(w, pl->any_failed ? "Content-Description: Undelivered Message"
                            : "Content-Description: Delayed Message");
    w_str(w, full ? "\r\n" : " Headers\r\n");
    if (pl->global)
        w_str(w, full ? "Content-Type: message/global\r\n"
                      : "Content-Type: message/global-headers\r\n");
    else
        w_str(w,
              full ? "Content-Type: message/rfc822\r\n" : "Content-Type: text/rfc822-headers\r\n");
    if (pl->global || pl->ret_8bit)
        w_str(w, "Content-Transfer-Encoding: 8bit\r\n"); /* RFC 2046 5.2.1 */
    w_crlf(w);
    w->raw = true;
    w_span(w, pl->ret);
    w->raw = false;
    struct rm_span r = pl->ret;
    if (r.len > 0 && !(r.len >= 2 && r.p[r.len - 2] == '\r' && r.p[r.len - 1] == '\n'))
        w_crlf(w);
    w_crlf(w);
    w_delimiter(w, true);
}

static void dsn_fill_env(const struct dsn_plan *pl, const struct dsn_w *w, struct dsn_env *b)
{
    const struct dsn_in *in = pl->in;
    struct rm_span none = rm_span_make(dsn_empty, 0);
    memset(b, 0, sizeof(*b));
    memcpy(b->addr, in->env->sender.p, in->env->sender.len);
    b->rcpt.addr = rm_span_make(b->addr, in->env->sender.len);
    b->rcpt.orcpt = none;
    b->rcpt.last_reply = none;
    b->rcpt.notify = Q_NOTIFY_NEVER;
    b->rcpt.state = Q_RCPT_PENDING;
    b->env.sender = none; /* <>: RFC 5321 4.5.5 */
    b->env.envid = none;
    b->env.auth_user = none;
    b->env.client = none;
    b->env.helo = none;
    b->env.listener = none;
    b->env.arrival_ms = in->now_ms;
    b->env.next_attempt_ms = in->now_ms;
    b->env.size = w->len;
    b->env.ret = Q_RET_UNSPEC;
    if (pl->global)
        b->env.flags |= Q_ENV_SMTPUTF8;
    if (pl->global || pl->ret_8bit)
        b->env.flags |= Q_ENV_8BITMIME; /* 8bit declared: send with BODY=8BITMIME */
    if (w->eight)
        b->env.flags |= Q_ENV_8BIT;
    b->env.rcpt_count = 1;
    b->env.rcpts = &b->rcpt;
}

int dsn_build(const struct dsn_in *in, struct rm_pool *pool, struct dsn_out *out,
              struct dsn_env *benv)
{
    RM_ASSERT(in != NULL && in->env != NULL && in->host != NULL && in->id != NULL);
    RM_ASSERT(in->rcpts != NULL || in->rcpt_count == 0);
    RM_ASSERT(in->msg.p != NULL || in->msg.len == 0);
    RM_ASSERT(pool != NULL && out != NULL && benv != NULL);
    memset(out, 0, sizeof(*out));
    struct dsn_plan pl;
    int rc = dsn_plan(in, &pl);
    if (rc != 0)
        return rc;
    for (unsigned k = 0; k < DSN_BOUNDARY_TRIES; k++) {
        char bnd[DSN_BOUNDARY_MAX + 1];
        int n = snprintf(bnd, sizeof(bnd), "=_rm_%s_%u", in->id, k);
        RM_ASSERT(n > 0 && (size_t)n < sizeof(bnd));
        struct dsn_w w = {.pool = pool, .bnd = bnd, .bnd_len = (size_t)n};
        dsn_write_header(&pl, &w);
        dsn_write_text(&pl, &w);
        dsn_write_status(&pl, &w);
        dsn_write_original(&pl, &w);
        if (w.err == 0 && w.bnd_seen == w.bnd_put) {
            RM_ASSERT(w.col == 0);
            out->body = w.head;
            out->len = w.len;
            out->reported = pl.reported;
            out->returned = pl.returned;
            out->cut = pl.cut;
            dsn_fill_env(&pl, &w, benv);
            return 0;
        }
        rm_pool_put_chain(pool, w.head);
        if (w.err != 0)
            return w.err;
    }
    return DSN_ERR_BOUNDARY;
}
