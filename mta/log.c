/* mta/log.c: diagnostics and the buffered JSON-lines logs. */
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static const char *const log_level_name[] = {"err", "warn", "info", "debug"};

static size_t log_fmt_diag(char *out, size_t cap, enum log_level lvl, const char *module,
                           const char *id, const char *fmt, va_list ap)
{
    int n = snprintf(out, cap, "%s %s %s ", log_level_name[lvl], module, id ? id : "-");
    if (n < 0 || (size_t)n >= cap)
        return 0;
    int m = vsnprintf(out + n, cap - (size_t)n, fmt, ap);
    if (m < 0)
        return 0;
    size_t len = (size_t)n + (size_t)m;
    return len < cap ? len : cap - 1;
}

void log_diag(enum log_level lvl, const char *module, const char *id, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    size_t n = log_fmt_diag(line, sizeof(line) - 1, lvl, module, id, fmt, ap);
    va_end(ap);
    line[n++] = '\n';
    /* One write per line so lines from threads do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

int log_buf_init(struct log_buf *b, int fd)
{
    memset(b, 0, sizeof(*b));
    b->fd = fd;
    b->buf[0] = malloc(LOG_BUF_BYTES);
    b->buf[1] = malloc(LOG_BUF_BYTES);
    if (!b->buf[0] || !b->buf[1]) {
        log_buf_fini(b);
        return -ENOMEM;
    }
    return 0;
}

void log_buf_fini(struct log_buf *b)
{
    free(b->buf[0]);
    free(b->buf[1]);
    b->buf[0] = b->buf[1] = NULL;
}

void log_buf_line(struct log_buf *b, const char *line, size_t len)
{
    int f = b->filling;
    if (b->fd < 0)
        return;
    if (len + 1 > LOG_BUF_BYTES - b->len[f] || len + 1 > LOG_WRITE_MAX * 16) {
        b->dropped++;
        return;
    }
    memcpy(b->buf[f] + b->len[f], line, len);
    b->buf[f][b->len[f] + len] = '\n';
    b->len[f] += len + 1;
}

void log_buf_diag(struct log_buf *b, enum log_level lvl, const char *module, const char *id,
                  const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    size_t n = log_fmt_diag(line, sizeof(line), lvl, module, id, fmt, ap);
    va_end(ap);
    log_buf_line(b, line, n);
}

bool log_buf_next(struct log_buf *b, const char **p, size_t *len)
{
    if (b->writing || b->fd < 0)
        return false;
    int w = !b->filling;
    if (b->len[w] == 0) { /* nothing being written: swap if the other one holds lines */
        if (b->len[b->filling] == 0)
            return false;
        b->filling = w;
        w = !b->filling;
        b->off = 0;
    }
    /* Whole lines, at most LOG_WRITE_MAX (PIPE_BUF) unless one line is longer. */
    size_t left = b->len[w] - b->off, n = left;
    if (n > LOG_WRITE_MAX) {
        const char *s = b->buf[w] + b->off;
        n = LOG_WRITE_MAX;
        while (n > 0 && s[n - 1] != '\n')
            n--;
        if (n == 0) {
            const char *nl = memchr(s, '\n', left);
            n = nl ? (size_t)(nl - s) + 1 : left;
        }
    }
    *p = b->buf[w] + b->off;
    *len = n;
    b->writing = true;
    return true;
}

void log_buf_written(struct log_buf *b, int res)
{
    int w = !b->filling;
    RM_ASSERT(b->writing);
    b->writing = false;
    if (res < 0)
        res = (int)(b->len[w] - b->off); /* drop what could not be written */
    b->off += (size_t)res;
    RM_ASSERT(b->off <= b->len[w]);
    if (b->off == b->len[w]) {
        b->len[w] = 0;
        b->off = 0;
    }
}

void log_buf_flush_sync(struct log_buf *b)
{
    const char *p;
    size_t n;
    for (int guard = 0; guard < 4096 && log_buf_next(b, &p, &n); guard++) {
        ssize_t w = write(b->fd, p, n);
        log_buf_written(b, w < 0 ? -errno : (int)w);
    }
}

void log_json_begin(struct log_json *j, char *buf, size_t cap)
{
    j->p = buf;
    j->cap = cap;
    j->len = 0;
    j->ok = true;
    log_json_raw(j, "{", 1);
}

void log_json_raw(struct log_json *j, const char *s, size_t n)
{
    if (!j->ok || n > j->cap - j->len - 2) { /* keep room for "}" */
        j->ok = false;
        return;
    }
    memcpy(j->p + j->len, s, n);
    j->len += n;
}

void log_json_key(struct log_json *j, const char *key)
{
    if (j->len > 1)
        log_json_raw(j, ",", 1);
    log_json_raw(j, "\"", 1);
    log_json_raw(j, key, strlen(key));
    log_json_raw(j, "\":", 2);
}

void log_json_str(struct log_json *j, struct rm_span s)
{
    static const char hex[] = "0123456789abcdef";
    log_json_raw(j, "\"", 1);
    for (size_t i = 0; i < s.len && j->ok; i++) {
        uint8_t c = s.p[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            log_json_raw(j, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            log_json_raw(j, e, 6);
        } else {
            /* UTF-8 passes through; smtpd only accepts well-formed UTF-8. */
            log_json_raw(j, (const char *)&s.p[i], 1);
        }
    }
    log_json_raw(j, "\"", 1);
}

void log_json_u64(struct log_json *j, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%" PRIu64, v);
    log_json_raw(j, b, (size_t)n);
}

void log_json_time(struct log_json *j, uint64_t unix_ms)
{
    struct rm_utc u;
    char b[40];
    rm_utc_from_unix(unix_ms / 1000, &u);
    int n = snprintf(b, sizeof(b), "\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\"", u.year, u.month,
                     u.day, u.hour, u.min, u.sec, (unsigned)(unix_ms % 1000));
    log_json_raw(j, b, (size_t)n);
}

void log_json_end(struct log_json *j)
{
    /* begin/raw always leave room for the closing brace */
    j->p[j->len++] = '}';
}
