/* tests/unit/test_queue.c: ids, the envelope record, the writer and the readers of queue/.
 *
 * Every test that touches LMDB has its own directory from mkdtemp under /tmp, removed by
 * the teardown. Threads other than main never call cmocka asserts: they record failures
 * that main checks after the join.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* cmocka.h needs stdarg.h, stddef.h, setjmp.h and stdint.h before it. */
#include <cmocka.h>

#include "queue/q.h"

#define T_MAP_SIZE    (64ull << 20)
#define T_CHUNK_BYTES 4096u /* small chunks, so that bodies span several */
#define T_POOL_CHUNKS 2048u
#define T_WAIT_MS     10000

/* ---- fixture -------------------------------------------------------------- */

struct fx {
    char dir[32];
    struct q *q;
    bool writable; /* f->q came from fx_open */
    bool started;
    struct rm_pool pool;
    struct q_idgen gen;
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    memcpy(f->dir, "/tmp/test_queue.XXXXXX", sizeof("/tmp/test_queue.XXXXXX"));
    if (mkdtemp(f->dir) == NULL || rm_pool_init(&f->pool, T_CHUNK_BYTES, T_POOL_CHUNKS) != 0) {
        free(f);
        return -1;
    }
    q_idgen_init(&f->gen, 0, 12345);
    *state = f;
    return 0;
}

/* The queue's files are LMDB's two; a test that makes others removes them itself. */
static void rm_dir(const char *path)
{
    const char *names[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < RM_ARRAY_LEN(names); i++) {
        char p[64];
        int n = snprintf(p, sizeof(p), "%s/%s", path, names[i]);
        if (n > 0 && (size_t)n < sizeof(p))
            (void)unlink(p);
    }
    (void)rmdir(path);
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    /* After a failed assert too: q_writer_stop completes whatever is still in the rings
     * (and is harmless for a writer that never started), which q_close requires. */
    if (f->q != NULL) {
        if (f->writable)
            q_writer_stop(f->q);
        q_close(f->q);
    }
    rm_pool_fini(&f->pool);
    rm_dir(f->dir);
    free(f);
    return 0;
}

static void fx_open(struct fx *f, uint64_t map_size, unsigned workers)
{
    assert_int_equal(q_open(&f->q, f->dir, map_size, workers, 0), 0);
    f->writable = true;
}

static void fx_start(struct fx *f)
{
    assert_int_equal(q_writer_start(f->q), 0);
    f->started = true;
}

static void fx_stop(struct fx *f)
{
    q_writer_stop(f->q);
    f->started = false;
}

static void fx_close(struct fx *f)
{
    if (f->writable)
        fx_stop(f);
    q_close(f->q);
    f->q = NULL;
    f->writable = false;
}

/* ---- messages -------------------------------------------------------------- */

static uint8_t pat(uint32_t seed, size_t i)
{
    return (uint8_t)((seed * 2654435761u) >> 24 ^ i * 31u ^ i >> 9);
}

/* A body of size bytes of pattern seed, in chunks from p; NULL when the pool is empty. */
static struct rm_chunk *make_body(struct rm_pool *p, uint32_t seed, size_t size)
{
    struct rm_chunk *head = NULL;
    struct rm_chunk **link = &head;
    size_t off = 0;
    while (off < size) {
        struct rm_chunk *c = rm_pool_get(p);
        if (c == NULL) {
            rm_pool_put_chain(p, head);
            return NULL;
        }
        while (c->len < c->cap && off < size)
            c->data[c->len++] = pat(seed, off++);
        *link = c;
        link = &c->next;
    }
    return head;
}

static bool body_ok(struct rm_span s, uint32_t seed, size_t size)
{
    if (s.len != size)
        return false;
    for (size_t i = 0; i < size; i++)
        if (s.p[i] != pat(seed, i))
            return false;
    return true;
}

/* A store request and everything it lends to the writer. */
struct tmsg {
    struct q_req req;
    struct rm_chunk *body; /* req.body, writable, to give back to the pool */
    struct q_env env;
    struct q_rcpt rcpt[2];
    uint32_t seed;
};

static void tmsg_init(struct tmsg *m, struct q_idgen *g, uint64_t now_ms, uint64_t due_ms,
                      uint32_t seed, size_t size, struct rm_chunk *body)
{
    memset(m, 0, sizeof(*m));
    m->seed = seed;
    m->rcpt[0].addr = rm_span_str("alice@example.org");
    m->rcpt[0].notify = Q_NOTIFY_FAILURE;
    m->rcpt[1].addr = rm_span_str("bob@example.net");
    m->rcpt[1].orcpt = rm_span_str("rfc822;bob@example.net");
    m->env.sender = rm_span_str("sender@example.com");
    m->env.client = rm_span_str("192.0.2.1");
    m->env.helo = rm_span_str("client.example.com");
    m->env.listener = rm_span_str("submission");
    m->env.arrival_ms = now_ms;
    m->env.next_attempt_ms = due_ms;
    m->env.size = size;
    m->env.rcpt_count = 2;
    m->env.rcpts = m->rcpt;
    m->req.op = Q_OP_STORE;
    q_id_make(g, now_ms, &m->req.id);
    m->req.env = &m->env;
    m->req.body = body;
    m->body = body;
    m->req.tag = seed;
}

static void fx_msg(struct fx *f, struct tmsg *m, uint64_t due_ms, uint32_t seed, size_t size)
{
    struct rm_chunk *body = make_body(&f->pool, seed, size);
    assert_true(body != NULL || size == 0);
    tmsg_init(m, &f->gen, 1700000000000ull + seed, due_ms, seed, size, body);
}

/* Waits for worker w's next completion: reap, else sleep on the eventfd and read it. */
static struct q_req *reap_one(struct q *q, unsigned w)
{
    struct q_req *r = NULL;
    for (int i = 0; i < 100; i++) {
        if (q_reap(q, w, &r, 1) == 1)
            return r;
        struct pollfd p = {.fd = q_worker_fd(q, w), .events = POLLIN};
        assert_int_equal(poll(&p, 1, T_WAIT_MS), 1);
        uint64_t v;
        assert_int_equal(read(p.fd, &v, sizeof(v)), sizeof(v));
    }
    fail_msg("no completion");
    return NULL;
}

/* Submits r as worker w and waits for it; returns its status. */
static int run_req(struct q *q, unsigned w, struct q_req *r)
{
    assert_int_equal(q_submit(q, w, r), 0);
    struct q_req *got = reap_one(q, w);
    assert_ptr_equal(got, r);
    return got->status;
}

static int run_store(struct fx *f, struct tmsg *m)
{
    int st = run_req(f->q, 0, &m->req);
    rm_pool_put_chain(&f->pool, m->body);
    m->req.body = m->body = NULL;
    return st;
}

static int run_delete(struct fx *f, const struct q_id *id, uint64_t due_ms)
{
    struct q_req r = {.op = Q_OP_DELETE, .id = *id, .old_due_ms = due_ms};
    return run_req(f->q, 0, &r);
}

static void assert_env_equal(const struct q_env *a, const struct q_env *b)
{
    assert_true(rm_span_eq(a->sender, b->sender));
    assert_true(rm_span_eq(a->envid, b->envid));
    assert_true(rm_span_eq(a->auth_user, b->auth_user));
    assert_true(rm_span_eq(a->client, b->client));
    assert_true(rm_span_eq(a->helo, b->helo));
    assert_true(rm_span_eq(a->listener, b->listener));
    assert_int_equal(a->arrival_ms, b->arrival_ms);
    assert_int_equal(a->next_attempt_ms, b->next_attempt_ms);
    assert_int_equal(a->size, b->size);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->attempts, b->attempts);
    assert_int_equal(a->ret, b->ret);
    assert_int_equal(a->rcpt_count, b->rcpt_count);
    for (uint32_t i = 0; i < a->rcpt_count; i++) {
        const struct q_rcpt *x = &a->rcpts[i];
        const struct q_rcpt *y = &b->rcpts[i];
        assert_true(rm_span_eq(x->addr, y->addr));
        assert_true(rm_span_eq(x->orcpt, y->orcpt));
        assert_true(rm_span_eq(x->last_reply, y->last_reply));
        assert_int_equal(x->attempts, y->attempts);
        assert_int_equal(x->last_code, y->last_code);
        assert_int_equal(x->notify, y->notify);
        assert_int_equal(x->state, y->state);
    }
}

/* Reads id back: the body must be seed's pattern and the envelope equal to want. */
static void assert_stored(struct q *q, const struct q_id *id, uint32_t seed,
                          const struct q_env *want)
{
    struct q_read *rd;
    assert_int_equal(q_read_begin(q, &rd), 0);
    struct rm_span s;
    assert_int_equal(q_read_msg(rd, id, &s), 0);
    assert_true(body_ok(s, seed, want->size));
    assert_int_equal(q_read_env(rd, id, &s), 0);
    struct q_env got;
    struct q_rcpt rcpts[4];
    assert_int_equal(q_env_decode(&got, s.p, s.len, rcpts, RM_ARRAY_LEN(rcpts)), 0);
    assert_env_equal(&got, want);
    q_read_end(rd);
}

static void assert_absent(struct q *q, const struct q_id *id)
{
    struct q_read *rd;
    assert_int_equal(q_read_begin(q, &rd), 0);
    struct rm_span s;
    assert_int_equal(q_read_msg(rd, id, &s), Q_ERR_NOT_FOUND);
    assert_int_equal(q_read_env(rd, id, &s), Q_ERR_NOT_FOUND);
    q_read_end(rd);
}

/* The sched index, as a list. */
struct sched_list {
    size_t n;
    struct q_id id[64];
    uint64_t due[64];
};

static int sched_collect(void *ctx, const struct q_id *id, uint64_t due_ms)
{
    struct sched_list *l = ctx;
    if (l->n == RM_ARRAY_LEN(l->id))
        return -ENOSPC;
    l->id[l->n] = *id;
    l->due[l->n] = due_ms;
    l->n++;
    return 0;
}

static void sched_get(struct q *q, struct sched_list *l)
{
    memset(l, 0, sizeof(*l));
    assert_int_equal(q_scan_sched(q, sched_collect, l), 0);
}

static bool sched_has(const struct sched_list *l, const struct q_id *id)
{
    for (size_t i = 0; i < l->n; i++)
        if (memcmp(&l->id[i], id, sizeof(*id)) == 0)
            return true;
    return false;
}

/* ---- ids ------------------------------------------------------------------- */

static void id_format_then_parse_round_trips(void **state)
{
    (void)state;
    struct q_idgen g;
    q_idgen_init(&g, 513, 42);
    uint64_t times[] = {0, 1, 1700000000123ull, 0xffffffffffffull};
    for (size_t t = 0; t < RM_ARRAY_LEN(times); t++) {
        for (int k = 0; k < 50; k++) {
            struct q_id id;
            struct q_id back;
            char s[Q_ID_STR_LEN + 1];
            q_id_make(&g, times[t], &id);
            q_id_format(&id, s);
            assert_int_equal(strlen(s), Q_ID_STR_LEN);
            assert_int_equal(q_id_parse(s, Q_ID_STR_LEN, &back), 0);
            assert_memory_equal(&id, &back, sizeof(id));
            assert_int_equal(q_id_time_ms(&id), times[t]);
            for (int i = 0; i < Q_ID_STR_LEN; i++) /* upper case parses the same */
                if (s[i] >= 'a' && s[i] <= 'z')
                    s[i] = (char)(s[i] - 32);
            assert_int_equal(q_id_parse(s, Q_ID_STR_LEN, &back), 0);
            assert_memory_equal(&id, &back, sizeof(id));
        }
    }
}

/* The 32 digits, learnt from q_id_format: the first char holds the top 5 bits. */
static void id_alphabet(char abc[32])
{
    for (unsigned v = 0; v < 32; v++) {
        struct q_id id = {{(uint8_t)(v << 3)}};
        char s[Q_ID_STR_LEN + 1];
        q_id_format(&id, s);
        abc[v] = s[0];
    }
}

static void id_parse_rejects_bad_text(void **state)
{
    (void)state;
    char abc[32];
    id_alphabet(abc);
    struct q_id zero = {{0}};
    struct q_id id;
    char ok[Q_ID_STR_LEN + 1];
    q_id_format(&zero, ok);
    assert_int_equal(q_id_parse(ok, Q_ID_STR_LEN, &id), 0);
    assert_int_equal(q_id_parse(ok, Q_ID_STR_LEN - 1, &id), -EINVAL);
    assert_int_equal(q_id_parse(ok, 0, &id), -EINVAL);
    char longer[Q_ID_STR_LEN + 2];
    memcpy(longer, ok, Q_ID_STR_LEN);
    longer[Q_ID_STR_LEN] = abc[0];
    assert_int_equal(q_id_parse(longer, Q_ID_STR_LEN + 1, &id), -EINVAL);
    /* Every byte that is not a digit, in either case, is refused in every position. */
    for (int c = 0; c < 256; c++) {
        char lc = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        bool digit = memchr(abc, lc, sizeof(abc)) != NULL;
        for (int pos = 0; pos < Q_ID_STR_LEN; pos += 5) {
            char s[Q_ID_STR_LEN];
            memcpy(s, ok, Q_ID_STR_LEN);
            s[pos] = (char)c;
            if (pos == Q_ID_STR_LEN - 1 && digit)
                continue; /* padding bits: below */
            assert_int_equal(q_id_parse(s, Q_ID_STR_LEN, &id), digit ? 0 : -EINVAL);
        }
    }
    /* The last char carries 3 bits and 2 zero padding bits: one text per id. */
    for (unsigned v = 0; v < 32; v++) {
        char s[Q_ID_STR_LEN];
        memcpy(s, ok, Q_ID_STR_LEN);
        s[Q_ID_STR_LEN - 1] = abc[v];
        assert_int_equal(q_id_parse(s, Q_ID_STR_LEN, &id), v % 4 == 0 ? 0 : -EINVAL);
    }
}

/* Ids in time order: a later ms from a lower worker, the same ms twice from one worker,
 * ids 1 ms apart across 300 ms of this decade (every text position that holds time bits
 * then takes each of its 32 values), and the ends of the 48-bit range. */
static size_t sorted_ids(struct q_id *id, size_t cap)
{
    struct q_idgen g0;
    struct q_idgen g1;
    q_idgen_init(&g0, 0, 1);
    q_idgen_init(&g1, 65535, 2);
    size_t n = 0;
    q_id_make(&g1, 0, &id[n++]);
    q_id_make(&g1, 1000, &id[n++]);
    q_id_make(&g0, 1001, &id[n++]);
    q_id_make(&g0, 1002, &id[n++]);
    q_id_make(&g0, 1002, &id[n++]);
    for (uint64_t t = 1700000000000ull; t < 1700000000300ull; t++)
        q_id_make(t % 2 ? &g0 : &g1, t, &id[n++]);
    q_id_make(&g1, 0x100000000000ull, &id[n++]);
    q_id_make(&g0, 0xffffffffffffull, &id[n++]);
    RM_ASSERT(n <= cap);
    return n;
}

static void ids_sort_by_time_as_bytes(void **state)
{
    (void)state;
    struct q_id id[320];
    size_t n = sorted_ids(id, RM_ARRAY_LEN(id));
    for (size_t i = 0; i + 1 < n; i++) {
        if (memcmp(&id[i], &id[i + 1], sizeof(id[i])) >= 0)
            fail_msg("id %zu not below id %zu", i, i + 1);
        assert_true(q_id_time_ms(&id[i]) <= q_id_time_ms(&id[i + 1]));
    }
}

/* q.h: the text sorts like the bytes. */
static void ids_sort_by_time_as_text(void **state)
{
    (void)state;
    struct q_id id[320];
    size_t n = sorted_ids(id, RM_ARRAY_LEN(id));
    for (size_t i = 0; i + 1 < n; i++) {
        char a[Q_ID_STR_LEN + 1];
        char b[Q_ID_STR_LEN + 1];
        q_id_format(&id[i], a);
        q_id_format(&id[i + 1], b);
        if (strcmp(a, b) >= 0)
            fail_msg("id text out of order: %s (%" PRIu64 " ms) >= %s (%" PRIu64 " ms)", a,
                     q_id_time_ms(&id[i]), b, q_id_time_ms(&id[i + 1]));
    }
}

/* ---- the envelope record ------------------------------------------------ */

struct sample {
    struct q_env env;
    struct q_rcpt rcpt[3];
};

static void sample_init(struct sample *s)
{
    memset(s, 0, sizeof(*s));
    s->rcpt[0] = (struct q_rcpt){.addr = rm_span_str("a@example.org"),
                                 .orcpt = rm_span_str("rfc822;a@example.org"),
                                 .last_reply = rm_span_str("451 4.7.1 try later"),
                                 .attempts = 3,
                                 .last_code = 451,
                                 .notify = Q_NOTIFY_FAILURE | Q_NOTIFY_DELAY,
                                 .state = Q_RCPT_PENDING};
    s->rcpt[1] = (struct q_rcpt){.addr = rm_span_str("b@example.net"),
                                 .last_reply = rm_span_str("250 2.0.0 ok"),
                                 .attempts = 0xfffffffe,
                                 .last_code = 250,
                                 .notify = Q_NOTIFY_SUCCESS,
                                 .state = Q_RCPT_DELIVERED};
    s->rcpt[2] = (struct q_rcpt){.addr = rm_span_str("\xc3\xa9t\xc3\xa9@exemple.fr"),
                                 .last_code = 550,
                                 .notify = Q_NOTIFY_NEVER,
                                 .state = Q_RCPT_EXPIRED};
    s->env = (struct q_env){.sender = rm_span_str("bounce+x@example.com"),
                            .envid = rm_span_str("QQ314159"),
                            .auth_user = rm_span_str("app1"),
                            .client = rm_span_str("2001:db8::1"),
                            .helo = rm_span_str("[2001:db8::1]"),
                            .listener = rm_span_str("submissions"),
                            .arrival_ms = 1700000000123ull,
                            .next_attempt_ms = 0xfedcba9876543210ull,
                            .size = 0x123456789aull,
                            .flags = Q_ENV_SMTPUTF8 | Q_ENV_8BITMIME | Q_ENV_BDAT,
                            .attempts = 7,
                            .ret = Q_RET_HDRS,
                            .rcpt_count = 3,
                            .rcpts = s->rcpt};
}

/* The encoded sample, in an exact-size heap buffer. */
static uint8_t *sample_encode(const struct q_env *e, size_t *len)
{
    *len = q_env_encoded_size(e);
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    assert_int_equal(q_env_encode(e, b, *len), (int64_t)*len);
    return b;
}

/* Decodes in[0..len) from a copy that ends at a PROT_NONE page, so that a read past the end
 * faults even without ASan. */
static int decode_at_guard(const uint8_t *in, size_t len, struct q_rcpt *rcpts, size_t cap)
{
    static uint8_t *region;
    static size_t region_bytes;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t need = (len + page - 1) / page * page + page;
    if (region_bytes < need) {
        if (region != NULL)
            munmap(region, region_bytes);
        region = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(region != MAP_FAILED);
        region_bytes = need;
        assert_int_equal(mprotect(region + need - page, page, PROT_NONE), 0);
    }
    RM_ASSERT(region != NULL);
    uint8_t *end = region + region_bytes - page;
    if (len > 0)
        memcpy(end - len, in, len);
    struct q_env e;
    return q_env_decode(&e, end - len, len, rcpts, cap);
}

static void env_round_trips_every_field(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len;
    uint8_t *b = sample_encode(&s.env, &len);
    struct q_env got;
    struct q_rcpt rcpts[3];
    assert_int_equal(q_env_decode(&got, b, len, rcpts, 3), 0);
    assert_ptr_equal(got.rcpts, rcpts);
    assert_env_equal(&got, &s.env);
    /* Spans point into the record. */
    assert_true(got.sender.p >= b && got.sender.p + got.sender.len <= b + len);
    free(b);

    /* Every string empty, every number zero, a single recipient. */
    struct q_rcpt r0 = {0};
    struct q_env e0 = {.rcpt_count = 1, .rcpts = &r0};
    b = sample_encode(&e0, &len);
    assert_int_equal(q_env_decode(&got, b, len, rcpts, 1), 0);
    assert_env_equal(&got, &e0);
    free(b);
}

static void env_encode_into_short_buffer_returns_range(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len = q_env_encoded_size(&s.env);
    uint8_t *b = malloc(len);
    assert_non_null(b);
    assert_int_equal(q_env_encode(&s.env, b, len - 1), Q_ERR_RANGE);
    assert_int_equal(q_env_encode(&s.env, b, 0), Q_ERR_RANGE);
    assert_int_equal(q_env_encode(&s.env, b, len), (int64_t)len);
    free(b);
}

static void env_decode_rejects_every_truncated_prefix(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len;
    uint8_t *b = sample_encode(&s.env, &len);
    struct q_rcpt rcpts[3];
    for (size_t n = 0; n < len; n++) {
        /* An exact-size heap copy for ASan, and a copy against a guard page. */
        uint8_t *p = malloc(n + 1);
        assert_non_null(p);
        memcpy(p, b, n);
        struct q_env e;
        assert_int_equal(q_env_decode(&e, n ? p : NULL, n, rcpts, 3), Q_ERR_CORRUPT);
        free(p);
        assert_int_equal(decode_at_guard(b, n, rcpts, 3), Q_ERR_CORRUPT);
    }
    assert_int_equal(decode_at_guard(b, len, rcpts, 3), 0);
    free(b);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The offsets of the sample record's string length fields, walked as q.c documents the
 * layout: 6 strings after the 38-byte head, then per recipient 8 bytes of integers and
 * 3 strings. */
#define SAMPLE_STRINGS (6 + 3 * 3)

static void sample_length_offsets(const uint8_t *b, size_t len, size_t offs[SAMPLE_STRINGS])
{
    size_t n = 0;
    size_t off = 38;
    for (int i = 0; i < 6; i++) {
        offs[n++] = off;
        off += 4 + get_le32(b + off);
    }
    for (int r = 0; r < 3; r++) {
        off += 8;
        for (int i = 0; i < 3; i++) {
            offs[n++] = off;
            off += 4 + get_le32(b + off);
        }
    }
    assert_int_equal(n, SAMPLE_STRINGS);
    assert_int_equal(off, len);
}

static void env_decode_rejects_corrupted_lengths(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len;
    uint8_t *b = sample_encode(&s.env, &len);
    uint8_t *m = malloc(len);
    assert_non_null(m);
    struct q_rcpt rcpts[3];
    size_t offs[SAMPLE_STRINGS];
    sample_length_offsets(b, len, offs);
    for (size_t k = 0; k < SAMPLE_STRINGS; k++) {
        uint32_t past_end = (uint32_t)(len - offs[k] - 4) + 1; /* one byte beyond the record */
        uint32_t vals[] = {0xffffffffu, 0x80000000u, (uint32_t)Q_ENV_BYTES_MAX + 1, past_end};
        for (size_t v = 0; v < RM_ARRAY_LEN(vals); v++) {
            memcpy(m, b, len);
            put_le32(m + offs[k], vals[v]);
            assert_int_equal(decode_at_guard(m, len, rcpts, 3), Q_ERR_CORRUPT);
        }
    }
    /* rcpt_count (offset 34): zero, over Q_RCPT_MAX, more than the record holds, one short. */
    uint32_t counts[] = {0, Q_RCPT_MAX + 1, 0xffffffffu, 4, 2};
    for (size_t v = 0; v < RM_ARRAY_LEN(counts); v++) {
        memcpy(m, b, len);
        put_le32(m + 34, counts[v]);
        assert_int_equal(decode_at_guard(m, len, rcpts, 3), Q_ERR_CORRUPT);
    }
    free(m);
    free(b);
}

static void env_decode_rejects_unknown_values_and_trailing_bytes(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len;
    uint8_t *b = sample_encode(&s.env, &len);
    uint8_t *m = malloc(len + 1);
    assert_non_null(m);
    struct q_rcpt rcpts[3];
    size_t offs[SAMPLE_STRINGS];
    sample_length_offsets(b, len, offs);
    memcpy(m, b, len);
    m[0] = Q_ENV_VERSION + 1;
    assert_int_equal(decode_at_guard(m, len, rcpts, 3), Q_ERR_CORRUPT);
    memcpy(m, b, len);
    m[1] = Q_RET_HDRS + 1;
    assert_int_equal(decode_at_guard(m, len, rcpts, 3), Q_ERR_CORRUPT);
    memcpy(m, b, len);
    size_t state0 = offs[6] - 1; /* the last byte of recipient 0's integers */
    assert_int_equal(m[state0], Q_RCPT_PENDING);
    m[state0] = Q_RCPT_EXPIRED + 1;
    assert_int_equal(decode_at_guard(m, len, rcpts, 3), Q_ERR_CORRUPT);
    memcpy(m, b, len);
    m[len] = 0;
    assert_int_equal(decode_at_guard(m, len + 1, rcpts, 3), Q_ERR_CORRUPT);
    free(m);
    free(b);
}

static void env_decode_of_any_changed_byte_stays_in_bounds(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len;
    uint8_t *b = sample_encode(&s.env, &len);
    uint8_t *m = malloc(len);
    assert_non_null(m);
    struct q_rcpt rcpts[3];
    for (size_t i = 0; i < len; i++) {
        const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
        for (size_t v = 0; v < sizeof(vals); v++) {
            memcpy(m, b, len);
            m[i] = vals[v];
            int rc = decode_at_guard(m, len, rcpts, 3);
            assert_true(rc == 0 || rc == Q_ERR_CORRUPT || rc == Q_ERR_RANGE);
        }
    }
    free(m);
    free(b);
}

static void env_decode_with_small_rcpt_cap_returns_range(void **state)
{
    (void)state;
    struct sample s;
    sample_init(&s);
    size_t len;
    uint8_t *b = sample_encode(&s.env, &len);
    struct q_rcpt rcpts[3];
    struct q_env e;
    assert_int_equal(q_env_decode(&e, b, len, rcpts, 2), Q_ERR_RANGE);
    assert_int_equal(q_env_decode(&e, b, len, NULL, 0), Q_ERR_RANGE);
    assert_int_equal(q_env_decode(&e, b, len, rcpts, 3), 0);
    /* Corrupt beats too small: a truncated record with too many recipients is corrupt. */
    assert_int_equal(q_env_decode(&e, b, len - 1, rcpts, 1), Q_ERR_CORRUPT);
    free(b);
}

/* ---- open and close -------------------------------------------------------- */

static void strerror_names_every_code(void **state)
{
    (void)state;
    int codes[] = {Q_ERR_MAP_FULL, Q_ERR_IO,    Q_ERR_NOT_FOUND,
                   Q_ERR_CORRUPT,  Q_ERR_RANGE, Q_ERR_STOPPED};
    for (size_t i = 0; i < RM_ARRAY_LEN(codes); i++) {
        assert_non_null(q_strerror(codes[i]));
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(q_strerror(codes[i]), q_strerror(codes[j]));
    }
    assert_string_equal(q_strerror(-ENOENT), "No such file or directory");
    assert_non_null(q_strerror(-99999));
    assert_non_null(q_strerror(12345));
}

static void open_rejects_bad_arguments(void **state)
{
    struct fx *f = *state;
    struct q *q = NULL;
    assert_int_equal(q_open(&q, f->dir, Q_MAP_SIZE_MIN - 1, 1, 0), -EINVAL);
    assert_int_equal(q_open(&q, f->dir, T_MAP_SIZE, Q_WORKERS_MAX + 1, 0), -EINVAL);
    assert_int_equal(q_open(&q, f->dir, T_MAP_SIZE, 1, Q_OPEN_RDONLY), -EINVAL);
    assert_int_equal(q_open(&q, f->dir, T_MAP_SIZE, 1, 0x80), -EINVAL);
    assert_int_equal(q_open(&q, "/nonexistent/queue", T_MAP_SIZE, 1, 0), -ENOENT);
    assert_int_equal(q_open(&q, "/dev/null", T_MAP_SIZE, 1, 0), -ENOTDIR);
    assert_null(q);
    /* The limits themselves are accepted. */
    assert_int_equal(q_open(&q, f->dir, Q_MAP_SIZE_MIN, Q_WORKERS_MAX, 0), 0);
    q_close(q);
    q_close(NULL);
}

static void second_open_of_one_queue_in_a_process_is_refused(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    struct q *q2 = NULL;
    assert_int_equal(q_open(&q2, f->dir, T_MAP_SIZE, 1, 0), -EBUSY);
    assert_int_equal(q_open(&q2, f->dir, T_MAP_SIZE, 0, Q_OPEN_RDONLY), -EBUSY);
    char link[64];
    int n = snprintf(link, sizeof(link), "%s.lnk", f->dir);
    assert_true(n > 0 && (size_t)n < sizeof(link));
    assert_int_equal(symlink(f->dir, link), 0);
    assert_int_equal(q_open(&q2, link, T_MAP_SIZE, 1, 0), -EBUSY);
    (void)unlink(link);
    fx_close(f);
    assert_int_equal(q_open(&q2, f->dir, T_MAP_SIZE, 0, Q_OPEN_RDONLY), 0);
    q_close(q2);
}

static int sched_count(void *ctx, const struct q_id *id, uint64_t due_ms)
{
    (void)id;
    (void)due_ms;
    (*(size_t *)ctx)++;
    return 0;
}

static void rdonly_open_of_queue_without_databases_reports_empty(void **state)
{
    struct fx *f = *state;
    /* An environment that never had msg, env or sched. */
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
    mdb_env_close(env);

    assert_int_equal(q_open(&f->q, f->dir, T_MAP_SIZE, 0, Q_OPEN_RDONLY), 0);
    size_t n = 0;
    assert_int_equal(q_scan_sched(f->q, sched_count, &n), 0);
    assert_int_equal(n, 0);
    struct q_info info;
    assert_int_equal(q_info_get(f->q, &info), 0);
    assert_int_equal(info.messages, 0);
    assert_true(info.map_used > 0 && info.map_used <= info.map_size);
    struct q_id id = {{0}};
    assert_absent(f->q, &id);
    fx_close(f);
}

/* ---- the writer ------------------------------------------------------------ */

static void store_then_read_back_body_and_envelope(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 2);
    fx_start(f);
    struct tmsg m;
    fx_msg(f, &m, 5000, 7, 3 * (T_CHUNK_BYTES - sizeof(struct rm_chunk)) + 123);
    assert_non_null(m.req.body->next->next->next); /* four chunks, the last one partial */
    m.rcpt[0].state = Q_RCPT_DELIVERED;
    m.env.flags = Q_ENV_8BIT;
    m.req.tag = 0xabcdef;
    /* As worker 1, to use a ring other than the first. */
    assert_int_equal(q_submit(f->q, 1, &m.req), 0);
    struct q_req *got = reap_one(f->q, 1);
    assert_ptr_equal(got, &m.req);
    assert_int_equal(got->status, 0);
    assert_int_equal(got->tag, 0xabcdef);
    assert_int_equal(got->batch, 1);
    assert_true(got->committed_ns > 0);
    assert_stored(f->q, &m.req.id, m.seed, &m.env);

    struct sched_list l;
    sched_get(f->q, &l);
    assert_int_equal(l.n, 1);
    assert_memory_equal(&l.id[0], &m.req.id, sizeof(m.req.id));
    assert_int_equal(l.due[0], 5000);

    struct q_info info;
    assert_int_equal(q_info_get(f->q, &info), 0);
    assert_int_equal(info.messages, 1);
    assert_int_equal(info.map_size, T_MAP_SIZE);
    assert_true(info.map_used >= m.env.size && info.map_used < info.map_size);

    struct q_stats st;
    q_stats_get(f->q, &st);
    assert_int_equal(st.commits, 1);
    assert_int_equal(st.requests, 1);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.batch_max, 1);
    rm_pool_put_chain(&f->pool, m.body);

    /* An empty body stores too. */
    struct tmsg e;
    fx_msg(f, &e, 6000, 8, 0);
    assert_int_equal(run_store(f, &e), 0);
    assert_stored(f->q, &e.req.id, e.seed, &e.env);
}

static void update_replaces_envelope_and_moves_sched_entry(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    struct tmsg m;
    struct tmsg other;
    fx_msg(f, &m, 1000, 1, 500);
    fx_msg(f, &other, 3000, 2, 500);
    assert_int_equal(run_store(f, &m), 0);
    assert_int_equal(run_store(f, &other), 0);

    struct q_env e2 = m.env;
    struct q_rcpt r2[2] = {m.rcpt[0], m.rcpt[1]};
    r2[0].state = Q_RCPT_DELIVERED;
    r2[0].last_code = 250;
    r2[1].attempts = 1;
    r2[1].last_code = 421;
    r2[1].last_reply = rm_span_str("421 4.4.2 timeout");
    e2.rcpts = r2;
    e2.attempts = 1;
    e2.next_attempt_ms = 5000;
    struct q_req u = {.op = Q_OP_UPDATE, .id = m.req.id, .env = &e2, .old_due_ms = 1000};
    assert_int_equal(run_req(f->q, 0, &u), 0);
    assert_stored(f->q, &m.req.id, m.seed, &e2);

    struct sched_list l;
    sched_get(f->q, &l);
    assert_int_equal(l.n, 2);
    assert_memory_equal(&l.id[0], &other.req.id, sizeof(other.req.id));
    assert_int_equal(l.due[0], 3000);
    assert_memory_equal(&l.id[1], &m.req.id, sizeof(m.req.id));
    assert_int_equal(l.due[1], 5000);

    /* Same due time: the entry stays, the envelope changes. */
    e2.attempts = 2;
    u.old_due_ms = 5000;
    assert_int_equal(run_req(f->q, 0, &u), 0);
    assert_stored(f->q, &m.req.id, m.seed, &e2);
    sched_get(f->q, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.due[1], 5000);

    /* A wrong old_due_ms or an unknown id changes nothing. */
    struct q_env e3 = e2;
    e3.next_attempt_ms = 9000;
    u.env = &e3;
    u.old_due_ms = 1000;
    assert_int_equal(run_req(f->q, 0, &u), Q_ERR_NOT_FOUND);
    u.id.b[15] ^= 1;
    u.old_due_ms = 5000;
    assert_int_equal(run_req(f->q, 0, &u), Q_ERR_NOT_FOUND);
    assert_stored(f->q, &m.req.id, m.seed, &e2);
    sched_get(f->q, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.due[1], 5000);
}

static void delete_removes_msg_env_and_sched(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    struct tmsg m;
    struct tmsg keep;
    fx_msg(f, &m, 1000, 1, 10000);
    fx_msg(f, &keep, 2000, 2, 100);
    assert_int_equal(run_store(f, &m), 0);
    assert_int_equal(run_store(f, &keep), 0);
    /* A wrong due time finds no sched entry: nothing is deleted. */
    assert_int_equal(run_delete(f, &m.req.id, 999), Q_ERR_NOT_FOUND);
    assert_stored(f->q, &m.req.id, m.seed, &m.env);

    assert_int_equal(run_delete(f, &m.req.id, 1000), 0);
    assert_absent(f->q, &m.req.id);
    struct sched_list l;
    sched_get(f->q, &l);
    assert_int_equal(l.n, 1);
    assert_false(sched_has(&l, &m.req.id));
    struct q_info info;
    assert_int_equal(q_info_get(f->q, &info), 0);
    assert_int_equal(info.messages, 1);
    assert_stored(f->q, &keep.req.id, keep.seed, &keep.env);
    /* Deleting again: not found. */
    assert_int_equal(run_delete(f, &m.req.id, 1000), Q_ERR_NOT_FOUND);
}

static void reopen_finds_everything_in_due_order(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    /* Ids in arrival order, due times not: recovery must follow due order, then id. */
    const uint64_t due[] = {50, 10, 40, 20, 30, 10};
    struct tmsg m[RM_ARRAY_LEN(due)];
    for (size_t i = 0; i < RM_ARRAY_LEN(due); i++) {
        fx_msg(f, &m[i], due[i], (uint32_t)i + 1, 100 + 1000 * i);
        assert_int_equal(run_store(f, &m[i]), 0);
    }
    fx_close(f);

    fx_open(f, T_MAP_SIZE, 1);
    struct sched_list l;
    sched_get(f->q, &l);
    const size_t order[] = {1, 5, 3, 4, 2, 0};
    assert_int_equal(l.n, RM_ARRAY_LEN(order));
    for (size_t k = 0; k < l.n; k++) {
        const struct tmsg *x = &m[order[k]];
        assert_memory_equal(&l.id[k], &x->req.id, sizeof(x->req.id));
        assert_int_equal(l.due[k], x->env.next_attempt_ms);
        assert_stored(f->q, &l.id[k], x->seed, &x->env);
    }
}

static int stop_after_two(void *ctx, const struct q_id *id, uint64_t due_ms)
{
    (void)id;
    (void)due_ms;
    return ++*(int *)ctx == 2 ? 77 : 0;
}

static void scan_stops_when_callback_returns_nonzero(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    for (uint32_t i = 0; i < 4; i++) {
        struct tmsg m;
        fx_msg(f, &m, 100 + i, i, 10);
        assert_int_equal(run_store(f, &m), 0);
    }
    int calls = 0;
    assert_int_equal(q_scan_sched(f->q, stop_after_two, &calls), 77);
    assert_int_equal(calls, 2);
}

struct due_list {
    uint64_t due[16];
    size_t n;
};

static int collect_due(void *ctx, const struct q_id *id, uint64_t due_ms)
{
    (void)id;
    struct due_list *l = ctx;
    assert_true(l->n < RM_ARRAY_LEN(l->due));
    l->due[l->n++] = due_ms;
    return 0;
}

static void scan_from_starts_at_the_first_entry_due_then(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    const uint64_t due[] = {300, 100, 200, 200, 400};
    for (uint32_t i = 0; i < RM_ARRAY_LEN(due); i++) {
        struct tmsg m;
        fx_msg(f, &m, due[i], i, 10);
        assert_int_equal(run_store(f, &m), 0);
    }
    struct due_list l = {.n = 0};
    assert_int_equal(q_scan_sched_from(f->q, 200, collect_due, &l), 0);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.due[0], 200);
    assert_int_equal(l.due[1], 200);
    assert_int_equal(l.due[2], 300);
    assert_int_equal(l.due[3], 400);
    l.n = 0;
    assert_int_equal(q_scan_sched_from(f->q, 201, collect_due, &l), 0);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.due[0], 300);
    l.n = 0;
    assert_int_equal(q_scan_sched_from(f->q, 401, collect_due, &l), 0);
    assert_int_equal(l.n, 0);
}

/* Requests submitted before q_writer_start wait in the rings; the writer's first pass takes
 * them all into one txn, which makes the batch deterministic. */
static void failing_request_does_not_fail_its_batch(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    struct tmsg a;
    struct tmsg b;
    fx_msg(f, &a, 100, 1, 3000);
    fx_msg(f, &b, 200, 2, 3000);
    struct q_id missing;
    q_id_make(&f->gen, 1, &missing);
    struct q_req upd = {.op = Q_OP_UPDATE, .id = missing, .env = &a.env, .old_due_ms = 1};
    struct q_req del = {.op = Q_OP_DELETE, .id = missing, .old_due_ms = 1};
    struct q_req *reqs[] = {&a.req, &upd, &del, &b.req};
    for (size_t i = 0; i < RM_ARRAY_LEN(reqs); i++)
        assert_int_equal(q_submit(f->q, 0, reqs[i]), 0);
    fx_start(f);
    for (size_t i = 0; i < RM_ARRAY_LEN(reqs); i++) {
        struct q_req *r = reap_one(f->q, 0);
        assert_ptr_equal(r, reqs[i]); /* completions come back in submission order */
        assert_int_equal(r->batch, RM_ARRAY_LEN(reqs));
        assert_int_equal(r->committed_ns, reqs[0]->committed_ns);
    }
    assert_int_equal(a.req.status, 0);
    assert_int_equal(upd.status, Q_ERR_NOT_FOUND);
    assert_int_equal(del.status, Q_ERR_NOT_FOUND);
    assert_int_equal(b.req.status, 0);
    assert_stored(f->q, &a.req.id, a.seed, &a.env);
    assert_stored(f->q, &b.req.id, b.seed, &b.env);
    struct q_stats st;
    q_stats_get(f->q, &st);
    assert_int_equal(st.commits, 1);
    assert_int_equal(st.requests, 4);
    assert_int_equal(st.failed, 2);
    assert_int_equal(st.batch_max, 4);
}

static void submit_returns_eagain_with_ring_cap_in_flight(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 2);
    struct q_req *reqs = calloc(Q_RING_CAP + 1, sizeof(*reqs));
    assert_non_null(reqs);
    for (size_t i = 0; i <= Q_RING_CAP; i++) {
        reqs[i].op = Q_OP_DELETE; /* of ids that do not exist: cheap, Q_ERR_NOT_FOUND */
        q_id_make(&f->gen, 1, &reqs[i].id);
    }
    for (size_t i = 0; i < Q_RING_CAP; i++)
        assert_int_equal(q_submit(f->q, 0, &reqs[i]), 0);
    assert_int_equal(q_submit(f->q, 0, &reqs[Q_RING_CAP]), -EAGAIN);
    /* The limit is per worker. */
    struct q_req other = {.op = Q_OP_DELETE, .id = reqs[0].id};
    assert_int_equal(q_submit(f->q, 1, &other), 0);
    fx_start(f);
    assert_ptr_equal(reap_one(f->q, 1), &other);
    /* Completed but not reaped still counts as in flight. */
    struct pollfd p = {.fd = q_worker_fd(f->q, 0), .events = POLLIN};
    assert_int_equal(poll(&p, 1, T_WAIT_MS), 1);
    assert_int_equal(q_submit(f->q, 0, &reqs[Q_RING_CAP]), -EAGAIN);
    struct q_req *out[512];
    assert_int_equal(q_reap(f->q, 0, out, 1), 1);
    assert_ptr_equal(out[0], &reqs[0]);
    assert_int_equal(reqs[0].batch, Q_RING_CAP); /* one batch: Q_BATCH_MAX >= Q_RING_CAP */
    assert_int_equal(q_submit(f->q, 0, &reqs[0]), 0);
    assert_int_equal(q_submit(f->q, 0, &reqs[Q_RING_CAP]), -EAGAIN);
    /* Reap everything, in submission order: reqs[1..Q_RING_CAP), then reqs[0] again. */
    size_t got = 1;
    for (int i = 0; i < 1000 && got < Q_RING_CAP + 1; i++) {
        size_t n = q_reap(f->q, 0, out, RM_ARRAY_LEN(out));
        if (n == 0) {
            assert_int_equal(poll(&p, 1, T_WAIT_MS), 1);
            uint64_t v;
            assert_int_equal(read(p.fd, &v, sizeof(v)), sizeof(v));
        }
        for (size_t k = 0; k < n; k++) {
            assert_ptr_equal(out[k], &reqs[(got + k) % Q_RING_CAP]);
            assert_int_equal(out[k]->status, Q_ERR_NOT_FOUND);
        }
        got += n;
    }
    assert_int_equal(got, Q_RING_CAP + 1);
    assert_int_equal(run_req(f->q, 0, &reqs[Q_RING_CAP]), Q_ERR_NOT_FOUND);
    free(reqs);
}

static void submit_after_stop_returns_stopped(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    struct tmsg m;
    fx_msg(f, &m, 100, 1, 100);
    assert_int_equal(run_store(f, &m), 0);
    fx_stop(f);
    struct q_req del = {.op = Q_OP_DELETE, .id = m.req.id, .old_due_ms = 100};
    assert_int_equal(q_submit(f->q, 0, &del), Q_ERR_STOPPED);
    q_writer_stop(f->q); /* again: harmless */
    assert_int_equal(q_submit(f->q, 0, &del), Q_ERR_STOPPED);
    struct q_req *r;
    assert_int_equal(q_reap(f->q, 0, &r, 1), 0);
    assert_stored(f->q, &m.req.id, m.seed, &m.env);
}

static void stop_commits_and_completes_everything_submitted_before(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    struct tmsg m[50];
    for (uint32_t i = 0; i < RM_ARRAY_LEN(m); i++) {
        fx_msg(f, &m[i], 100 + i, i, 2000);
        assert_int_equal(q_submit(f->q, 0, &m[i].req), 0);
    }
    fx_stop(f);
    struct q_req *out[64];
    size_t n = q_reap(f->q, 0, out, RM_ARRAY_LEN(out));
    assert_int_equal(n, RM_ARRAY_LEN(m));
    for (size_t i = 0; i < n; i++) {
        assert_ptr_equal(out[i], &m[i].req);
        assert_int_equal(out[i]->status, 0);
    }
    fx_close(f);
    fx_open(f, T_MAP_SIZE, 1);
    for (size_t i = 0; i < RM_ARRAY_LEN(m); i++)
        assert_stored(f->q, &m[i].req.id, m[i].seed, &m[i].env);
}

static void requests_for_a_writer_that_never_started_complete_stopped(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 1);
    struct tmsg m;
    fx_msg(f, &m, 100, 1, 100);
    assert_int_equal(q_submit(f->q, 0, &m.req), 0);
    q_writer_stop(f->q);
    struct q_req *r = reap_one(f->q, 0);
    assert_ptr_equal(r, &m.req);
    assert_int_equal(r->status, Q_ERR_STOPPED);
    assert_absent(f->q, &m.req.id);
    struct q_stats st;
    q_stats_get(f->q, &st);
    assert_int_equal(st.requests, 1);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.commits, 0);
}

/* ---- group commit with two worker threads --------------------------------- */

#define GC_PER_WORKER 2000u
#define GC_BODY_BYTES 1024u

struct gc_worker {
    struct q *q;
    unsigned worker;
    size_t bad;  /* completions with a non-zero status, or out of place */
    size_t done; /* completions reaped */
    int err;     /* set-up or wait failure: the line that failed */
    struct tmsg *m;
};

static void *gc_main(void *arg)
{
    struct gc_worker *w = arg;
    struct rm_pool pool;
    if (rm_pool_init(&pool, GC_BODY_BYTES + 64, GC_PER_WORKER) != 0) {
        w->err = __LINE__;
        return NULL;
    }
    struct q_idgen g;
    q_idgen_init(&g, (uint16_t)w->worker, w->worker + 1);
    for (uint32_t i = 0; i < GC_PER_WORKER; i++) {
        uint32_t seed = w->worker << 16 | i;
        struct rm_chunk *body = make_body(&pool, seed, GC_BODY_BYTES);
        tmsg_init(&w->m[i], &g, 1700000000000ull + i, 1000 + i, seed, GC_BODY_BYTES, body);
    }
    size_t sent = 0;
    int fd = q_worker_fd(w->q, w->worker);
    for (int spins = 0; w->done < GC_PER_WORKER && spins < 100000; spins++) {
        while (sent < GC_PER_WORKER) {
            int rc = q_submit(w->q, w->worker, &w->m[sent].req);
            if (rc == -EAGAIN)
                break;
            if (rc != 0) {
                w->err = __LINE__;
                goto out;
            }
            sent++;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t v;
        if (poll(&p, 1, T_WAIT_MS) != 1 || read(fd, &v, sizeof(v)) != sizeof(v)) {
            w->err = __LINE__;
            goto out;
        }
        struct q_req *out[256];
        for (size_t n; (n = q_reap(w->q, w->worker, out, RM_ARRAY_LEN(out))) > 0;) {
            for (size_t k = 0; k < n; k++) {
                struct tmsg *m = &w->m[w->done + k];
                w->bad += out[k] != &m->req || out[k]->status != 0;
                rm_pool_put_chain(&pool, m->body);
            }
            w->done += n;
        }
    }
out:
    rm_pool_fini(&pool);
    return NULL;
}

static void two_workers_group_commit_4000_stores(void **state)
{
    struct fx *f = *state;
    fx_open(f, T_MAP_SIZE, 2);
    fx_start(f);
    struct gc_worker w[2];
    pthread_t t[2];
    for (unsigned i = 0; i < 2; i++) {
        w[i] = (struct gc_worker){.q = f->q, .worker = i};
        w[i].m = calloc(GC_PER_WORKER, sizeof(struct tmsg));
        assert_non_null(w[i].m);
        assert_int_equal(pthread_create(&t[i], NULL, gc_main, &w[i]), 0);
    }
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].err, 0);
        assert_int_equal(w[i].done, GC_PER_WORKER);
        assert_int_equal(w[i].bad, 0);
    }
    struct q_stats st;
    q_stats_get(f->q, &st);
    assert_int_equal(st.requests, 2 * GC_PER_WORKER);
    assert_int_equal(st.failed, 0);
    assert_true(st.commits < st.requests);
    assert_true(st.batch_max > 1);
    struct q_info info;
    assert_int_equal(q_info_get(f->q, &info), 0);
    assert_int_equal(info.messages, 2 * GC_PER_WORKER);
    /* Spot checks: the last message of each worker. */
    for (unsigned i = 0; i < 2; i++) {
        struct tmsg *m = &w[i].m[GC_PER_WORKER - 1];
        assert_stored(f->q, &m->req.id, m->seed, &m->env);
        free(w[i].m);
    }
}

/* ---- map full -------------------------------------------------------------- */

#define MF_BODY_BYTES (64u << 10)
#define MF_MAX        64

static void map_full_refuses_new_mail_and_keeps_the_rest(void **state)
{
    struct fx *f = *state;
    fx_open(f, Q_MAP_SIZE_MIN, 1);
    fx_start(f);
    static struct tmsg m[MF_MAX + 1];
    size_t ok = 0;
    int st = 0;
    for (; ok < MF_MAX; ok++) {
        fx_msg(f, &m[ok], 1000 + ok, (uint32_t)ok, MF_BODY_BYTES);
        st = run_store(f, &m[ok]);
        if (st != 0)
            break;
    }
    assert_int_equal(st, Q_ERR_MAP_FULL);
    assert_true(ok >= 2);
    struct tmsg *failed = &m[ok];

    /* Everything acknowledged is intact; the refused one left nothing behind. */
    for (size_t i = 0; i < ok; i++)
        assert_stored(f->q, &m[i].req.id, m[i].seed, &m[i].env);
    assert_absent(f->q, &failed->req.id);
    struct sched_list l;
    sched_get(f->q, &l);
    assert_int_equal(l.n, ok);
    assert_false(sched_has(&l, &failed->req.id));
    struct q_info info;
    assert_int_equal(q_info_get(f->q, &info), 0);
    assert_int_equal(info.messages, ok);

    /* Existing mail still drains, and then there is room again. */
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(run_delete(f, &m[i].req.id, m[i].env.next_attempt_ms), 0);
    struct tmsg *again = &m[MF_MAX];
    fx_msg(f, again, 9999, 4242, MF_BODY_BYTES);
    assert_int_equal(run_store(f, again), 0);
    assert_stored(f->q, &again->req.id, again->seed, &again->env);
    for (size_t i = 3; i < ok; i++)
        assert_stored(f->q, &m[i].req.id, m[i].seed, &m[i].env);
    struct q_stats stats;
    q_stats_get(f->q, &stats);
    assert_int_equal(stats.failed, 1);
}

/* ---- a read-only handle in another process --------------------------------- */

#define RO_FIRST  8
#define RO_SECOND 5

struct ro_msg {
    struct q_id id;
    uint32_t seed;
};

/* LMDB allows one open per process, so the reader is a child process, forked before the
 * parent opens the queue. Returns 0 when the child saw exactly the expected messages. */
static int ro_check(const char *dir, const struct ro_msg *ms, size_t n)
{
    struct q *q;
    /* The smallest map: a reader maps at least what the writer configured. */
    if (q_open(&q, dir, Q_MAP_SIZE_MIN, 0, Q_OPEN_RDONLY) != 0)
        return 1;
    int bad = 0;
    struct q_info info;
    if (q_info_get(q, &info) != 0 || info.messages != n || info.map_size != T_MAP_SIZE)
        bad = 2;
    struct q_read *rd;
    if (bad == 0 && q_read_begin(q, &rd) != 0) {
        bad = 3;
    } else if (bad == 0) {
        for (size_t i = 0; bad == 0 && i < n; i++) {
            struct rm_span s;
            struct q_env e;
            struct q_rcpt r[2];
            if (q_read_msg(rd, &ms[i].id, &s) != 0 || !body_ok(s, ms[i].seed, 1000 + ms[i].seed))
                bad = 4;
            else if (q_read_env(rd, &ms[i].id, &s) != 0 || q_env_decode(&e, s.p, s.len, r, 2) != 0)
                bad = 5;
        }
        q_read_end(rd);
    }
    size_t count = 0;
    if (bad == 0 && (q_scan_sched(q, sched_count, &count) != 0 || count != n))
        bad = 6;
    q_close(q);
    return bad;
}

static void ro_child(const char *dir, int in, int out)
{
    struct ro_msg ms[RO_FIRST + RO_SECOND];
    size_t n = 0;
    for (int round = 0; round < 2; round++) {
        size_t add = round == 0 ? RO_FIRST : RO_SECOND;
        if (read(in, &ms[n], add * sizeof(ms[0])) != (ssize_t)(add * sizeof(ms[0])))
            _exit(10);
        n += add;
        uint8_t res = (uint8_t)ro_check(dir, ms, n);
        if (write(out, &res, 1) != 1)
            _exit(11);
    }
    _exit(0);
}

static void rdonly_process_sees_commits_while_writer_runs(void **state)
{
    struct fx *f = *state;
    int p2c[2];
    int c2p[2];
    assert_int_equal(pipe(p2c), 0);
    assert_int_equal(pipe(c2p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        ro_child(f->dir, p2c[0], c2p[1]);
    }
    close(p2c[0]);
    close(c2p[1]);
    fx_open(f, T_MAP_SIZE, 1);
    fx_start(f);
    uint32_t seed = 0;
    for (int round = 0; round < 2; round++) {
        size_t add = round == 0 ? RO_FIRST : RO_SECOND;
        struct ro_msg ms[RO_FIRST];
        for (size_t i = 0; i < add; i++, seed++) {
            struct tmsg m;
            fx_msg(f, &m, 100 + seed, seed, 1000 + seed);
            assert_int_equal(run_store(f, &m), 0);
            ms[i] = (struct ro_msg){.id = m.req.id, .seed = seed};
        }
        assert_int_equal(write(p2c[1], ms, add * sizeof(ms[0])), (ssize_t)(add * sizeof(ms[0])));
        uint8_t res = 0xff;
        assert_int_equal(read(c2p[0], &res, 1), 1);
        assert_int_equal(res, 0); /* see ro_check for what each value means */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(p2c[1]);
    close(c2p[0]);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(id_format_then_parse_round_trips),
        cmocka_unit_test(id_parse_rejects_bad_text),
        cmocka_unit_test(ids_sort_by_time_as_bytes),
        cmocka_unit_test(ids_sort_by_time_as_text),
        cmocka_unit_test(env_round_trips_every_field),
        cmocka_unit_test(env_encode_into_short_buffer_returns_range),
        cmocka_unit_test(env_decode_rejects_every_truncated_prefix),
        cmocka_unit_test(env_decode_rejects_corrupted_lengths),
        cmocka_unit_test(env_decode_rejects_unknown_values_and_trailing_bytes),
        cmocka_unit_test(env_decode_of_any_changed_byte_stays_in_bounds),
        cmocka_unit_test(env_decode_with_small_rcpt_cap_returns_range),
        cmocka_unit_test(strerror_names_every_code),
        T(open_rejects_bad_arguments),
        T(second_open_of_one_queue_in_a_process_is_refused),
        T(rdonly_open_of_queue_without_databases_reports_empty),
        T(store_then_read_back_body_and_envelope),
        T(update_replaces_envelope_and_moves_sched_entry),
        T(delete_removes_msg_env_and_sched),
        T(reopen_finds_everything_in_due_order),
        T(scan_stops_when_callback_returns_nonzero),
        T(scan_from_starts_at_the_first_entry_due_then),
        T(failing_request_does_not_fail_its_batch),
        T(submit_returns_eagain_with_ring_cap_in_flight),
        T(submit_after_stop_returns_stopped),
        T(stop_commits_and_completes_everything_submitted_before),
        T(requests_for_a_writer_that_never_started_complete_stopped),
        T(two_workers_group_commit_4000_stores),
        T(map_full_refuses_new_mail_and_keeps_the_rest),
        T(rdonly_process_sees_commits_while_writer_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
