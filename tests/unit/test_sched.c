/* tests/unit/test_sched.c: the worker's delivery schedule over a real queue. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* cmocka.h needs the headers above */
#include <cmocka.h>

#include "common/rm_pool.h"
#include "mta/sched.h"

struct fx {
    char dir[64];
    struct q *q;
    struct rm_pool pool;
    struct q_idgen gen[2];
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/ringmta-sched-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(q_open(&f->q, f->dir, 64ull << 20, 1, 0), 0);
    assert_int_equal(q_writer_start(f->q), 0);
    assert_int_equal(rm_pool_init(&f->pool, 4096, 64), 0);
    q_idgen_init(&f->gen[0], 0, 1);
    q_idgen_init(&f->gen[1], 1, 2);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    q_writer_stop(f->q);
    q_close(f->q);
    rm_pool_fini(&f->pool);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Stores one message made by "worker" w, due at due_ms; returns its id. */
static struct q_id store(struct fx *f, unsigned w, uint64_t due_ms)
{
    struct q_rcpt r = {.addr = rm_span_str("r@example.net")};
    struct q_env e = {.sender = rm_span_str("s@example.org"),
                      .arrival_ms = 1,
                      .next_attempt_ms = due_ms,
                      .size = 3,
                      .rcpt_count = 1,
                      .rcpts = &r};
    struct rm_chunk *c = rm_pool_get(&f->pool);
    assert_non_null(c);
    uint8_t *d = c->data;
    d[0] = 'a'; /* byte by byte: gcc -O2's fortify sizes data[] as 0 for a memcpy here */
    d[1] = 'b';
    d[2] = 'c';
    c->len = 3;
    struct q_req req = {.op = Q_OP_STORE, .env = &e, .body = c};
    q_id_make(&f->gen[w], due_ms, &req.id);
    assert_int_equal(q_submit(f->q, 0, &req), 0);
    struct q_req *done = NULL;
    for (int i = 0; i < 1000 && !done; i++) {
        struct pollfd p = {q_worker_fd(f->q, 0), POLLIN, 0};
        poll(&p, 1, 100);
        uint64_t v;
        ssize_t n = read(q_worker_fd(f->q, 0), &v, sizeof(v));
        (void)n;
        if (q_reap(f->q, 0, &done, 1) == 0)
            done = NULL;
    }
    assert_ptr_equal(done, &req);
    assert_int_equal(req.status, 0);
    rm_pool_put_chain(&f->pool, c);
    return req.id;
}

static void refill_loads_owned_entries_due_within_the_window_in_order(void **state)
{
    struct fx *f = *state;
    struct sched s;
    assert_int_equal(sched_init(&s, 100, 10, 0, 2, 1000), 0);
    struct q_id a = store(f, 0, 500), b = store(f, 0, 100), other = store(f, 1, 50);
    struct q_id late = store(f, 0, 5000);
    (void)other;
    assert_int_equal(sched_refill(&s, f->q, 0), 2); /* window [0, 1000): a and b, not other's */
    struct sched_entry e;
    assert_false(sched_pop_due(&s, 99, &e));
    assert_true(sched_pop_due(&s, 100, &e));
    assert_memory_equal(&e.id, &b, sizeof(b));
    assert_true(sched_pop_due(&s, 10000, &e));
    assert_memory_equal(&e.id, &a, sizeof(a));
    assert_false(sched_pop_due(&s, 10000, &e)); /* late is beyond the horizon */
    assert_int_equal(sched_refill(&s, f->q, 4500), 1);
    assert_true(sched_pop_due(&s, 10000, &e));
    assert_memory_equal(&e.id, &late, sizeof(late));
    assert_int_equal(sched_inflight(&s), 3);
    sched_fini(&s);
}

static void inflight_messages_are_not_loaded_twice(void **state)
{
    struct fx *f = *state;
    struct sched s;
    assert_int_equal(sched_init(&s, 100, 10, 0, 1, 1000), 0);
    struct q_id a = store(f, 0, 10);
    assert_int_equal(sched_refill(&s, f->q, 0), 1);
    struct sched_entry e;
    assert_true(sched_pop_due(&s, 10, &e));
    s.horizon_ms = 0; /* force a rescan of the same range */
    assert_int_equal(sched_refill(&s, f->q, 0), 0);
    sched_done(&s, &a);
    s.horizon_ms = 0;
    assert_int_equal(sched_refill(&s, f->q, 0), 1); /* done: found again (still queued) */
    sched_fini(&s);
}

static void full_heap_keeps_the_horizon_at_the_first_entry_left_out(void **state)
{
    struct fx *f = *state;
    struct sched s;
    assert_int_equal(sched_init(&s, 2, 10, 0, 1, 100000), 0);
    struct q_id id[4];
    for (int i = 0; i < 4; i++)
        id[i] = store(f, 0, 100 + (uint64_t)i);
    assert_int_equal(sched_refill(&s, f->q, 0), 2);
    assert_int_equal(s.horizon_ms, 102);
    struct sched_entry e;
    assert_true(sched_pop_due(&s, 1000, &e));
    assert_true(sched_pop_due(&s, 1000, &e));
    assert_int_equal(sched_refill(&s, f->q, 0), 2); /* 102 and 103 now */
    assert_true(sched_pop_due(&s, 1000, &e));
    assert_memory_equal(&e.id, &id[2], sizeof(id[2]));
    sched_fini(&s);
}

static void add_keeps_entries_before_the_horizon_and_inflight_cap_holds(void **state)
{
    (void)state;
    struct sched s;
    struct q_idgen g;
    q_idgen_init(&g, 0, 7);
    assert_int_equal(sched_init(&s, 8, 1, 0, 1, 1000), 0);
    struct q_id a, b;
    q_id_make(&g, 1, &a);
    q_id_make(&g, 1, &b);
    sched_add(&s, 5, &a); /* horizon 0: a refill will find it */
    assert_int_equal(sched_next_due(&s), UINT64_MAX);
    s.horizon_ms = 100;
    sched_add(&s, 50, &a);
    sched_add(&s, 50, &a); /* twice: kept once */
    sched_add(&s, 40, &b);
    assert_int_equal(s.n, 2);
    assert_int_equal(sched_next_due(&s), 40);
    struct sched_entry e;
    assert_true(sched_pop_due(&s, 60, &e));
    assert_false(sched_pop_due(&s, 60, &e)); /* inflight_cap 1 */
    sched_done(&s, &b);
    assert_true(sched_pop_due(&s, 60, &e));
    assert_memory_equal(&e.id, &a, sizeof(a));
    sched_fini(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(refill_loads_owned_entries_due_within_the_window_in_order,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(inflight_messages_are_not_loaded_twice, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(full_heap_keeps_the_horizon_at_the_first_entry_left_out,
                                        fx_setup, fx_teardown),
        cmocka_unit_test(add_keeps_entries_before_the_horizon_and_inflight_cap_holds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
