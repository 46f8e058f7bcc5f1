/* mta/log.h: diagnostics and the JSON-lines delivery log.
 *
 * Diagnostics are "level module id key=value..." lines (STYLE.md "Logging").
 * The main and queue-writer threads write them straight to stderr
 * (log_diag); a worker never blocks on a write, so it appends lines to its
 * own struct log_buf and its loop flushes them with io_uring writes. A line
 * that does not fit a full buffer is dropped and counted, never waited for.
 */
#ifndef LOG_H
#define LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"

#define LOG_BUF_BYTES (256u * 1024u) /* per worker and per sink, two of them */
#define LOG_WRITE_MAX 4096u /* one write: whole lines, <= PIPE_BUF so pipes keep lines whole */
#define LOG_LINE_MAX  LOG_WRITE_MAX /* one line: longer ones would split on a pipe (rcpt lists
                                       are cut to fit) */

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Main/writer threads: formats one diagnostic line to stderr (blocking). */
void log_diag(enum log_level lvl, const char *module, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A worker's buffered sink: two buffers, one being filled, one being written. */
struct log_buf {
    int fd;       /* borrowed: stdout, stderr or the delivery log file */
    char *buf[2]; /* owned */
    size_t len[2];
    size_t off;       /* bytes of buf[writing] already written */
    int filling;      /* index of the buffer being filled */
    bool writing;     /* a write of buf[!filling] is in flight */
    uint64_t dropped; /* lines dropped because both buffers were full */
};

RM_MUST_CHECK int log_buf_init(struct log_buf *b, int fd);
void log_buf_fini(struct log_buf *b);
/* Appends one whole line (a '\n' is added); drops it when it does not fit. */
void log_buf_line(struct log_buf *b, const char *line, size_t len);
/* Formats a diagnostic line into b. */
void log_buf_diag(struct log_buf *b, enum log_level lvl, const char *module, const char *id,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The next write to submit, or false when none is due (one at a time). The
 * caller submits a write of *len bytes at *p to b->fd, then log_buf_written(). */
bool log_buf_next(struct log_buf *b, const char **p, size_t *len);
/* The write's result: n bytes written (>= 0) or -errno (the rest is dropped). */
void log_buf_written(struct log_buf *b, int res);
/* Blocking flush of everything (at worker exit). */
void log_buf_flush_sync(struct log_buf *b);

/* JSON building into a fixed line buffer; `ok` becomes false on overflow. */
struct log_json {
    char *p;
    size_t len, cap;
    bool ok;
};
void log_json_begin(struct log_json *j, char *buf, size_t cap);
void log_json_raw(struct log_json *j, const char *s, size_t n);
void log_json_key(struct log_json *j, const char *key);  /* ,"key": (no comma first) */
void log_json_str(struct log_json *j, struct rm_span s); /* a quoted, escaped string */
void log_json_u64(struct log_json *j, uint64_t v);
/* Formats unix ms as "2026-11-25T14:06:42.123Z". */
void log_json_time(struct log_json *j, uint64_t unix_ms);
void log_json_end(struct log_json *j);

#endif /* LOG_H */
