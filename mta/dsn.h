/* mta/dsn.h: delivery status notifications ("bounces"), RFC 3464.
 *
 * dsn_build() writes one complete RFC 5322 message reporting on some
 * recipients of one queued message, and the envelope to queue it with
 * (DESIGN.md "Life of a message", step 6): Action: failed for permanent
 * failures and expiry, and, with the same code, Action: delayed.
 *
 * The message, all lines CRLF and none longer than DSN_LINE_MAX octets:
 *   From: Mail Delivery System <MAILER-DAEMON@host>
 *   To: <original sender>
 *   Subject: Undelivered Mail Returned to Sender     (any recipient failed)
 *            Delayed Mail (still being retried)      (all delayed)
 *   Date: (now, UTC)  Message-ID: <id@host>  Auto-Submitted: auto-replied (RFC 3834 5)
 *   MIME-Version: 1.0
 *   Content-Type: multipart/report; report-type=delivery-status; boundary="=_rm_<id>_<k>"
 *   1. text/plain: what happened, one paragraph per recipient;
 *   2. message/delivery-status (RFC 3464 2): Original-Envelope-Id (when ENVID
 *      was given), Reporting-MTA, Arrival-Date; then per recipient
 *      Original-Recipient (when ORCPT was given), Final-Recipient, Action,
 *      Status, Remote-MTA (when known), Diagnostic-Code (when known),
 *      Last-Attempt-Date (when known), Will-Retry-Until (delayed, when given);
 *   3. the original: message/rfc822 (the whole message) for RET=FULL or no
 *      RET, text/rfc822-headers (its header section only) for RET=HDRS, for
 *      an original larger than return_size_max (the text part says so), and
 *      for reports that hold only Action: delayed (RFC 3461 4.3 asks for the
 *      content in failure reports only).
 * For an SMTPUTF8 original (RFC 6533) the types are multipart/report;
 * report-type=global-delivery-status, message/global-delivery-status,
 * message/global and message/global-headers; addresses with non-ASCII
 * octets get the "utf-8" address type (ASCII ones keep "rfc822", which every
 * reader knows), and every part is declared 8bit. Otherwise everything
 * generated is ASCII (other octets in reply texts become '?'), and 8bit is
 * declared only on the returned original and the top level, when the
 * returned octets hold any >= 0x80 (RFC 2046 5.2.1 allows 8bit there).
 *
 * Which recipients (RFC 3461 4.1): an unset NOTIFY means FAILURE,DELAY;
 * NEVER suppresses every report; Action: failed needs FAILURE, Action:
 * delayed needs DELAY. A null reverse-path never gets a DSN: notifications
 * are sent with <> (RFC 5321 4.5.5, 6.1), so none is ever sent about one and
 * two failing MTAs cannot bounce mail back and forth; dsn_is_bounce() lets
 * the caller drop "a bounce of a bounce" before building anything.
 *
 * The boundary "=_rm_<id>_<k>" (k = 0, 1, ...) must not occur in the
 * content (RFC 2046 5.1.1): the builder counts its occurrences in what it
 * wrote and, when the content held one, rebuilds with the next k. The
 * returned original is copied as stored: smtpd keeps its lines CRLF and
 * within its text_line_max (default 998).
 *
 * Pure function on caller memory: any thread, on its own pool and objects.
 * Never logs, blocks or calls malloc; takes chunks only from the given pool.
 */
#ifndef DSN_H
#define DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../common/rm_pool.h"
#include "../queue/q.h"
#include "smtp.h"

#define DSN_RETURN_SIZE_DEFAULT 50000u        /* octets: Postfix's bounce_size_limit */
#define DSN_RETURN_SIZE_MAX     (64ull << 20) /* the DSN is built in pool chunks */
/* The Message-ID left part, [A-Za-z0-9.-]: the boundary "=_rm_<id>_<k>" stays
 * within RFC 2046 5.1.1's 70 characters. */
#define DSN_ID_MAX         60u
#define DSN_LINE_MAX       998u  /* octets excl. CRLF, RFC 5322 2.1.1 */
#define DSN_WRAP_COLS      78u   /* our text and folded fields, RFC 5322 2.1.1 SHOULD */
#define DSN_DIAG_TEXT_MAX  2048u /* octets of one diagnostic text reported; more is cut */
#define DSN_BOUNDARY_TRIES 8u    /* boundaries tried before DSN_ERR_BOUNDARY */

/* Errors: negative; other negative values are -errno. The first two are
 * not failures: nothing was asked for, nothing was built. */
enum dsn_err {
    DSN_ERR_NULL_SENDER = -14001,   /* the original has a null reverse-path: never a DSN */
    DSN_ERR_NOT_REQUESTED = -14002, /* no recipient's NOTIFY asks for this report */
    DSN_ERR_BOUNDARY = -14003,      /* every candidate boundary occurs in the content */
};

/* Names a DSN_ERR_* or -errno code; static string. */
const char *dsn_strerror(int err);

enum dsn_action {
    DSN_ACTION_FAILED = 1,  /* permanent failure or expiry (RFC 3464 2.3.3) */
    DSN_ACTION_DELAYED = 2, /* still being retried */
};

/* One recipient to report on. Spans are borrowed for the dsn_build() call. */
struct dsn_rcpt {
    uint32_t rcpt;             /* index into in->env->rcpts: address, ORCPT, NOTIFY */
    enum dsn_action action;    /* what happened */
    uint8_t status[3];         /* RFC 3463 class.subject.detail, class 4 or 5
                                * (expiry is failed with 4.4.7, RFC 3463 3.5) */
    uint16_t diag_code;        /* the SMTP reply code (RFC 3464 2.3.6 "smtp"), 0 if none */
    struct rm_span diag_text;  /* diag_code != 0: the reply text after the code (the
                                * lines of a multi-line reply joined); diag_code 0: a
                                * short reason of ours ("Host or domain name not
                                * found"), reported as "X-ringmta; ...", or empty
                                * (expiry). Controls become spaces; cut at
                                * DSN_DIAG_TEXT_MAX */
    struct rm_span remote_mta; /* host name of the MTA that answered, or empty */
    uint64_t last_attempt_ms;  /* unix ms of the last attempt, 0 if none */
};

/* The input. Everything is borrowed for the dsn_build() call only. */
struct dsn_in {
    const struct q_env *env;      /* the original envelope (sender, ENVID, RET, flags,
                                   * arrival, recipients) */
    struct rm_span msg;           /* the original message as stored */
    const struct dsn_rcpt *rcpts; /* the recipients to report on, in order, each once */
    uint32_t rcpt_count;          /* entries in rcpts */
    const char *host;             /* the reporting MTA: our host name, ASCII letters,
                                   * digits, '-' and '.', 1..SMTP_DOMAIN_MAX octets */
    const char *id;               /* unique per DSN: the Message-ID left part and the
                                   * boundary seed, e.g. the bounce's q_id_format();
                                   * [A-Za-z0-9.-], 1..DSN_ID_MAX octets */
    uint64_t now_ms;              /* unix ms: Date */
    uint64_t return_size_max;     /* octets: a larger original is returned as its
                                   * header section; 1..DSN_RETURN_SIZE_MAX, normally
                                   * DSN_RETURN_SIZE_DEFAULT */
    uint64_t will_retry_until_ms; /* delayed recipients: Will-Retry-Until (arrival +
                                   * max_queue_lifetime), 0 to omit it */
};

/* What of the original the DSN carries. */
enum dsn_return {
    DSN_RETURN_FULL = 1,     /* the whole message */
    DSN_RETURN_HDRS = 2,     /* the header section: RET=HDRS, or only delayed recipients */
    DSN_RETURN_OVERSIZE = 3, /* the header section: the original exceeded return_size_max */
};

struct dsn_out {
    struct rm_chunk *body; /* owned by the caller after success: the DSN, from the pool;
                            * give it back with rm_pool_put_chain() */
    uint64_t len;          /* octets in body */
    uint32_t reported;     /* recipients listed: those whose NOTIFY asked */
    uint8_t returned;      /* enum dsn_return */
    bool cut;              /* the header section alone exceeded return_size_max and
                            * was cut at a line end */
};

/* The bounce's envelope, in caller memory. env's spans point into this struct
 * (and at static empty strings): do not copy or move it while they are used;
 * it must outlive the q_req that stores the bounce. */
struct dsn_env {
    struct q_env env;            /* sender <>, 1 recipient, RET unset, attempts 0,
                                  * arrival = next attempt = now, size = out->len,
                                  * flags Q_ENV_SMTPUTF8 (SMTPUTF8 original) and
                                  * Q_ENV_8BITMIME (8bit declared) | Q_ENV_8BIT
                                  * (octets >= 0x80 present) */
    struct q_rcpt rcpt;          /* the original sender, NOTIFY=NEVER (a report on
                                  * a report would go to <>: ask for none), pending */
    uint8_t addr[SMTP_PATH_MAX]; /* storage for rcpt.addr */
};

/* Builds the DSN for in->rcpts whose NOTIFY asks for it, as chunks taken
 * from pool, and fills *benv to queue it with (q_req STORE, body out->body).
 * Returns:
 *   0                      built: *out and *benv are set, out->body is the caller's;
 *   DSN_ERR_NULL_SENDER    the original's sender is <>: nothing built (log, drop);
 *   DSN_ERR_NOT_REQUESTED  no listed recipient's NOTIFY asks: nothing built;
 *   DSN_ERR_BOUNDARY       the content holds all DSN_BOUNDARY_TRIES boundaries
 *                          (only possible when it was made knowing the id);
 *   -ENOMEM                the pool ran dry; every chunk taken was given back;
 *   -EINVAL                host or id as above violated, a status class other than
 *                          4 or 5, a sender longer than SMTP_PATH_MAX.
 * On any non-zero return out->body is NULL, out->len 0, the pool is as it was
 * and *benv is unspecified. Asserts on NULL pointers and out-of-range
 * recipient indexes (caller bugs). Work is O(size of the DSN), done again per
 * boundary retry. */
RM_MUST_CHECK int dsn_build(const struct dsn_in *in, struct rm_pool *pool, struct dsn_out *out,
                            struct dsn_env *benv);

/* True when env's message is itself a bounce (null reverse-path): it never
 * gets a DSN, so a failed bounce is dropped (and logged) by the caller. */
bool dsn_is_bounce(const struct q_env *env);

/* True when a recipient with these Q_NOTIFY_* bits wants a report of this
 * kind (rules above). */
bool dsn_notify_wants(uint8_t notify, enum dsn_action action);

#endif /* DSN_H */
