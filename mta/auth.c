/* mta/auth.c: SMTP AUTH: SASL PLAIN/LOGIN, users file, verification cache.
 * See auth.h for the contract. Only libc and libxcrypt: no TLS or DNS headers.
 */
#include "auth.h"

#include <assert.h>
#include <crypt.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static_assert(AUTH_PASSWORD_MAX < CRYPT_MAX_PASSPHRASE_SIZE, "crypt takes every password");
static_assert(AUTH_RESPONSE_MAX == (AUTH_DECODED_MAX + 2u) / 3u * 4u,
              "base64 of the longest message");
static_assert(AUTH_RESPONSE_MAX <= 12288u, "RFC 4954 4 allows 12288 octets");
static_assert(AUTH_USER_MAX <= UINT16_MAX, "user_len is 16 bits");

/* ---- replies (RFC 4954 4 and 6) --------------------------------------------------- */

static const struct smtp_reply reply_no_mech = {504, {5, 5, 4}, "Unrecognized authentication type"};
static const struct smtp_reply reply_bad_b64 = {
    501, {5, 5, 2}, "Cannot decode the authentication response"};
static const struct smtp_reply reply_cancel = {501, {5, 7, 0}, "Authentication cancelled"};
static const struct smtp_reply reply_too_long = {
    500, {5, 5, 6}, "Authentication Exchange line is too long"};
static const struct smtp_reply reply_ok = {235, {2, 7, 0}, "Authentication successful"};
static const struct smtp_reply reply_invalid = {
    535, {5, 7, 8}, "Authentication credentials invalid"};
static const struct smtp_reply reply_temp = {454, {4, 7, 0}, "Temporary authentication failure"};

/* ---- base64 (RFC 4648 4, strict as RFC 4954 4 asks) --------------------------------- */

static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

#define B64_BAD      (-1)
#define B64_TOO_LONG (-2)

/* Decodes in into out[0..cap). Returns the decoded length, B64_BAD (not
 * canonical base64), or B64_TOO_LONG (well-formed but over cap). */
static int b64_decode(struct rm_span in, uint8_t *out, size_t cap)
{
    if (in.len % 4 != 0)
        return B64_BAD;
    size_t pad = 0;
    if (in.len >= 4 && in.p[in.len - 1] == '=')
        pad = in.len >= 4 && in.p[in.len - 2] == '=' ? 2 : 1;
    size_t n = in.len / 4 * 3 - pad;
    size_t o = 0;
    for (size_t i = 0; i < in.len; i += 4) {
        bool last = i + 4 == in.len;
        int v[4];
        for (size_t k = 0; k < 4; k++) {
            if (last && k >= 4 - pad) {
                v[k] = 0; /* '=' checked by the pad count above */
                continue;
            }
            v[k] = b64_value(in.p[i + k]);
            if (v[k] < 0)
                return B64_BAD; /* includes '=' anywhere but the end */
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* Canonical only: the bits a pad leaves over must be zero (RFC 4648 3.5). */
        if (last && pad == 1 && (w & 0xffu) != 0)
            return B64_BAD;
        if (last && pad == 2 && (w & 0xffffu) != 0)
            return B64_BAD;
        if (n > cap)
            continue; /* keep checking the syntax, write nothing */
        out[o++] = (uint8_t)(w >> 16);
        if (o < n)
            out[o++] = (uint8_t)(w >> 8);
        if (o < n)
            out[o++] = (uint8_t)w;
    }
    if (n > cap)
        return B64_TOO_LONG;
    RM_ASSERT(o == n);
    return (int)n;
}

/* ---- SASL ---------------------------------------------------------------------------- */

enum auth_sasl_state {
    AUTH_ST_IDLE = 0, /* no exchange, or it ended */
    AUTH_ST_PLAIN,    /* sent "334 ", waiting for the PLAIN message */
    AUTH_ST_LOGIN_USER,
    AUTH_ST_LOGIN_PASS, /* buf[0..user_len) holds the user */
};

static const char challenge_user[] = "VXNlcm5hbWU6"; /* "Username:" */
static const char challenge_pass[] = "UGFzc3dvcmQ6"; /* "Password:" */

static enum auth_sasl_rc fail(struct auth_sasl *a, struct auth_sasl_out *out,
                              const struct smtp_reply *r)
{
    a->state = AUTH_ST_IDLE;
    out->reply = *r;
    return AUTH_SASL_FAIL;
}

static enum auth_sasl_rc challenge(struct auth_sasl *a, struct auth_sasl_out *out,
                                   enum auth_sasl_state st, const char *text)
{
    a->state = (uint8_t)st;
    out->challenge = text;
    return AUTH_SASL_CHALLENGE;
}

static enum auth_sasl_rc done(struct auth_sasl *a, struct auth_sasl_out *out, const uint8_t *user,
                              size_t user_len, const uint8_t *pass, size_t pass_len)
{
    a->state = AUTH_ST_IDLE;
    out->user = rm_span_make(user, user_len);
    out->password = rm_span_make(pass, pass_len);
    return AUTH_SASL_DONE;
}

/* RFC 4616 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd. */
static enum auth_sasl_rc plain_message(struct auth_sasl *a, struct rm_span in,
                                       struct auth_sasl_out *out)
{
    int n = b64_decode(in, a->buf, sizeof(a->buf));
    if (n == B64_BAD)
        return fail(a, out, &reply_bad_b64);
    RM_ASSERT(n >= 0); /* AUTH_RESPONSE_MAX decodes into buf */
    const uint8_t *m = a->buf;
    const uint8_t *nul1 = memchr(m, 0, (size_t)n);
    if (!nul1)
        return fail(a, out, &reply_bad_b64);
    const uint8_t *cid = nul1 + 1;
    const uint8_t *end = m + n;
    const uint8_t *nul2 = memchr(cid, 0, (size_t)(end - cid));
    if (!nul2)
        return fail(a, out, &reply_bad_b64);
    const uint8_t *pw = nul2 + 1;
    if (memchr(pw, 0, (size_t)(end - pw)))
        return fail(a, out, &reply_bad_b64);
    size_t zid_len = (size_t)(nul1 - m);
    size_t cid_len = (size_t)(nul2 - cid);
    size_t pw_len = (size_t)(end - pw);
    if (cid_len == 0 || pw_len == 0)
        return fail(a, out, &reply_bad_b64);
    if (cid_len > AUTH_USER_MAX || pw_len > AUTH_PASSWORD_MAX || zid_len > AUTH_USER_MAX)
        return fail(a, out, &reply_invalid);
    /* Acting as another user (authzid != authcid) is never allowed here. */
    if (zid_len != 0 && (zid_len != cid_len || memcmp(m, cid, cid_len) != 0))
        return fail(a, out, &reply_invalid);
    return done(a, out, cid, cid_len, pw, pw_len);
}

/* LOGIN (draft-murchison-sasl-login): the user name, then the password. */
static enum auth_sasl_rc login_user(struct auth_sasl *a, struct rm_span in,
                                    struct auth_sasl_out *out)
{
    int n = b64_decode(in, a->buf, AUTH_USER_MAX);
    if (n == B64_BAD)
        return fail(a, out, &reply_bad_b64);
    if (n == B64_TOO_LONG)
        return fail(a, out, &reply_invalid);
    if (n == 0 || memchr(a->buf, 0, (size_t)n))
        return fail(a, out, &reply_bad_b64);
    a->user_len = (uint16_t)n;
    return challenge(a, out, AUTH_ST_LOGIN_PASS, challenge_pass);
}

static enum auth_sasl_rc login_pass(struct auth_sasl *a, struct rm_span in,
                                    struct auth_sasl_out *out)
{
    RM_ASSERT(a->user_len >= 1 && a->user_len <= AUTH_USER_MAX);
    uint8_t *pw = a->buf + a->user_len;
    int n = b64_decode(in, pw, AUTH_PASSWORD_MAX);
    if (n == B64_BAD)
        return fail(a, out, &reply_bad_b64);
    if (n == B64_TOO_LONG)
        return fail(a, out, &reply_invalid);
    if (n == 0 || memchr(pw, 0, (size_t)n))
        return fail(a, out, &reply_bad_b64);
    return done(a, out, a->buf, a->user_len, pw, (size_t)n);
}

enum auth_sasl_rc auth_sasl_start(struct auth_sasl *a, struct rm_span mech,
                                  const struct rm_span *ir, struct auth_sasl_out *out)
{
    RM_ASSERT(a != NULL && out != NULL);
    a->state = AUTH_ST_IDLE;
    a->user_len = 0;
    bool plain = rm_span_ieq(mech, "PLAIN");
    if (!plain && !rm_span_ieq(mech, "LOGIN"))
        return fail(a, out, &reply_no_mech);
    if (!ir)
        return plain ? challenge(a, out, AUTH_ST_PLAIN, "")
                     : challenge(a, out, AUTH_ST_LOGIN_USER, challenge_user);
    struct rm_span in = *ir;
    if (in.len > AUTH_RESPONSE_MAX)
        return fail(a, out, &reply_too_long);
    if (in.len == 1 && in.p[0] == '=')
        in.len = 0; /* the empty initial response, RFC 4954 4 */
    return plain ? plain_message(a, in, out) : login_user(a, in, out);
}

enum auth_sasl_rc auth_sasl_feed(struct auth_sasl *a, struct rm_span line,
                                 struct auth_sasl_out *out)
{
    RM_ASSERT(a != NULL && out != NULL);
    RM_ASSERT(a->state != AUTH_ST_IDLE);
    if (line.len > AUTH_RESPONSE_MAX)
        return fail(a, out, &reply_too_long);
    if (line.len == 1 && line.p[0] == '*')
        return fail(a, out, &reply_cancel);
    switch ((enum auth_sasl_state)a->state) {
    case AUTH_ST_PLAIN:
        return plain_message(a, line, out);
    case AUTH_ST_LOGIN_USER:
        return login_user(a, line, out);
    case AUTH_ST_LOGIN_PASS:
        return login_pass(a, line, out);
    case AUTH_ST_IDLE:
        break;
    }
    RM_ASSERT(!"auth_sasl_feed without a challenge");
    return AUTH_SASL_FAIL;
}

/* ---- SipHash-2-4 ------------------------------------------------------------------------ */

static uint64_t rotl64(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64u - b));
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8u * i);
    return v;
}

static void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl64(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl64(v[0], 32);
    v[2] += v[3];
    v[3] = rotl64(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = rotl64(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = rotl64(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl64(v[2], 32);
}

uint64_t auth_siphash24(const uint8_t key[16], const void *in, size_t len)
{
    const uint8_t *p = in;
    uint64_t k0 = load_le64(key);
    uint64_t k1 = load_le64(key + 8);
    uint64_t v[4] = {0x736f6d6570736575ull ^ k0, 0x646f72616e646f6dull ^ k1,
                     0x6c7967656e657261ull ^ k0, 0x7465646279746573ull ^ k1};
    size_t full = len - len % 8;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = load_le64(p + i);
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    }
    /* last block: the remaining octets, and len mod 256 in the top octet */
    uint64_t b = (uint64_t)(len & 0xffu) << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)p[full + i] << (8u * i);
    v[3] ^= b;
    sip_round(v);
    sip_round(v);
    v[0] ^= b;
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++)
        sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- users table --------------------------------------------------------------------------- */

struct auth_entry {
    char *user; /* NUL-terminated copy, owned by the table */
    char *hash; /* crypt(3) string, NUL-terminated, owned by the table */
    uint16_t user_len;
    uint32_t line; /* in the file, for duplicate errors */
};

struct auth_table {
    struct auth_entry *e; /* sorted by (user_len, user) for bsearch */
    size_t n;
    uint64_t generation; /* unique per load; cache entries of other tables never match */
    uint8_t key[16];     /* SipHash key for cache tags, from getrandom */
    char *strings;       /* one block holding every user and hash */
    size_t strings_len;  /* octets allocated at strings */
};

/* Process-wide: table generations are unique, so a cache never confuses a
 * reloaded table with the old one even when malloc reuses its address. Only
 * the main thread loads; relaxed is enough as the value only needs to be
 * unique, and workers see a table through whatever publishes its pointer. */
static _Atomic uint64_t auth_generation;

static int entry_cmp(const void *x, const void *y)
{
    const struct auth_entry *a = x;
    const struct auth_entry *b = y;
    if (a->user_len != b->user_len)
        return a->user_len < b->user_len ? -1 : 1;
    return memcmp(a->user, b->user, a->user_len);
}

static const struct auth_entry *table_find(const struct auth_table *t, struct rm_span user)
{
    if (user.len == 0 || user.len > AUTH_USER_MAX)
        return NULL;
    size_t lo = 0;
    size_t hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct auth_entry *e = &t->e[mid];
        int c;
        if (e->user_len != user.len)
            c = e->user_len < user.len ? -1 : 1;
        else
            c = memcmp(e->user, user.p, user.len);
        if (c == 0)
            return e;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool user_valid(const uint8_t *p, size_t len)
{
    if (len == 0 || len > AUTH_USER_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (p[i] <= ' ' || p[i] == ':' || p[i] == 0x7f)
            return false;
    return true;
}

/* A complete crypt(3) hash of an accepted method: the setting passes
 * crypt_checksalt() and the checksum after the last '$' has the method's
 * length in crypt's base64 alphabet, so a truncated or hand-edited hash is
 * caught at load instead of silently refusing every password. */
static bool hash_valid(const char *h, size_t len)
{
    static const struct {
        const char *prefix;
        size_t checksum_len;
    } methods[] = {{"$6$", 86}, {"$y$", 43}, {"$gy$", 43}, {"$7$", 43}, {"$2b$", 53}};
    if (len == 0 || len >= CRYPT_OUTPUT_SIZE)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((uint8_t)h[i] <= ' ' || (uint8_t)h[i] >= 0x7f)
            return false;
    size_t want = 0;
    for (size_t i = 0; i < RM_ARRAY_LEN(methods); i++)
        if (strncmp(h, methods[i].prefix, strlen(methods[i].prefix)) == 0)
            want = methods[i].checksum_len;
    if (want == 0 || crypt_checksalt(h) != CRYPT_SALT_OK)
        return false;
    const char *sum = strrchr(h, '$') + 1;
    if (h[1] == '2') /* bcrypt: $2b$NN$ then 22 octets of salt and 31 of checksum */
        sum = h + RM_MIN(len, 7u);
    if ((size_t)(h + len - sum) != want)
        return false;
    for (const char *p = sum; p < h + len; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '/'))
            return false;
    return true;
}

size_t auth_table_count(const struct auth_table *t)
{
    return t->n;
}

bool auth_table_has(const struct auth_table *t, struct rm_span user)
{
    return table_find(t, user) != NULL;
}

void auth_table_free(struct auth_table *t)
{
    if (!t)
        return;
    if (t->strings) /* hashes are secrets of a sort: do not leave them in freed memory */
        explicit_bzero(t->strings, t->strings_len);
    free(t->strings);
    free(t->e);
    free(t);
}

static int load_error(int rc, char *err, size_t cap, const char *path, unsigned line,
                      const char *what)
{
    if (cap) {
        if (line)
            snprintf(err, cap, "%s:%u: %s", path, line, what);
        else
            snprintf(err, cap, "%s: %s", path, what);
    }
    return rc;
}

/* Reads the whole file; it is small (AUTH_USERS_MAX lines of at most
 * AUTH_FILE_LINE_MAX octets). */
static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    size_t cap = 4096;
    size_t n = 0;
    size_t limit = (size_t)AUTH_USERS_MAX * AUTH_FILE_LINE_MAX * 2u; /* comments too */
    char *b = malloc(cap);
    int rc = 0;
    if (!b) {
        rc = -ENOMEM;
        goto out_close;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= limit) {
                rc = AUTH_ERR_LIMIT;
                goto out_free;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                rc = -ENOMEM;
                goto out_free;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                rc = -EIO;
                goto out_free;
            }
            break;
        }
    }
    (void)fclose(f); /* read only: nothing to lose */
    *out = b;
    *len = n;
    return 0;
out_free:
    free(b);
out_close:
    (void)fclose(f);
    return rc;
}

/* One line without its LF: a comment, a blank, or an entry appended to t.
 * Returns 0 or the load error (err filled). */
static int parse_line(struct auth_table *t, size_t *used, const char *lp, size_t ll,
                      const char *path, unsigned line, char *err, size_t err_cap)
{
    if (ll + 1 > AUTH_FILE_LINE_MAX)
        return load_error(AUTH_ERR_LIMIT, err, err_cap, path, line, "line too long");
    if (ll && lp[ll - 1] == '\r')
        ll--;
    size_t k = 0;
    while (k < ll && (lp[k] == ' ' || lp[k] == '\t'))
        k++;
    if (k == ll || lp[k] == '#')
        return 0;
    const char *colon = memchr(lp, ':', ll);
    if (!colon)
        return load_error(AUTH_ERR_SYNTAX, err, err_cap, path, line, "expected user:hash");
    size_t ul = (size_t)(colon - lp);
    size_t hl = ll - ul - 1;
    if (!user_valid((const uint8_t *)lp, ul))
        return load_error(AUTH_ERR_SYNTAX, err, err_cap, path, line, "bad user name");
    if (t->n >= AUTH_USERS_MAX)
        return load_error(AUTH_ERR_LIMIT, err, err_cap, path, line, "too many users");
    RM_ASSERT(*used + ul + 1 + hl + 1 <= t->strings_len);
    struct auth_entry *e = &t->e[t->n];
    e->user = t->strings + *used;
    memcpy(e->user, lp, ul);
    e->user[ul] = 0;
    *used += ul + 1;
    e->hash = t->strings + *used;
    memcpy(e->hash, colon + 1, hl);
    e->hash[hl] = 0;
    *used += hl + 1;
    if (!hash_valid(e->hash, hl))
        return load_error(AUTH_ERR_SYNTAX, err, err_cap, path, line,
                          "hash is not $6$, $y$, $gy$, $7$ or $2b$ crypt(3) output");
    e->user_len = (uint16_t)ul;
    e->line = line;
    t->n++;
    return 0;
}

/* Sorts t and refuses a user named twice, naming both lines. */
static int sort_and_check(struct auth_table *t, const char *path, char *err, size_t err_cap)
{
    qsort(t->e, t->n, sizeof(*t->e), entry_cmp);
    for (size_t i = 1; i < t->n; i++) {
        const struct auth_entry *a = &t->e[i - 1];
        const struct auth_entry *b = &t->e[i];
        if (entry_cmp(a, b) != 0)
            continue;
        char what[64];
        snprintf(what, sizeof(what), "user named again (first at line %u)",
                 RM_MIN(a->line, b->line));
        return load_error(AUTH_ERR_DUP, err, err_cap, path, RM_MAX(a->line, b->line), what);
    }
    return 0;
}

/* A table with room for every line of text[0..len). */
static struct auth_table *table_alloc(const char *text, size_t len)
{
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    struct auth_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->e = calloc(lines, sizeof(*t->e));
    t->strings = malloc(len + 1); /* users and hashes, NUL-terminated, fit in len + 1 */
    t->strings_len = len + 1;
    if (!t->e || !t->strings) {
        auth_table_free(t);
        return NULL;
    }
    return t;
}

int auth_table_load(const char *path, struct auth_table **out, char *err, size_t err_cap)
{
    RM_ASSERT(path != NULL && out != NULL);
    *out = NULL;
    if (err_cap)
        err[0] = 0;
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len);
    if (rc == AUTH_ERR_LIMIT)
        return load_error(rc, err, err_cap, path, 0, "file too large");
    if (rc < 0)
        return load_error(rc, err, err_cap, path, 0, strerrordesc_np(-rc));
    RM_ASSERT(text != NULL);

    struct auth_table *t = table_alloc(text, len);
    if (!t) {
        rc = load_error(-ENOMEM, err, err_cap, path, 0, strerrordesc_np(ENOMEM));
        goto out_free_text;
    }
    size_t used = 0; /* of t->strings */
    unsigned line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *lp = text + pos;
        const char *nl = memchr(lp, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - lp) : len - pos;
        pos += ll + (nl ? 1 : 0);
        rc = parse_line(t, &used, lp, ll, path, ++line, err, err_cap);
        if (rc < 0)
            goto out_free_table;
    }
    rc = sort_and_check(t, path, err, err_cap);
    if (rc < 0)
        goto out_free_table;
    if (getrandom(t->key, sizeof(t->key), 0) != (ssize_t)sizeof(t->key)) {
        rc = load_error(-EIO, err, err_cap, path, 0, "getrandom failed");
        goto out_free_table;
    }
    t->generation = atomic_fetch_add_explicit(&auth_generation, 1, memory_order_relaxed) + 1;
    *out = t;
    t = NULL;
    rc = 0;
out_free_table:
    auth_table_free(t);
out_free_text:
    explicit_bzero(text, len);
    free(text);
    return rc;
}

/* ---- verification ------------------------------------------------------------------------------
 */

struct auth_cache_entry {
    uint64_t generation;           /* of the table it was filled from; 0 = empty */
    uint64_t tag;                  /* SipHash-2-4(table key, user NUL password) */
    const struct auth_entry *user; /* in that table; compared, never dereferenced */
};

struct auth_cache {
    struct crypt_data cd; /* crypt_rn scratch, ~32 KiB: not on the worker's stack */
    struct auth_cache_stats stats;
    uint32_t n;                     /* entries; 0 = no caching */
    struct auth_cache_entry slot[]; /* direct-mapped by the user's table index */
};

struct auth_cache *auth_cache_new(uint32_t entries)
{
    if (entries > AUTH_CACHE_ENTRIES_MAX)
        return NULL;
    struct auth_cache *c = calloc(1, sizeof(*c) + (size_t)entries * sizeof(c->slot[0]));
    if (!c)
        return NULL;
    c->n = entries;
    return c;
}

void auth_cache_free(struct auth_cache *c)
{
    if (!c)
        return;
    explicit_bzero(c, sizeof(*c) + (size_t)c->n * sizeof(c->slot[0]));
    free(c);
}

struct auth_cache_stats auth_cache_stats(const struct auth_cache *c)
{
    return c->stats;
}

static uint64_t password_tag(const struct auth_table *t, struct rm_span user, const char *pw,
                             size_t pw_len)
{
    uint8_t m[AUTH_USER_MAX + 1 + AUTH_PASSWORD_MAX];
    RM_ASSERT(user.len <= AUTH_USER_MAX && pw_len <= AUTH_PASSWORD_MAX);
    memcpy(m, user.p, user.len);
    m[user.len] = 0;
    memcpy(m + user.len + 1, pw, pw_len);
    uint64_t h = auth_siphash24(t->key, m, user.len + 1 + pw_len);
    explicit_bzero(m, sizeof(m));
    return h;
}

/* Constant time in the contents: no early exit on the first difference. */
static bool ct_equal(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a;
    const volatile uint8_t *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (uint8_t)(x[i] ^ y[i]);
    return d == 0;
}

/* crypt_rn(pw, setting) == hash? */
static int crypt_check(struct auth_cache *c, const char *pw, const char *hash)
{
    c->stats.crypts++;
    const char *r = crypt_rn(pw, hash, &c->cd, (int)sizeof(c->cd));
    if (!r || r[0] == '*')
        return AUTH_ERR_CRYPT;
    size_t hl = strlen(hash);
    if (strlen(r) != hl)
        return AUTH_ERR_PASSWORD;
    return ct_equal(r, hash, hl) ? AUTH_OK : AUTH_ERR_PASSWORD;
}

int auth_verify(const struct auth_table *t, struct auth_cache *c, struct rm_span user,
                struct rm_span password)
{
    RM_ASSERT(t != NULL && c != NULL);
    char pw[AUTH_PASSWORD_MAX + 1];
    if (password.len > AUTH_PASSWORD_MAX || memchr(password.p, 0, password.len))
        return AUTH_ERR_PASSWORD;
    memcpy(pw, password.p, password.len);
    pw[password.len] = 0;

    const struct auth_entry *e = table_find(t, user);
    if (!e) {
        /* Spend one crypt anyway so an unknown user takes as long as a known
         * one (most files use one algorithm and cost). */
        if (t->n)
            (void)crypt_check(c, pw, t->e[0].hash);
        explicit_bzero(pw, sizeof(pw));
        return AUTH_ERR_USER;
    }
    struct auth_cache_entry *slot = NULL;
    uint64_t tag = 0;
    if (c->n) {
        slot = &c->slot[(size_t)(e - t->e) % c->n];
        tag = password_tag(t, user, pw, password.len);
        if (slot->generation == t->generation && slot->user == e &&
            ct_equal(&slot->tag, &tag, sizeof(tag))) {
            c->stats.hits++;
            explicit_bzero(pw, sizeof(pw));
            return AUTH_OK;
        }
    }
    int rc = crypt_check(c, pw, e->hash);
    explicit_bzero(pw, sizeof(pw));
    if (rc == AUTH_OK && slot) {
        slot->generation = t->generation;
        slot->user = e;
        slot->tag = tag;
    }
    return rc;
}

const struct smtp_reply *auth_verify_reply(int rc)
{
    if (rc == AUTH_OK)
        return &reply_ok;
    if (rc == AUTH_ERR_USER || rc == AUTH_ERR_PASSWORD)
        return &reply_invalid;
    return &reply_temp;
}

/* ---- ringmta passwd
 * ------------------------------------------------------------------------------- */

int auth_passwd_line(struct rm_span user, struct rm_span password, const char *prefix, char *out,
                     size_t cap)
{
    if (!user_valid(user.p, user.len))
        return AUTH_ERR_SYNTAX;
    if (password.len == 0 || password.len > AUTH_PASSWORD_MAX ||
        memchr(password.p, 0, password.len))
        return AUTH_ERR_SYNTAX;
    if (strcmp(prefix, "$6$") != 0 && strcmp(prefix, "$y$") != 0)
        return AUTH_ERR_SYNTAX;
    uint8_t rnd[32];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return -errno;
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    /* count 0: the method's default (5000 rounds for $6$, cost 5 for $y$) */
    if (!crypt_gensalt_rn(prefix, 0, (const char *)rnd, (int)sizeof(rnd), setting,
                          (int)sizeof(setting)))
        return AUTH_ERR_CRYPT;
    explicit_bzero(rnd, sizeof(rnd));
    char pw[AUTH_PASSWORD_MAX + 1];
    memcpy(pw, password.p, password.len);
    pw[password.len] = 0;
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    if (!cd) {
        explicit_bzero(pw, sizeof(pw));
        return -ENOMEM;
    }
    int rc;
    const char *h = crypt_rn(pw, setting, cd, (int)sizeof(*cd));
    explicit_bzero(pw, sizeof(pw));
    if (!h || h[0] == '*') {
        rc = AUTH_ERR_CRYPT;
        goto out_free;
    }
    size_t hl = strlen(h);
    if (user.len + 1 + hl + 2 > cap) {
        rc = AUTH_ERR_LIMIT;
        goto out_free;
    }
    memcpy(out, user.p, user.len);
    out[user.len] = ':';
    memcpy(out + user.len + 1, h, hl);
    out[user.len + 1 + hl] = '\n';
    out[user.len + 2 + hl] = 0;
    rc = (int)(user.len + 2 + hl);
out_free:
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return rc;
}

const char *auth_strerror(int err)
{
    switch (err) {
    case AUTH_OK:
        return "success";
    case AUTH_ERR_USER:
        return "no such user";
    case AUTH_ERR_PASSWORD:
        return "wrong password";
    case AUTH_ERR_SYNTAX:
        return "bad users file line or argument";
    case AUTH_ERR_DUP:
        return "user named twice";
    case AUTH_ERR_LIMIT:
        return "over a limit";
    case AUTH_ERR_CRYPT:
        return "crypt failed";
    }
    if (err < 0 && err > -4096)
        return strerrordesc_np(-err);
    return "unknown error";
}
