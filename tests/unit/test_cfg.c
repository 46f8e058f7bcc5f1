/* tests/unit/test_cfg.c: config value parsers, defaults and file errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* cmocka.h needs the headers above */
#include <cmocka.h>

#include "mta/cfg.h"

static void sizes_parse_with_suffixes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(cfg_parse_size("123", &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(cfg_parse_size("64k", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(cfg_parse_size("50M", &v), 0);
    assert_int_equal(v, 50ull << 20);
    assert_int_equal(cfg_parse_size("16G", &v), 0);
    assert_int_equal(v, 16ull << 30);
    assert_int_equal(cfg_parse_size("2MiB", &v), 0);
    assert_int_equal(v, 2ull << 20);
    assert_int_equal(cfg_parse_size("", &v), -1);
    assert_int_equal(cfg_parse_size("-1", &v), -1);
    assert_int_equal(cfg_parse_size("12X", &v), -1);
    assert_int_equal(cfg_parse_size("99999999999999999999", &v), -1);
    assert_int_equal(cfg_parse_size("16777216T", &v), -1); /* overflows 64 bits */
}

static void durations_parse_with_units(void **state)
{
    (void)state;
    uint64_t ms;
    assert_int_equal(cfg_parse_duration("300", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(cfg_parse_duration("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(cfg_parse_duration("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(cfg_parse_duration("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(cfg_parse_duration("5d", &ms), 0);
    assert_int_equal(ms, 432000000);
    assert_int_equal(cfg_parse_duration("5x", &ms), -1);
    assert_int_equal(cfg_parse_duration("m", &ms), -1);
}

static struct sockaddr_storage sa_of(const char *addr_port)
{
    struct cfg_addr a;
    assert_int_equal(cfg_parse_addr(addr_port, &a), 0);
    return a.ss;
}

static void networks_match_v4_v6_and_mapped(void **state)
{
    (void)state;
    struct cfg_net n[3];
    assert_int_equal(cfg_parse_net("127.0.0.0/8", &n[0]), 0);
    assert_int_equal(cfg_parse_net("2001:db8::/32", &n[1]), 0);
    assert_int_equal(cfg_parse_net("10.1.2.3/24", &n[2]), 0); /* host bits are cleared */
    struct sockaddr_storage s = sa_of("127.9.9.9:25");
    assert_true(cfg_net_match(n, 3, (struct sockaddr *)&s));
    s = sa_of("128.0.0.1:25");
    assert_false(cfg_net_match(n, 3, (struct sockaddr *)&s));
    s = sa_of("10.1.2.200:25");
    assert_true(cfg_net_match(n, 3, (struct sockaddr *)&s));
    s = sa_of("10.1.3.1:25");
    assert_false(cfg_net_match(n, 3, (struct sockaddr *)&s));
    s = sa_of("[2001:db8:ffff::1]:25");
    assert_true(cfg_net_match(n, 3, (struct sockaddr *)&s));
    s = sa_of("[2001:db9::1]:25");
    assert_false(cfg_net_match(n, 3, (struct sockaddr *)&s));
    s = sa_of("[::ffff:127.0.0.1]:25"); /* v4-mapped matches the v4 network */
    assert_true(cfg_net_match(n, 3, (struct sockaddr *)&s));
    assert_int_equal(cfg_parse_net("10.0.0.0/33", &n[0]), -1);
    assert_int_equal(cfg_parse_net("::1/129", &n[0]), -1);
    assert_int_equal(cfg_parse_net("nonsense", &n[0]), -1);
    assert_int_equal(cfg_parse_net("10.0.0.0/", &n[0]), -1);
}

static void addresses_need_host_and_port(void **state)
{
    (void)state;
    struct cfg_addr a;
    assert_int_equal(cfg_parse_addr("0.0.0.0:587", &a), 0);
    assert_int_equal(cfg_parse_addr("[::]:587", &a), 0);
    assert_int_equal(cfg_parse_addr("127.0.0.1", &a), -1);
    assert_int_equal(cfg_parse_addr("127.0.0.1:0", &a), -1);
    assert_int_equal(cfg_parse_addr("127.0.0.1:65536", &a), -1);
    assert_int_equal(cfg_parse_addr("::1:25", &a), -1); /* IPv6 needs brackets */
    assert_int_equal(cfg_parse_addr("example.com:25", &a), -1);
}

static void defaults_listen_on_three_ports_of_loopback(void **state)
{
    (void)state;
    static struct cfg c;
    char err[256];
    cfg_defaults(&c);
    assert_int_equal(cfg_finish(&c, err, sizeof(err)), 0);
    assert_int_equal(c.nlisteners, 3);
    assert_string_equal(c.listeners[0].addrs[0].text, "127.0.0.1:587");
    assert_string_equal(c.listeners[1].addrs[0].text, "127.0.0.1:465");
    assert_int_equal(c.listeners[1].tls, CFG_TLS_IMPLICIT);
    assert_string_equal(c.listeners[2].addrs[0].text, "127.0.0.1:2525");
    assert_string_equal(c.queue_dir, "./var/queue");
    assert_true(c.workers >= 1);
}

static int load_text(struct cfg *c, const char *text, char *err, size_t len)
{
    char path[] = "/tmp/ringmta-cfg-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cfg_defaults(c);
    int rc = cfg_load(c, path, err, len);
    unlink(path);
    return rc;
}

static void file_listeners_replace_defaults(void **state)
{
    (void)state;
    static struct cfg c;
    char err[256];
    assert_int_equal(load_text(&c,
                               "[listen a]\naddress = 127.0.0.1:2600, [::1]:2600 ; two\n"
                               "tls = none\nauth = none\n[server]\nworkers = 3\n",
                               err, sizeof(err)),
                     0);
    assert_int_equal(c.nlisteners, 1);
    assert_int_equal(c.listeners[0].naddrs, 2);
    assert_string_equal(c.listeners[0].addrs[1].text, "[::1]:2600");
    assert_int_equal(c.workers, 3);
}

static void errors_report_the_line(void **state)
{
    (void)state;
    static struct cfg c;
    char err[256];
    assert_int_equal(load_text(&c, "[server]\n; comment\nmax_recipients = 0\n", err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, ":3: [server] max_recipients"));
    assert_int_equal(
        load_text(&c, "[server]\nmax_message_size = 600M\nbody_memory = 1G\n", err, sizeof(err)),
        -1);
    assert_non_null(strstr(err, "body_memory"));
    assert_int_equal(load_text(&c, "[listen a]\ntls = none\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "[listen a] needs an address"));
}

static void continued_lines_append_to_lists(void **state)
{
    (void)state;
    static struct cfg c;
    char err[256];
    assert_int_equal(load_text(&c,
                               "[server]\ntrusted_networks = 10.0.0.0/8,\n  192.168.0.0/16\n"
                               "[listen a]\naddress = 127.0.0.1:2600\naddress = 127.0.0.1:2601\n",
                               err, sizeof(err)),
                     0);
    assert_int_equal(c.ntrusted, 2); /* the file's list replaced the default, then appended */
    assert_int_equal(c.listeners[0].naddrs, 2);
}

static void errors_name_the_right_line(void **state)
{
    (void)state;
    static struct cfg c;
    char err[256];
    /* a syntax error on line 2 comes before a bad value on line 4 */
    assert_int_equal(
        load_text(&c, "[server]\nnot a key value line\n\nworkers = 0\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, ":2: syntax error"));
    /* a bad value after a continuation line */
    assert_int_equal(load_text(&c, "[server]\ntrusted_networks = 10.0.0.0/8,\n  ::1\nworkers = 0\n",
                               err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, ":4: [server] workers"));
    /* cross-key rules name the line that broke them */
    assert_int_equal(
        load_text(&c, "[server]\nworkers = 1\n[listen a]\ntls = none\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, ":4: [listen a] needs an address"));
    assert_int_equal(
        load_text(&c, "[server]\nmax_message_size = 600M\nbody_memory = 1G\n", err, sizeof(err)),
        -1);
    assert_non_null(strstr(err, ":3: [server] body_memory"));
}

static void durations_have_an_upper_bound(void **state)
{
    (void)state;
    static struct cfg c;
    char err[256];
    assert_int_equal(load_text(&c, "[server]\nshutdown_grace = 213503982334d\n", err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, ":2: [server] shutdown_grace"));
    assert_int_equal(load_text(&c, "[server]\nidle_timeout = 2d\n", err, sizeof(err)), -1);
    assert_int_equal(
        load_text(&c, "[server]\nshutdown_grace = 1h\nidle_timeout = 1d\n", err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sizes_parse_with_suffixes),
        cmocka_unit_test(durations_parse_with_units),
        cmocka_unit_test(networks_match_v4_v6_and_mapped),
        cmocka_unit_test(addresses_need_host_and_port),
        cmocka_unit_test(defaults_listen_on_three_ports_of_loopback),
        cmocka_unit_test(file_listeners_replace_defaults),
        cmocka_unit_test(errors_report_the_line),
        cmocka_unit_test(continued_lines_append_to_lists),
        cmocka_unit_test(errors_name_the_right_line),
        cmocka_unit_test(durations_have_an_upper_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
