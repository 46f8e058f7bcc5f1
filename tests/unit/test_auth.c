/* tests/unit/test_auth.c: SASL PLAIN/LOGIN, the users file, verification and
 * its cache, passwd lines, SipHash-2-4.
 *
 * SASL input is placed so that it ends at a PROT_NONE page: reading one octet
 * past the end crashes the test instead of passing by luck.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
/* cmocka.h needs the headers above */
#include <cmocka.h>

#include "mta/auth.h"

/* ---- helpers ----------------------------------------------------------------- */

#define GUARD_DATA_BYTES ((size_t)8192)

static uint8_t *guard_base; /* GUARD_DATA_BYTES readable, then one PROT_NONE page */

static int guard_setup(void **state)
{
    (void)state;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data = (GUARD_DATA_BYTES + page - 1) / page * page;
    void *m = mmap(NULL, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    if (mprotect((uint8_t *)m + data, page, PROT_NONE) != 0)
        return -1;
    guard_base = (uint8_t *)m + data - GUARD_DATA_BYTES;
    return 0;
}

/* s[0..len) copied to end at the guard page. */
static struct rm_span guarded(const void *s, size_t len)
{
    assert_true(len <= GUARD_DATA_BYTES);
    uint8_t *p = guard_base + GUARD_DATA_BYTES - len;
    if (len)
        memcpy(p, s, len);
    return rm_span_make(p, len);
}

static struct rm_span gstr(const char *s)
{
    return guarded(s, strlen(s));
}

static char b64_out[4096];

/* Base64 of in[0..len) into b64_out. */
static const char *b64(const void *in, size_t len)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *p = in;
    size_t o = 0;
    assert_true(len / 3 * 4 + 5 < sizeof(b64_out));
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        b64_out[o++] = a[(v >> 18) & 63];
        b64_out[o++] = a[(v >> 12) & 63];
        b64_out[o++] = (char)(i + 1 < len ? a[(v >> 6) & 63] : '=');
        b64_out[o++] = (char)(i + 2 < len ? a[v & 63] : '=');
    }
    b64_out[o] = 0;
    return b64_out;
}

static void assert_span_str(struct rm_span s, const char *want)
{
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.p, want, s.len);
}

static void assert_reply(const struct auth_sasl_out *o, unsigned code, unsigned a, unsigned b,
                         unsigned c)
{
    assert_int_equal(o->reply.code, code);
    assert_int_equal(o->reply.esc[0], a);
    assert_int_equal(o->reply.esc[1], b);
    assert_int_equal(o->reply.esc[2], c);
    assert_non_null(o->reply.text);
}

static enum auth_sasl_rc start(struct auth_sasl *a, const char *mech, const char *ir,
                               struct auth_sasl_out *o)
{
    memset(o, 0, sizeof(*o));
    struct rm_span m = rm_span_str(mech);
    if (!ir)
        return auth_sasl_start(a, m, NULL, o);
    struct rm_span s = gstr(ir);
    return auth_sasl_start(a, m, &s, o);
}

static enum auth_sasl_rc feed(struct auth_sasl *a, const char *line, struct auth_sasl_out *o)
{
    memset(o, 0, sizeof(*o));
    return auth_sasl_feed(a, gstr(line), o);
}

/* ---- PLAIN ------------------------------------------------------------------- */

static void plain_with_initial_response_gives_credentials(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", b64("\0alice\0s3cret", 13), &o), AUTH_SASL_DONE);
    assert_span_str(o.user, "alice");
    assert_span_str(o.password, "s3cret");
    /* mechanism names are case-insensitive */
    assert_int_equal(start(&a, "plain", b64("\0bob\0pw", 7), &o), AUTH_SASL_DONE);
    assert_span_str(o.user, "bob");
    assert_span_str(o.password, "pw");
}

static void plain_after_empty_334_gives_credentials(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_string_equal(o.challenge, "");
    assert_int_equal(feed(&a, b64("\0alice\0s3cret", 13), &o), AUTH_SASL_DONE);
    assert_span_str(o.user, "alice");
    assert_span_str(o.password, "s3cret");
}

static void plain_authzid_equal_to_authcid_is_accepted(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", b64("alice\0alice\0pw", 14), &o), AUTH_SASL_DONE);
    assert_span_str(o.user, "alice");
    assert_span_str(o.password, "pw");
}

static void plain_authzid_other_than_authcid_gets_535_578(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", b64("root\0alice\0pw", 13), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 535, 5, 7, 8);
    assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, b64("alicE\0alice\0pw", 14), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 535, 5, 7, 8);
}

static void plain_empty_password_or_user_gets_501_552(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", b64("\0alice\0", 7), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    assert_int_equal(start(&a, "PLAIN", b64("\0\0pw", 4), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    /* "=" is the empty initial response: no NULs at all */
    assert_int_equal(start(&a, "PLAIN", "=", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    /* an empty response line after 334 is empty too */
    assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
}

static void plain_without_two_nuls_gets_501_552(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", b64("alice\0pw", 8), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    assert_int_equal(start(&a, "PLAIN", b64("\0alice\0pw\0", 10), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
}

/* ---- LOGIN ------------------------------------------------------------------- */

static void login_two_steps_give_credentials(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "LOGIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_string_equal(o.challenge, "VXNlcm5hbWU6");
    assert_int_equal(feed(&a, b64("alice", 5), &o), AUTH_SASL_CHALLENGE);
    assert_string_equal(o.challenge, "UGFzc3dvcmQ6");
    assert_int_equal(feed(&a, b64("s3cret", 6), &o), AUTH_SASL_DONE);
    assert_span_str(o.user, "alice");
    assert_span_str(o.password, "s3cret");
}

static void login_with_initial_response_asks_for_password(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "Login", b64("alice", 5), &o), AUTH_SASL_CHALLENGE);
    assert_string_equal(o.challenge, "UGFzc3dvcmQ6");
    assert_int_equal(feed(&a, b64("pw", 2), &o), AUTH_SASL_DONE);
    assert_span_str(o.user, "alice");
    assert_span_str(o.password, "pw");
}

static void login_empty_or_nul_fields_get_501_552(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "LOGIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    assert_int_equal(start(&a, "LOGIN", b64("alice", 5), &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    assert_int_equal(start(&a, "LOGIN", b64("al\0ce", 5), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
    assert_int_equal(start(&a, "LOGIN", b64("alice", 5), &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, b64("p\0w", 3), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
}

/* ---- errors ---------------------------------------------------------------------- */

static void star_cancels_with_501_570(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "*", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 7, 0);
    assert_int_equal(start(&a, "LOGIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "*", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 7, 0);
    assert_int_equal(start(&a, "LOGIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, b64("alice", 5), &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "*", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 7, 0);
    /* not a cancel in the initial response: just bad base64 */
    assert_int_equal(start(&a, "PLAIN", "*", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
}

static void bad_base64_gets_501_552(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "AGFsaWNlAHB3",                     /* fine, checked below as the control */
        "AGFsaWNlAHB",                      /* length not a multiple of 4 */
        "AGFsaWNl AHB3",                    /* space */
        "AGFsaWNlAHB3\r",   "AGF!aWNlAHB3", /* outside the alphabet */
        "AGFsaWNlAH=3",                     /* padding in the middle */
        "AGFsaWNlA===",                     /* three pads */
        "AGFsaWNlAHB=",                     /* fine padding, but pad bits not zero */
        "AGFsaWNlAA==AA==",                 /* data after padding */
        "=AGFsaWNlAHB",
    };
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", bad[0], &o), AUTH_SASL_DONE);
    for (size_t i = 1; i < RM_ARRAY_LEN(bad); i++) {
        assert_int_equal(start(&a, "PLAIN", bad[i], &o), AUTH_SASL_FAIL);
        assert_reply(&o, 501, 5, 5, 2);
        assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
        assert_int_equal(feed(&a, bad[i], &o), AUTH_SASL_FAIL);
        assert_reply(&o, 501, 5, 5, 2);
    }
    assert_int_equal(start(&a, "LOGIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, "YWxpY2U", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 501, 5, 5, 2);
}

static void unknown_mechanism_gets_504_554(void **state)
{
    (void)state;
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "CRAM-MD5", NULL, &o), AUTH_SASL_FAIL);
    assert_reply(&o, 504, 5, 5, 4);
    assert_int_equal(start(&a, "PLAINX", "AA==", &o), AUTH_SASL_FAIL);
    assert_reply(&o, 504, 5, 5, 4);
    assert_int_equal(start(&a, "", NULL, &o), AUTH_SASL_FAIL);
    assert_reply(&o, 504, 5, 5, 4);
}

/* authzid 255, authcid 255, password 511: exactly AUTH_DECODED_MAX octets,
 * whose base64 is exactly AUTH_RESPONSE_MAX octets. */
static size_t longest_plain(uint8_t *m)
{
    size_t n = 0;
    memset(m + n, 'u', AUTH_USER_MAX), n += AUTH_USER_MAX;
    m[n++] = 0;
    memset(m + n, 'u', AUTH_USER_MAX), n += AUTH_USER_MAX;
    m[n++] = 0;
    memset(m + n, 'p', AUTH_PASSWORD_MAX), n += AUTH_PASSWORD_MAX;
    return n;
}

static void response_of_limit_octets_is_decoded_one_more_gets_500_556(void **state)
{
    (void)state;
    static uint8_t m[AUTH_DECODED_MAX + 8];
    size_t n = longest_plain(m);
    assert_int_equal(n, AUTH_DECODED_MAX);
    const char *e = b64(m, n);
    assert_int_equal(strlen(e), AUTH_RESPONSE_MAX);
    struct auth_sasl a;
    struct auth_sasl_out o;
    assert_int_equal(start(&a, "PLAIN", e, &o), AUTH_SASL_DONE);
    assert_int_equal(o.user.len, AUTH_USER_MAX);
    assert_int_equal(o.password.len, AUTH_PASSWORD_MAX);
    assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, b64(m, n), &o), AUTH_SASL_DONE);

    /* N+1: refused before decoding, whatever the content */
    char big[AUTH_RESPONSE_MAX + 2];
    memset(big, 'A', AUTH_RESPONSE_MAX + 1);
    big[AUTH_RESPONSE_MAX + 1] = 0;
    assert_int_equal(start(&a, "PLAIN", big, &o), AUTH_SASL_FAIL);
    assert_reply(&o, 500, 5, 5, 6);
    assert_int_equal(start(&a, "LOGIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, big, &o), AUTH_SASL_FAIL);
    assert_reply(&o, 500, 5, 5, 6);
    /* a line the session dropped: p is not read */
    assert_int_equal(start(&a, "PLAIN", NULL, &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(auth_sasl_feed(&a, rm_span_make(NULL, 12289), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 500, 5, 5, 6);
}

static void user_or_password_over_limit_gets_535_578(void **state)
{
    (void)state;
    static uint8_t m[AUTH_DECODED_MAX + 8];
    struct auth_sasl a;
    struct auth_sasl_out o;
    size_t n = 0;
    m[n++] = 0;
    memset(m + n, 'u', AUTH_USER_MAX + 1), n += AUTH_USER_MAX + 1;
    m[n++] = 0;
    m[n++] = 'p';
    assert_int_equal(start(&a, "PLAIN", b64(m, n), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 535, 5, 7, 8);
    n = 0;
    m[n++] = 0;
    m[n++] = 'u';
    m[n++] = 0;
    memset(m + n, 'p', AUTH_PASSWORD_MAX + 1), n += AUTH_PASSWORD_MAX + 1;
    assert_int_equal(start(&a, "PLAIN", b64(m, n), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 535, 5, 7, 8);
    /* LOGIN: user at N is fine, N+1 is not */
    memset(m, 'u', AUTH_USER_MAX + 1);
    assert_int_equal(start(&a, "LOGIN", b64(m, AUTH_USER_MAX), &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, b64(m, AUTH_PASSWORD_MAX), &o), AUTH_SASL_DONE);
    assert_int_equal(o.user.len, AUTH_USER_MAX);
    assert_int_equal(o.password.len, AUTH_PASSWORD_MAX);
    assert_int_equal(start(&a, "LOGIN", b64(m, AUTH_USER_MAX + 1), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 535, 5, 7, 8);
    memset(m, 'p', AUTH_PASSWORD_MAX + 1);
    assert_int_equal(start(&a, "LOGIN", b64("u", 1), &o), AUTH_SASL_CHALLENGE);
    assert_int_equal(feed(&a, b64(m, AUTH_PASSWORD_MAX + 1), &o), AUTH_SASL_FAIL);
    assert_reply(&o, 535, 5, 7, 8);
}

static void verify_replies_have_rfc4954_codes(void **state)
{
    (void)state;
    const struct smtp_reply *r = auth_verify_reply(AUTH_OK);
    assert_int_equal(r->code, 235);
    assert_memory_equal(r->esc, ((uint8_t[]){2, 7, 0}), 3);
    r = auth_verify_reply(AUTH_ERR_PASSWORD);
    assert_int_equal(r->code, 535);
    assert_memory_equal(r->esc, ((uint8_t[]){5, 7, 8}), 3);
    const struct smtp_reply *u = auth_verify_reply(AUTH_ERR_USER);
    assert_ptr_equal(u, r); /* an unknown user looks like a bad password */
    r = auth_verify_reply(AUTH_ERR_CRYPT);
    assert_int_equal(r->code, 454);
    assert_memory_equal(r->esc, ((uint8_t[]){4, 7, 0}), 3);
}

/* ---- SipHash ------------------------------------------------------------------- */

static void siphash24_matches_reference_vectors(void **state)
{
    (void)state;
    uint8_t key[16];
    uint8_t in[64];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++)
        in[i] = (uint8_t)i;
    /* vectors.h of the reference implementation, read little-endian */
    assert_true(auth_siphash24(key, in, 0) == 0x726fdb47dd0e0e31ull);
    assert_true(auth_siphash24(key, in, 1) == 0x74f839c593dc67fdull);
    assert_true(auth_siphash24(key, in, 7) == 0xab0200f58b01d137ull);
    assert_true(auth_siphash24(key, in, 8) == 0x93f5f5799a932462ull);
    assert_true(auth_siphash24(key, in, 15) == 0xa129ca6149be45e5ull);
    assert_true(auth_siphash24(key, in, 63) == 0x958a324ceb064572ull);
}

/* ---- users file ------------------------------------------------------------------ */

static char tmp_path[64];

static void write_file(const char *text)
{
    snprintf(tmp_path, sizeof(tmp_path), "/tmp/test_auth_XXXXXX");
    int fd = mkstemp(tmp_path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static int load_text(const char *text, struct auth_table **t, char *err, size_t cap)
{
    write_file(text);
    int rc = auth_table_load(tmp_path, t, err, cap);
    unlink(tmp_path);
    return rc;
}

/* Hashes made once by our own passwd function: "alice"/"wonderland" in $6$,
 * "bob"/"builder" in $y$. */
static char line6[AUTH_PASSWD_LINE_MAX], liney[AUTH_PASSWD_LINE_MAX];

static int hashes_setup(void **state)
{
    (void)state;
    if (auth_passwd_line(rm_span_str("alice"), rm_span_str("wonderland"), "$6$", line6,
                         sizeof(line6)) <= 0)
        return -1;
    if (auth_passwd_line(rm_span_str("bob"), rm_span_str("builder"), "$y$", liney, sizeof(liney)) <=
        0)
        return -1;
    return guard_setup(state);
}

static void passwd_line_has_user_and_fresh_salt(void **state)
{
    (void)state;
    assert_true(strncmp(line6, "alice:$6$", 9) == 0);
    assert_true(strncmp(liney, "bob:$y$", 7) == 0);
    assert_int_equal(line6[strlen(line6) - 1], '\n');
    char again[AUTH_PASSWD_LINE_MAX];
    int n = auth_passwd_line(rm_span_str("alice"), rm_span_str("wonderland"), "$6$", again,
                             sizeof(again));
    assert_int_equal(n, (int)strlen(again));
    assert_string_not_equal(again, line6); /* a fresh salt each time */
    /* refusals */
    assert_int_equal(
        auth_passwd_line(rm_span_str("a:b"), rm_span_str("pw"), "$6$", again, sizeof(again)),
        AUTH_ERR_SYNTAX);
    assert_int_equal(
        auth_passwd_line(rm_span_str("a"), rm_span_str(""), "$6$", again, sizeof(again)),
        AUTH_ERR_SYNTAX);
    assert_int_equal(
        auth_passwd_line(rm_span_str("a"), rm_span_str("pw"), "$1$", again, sizeof(again)),
        AUTH_ERR_SYNTAX);
    assert_int_equal(auth_passwd_line(rm_span_str("a"), rm_span_str("pw"), "$6$", again, 20),
                     AUTH_ERR_LIMIT);
}

static void users_file_skips_comments_and_blank_lines(void **state)
{
    (void)state;
    char text[4 * AUTH_PASSWD_LINE_MAX];
    char err[256];
    snprintf(text, sizeof(text), "# users\n\n   \n\t# indented comment\n%s\r\n%s", line6, liney);
    struct auth_table *t = NULL;
    assert_int_equal(load_text(text, &t, err, sizeof(err)), 0);
    assert_non_null(t);
    assert_int_equal(auth_table_count(t), 2);
    assert_true(auth_table_has(t, rm_span_str("alice")));
    assert_true(auth_table_has(t, rm_span_str("bob")));
    assert_false(auth_table_has(t, rm_span_str("carol")));
    assert_false(auth_table_has(t, rm_span_str("alic")));
    auth_table_free(t);
    /* empty file, and a last line without LF */
    assert_int_equal(load_text("", &t, err, sizeof(err)), 0);
    assert_int_equal(auth_table_count(t), 0);
    auth_table_free(t);
    auth_table_free(NULL);
}

static void users_file_bad_lines_are_named_by_line_number(void **state)
{
    (void)state;
    char line6_bang[AUTH_PASSWD_LINE_MAX];
    snprintf(line6_bang, sizeof(line6_bang), "%s", line6);
    line6_bang[strlen(line6_bang) - 2] = '!';
    const char *const bad[] = {
        "nocolon\n",
        ":$6$abc$def\n",                /* empty user */
        "alice:\n",                     /* empty hash */
        "alice:plaintext\n",            /* not crypt(3) */
        "alice:$1$abc$def\n",           /* MD5-crypt: not accepted */
        "al ice:$6$abc$def\n",          /* space in the name */
        "alice:$6$abc$def extra\n",     /* space in the hash */
        "alice:$6$abcdefgh$tooshort\n", /* not 86 octets of checksum */
        line6_bang,                   /* a real hash with one checksum octet outside the alphabet */
        "bob:$y$j9T$salt$tooshort\n", /* not 43 octets of checksum */
    };
    char err[256];
    char text[512];
    struct auth_table *t = (struct auth_table *)1;
    for (size_t i = 0; i < RM_ARRAY_LEN(bad); i++) {
        snprintf(text, sizeof(text), "# header\n\n%s", bad[i]);
        err[0] = 0;
        int rc = load_text(text, &t, err, sizeof(err));
        if (rc != AUTH_ERR_SYNTAX)
            print_error("line %zu: rc %d err %s\n", i, rc, err);
        assert_int_equal(rc, AUTH_ERR_SYNTAX);
        assert_null(t);
        assert_non_null(strstr(err, tmp_path));
        assert_non_null(strstr(err, ":3: "));
    }
    /* err is truncated to its capacity */
    char tiny[8];
    assert_int_equal(load_text("x\n", &t, tiny, sizeof(tiny)), AUTH_ERR_SYNTAX);
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    /* a missing file */
    assert_int_equal(auth_table_load("/nonexistent/users", &t, err, sizeof(err)), -2 /* ENOENT */);
    assert_null(t);
    assert_non_null(strstr(err, "/nonexistent/users"));
}

static void users_file_duplicate_user_is_refused_naming_both_lines(void **state)
{
    (void)state;
    char text[4 * AUTH_PASSWD_LINE_MAX];
    char err[256];
    snprintf(text, sizeof(text), "%s%s# x\n%s", line6, liney, line6);
    struct auth_table *t = NULL;
    assert_int_equal(load_text(text, &t, err, sizeof(err)), AUTH_ERR_DUP);
    assert_null(t);
    assert_non_null(strstr(err, ":4: "));
    assert_non_null(strstr(err, "line 1"));
}

static void users_file_line_of_limit_octets_loads_one_more_is_refused(void **state)
{
    (void)state;
    /* a valid $6$ line padded to exactly AUTH_FILE_LINE_MAX octets with a
     * longer user name is impossible (user <= 255), so pad with a comment */
    char text[2 * AUTH_FILE_LINE_MAX + 8];
    char err[256];
    memset(text, ' ', AUTH_FILE_LINE_MAX - 1);
    text[0] = '#';
    text[AUTH_FILE_LINE_MAX - 1] = '\n';
    text[AUTH_FILE_LINE_MAX] = 0;
    assert_int_equal(strlen(text), AUTH_FILE_LINE_MAX);
    struct auth_table *t = NULL;
    assert_int_equal(load_text(text, &t, err, sizeof(err)), 0);
    auth_table_free(t);
    memset(text, ' ', AUTH_FILE_LINE_MAX);
    text[0] = '#';
    text[AUTH_FILE_LINE_MAX] = '\n';
    text[AUTH_FILE_LINE_MAX + 1] = 0;
    assert_int_equal(load_text(text, &t, err, sizeof(err)), AUTH_ERR_LIMIT);
    assert_non_null(strstr(err, ":1: "));
    /* a user name of AUTH_USER_MAX octets is fine, one more is not */
    char user[AUTH_USER_MAX + 2];
    char line[AUTH_PASSWD_LINE_MAX];
    memset(user, 'u', sizeof(user));
    assert_true(auth_passwd_line(rm_span_make(user, AUTH_USER_MAX), rm_span_str("pw"), "$6$", line,
                                 sizeof(line)) > 0);
    assert_int_equal(load_text(line, &t, err, sizeof(err)), 0);
    assert_true(auth_table_has(t, rm_span_make(user, AUTH_USER_MAX)));
    auth_table_free(t);
    assert_int_equal(auth_passwd_line(rm_span_make(user, AUTH_USER_MAX + 1), rm_span_str("pw"),
                                      "$6$", line, sizeof(line)),
                     AUTH_ERR_SYNTAX);
}

/* ---- verification and the cache --------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static struct auth_table *load_both(void)
{
    char text[4 * AUTH_PASSWD_LINE_MAX];
    char err[256];
    snprintf(text, sizeof(text), "%s%s", line6, liney);
    struct auth_table *t = NULL;
    assert_int_equal(load_text(text, &t, err, sizeof(err)), 0);
    return t;
}

static void verify_sha512_and_yescrypt_ok_bad_password_unknown_user(void **state)
{
    (void)state;
    struct auth_table *t = load_both();
    struct auth_cache *c = auth_cache_new(0); /* no caching: every call crypts */
    assert_non_null(c);
    double t0 = now_ms();
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderland")), AUTH_OK);
    double t1 = now_ms();
    assert_int_equal(auth_verify(t, c, rm_span_str("bob"), rm_span_str("builder")), AUTH_OK);
    double t2 = now_ms();
    print_message("crypt cost: $6$ (5000 rounds) %.2f ms, $y$ %.2f ms\n", t1 - t0, t2 - t1);
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderlanD")),
                     AUTH_ERR_PASSWORD);
    assert_int_equal(auth_verify(t, c, rm_span_str("bob"), rm_span_str("builde")),
                     AUTH_ERR_PASSWORD);
    assert_int_equal(auth_verify(t, c, rm_span_str("carol"), rm_span_str("builder")),
                     AUTH_ERR_USER);
    /* another user's password is no good */
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("builder")),
                     AUTH_ERR_PASSWORD);
    assert_int_equal(auth_cache_stats(c).hits, 0);
    assert_int_equal(auth_cache_stats(c).crypts, 6); /* the unknown user costs one too */
    auth_cache_free(c);
    auth_cache_free(NULL);
    auth_table_free(t);
}

static void cache_answers_a_repeated_password_without_crypt(void **state)
{
    (void)state;
    struct auth_table *t = load_both();
    struct auth_cache *c = auth_cache_new(AUTH_CACHE_ENTRIES_DEFAULT);
    assert_non_null(c);
    assert_int_equal(auth_verify(t, c, rm_span_str("bob"), rm_span_str("builder")), AUTH_OK);
    assert_int_equal(auth_cache_stats(c).crypts, 1);
    double t0 = now_ms();
    enum { N = 1000 };
    for (int i = 0; i < N; i++)
        assert_int_equal(auth_verify(t, c, rm_span_str("bob"), rm_span_str("builder")), AUTH_OK);
    double t1 = now_ms();
    print_message("cache hit cost: %.3f us\n", (t1 - t0) * 1e3 / N);
    assert_int_equal(auth_cache_stats(c).crypts, 1);
    assert_int_equal(auth_cache_stats(c).hits, N);
    auth_cache_free(c);
    auth_table_free(t);
}

static void cache_never_accepts_a_wrong_password(void **state)
{
    (void)state;
    struct auth_table *t = load_both();
    struct auth_cache *c = auth_cache_new(4);
    assert_non_null(c);
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderland")), AUTH_OK);
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderlan")),
                     AUTH_ERR_PASSWORD);
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("")), AUTH_ERR_PASSWORD);
    /* bob's password under alice's cached entry */
    assert_int_equal(auth_verify(t, c, rm_span_str("bob"), rm_span_str("wonderland")),
                     AUTH_ERR_PASSWORD);
    assert_int_equal(auth_cache_stats(c).hits, 0);
    assert_int_equal(auth_cache_stats(c).crypts, 4); /* failures always crypt */
    /* the failures did not evict the good entry */
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderland")), AUTH_OK);
    assert_int_equal(auth_cache_stats(c).hits, 1);
    auth_cache_free(c);
    auth_table_free(t);
}

static void reload_invalidates_the_cache(void **state)
{
    (void)state;
    struct auth_table *t = load_both();
    struct auth_cache *c = auth_cache_new(16);
    assert_non_null(c);
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderland")), AUTH_OK);
    assert_int_equal(auth_verify(t, c, rm_span_str("alice"), rm_span_str("wonderland")), AUTH_OK);
    assert_int_equal(auth_cache_stats(c).hits, 1);
    /* alice changes her password; the reloaded table must not know the old one */
    char nl[AUTH_PASSWD_LINE_MAX];
    char err[256];
    assert_true(auth_passwd_line(rm_span_str("alice"), rm_span_str("looking-glass"), "$6$", nl,
                                 sizeof(nl)) > 0);
    struct auth_table *t2 = NULL;
    assert_int_equal(load_text(nl, &t2, err, sizeof(err)), 0);
    auth_table_free(t);
    assert_int_equal(auth_verify(t2, c, rm_span_str("alice"), rm_span_str("wonderland")),
                     AUTH_ERR_PASSWORD);
    assert_int_equal(auth_verify(t2, c, rm_span_str("alice"), rm_span_str("looking-glass")),
                     AUTH_OK);
    assert_int_equal(auth_cache_stats(c).hits, 1);
    assert_int_equal(auth_cache_stats(c).crypts, 3);
    /* the same file loaded again is a new table: the entry is not reused */
    struct auth_table *t3 = NULL;
    assert_int_equal(load_text(nl, &t3, err, sizeof(err)), 0);
    assert_int_equal(auth_verify(t3, c, rm_span_str("alice"), rm_span_str("looking-glass")),
                     AUTH_OK);
    assert_int_equal(auth_cache_stats(c).crypts, 4);
    auth_table_free(t2);
    auth_table_free(t3);
    auth_cache_free(c);
}

static void strerror_names_every_error(void **state)
{
    (void)state;
    static const int errs[] = {AUTH_OK,      AUTH_ERR_USER,  AUTH_ERR_PASSWORD, AUTH_ERR_SYNTAX,
                               AUTH_ERR_DUP, AUTH_ERR_LIMIT, AUTH_ERR_CRYPT,    -2};
    for (size_t i = 0; i < RM_ARRAY_LEN(errs); i++) {
        assert_non_null(auth_strerror(errs[i]));
        assert_true(strlen(auth_strerror(errs[i])) > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plain_with_initial_response_gives_credentials),
        cmocka_unit_test(plain_after_empty_334_gives_credentials),
        cmocka_unit_test(plain_authzid_equal_to_authcid_is_accepted),
        cmocka_unit_test(plain_authzid_other_than_authcid_gets_535_578),
        cmocka_unit_test(plain_empty_password_or_user_gets_501_552),
        cmocka_unit_test(plain_without_two_nuls_gets_501_552),
        cmocka_unit_test(login_two_steps_give_credentials),
        cmocka_unit_test(login_with_initial_response_asks_for_password),
        cmocka_unit_test(login_empty_or_nul_fields_get_501_552),
        cmocka_unit_test(star_cancels_with_501_570),
        cmocka_unit_test(bad_base64_gets_501_552),
        cmocka_unit_test(unknown_mechanism_gets_504_554),
        cmocka_unit_test(response_of_limit_octets_is_decoded_one_more_gets_500_556),
        cmocka_unit_test(user_or_password_over_limit_gets_535_578),
        cmocka_unit_test(verify_replies_have_rfc4954_codes),
        cmocka_unit_test(siphash24_matches_reference_vectors),
        cmocka_unit_test(passwd_line_has_user_and_fresh_salt),
        cmocka_unit_test(users_file_skips_comments_and_blank_lines),
        cmocka_unit_test(users_file_bad_lines_are_named_by_line_number),
        cmocka_unit_test(users_file_duplicate_user_is_refused_naming_both_lines),
        cmocka_unit_test(users_file_line_of_limit_octets_loads_one_more_is_refused),
        cmocka_unit_test(verify_sha512_and_yescrypt_ok_bad_password_unknown_user),
        cmocka_unit_test(cache_answers_a_repeated_password_without_crypt),
        cmocka_unit_test(cache_never_accepts_a_wrong_password),
        cmocka_unit_test(reload_invalidates_the_cache),
        cmocka_unit_test(strerror_names_every_error),
    };
    return cmocka_run_group_tests(tests, hashes_setup, NULL);
}
