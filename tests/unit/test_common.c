/* tests/unit/test_common.c: common/ basics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* cmocka.h needs the headers above */
#include <cmocka.h>

#include "common/rm.h"

static void utc_matches_gmtime_over_four_centuries(void **state)
{
    (void)state;
    /* Every ~3.7 days from 1970 to beyond 2400, plus the edges of days. */
    for (uint64_t t = 0; t < 14000000000ull; t += 321987ull) {
        for (uint64_t d = 0; d < 2; d++) {
            uint64_t x = t + d * 86399;
            time_t tt = (time_t)x;
            struct tm tm;
            struct rm_utc u;
            assert_non_null(gmtime_r(&tt, &tm));
            rm_utc_from_unix(x, &u);
            assert_int_equal(u.year, tm.tm_year + 1900);
            assert_int_equal(u.month, tm.tm_mon + 1);
            assert_int_equal(u.day, tm.tm_mday);
            assert_int_equal(u.hour, tm.tm_hour);
            assert_int_equal(u.min, tm.tm_min);
            assert_int_equal(u.sec, tm.tm_sec);
            assert_int_equal(u.wday, tm.tm_wday);
        }
    }
}

static void buf_skip_never_moves_the_tail(void **state)
{
    (void)state;
    uint8_t mem[16];
    struct rm_buf b;
    rm_buf_init(&b, mem, sizeof(mem));
    rm_buf_produce(&b, 10);
    rm_buf_skip(&b, 10); /* empty, but a pending recv may still write at 10 */
    assert_int_equal(b.head, 10);
    assert_int_equal(b.tail, 10);
    rm_buf_produce(&b, 3);
    assert_int_equal(rm_buf_len(&b), 3);
    rm_buf_consume(&b, 3); /* consume resets an empty buffer */
    assert_int_equal(b.tail, 0);
}

static void buf_recv_prep_resets_empty_and_compacts_nearly_full(void **state)
{
    (void)state;
    uint8_t mem[16];
    struct rm_buf b;
    rm_buf_init(&b, mem, sizeof(mem));
    rm_buf_produce(&b, 10);
    rm_buf_skip(&b, 10);
    assert_int_equal(rm_buf_recv_prep(&b), 16); /* empty: back to 0 */
    assert_int_equal(b.tail, 0);
    rm_buf_produce(&b, 8);
    rm_buf_skip(&b, 6);
    assert_int_equal(rm_buf_recv_prep(&b), 8); /* 8 free of 16: left where it is */
    assert_int_equal(b.head, 6);
    rm_buf_produce(&b, 6);
    assert_int_equal(rm_buf_recv_prep(&b), 8); /* 2 free: the 8 pending bytes move */
    assert_int_equal(b.head, 0);
    assert_int_equal(b.tail, 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(utc_matches_gmtime_over_four_centuries),
        cmocka_unit_test(buf_skip_never_moves_the_tail),
        cmocka_unit_test(buf_recv_prep_resets_empty_and_compacts_nearly_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
