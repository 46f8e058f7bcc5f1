/* mta/smtp.h: SMTP protocol pieces shared by the server (smtpd) and, later,
 * the client (smtpc): replies, the address (path) parser, xtext.
 *
 * Pure functions on caller memory: any thread, never allocates, logs or blocks.
 */
#ifndef SMTP_H
#define SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"

#define SMTP_LOCAL_PART_MAX 64   /* octets, RFC 5321 4.5.3.1.1 */
#define SMTP_DOMAIN_MAX     255  /* octets, RFC 5321 4.5.3.1.2 */
#define SMTP_PATH_MAX       256  /* octets incl. <>, RFC 5321 4.5.3.1.3 */
#define SMTP_REPLY_LINE_MAX 512  /* octets incl. CRLF, RFC 5321 4.5.3.1.5 */
#define SMTP_TEXT_LINE_MAX  1000 /* octets incl. CRLF, RFC 5321 4.5.3.1.6 */
#define SMTP_XTEXT_MAX      500  /* ENVID/ORCPT values, RFC 3461 4.2 and 4.4 */

/* A reply as the peer sees it: "code esc text". esc is the enhanced status
 * (RFC 3463) class.subject.detail; text is static or outlives the use. */
struct smtp_reply {
    uint16_t code;
    uint8_t esc[3];
    const char *text;
};

/* Formats "code x.y.z text\r\n" (or "code-x.y.z text\r\n" when more is true)
 * into out[0..cap); esc[0] == 0 means no enhanced status ("220 text", the
 * greeting, EHLO lines and 354 carry none, RFC 2034 3). Returns bytes
 * written, or 0 when it does not fit. */
size_t smtp_reply_format(const struct smtp_reply *r, bool more, char *out, size_t cap);

/* ---- paths (RFC 5321 4.1.2) ----------------------------------------------- */

enum smtp_addr_err {
    SMTP_ADDR_SYNTAX = -1,    /* not a Path */
    SMTP_ADDR_TOO_LONG = -2,  /* local part > 64, domain > 255 or path > 256 */
    SMTP_ADDR_ROUTE = -3,     /* a source route (<@a,@b:x@y>): refused, see smtp.c */
    SMTP_ADDR_UTF8 = -4,      /* non-ASCII without SMTPUTF8 */
    SMTP_ADDR_BAD_UTF8 = -5,  /* ill-formed UTF-8 */
    SMTP_ADDR_NO_DOMAIN = -6, /* a mailbox without "@domain" (e.g. <postmaster>) */
    SMTP_ADDR_NULL = -7,      /* <> where it is not allowed (a forward-path) */
};

struct smtp_path {
    struct rm_span mailbox; /* local@domain as written (quotes kept), empty for <> */
    struct rm_span local;   /* local part as written */
    struct rm_span domain;  /* domain or address literal ([...]) */
    bool null;              /* the null path <> */
    bool utf8;              /* contains octets >= 0x80 */
};

/* Parses a Path "<...>" at in[0..len) (the text after "FROM:" or "TO:",
 * leading spaces already skipped). utf8_ok allows UTF-8 in the local part and
 * U-labels in the domain (SMTPUTF8, RFC 6531 3.3); null_ok allows "<>".
 * Returns the bytes consumed (> 0, up to and including '>'), or a negative
 * enum smtp_addr_err. Spans in *out point into in. */
RM_MUST_CHECK int smtp_path_parse(const uint8_t *in, size_t len, bool utf8_ok, bool null_ok,
                                  struct smtp_path *out);

/* Names an smtp_addr_err; static string. */
const char *smtp_addr_strerror(int err);

/* True when p[0..len) is xtext (RFC 3461 4): printable ASCII except '+' and
 * '=', with "+XX" hex escapes (upper-case hex). */
bool smtp_xtext_valid(const uint8_t *p, size_t len);

/* True when p[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
bool smtp_utf8_valid(const uint8_t *p, size_t len);

#endif /* SMTP_H */
