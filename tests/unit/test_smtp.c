/* tests/unit/test_smtp.c: replies, the path parser, xtext and UTF-8 checks.
 *
 * Every parser input is placed so that it ends at a PROT_NONE page: reading
 * one octet past the end crashes the test instead of passing by luck.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
/* cmocka.h needs stdarg.h, stddef.h, setjmp.h and stdint.h before it. */
#include <cmocka.h>

#include "mta/smtp.h"

/* ---- the guard page ------------------------------------------------------- */

#define GUARD_DATA_BYTES (4u * 4096u)

static uint8_t *guard_base; /* GUARD_DATA_BYTES readable, then one PROT_NONE page */
static size_t guard_page;

static int guard_setup(void **state)
{
    (void)state;
    guard_page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data = (GUARD_DATA_BYTES + guard_page - 1) / guard_page * guard_page;
    void *m =
        mmap(NULL, data + guard_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    if (mprotect((uint8_t *)m + data, guard_page, PROT_NONE) != 0)
        return -1;
    guard_base = (uint8_t *)m + data - GUARD_DATA_BYTES;
    return 0;
}

static int guard_teardown(void **state)
{
    (void)state;
    size_t data = (GUARD_DATA_BYTES + guard_page - 1) / guard_page * guard_page;
    munmap(guard_base + GUARD_DATA_BYTES - data, data + guard_page);
    return 0;
}

/* Copies p[0..len) so that it ends right before the guard page. */
static const uint8_t *guarded(const void *p, size_t len)
{
    assert_true(len <= GUARD_DATA_BYTES);
    uint8_t *dst = guard_base + GUARD_DATA_BYTES - len;
    if (len > 0)
        memcpy(dst, p, len);
    return dst;
}

static int parse_n(const void *in, size_t len, bool utf8_ok, bool null_ok, struct smtp_path *out)
{
    return smtp_path_parse(guarded(in, len), len, utf8_ok, null_ok, out);
}

static int parse(const char *in, bool utf8_ok, bool null_ok, struct smtp_path *out)
{
    return parse_n(in, strlen(in), utf8_ok, null_ok, out);
}

static int parse_ascii(const char *in)
{
    struct smtp_path p;
    return parse(in, false, false, &p);
}

static int parse_utf8(const char *in)
{
    struct smtp_path p;
    return parse(in, true, false, &p);
}

static void assert_span(struct rm_span s, const char *want)
{
    size_t n = strlen(want);
    if (s.len != n || (n > 0 && memcmp(s.p, want, n) != 0))
        fail_msg("span \"%.*s\" != \"%s\"", (int)s.len, (const char *)s.p, want);
}

/* ---- replies -------------------------------------------------------------- */

static void check_format(const struct smtp_reply *r, bool more, const char *want)
{
    char out[SMTP_REPLY_LINE_MAX];
    size_t n = smtp_reply_format(r, more, out, sizeof(out));
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
}

static void reply_format_writes_code_status_and_text(void **state)
{
    (void)state;
    struct smtp_reply r = {250, {2, 1, 0}, "Ok"};
    check_format(&r, false, "250 2.1.0 Ok\r\n");
    check_format(&r, true, "250-2.1.0 Ok\r\n");
    struct smtp_reply two = {550, {5, 7, 26}, "Multiple authentication checks failed"};
    check_format(&two, false, "550 5.7.26 Multiple authentication checks failed\r\n");
    struct smtp_reply big = {451, {4, 12, 34}, "x"};
    check_format(&big, false, "451 4.12.34 x\r\n");
}

static void reply_format_without_enhanced_status(void **state)
{
    (void)state;
    struct smtp_reply r = {220, {0, 0, 0}, "mx.example.net ESMTP ringmta"};
    check_format(&r, false, "220 mx.example.net ESMTP ringmta\r\n");
    struct smtp_reply e = {250, {0, 0, 0}, "PIPELINING"};
    check_format(&e, true, "250-PIPELINING\r\n");
    struct smtp_reply empty = {354, {0, 0, 0}, NULL};
    check_format(&empty, false, "354 \r\n");
}

static void reply_format_returns_0_when_it_does_not_fit(void **state)
{
    (void)state;
    struct smtp_reply r = {250, {2, 0, 0}, "Ok"};
    char out[32];
    size_t want = strlen("250 2.0.0 Ok\r\n");
    assert_int_equal(smtp_reply_format(&r, false, out, want), want);
    assert_int_equal(smtp_reply_format(&r, false, out, want - 1), 0);
    assert_int_equal(smtp_reply_format(&r, false, out, 0), 0);
}

/* ---- paths ---------------------------------------------------------------- */

static void path_dot_atom_is_parsed(void **state)
{
    (void)state;
    struct smtp_path p;
    const char *in = "<john.q.doe+tag@mail.example.com>";
    assert_int_equal(parse(in, false, false, &p), (int)strlen(in));
    assert_span(p.mailbox, "john.q.doe+tag@mail.example.com");
    assert_span(p.local, "john.q.doe+tag");
    assert_span(p.domain, "mail.example.com");
    assert_false(p.null);
    assert_false(p.utf8);
    const char *specials = "<!#$%&'*+-/=?^_`{|}~@x>";
    assert_int_equal(parse_ascii(specials), (int)strlen(specials));
    assert_int_equal(parse_ascii("<a@b>"), 5);
    assert_int_equal(parse_ascii("<a@1-2.x-y.z9>"), 14);
}

static void path_consumes_only_up_to_the_closing_bracket(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(parse("<a@b.example> SIZE=10", false, false, &p), 13);
    assert_int_equal(parse("<a@b.example>junk", false, false, &p), 13);
    assert_span(p.domain, "b.example");
}

static void path_bad_dot_atoms_are_syntax_errors(void **state)
{
    (void)state;
    assert_int_equal(parse_ascii("<.a@b>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a.@b>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a..b@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a b@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a(b)@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<@>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@>"), SMTP_ADDR_SYNTAX);
}

static void path_bad_domains_are_syntax_errors(void **state)
{
    (void)state;
    assert_int_equal(parse_ascii("<a@b.>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@.b>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b..c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@-b.c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b-.c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b_c.d>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b\r>"), SMTP_ADDR_SYNTAX);
}

static void path_quoted_local_part_with_escapes(void **state)
{
    (void)state;
    struct smtp_path p;
    const char *in = "<\"john \\\"the\\\\ q\\\" doe\"@example.com>";
    assert_int_equal(parse(in, false, false, &p), (int)strlen(in));
    assert_span(p.local, "\"john \\\"the\\\\ q\\\" doe\"");
    assert_span(p.mailbox, "\"john \\\"the\\\\ q\\\" doe\"@example.com");
    assert_span(p.domain, "example.com");
    assert_int_equal(parse_ascii("<\"\"@example.com>"), 16);
    assert_int_equal(parse_ascii("<\"a>b@c\"@example.com>"), 21);
}

static void path_bad_quoted_strings_are_syntax_errors(void **state)
{
    (void)state;
    assert_int_equal(parse_ascii("<\"abc@example.com>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<\"abc\\"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<\"a\tb\"@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<\"a\\\tb\"@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<\"a\"b@c>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<\"a\".b@c>"), SMTP_ADDR_SYNTAX);
}

static void path_ipv4_address_literal(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(parse("<a@[192.0.2.1]>", false, false, &p), 15);
    assert_span(p.domain, "[192.0.2.1]");
    assert_int_equal(parse_ascii("<a@[0.0.0.0]>"), 13);
    assert_int_equal(parse_ascii("<a@[255.255.255.255]>"), 21);
    assert_int_equal(parse_ascii("<a@[256.1.1.1]>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@[1.2.3]>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@[1.2.3.4.5]>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@[1.2.3.4444]>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@[1.2.3.4>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@[]>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@[x-tag:foo]>"), SMTP_ADDR_SYNTAX);
}

static void path_ipv6_address_literal(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(parse("<a@[IPv6:2001:db8::1]>", false, false, &p), 22);
    assert_span(p.domain, "[IPv6:2001:db8::1]");
    static const char *const good[] = {
        "<a@[IPv6:::1]>",
        "<a@[IPv6:::]>",
        "<a@[ipv6:1::]>",
        "<a@[IPv6:1:2:3:4:5:6:7:8]>",
        "<a@[IPv6:1:2:3::6:7:8]>",
        "<a@[IPv6:ffff:FFFF:0:0:0:0:0:1]>",
        "<a@[IPv6:::ffff:192.0.2.1]>",
        "<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>",
        "<a@[IPv6:1:2:3:4::192.0.2.1]>",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (parse_ascii(good[i]) != (int)strlen(good[i]))
            fail_msg("refused %s", good[i]);
    }
    static const char *const bad[] = {
        "<a@[IPv6:1:2:3:4:5:6:7]>",
        "<a@[IPv6:1:2:3:4:5:6:7:8:9]>",
        "<a@[IPv6:1::2::3]>",
        "<a@[IPv6:12345::1]>",
        "<a@[IPv6::1]>",
        "<a@[IPv6:1:]>",
        "<a@[IPv6:1:2:3:4:5:6:7::]>",
        "<a@[IPv6:g::1]>",
        "<a@[IPv6:1:2:3:4:5::192.0.2.1]>",
        "<a@[IPv6:1:2:3:4:5:192.0.2.1]>",
        "<a@[IPv6:192.0.2.1::]>",
        "<a@[IPv6:::1>",
        "<a@[IPv6:]>",
        "<a@[IPv6]>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse_ascii(bad[i]);
        if (rc != SMTP_ADDR_SYNTAX)
            fail_msg("%s gave %d", bad[i], rc);
    }
}

static void path_null_needs_null_ok(void **state)
{
    (void)state;
    struct smtp_path p;
    assert_int_equal(parse("<>", false, true, &p), 2);
    assert_true(p.null);
    assert_int_equal(p.mailbox.len, 0);
    assert_int_equal(parse("<> SIZE=1", false, true, &p), 2);
    assert_int_equal(parse("<>", false, false, &p), SMTP_ADDR_NULL);
    assert_int_equal(parse("<", false, true, &p), SMTP_ADDR_SYNTAX);
}

static void path_source_route_is_refused(void **state)
{
    (void)state;
    assert_int_equal(parse_ascii("<@a.example,@b.example:x@y.example>"), SMTP_ADDR_ROUTE);
    assert_int_equal(parse_ascii("<@a.example:x@y.example>"), SMTP_ADDR_ROUTE);
    assert_int_equal(parse_ascii("<@a.example:>"), SMTP_ADDR_ROUTE);
    assert_int_equal(parse_ascii("<@:x@y>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<@a.example,x@y>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<@a.example"), SMTP_ADDR_SYNTAX);
}

static void path_without_domain_is_no_domain(void **state)
{
    (void)state;
    assert_int_equal(parse_ascii("<postmaster>"), SMTP_ADDR_NO_DOMAIN);
    assert_int_equal(parse_ascii("<\"x y\">"), SMTP_ADDR_NO_DOMAIN);
    assert_int_equal(parse_ascii("<postmaster"), SMTP_ADDR_SYNTAX);
}

/* A domain of exactly len octets: labels of 'a' split by dots. */
static void make_domain(char *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (i % 10 == 9 && i + 1 < len) ? '.' : 'a';
    out[len] = '\0';
}

static int parse_parts(size_t local_len, size_t domain_len)
{
    char buf[1024];
    assert_true(local_len + domain_len + 3 < sizeof(buf));
    size_t n = 0;
    buf[n++] = '<';
    memset(buf + n, 'l', local_len);
    n += local_len;
    buf[n++] = '@';
    make_domain(buf + n, domain_len);
    n += domain_len;
    buf[n++] = '>';
    struct smtp_path p;
    int rc = parse_n(buf, n, false, false, &p);
    if (rc > 0) {
        assert_int_equal(p.local.len, local_len);
        assert_int_equal(p.domain.len, domain_len);
    }
    return rc;
}

static void path_local_part_64_ok_65_too_long(void **state)
{
    (void)state;
    assert_int_equal(parse_parts(64, 20), 64 + 20 + 3);
    assert_int_equal(parse_parts(65, 20), SMTP_ADDR_TOO_LONG);
}

static void path_domain_over_255_is_too_long(void **state)
{
    (void)state;
    /* In a path a 255-octet domain already breaks the 256-octet path limit
     * ("<" + local + "@" + domain + ">"), so both are too long; the longest
     * domain that fits is 252 with a one-octet local part. */
    assert_int_equal(parse_parts(1, 252), 256);
    assert_int_equal(parse_parts(1, 253), SMTP_ADDR_TOO_LONG);
    assert_int_equal(parse_parts(1, 255), SMTP_ADDR_TOO_LONG);
    assert_int_equal(parse_parts(1, 256), SMTP_ADDR_TOO_LONG);
}

static void path_256_ok_257_too_long(void **state)
{
    (void)state;
    assert_int_equal(parse_parts(64, 189), 256);
    assert_int_equal(parse_parts(64, 190), SMTP_ADDR_TOO_LONG);
}

static void path_utf8_needs_utf8_ok(void **state)
{
    (void)state;
    struct smtp_path p;
    const char *in = "<j\xc3\xb6rg@b\xc3\xbc\x63her.example>"; /* jörg@bücher.example */
    assert_int_equal(parse(in, true, false, &p), (int)strlen(in));
    assert_true(p.utf8);
    assert_span(p.local, "j\xc3\xb6rg");
    assert_span(p.domain, "b\xc3\xbc\x63her.example");
    assert_int_equal(parse(in, false, false, &p), SMTP_ADDR_UTF8);
    const char *quoted = "<\"\xe2\x82\xac uro\"@x.example>";
    assert_int_equal(parse_utf8(quoted), (int)strlen(quoted));
    assert_int_equal(parse_ascii("<\"\xe2\x82\xac uro\"@x.example>"), SMTP_ADDR_UTF8);
    const char *emoji = "<a@\xf0\x9f\x98\x80.example>";
    assert_int_equal(parse_utf8(emoji), (int)strlen(emoji));
    assert_int_equal(parse("<a@b.example>", true, false, &p), 13);
    assert_false(p.utf8);
}

static void path_ill_formed_utf8_is_bad_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "<a\xc3@b>",            /* cut short by '@' */
        "<\xc0\xafx@b>",        /* overlong '/' */
        "<\xe0\x80\xafx@b>",    /* overlong, 3 octets */
        "<\xed\xa0\x80@b>",     /* surrogate */
        "<\xf4\x90\x80\x80@b>", /* above U+10FFFF */
        "<\xf5\x80\x80\x80@b>", /* F5 */
        "<\x80@b>",             /* lone continuation */
        "<a@b\xff.c>",          /* FF in the domain */
        "<\"\xc3\"@b>",         /* cut short inside quotes */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse_utf8(bad[i]);
        if (rc != SMTP_ADDR_BAD_UTF8)
            fail_msg("case %zu gave %d", i, rc);
        rc = parse_ascii(bad[i]);
        if (rc != SMTP_ADDR_UTF8)
            fail_msg("case %zu without utf8_ok gave %d", i, rc);
    }
    /* cut short by the end of the input (and the guard page) */
    struct smtp_path p;
    assert_int_equal(parse_n("<a\xe2\x82", 4, true, false, &p), SMTP_ADDR_BAD_UTF8);
}

static void path_missing_bracket_is_syntax(void **state)
{
    (void)state;
    assert_int_equal(parse_ascii(""), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("a@b"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii(" <a@b>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b.example"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b.example x>"), SMTP_ADDR_SYNTAX);
    assert_int_equal(parse_ascii("<a@b.example >"), SMTP_ADDR_SYNTAX);
}

/* Every prefix of every input, ending at the guard page: an over-read is a
 * SIGSEGV. A prefix is never a valid path (its '>' is missing) except the
 * whole. */
static void path_parser_never_reads_past_its_input(void **state)
{
    (void)state;
    static const char *const inputs[] = {
        "<john.doe@example.com>",
        "<\"q\\\"x\"@example.com>",
        "<a@[192.0.2.1]>",
        "<a@[IPv6:2001:db8::192.0.2.1]>",
        "<a@[IPv6:1:2:3:4:5:6:7:8]>",
        "<@a.example,@b.example:x@y.example>",
        "<j\xc3\xb6rg@b\xc3\xbc\x63her.example>",
        "<\xf0\x9f\x98\x80@x>",
        "<>",
        "<postmaster>",
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        size_t len = strlen(inputs[i]);
        for (size_t k = 0; k <= len; k++) {
            for (int mode = 0; mode < 4; mode++) {
                struct smtp_path p;
                int rc = parse_n(inputs[i], k, mode & 1, mode & 2, &p);
                if (k < len && rc > 0)
                    fail_msg("prefix %zu of case %zu parsed", k, i);
                assert_true(rc <= (int)k);
            }
        }
    }
}

static void addr_strerror_names_every_error(void **state)
{
    (void)state;
    for (int e = SMTP_ADDR_NULL; e <= SMTP_ADDR_SYNTAX; e++) {
        const char *s = smtp_addr_strerror(e);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
    }
    assert_non_null(smtp_addr_strerror(-100));
}

/* ---- xtext and UTF-8 ------------------------------------------------------ */

static bool xtext(const char *s)
{
    size_t n = strlen(s);
    return smtp_xtext_valid(guarded(s, n), n);
}

static void xtext_accepts_printables_and_upper_hex_escapes(void **state)
{
    (void)state;
    assert_true(xtext(""));
    assert_true(xtext("QQ314159"));
    assert_true(xtext("rfc822;a+2Bb@example.com"));
    assert_true(xtext("+00+FF!~"));
    assert_false(xtext("a+2b")); /* lower-case hex */
    assert_false(xtext("a+2"));  /* cut short */
    assert_false(xtext("a+"));
    assert_false(xtext("a+G0"));
    assert_false(xtext("a=b"));
    assert_false(xtext("a b"));
    assert_false(xtext("a\x7f"));
    assert_false(xtext("\xc3\xa9"));
    assert_false(xtext("a\r\n"));
}

static bool utf8(const char *s, size_t n)
{
    return smtp_utf8_valid(guarded(s, n), n);
}

static void utf8_valid_refuses_overlongs_surrogates_and_cut_sequences(void **state)
{
    (void)state;
    assert_true(utf8("", 0));
    assert_true(utf8("plain ascii\r\n", 13));
    assert_true(utf8("\xc2\x80", 2));
    assert_true(utf8("\xdf\xbf", 2));
    assert_true(utf8("\xe0\xa0\x80", 3));
    assert_true(utf8("\xed\x9f\xbf", 3));
    assert_true(utf8("\xee\x80\x80", 3));
    assert_true(utf8("\xf0\x90\x80\x80", 4));
    assert_true(utf8("\xf4\x8f\xbf\xbf", 4));
    assert_false(utf8("\xc0\x80", 2));
    assert_false(utf8("\xc1\xbf", 2));
    assert_false(utf8("\xe0\x9f\xbf", 3));
    assert_false(utf8("\xed\xa0\x80", 3));
    assert_false(utf8("\xf0\x8f\xbf\xbf", 4));
    assert_false(utf8("\xf4\x90\x80\x80", 4));
    assert_false(utf8("\xf8\x88\x80\x80\x80", 5));
    assert_false(utf8("\x80", 1));
    assert_false(utf8("\xc3", 1));
    assert_false(utf8("\xe2\x82", 2));
    assert_false(utf8("\xf0\x9f\x98", 3));
    assert_false(utf8("\xc3\x28", 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reply_format_writes_code_status_and_text),
        cmocka_unit_test(reply_format_without_enhanced_status),
        cmocka_unit_test(reply_format_returns_0_when_it_does_not_fit),
        cmocka_unit_test(path_dot_atom_is_parsed),
        cmocka_unit_test(path_consumes_only_up_to_the_closing_bracket),
        cmocka_unit_test(path_bad_dot_atoms_are_syntax_errors),
        cmocka_unit_test(path_bad_domains_are_syntax_errors),
        cmocka_unit_test(path_quoted_local_part_with_escapes),
        cmocka_unit_test(path_bad_quoted_strings_are_syntax_errors),
        cmocka_unit_test(path_ipv4_address_literal),
        cmocka_unit_test(path_ipv6_address_literal),
        cmocka_unit_test(path_null_needs_null_ok),
        cmocka_unit_test(path_source_route_is_refused),
        cmocka_unit_test(path_without_domain_is_no_domain),
        cmocka_unit_test(path_local_part_64_ok_65_too_long),
        cmocka_unit_test(path_domain_over_255_is_too_long),
        cmocka_unit_test(path_256_ok_257_too_long),
        cmocka_unit_test(path_utf8_needs_utf8_ok),
        cmocka_unit_test(path_ill_formed_utf8_is_bad_utf8),
        cmocka_unit_test(path_missing_bracket_is_syntax),
        cmocka_unit_test(path_parser_never_reads_past_its_input),
        cmocka_unit_test(addr_strerror_names_every_error),
        cmocka_unit_test(xtext_accepts_printables_and_upper_hex_escapes),
        cmocka_unit_test(utf8_valid_refuses_overlongs_surrogates_and_cut_sequences),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
