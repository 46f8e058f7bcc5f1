/* mta/smtp.c: SMTP pieces shared by server and client (see smtp.h).
 *
 * Every parser here reads only in[0..len): the tests end their input at a
 * PROT_NONE page, so one octet too far is a crash, not a silent bug.
 */
#include "smtp.h"

/* ---- replies ---------------------------------------------------------------- */

/* An esc[0] of 0 means "no enhanced status": the greeting, the EHLO lines
 * and 354 carry none (RFC 2034 3 puts them on 2xx/4xx/5xx command replies).
 * Built by hand rather than with snprintf: the text is ours or the caller's,
 * and a hand-built line cannot be cut short silently. */
size_t smtp_reply_format(const struct smtp_reply *r, bool more, char *out, size_t cap)
{
    RM_ASSERT(r->code >= 200 && r->code <= 599);
    const char *text = r->text ? r->text : "";
    size_t text_len = strlen(text);
    size_t need = 4 + text_len + 2; /* "250 " text CRLF */
    if (r->esc[0] != 0) {
        RM_ASSERT(r->esc[0] <= 9 && r->esc[1] <= 99 && r->esc[2] <= 99);
        need += 6; /* "x.y.z " at most "x.yy.zz " minus what is short */
        need += (r->esc[1] >= 10) + (r->esc[2] >= 10);
    }
    if (need > cap)
        return 0;

    size_t n = 0;
    out[n++] = (char)('0' + r->code / 100);
    out[n++] = (char)('0' + r->code / 10 % 10);
    out[n++] = (char)('0' + r->code % 10);
    out[n++] = more ? '-' : ' ';
    if (r->esc[0] != 0) {
        out[n++] = (char)('0' + r->esc[0]);
        for (int k = 1; k < 3; k++) {
            out[n++] = '.';
            if (r->esc[k] >= 10)
                out[n++] = (char)('0' + r->esc[k] / 10);
            out[n++] = (char)('0' + r->esc[k] % 10);
        }
        out[n++] = ' ';
    }
    /* Wire bytes, CRLF-ended, not a C string. */
    memcpy(out + n, text, text_len); /* NOLINT(bugprone-not-null-terminated-result) */
    n += text_len;
    out[n++] = '\r';
    out[n++] = '\n';
    RM_ASSERT(n == need);
    return n;
}

/* ---- UTF-8 ------------------------------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at p[0..avail) that starts with a
 * non-ASCII octet, or 0 when it is ill-formed or cut short (RFC 3629 4, the
 * Unicode table 3-7: no overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const uint8_t *p, size_t avail)
{
    uint8_t c = p[0];
    size_t n;
    uint8_t lo = 0x80; /* range of the second octet */
    uint8_t hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0; /* ASCII, a continuation octet, C0, C1 or F5..FF */
    }
    if (avail < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++) {
        if (p[k] < 0x80 || p[k] > 0xbf)
            return 0;
    }
    return n;
}

bool smtp_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* ---- xtext (RFC 3461 4) --------------------------------------------------- */

static bool is_upper_hex(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

bool smtp_xtext_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        if (c == '+') {
            if (len - i < 3 || !is_upper_hex(p[i + 1]) || !is_upper_hex(p[i + 2]))
                return false;
            i += 3;
        } else if (c >= '!' && c <= '~' && c != '=') {
            i++;
        } else {
            return false;
        }
    }
    return true;
}

/* ---- paths (RFC 5321 4.1.2, RFC 6531 3.3) --------------------------------- */

static bool is_alpha(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(uint8_t c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 5322 3.2.3 atext. */
static bool is_atext(uint8_t c)
{
    return is_alpha(c) || is_digit(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* A cursor over in[0..len): every read goes through peek(), which answers -1
 * past the end. */
struct cur {
    const uint8_t *in;
    size_t len;
    size_t i;
    bool utf8_ok;
    bool utf8; /* saw a non-ASCII octet */
};

static int peek(const struct cur *c)
{
    return c->i < c->len ? c->in[c->i] : -1;
}

/* Takes one UTF-8 sequence at the cursor (its first octet is >= 0x80).
 * Returns 0, SMTP_ADDR_UTF8 or SMTP_ADDR_BAD_UTF8. */
static int take_utf8(struct cur *c)
{
    if (!c->utf8_ok)
        return SMTP_ADDR_UTF8;
    size_t n = utf8_seq(c->in + c->i, c->len - c->i);
    if (n == 0)
        return SMTP_ADDR_BAD_UTF8;
    c->i += n;
    c->utf8 = true;
    return 0;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE; qtextSMTP =/ UTF8-non-ascii. */
static int parse_quoted(struct cur *c)
{
    c->i++; /* DQUOTE */
    for (;;) {
        int ch = peek(c);
        if (ch < 0)
            return SMTP_ADDR_SYNTAX;
        if (ch == '"') {
            c->i++;
            return 0;
        }
        if (ch == '\\') {
            c->i++;
            int q = peek(c);
            if (q < 32 || q > 126) /* quoted-pairSMTP = %d92 %d32-126 */
                return SMTP_ADDR_SYNTAX;
            c->i++;
        } else if (ch >= 0x80) {
            int rc = take_utf8(c);
            if (rc < 0)
                return rc;
        } else if (ch >= 32 && ch <= 126) {
            c->i++; /* qtextSMTP: %d32-33 / %d35-91 / %d93-126 ('"' and '\\' handled above) */
        } else {
            return SMTP_ADDR_SYNTAX;
        }
    }
}

/* Dot-string = Atom *("." Atom); atext =/ UTF8-non-ascii. */
static int parse_dot_string(struct cur *c)
{
    for (;;) {
        size_t atom_start = c->i;
        for (;;) {
            int ch = peek(c);
            if (ch >= 0x80) {
                int rc = take_utf8(c);
                if (rc < 0)
                    return rc;
            } else if (ch >= 0 && is_atext((uint8_t)ch)) {
                c->i++;
            } else {
                break;
            }
        }
        if (c->i == atom_start)
            return SMTP_ADDR_SYNTAX; /* empty atom: leading, trailing or double dot */
        if (peek(c) != '.')
            return 0;
        c->i++;
    }
}

/* Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str], or a
 * U-label when utf8_ok. U-labels are checked for well-formed UTF-8 only, not
 * for IDNA2008 validity: that is the business of whoever resolves them.
 * Label lengths (63) are not checked either; DNS refuses those names later. */
static int parse_domain(struct cur *c)
{
    for (;;) {
        size_t label_start = c->i;
        int last = -1;
        for (;;) {
            int ch = peek(c);
            if (ch >= 0x80) {
                int rc = take_utf8(c);
                if (rc < 0)
                    return rc;
                last = 0x80;
            } else if ((ch >= 0 && (is_alpha((uint8_t)ch) || is_digit((uint8_t)ch))) ||
                       (ch == '-' && c->i > label_start)) {
                c->i++;
                last = ch;
            } else {
                break;
            }
        }
        if (c->i == label_start || last == '-')
            return SMTP_ADDR_SYNTAX;
        if (peek(c) != '.')
            return 0;
        c->i++;
    }
}

/* Snum = 1*3DIGIT, 0..255; IPv4-address-literal = Snum 3("." Snum). */
static int parse_ipv4(struct cur *c)
{
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (peek(c) != '.')
                return SMTP_ADDR_SYNTAX;
            c->i++;
        }
        unsigned v = 0;
        int digits = 0;
        while (digits < 3 && peek(c) >= 0 && is_digit((uint8_t)peek(c))) {
            v = v * 10 + (unsigned)(peek(c) - '0');
            c->i++;
            digits++;
        }
        if (digits == 0 || v > 255)
            return SMTP_ADDR_SYNTAX;
    }
    if (peek(c) >= 0 && is_digit((uint8_t)peek(c)))
        return SMTP_ADDR_SYNTAX; /* a fourth digit */
    return 0;
}

/* IPv6-addr (RFC 5321 4.1.3), up to the closing ']': 8 groups, or at most 6
 * around one "::"; an embedded IPv4 literal at the end counts as 2 groups. */
static int parse_ipv6(struct cur *c)
{
    unsigned groups = 0;
    bool dbl = false;
    if (peek(c) == ':') {
        c->i++;
        if (peek(c) != ':')
            return SMTP_ADDR_SYNTAX;
        c->i++;
        dbl = true;
        if (peek(c) == ']')
            return 0; /* "::" */
    }
    for (unsigned round = 0; round < 9; round++) {
        size_t start = c->i;
        size_t n = 0;
        while (n < 5 && start + n < c->len && is_hex(c->in[start + n]))
            n++;
        if (start + n < c->len && c->in[start + n] == '.') {
            int rc = parse_ipv4(c); /* the hex run was the first Snum */
            if (rc < 0)
                return rc;
            groups += 2;
            if (peek(c) != ']')
                return SMTP_ADDR_SYNTAX;
            break;
        }
        if (n == 0 || n > 4)
            return SMTP_ADDR_SYNTAX;
        c->i += n;
        groups++;
        if (peek(c) == ']')
            break;
        if (peek(c) != ':')
            return SMTP_ADDR_SYNTAX;
        c->i++;
        if (peek(c) == ':') {
            if (dbl)
                return SMTP_ADDR_SYNTAX;
            dbl = true;
            c->i++;
            if (peek(c) == ']')
                break;
        }
    }
    if (peek(c) != ']')
        return SMTP_ADDR_SYNTAX;
    if (dbl ? groups > 6 : groups != 8)
        return SMTP_ADDR_SYNTAX;
    return 0;
}

/* address-literal = "[" ( IPv4 / "IPv6:" IPv6 / General ) "]". A
 * General-address-literal needs an IANA-registered tag and none but IPv6
 * exists, so anything else is refused as syntax. */
static int parse_literal(struct cur *c)
{
    c->i++; /* '[' */
    static const char tag[] = "IPv6:";
    size_t tag_len = sizeof(tag) - 1;
    bool v6 = c->len - c->i >= tag_len;
    for (size_t k = 0; v6 && k < tag_len; k++) {
        uint8_t x = c->in[c->i + k];
        uint8_t y = (uint8_t)tag[k];
        if ((x | 0x20) != (y | 0x20))
            v6 = false;
    }
    int rc;
    if (v6) {
        c->i += tag_len;
        rc = parse_ipv6(c);
    } else {
        rc = parse_ipv4(c);
    }
    if (rc < 0)
        return rc;
    if (peek(c) != ']')
        return SMTP_ADDR_SYNTAX;
    c->i++;
    return 0;
}

/* A-d-l = At-domain *( "," At-domain ) ":" with At-domain = "@" Domain. */
static int parse_adl(struct cur *c)
{
    for (;;) {
        if (peek(c) != '@')
            return SMTP_ADDR_SYNTAX;
        c->i++;
        int rc = parse_domain(c);
        if (rc < 0)
            return rc;
        int ch = peek(c);
        if (ch != ':' && ch != ',')
            return SMTP_ADDR_SYNTAX;
        c->i++;
        if (ch == ':')
            return 0;
    }
}

int smtp_path_parse(const uint8_t *in, size_t len, bool utf8_ok, bool null_ok,
                    struct smtp_path *out)
{
    memset(out, 0, sizeof(*out));
    struct cur c = {.in = in, .len = len, .i = 0, .utf8_ok = utf8_ok, .utf8 = false};
    if (peek(&c) != '<')
        return SMTP_ADDR_SYNTAX;
    c.i++;
    if (peek(&c) == '>') {
        if (!null_ok)
            return SMTP_ADDR_NULL;
        out->null = true;
        return 2;
    }
    if (peek(&c) == '@') {
        /* A source route. RFC 5321 4.1.1.3 and appendix C let a server ignore
         * or decline them; we decline: honouring one would forward mail to a
         * host the client picked, which is the percent-hack/source-route
         * relay class that open relays were made of. */
        int rc = parse_adl(&c);
        return rc < 0 ? rc : SMTP_ADDR_ROUTE;
    }

    size_t mb_start = c.i;
    int rc = peek(&c) == '"' ? parse_quoted(&c) : parse_dot_string(&c);
    if (rc < 0)
        return rc;
    size_t local_end = c.i;
    int ch = peek(&c);
    if (ch == '>')
        return SMTP_ADDR_NO_DOMAIN;
    if (ch != '@')
        return SMTP_ADDR_SYNTAX;
    c.i++;
    size_t dom_start = c.i;
    rc = peek(&c) == '[' ? parse_literal(&c) : parse_domain(&c);
    if (rc < 0)
        return rc;
    size_t dom_end = c.i;
    if (peek(&c) != '>')
        return SMTP_ADDR_SYNTAX;
    c.i++;

    if (local_end - mb_start > SMTP_LOCAL_PART_MAX || dom_end - dom_start > SMTP_DOMAIN_MAX ||
        c.i > SMTP_PATH_MAX)
        return SMTP_ADDR_TOO_LONG;
    out->mailbox = rm_span_make(in + mb_start, dom_end - mb_start);
    out->local = rm_span_make(in + mb_start, local_end - mb_start);
    out->domain = rm_span_make(in + dom_start, dom_end - dom_start);
    out->utf8 = c.utf8;
    return (int)c.i;
}

const char *smtp_addr_strerror(int err)
{
    switch ((enum smtp_addr_err)err) {
    case SMTP_ADDR_SYNTAX:
        return "address syntax error";
    case SMTP_ADDR_TOO_LONG:
        return "address too long";
    case SMTP_ADDR_ROUTE:
        return "source route refused";
    case SMTP_ADDR_UTF8:
        return "non-ASCII address without SMTPUTF8";
    case SMTP_ADDR_BAD_UTF8:
        return "ill-formed UTF-8 in address";
    case SMTP_ADDR_NO_DOMAIN:
        return "address without domain";
    case SMTP_ADDR_NULL:
        return "null address not allowed here";
    }
    return "unknown address error";
}
