/* mta/qtool.c: the queue inspection subcommand (main thread, may block). */
#include "qtool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "../queue/q.h"

static void qtool_span(FILE *f, struct rm_span s)
{
    fwrite(s.p, 1, s.len, f);
}

struct qtool_ctx {
    struct q *q;
    struct q_rcpt *rcpts;
    uint64_t count;
    int rc;
};

static int qtool_list_one(void *arg, const struct q_id *id, uint64_t due_ms)
{
    struct qtool_ctx *c = arg;
    struct q_read *r;
    struct rm_span raw;
    struct q_env e;
    char ids[Q_ID_STR_LEN + 1];
    q_id_format(id, ids);
    if (q_read_begin(c->q, &r) != 0) {
        c->rc = 1;
        return 1;
    }
    int rc = q_read_env(r, id, &raw);
    if (rc == 0)
        rc = q_env_decode(&e, raw.p, raw.len, c->rcpts, Q_RCPT_MAX);
    if (rc == Q_ERR_NOT_FOUND) {
        /* Delivered and deleted by the running daemon since the scan's snapshot. */
    } else if (rc != 0) {
        fprintf(stderr, "ringmta: queue: %s: %s\n", ids, q_strerror(rc));
        c->rc = 1;
    } else {
        /* id, due (unix ms), size, sender (<> for null), recipients */
        printf("%s\t%" PRIu64 "\t%" PRIu64 "\t<", ids, due_ms, e.size);
        qtool_span(stdout, e.sender);
        printf(">\t");
        for (uint32_t i = 0; i < e.rcpt_count; i++) {
            printf(i ? ",<" : "<");
            qtool_span(stdout, e.rcpts[i].addr);
            printf(">");
        }
        printf("\n");
    }
    q_read_end(r);
    c->count++;
    return 0;
}

static int qtool_show(struct qtool_ctx *c, const char *ids, bool body)
{
    struct q_id id;
    if (q_id_parse(ids, strlen(ids), &id) != 0) {
        fprintf(stderr, "ringmta: queue: \"%s\" is not a queue id\n", ids);
        return 1;
    }
    struct q_read *r;
    struct rm_span raw;
    struct q_env e;
    if (q_read_begin(c->q, &r) != 0)
        return 1;
    int rc = body ? q_read_msg(r, &id, &raw) : q_read_env(r, &id, &raw);
    if (rc == 0 && !body)
        rc = q_env_decode(&e, raw.p, raw.len, c->rcpts, Q_RCPT_MAX);
    if (rc != 0) {
        fprintf(stderr, "ringmta: queue: %s: %s\n", ids, q_strerror(rc));
        q_read_end(r);
        return 1;
    }
    if (body) {
        fwrite(raw.p, 1, raw.len, stdout);
    } else {
        printf("id: %s\narrival_ms: %" PRIu64 "\nnext_attempt_ms: %" PRIu64 "\nsize: %" PRIu64
               "\nflags:%s%s%s%s\nattempts: %u\nret: %s\n",
               ids, e.arrival_ms, e.next_attempt_ms, e.size,
               e.flags & Q_ENV_SMTPUTF8 ? " smtputf8" : "",
               e.flags & Q_ENV_8BITMIME ? " 8bitmime" : "", e.flags & Q_ENV_8BIT ? " 8bit" : "",
               e.flags & Q_ENV_BDAT ? " bdat" : "", e.attempts,
               e.ret == Q_RET_FULL   ? "full"
               : e.ret == Q_RET_HDRS ? "hdrs"
                                     : "-");
        struct {
            const char *k;
            struct rm_span v;
        } f[] = {{"sender", e.sender}, {"envid", e.envid}, {"auth_user", e.auth_user},
                 {"client", e.client}, {"helo", e.helo},   {"listener", e.listener}};
        for (size_t i = 0; i < RM_ARRAY_LEN(f); i++) {
            printf("%s: ", f[i].k);
            qtool_span(stdout, f[i].v);
            printf("\n");
        }
        for (uint32_t i = 0; i < e.rcpt_count; i++) {
            const struct q_rcpt *rc2 = &e.rcpts[i];
            printf("rcpt: ");
            qtool_span(stdout, rc2->addr);
            printf(" state=%u notify=0x%x attempts=%u orcpt=", rc2->state, rc2->notify,
                   rc2->attempts);
            qtool_span(stdout, rc2->orcpt);
            printf("\n");
        }
    }
    q_read_end(r);
    return 0;
}

int qtool_main(const struct cfg *cfg, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "usage: ringmta [-c FILE] queue list|count|show ID...|cat ID...\n");
        return 2;
    }
    if (access(cfg->queue_dir, F_OK) != 0) {
        fprintf(stderr, "ringmta: queue: %s: %s\n", cfg->queue_dir, strerror(errno));
        return 1;
    }
    struct qtool_ctx c = {0};
    int rc = q_open(&c.q, cfg->queue_dir, cfg->queue_map_size, 0, Q_OPEN_RDONLY);
    if (rc != 0) {
        fprintf(stderr, "ringmta: queue: cannot open %s: %s\n", cfg->queue_dir, q_strerror(rc));
        return 1;
    }
    c.rcpts = calloc(Q_RCPT_MAX, sizeof(*c.rcpts));
    int ret = 0;
    if (!c.rcpts) {
        ret = 1;
    } else if (strcmp(argv[0], "list") == 0 && argc == 1) {
        rc = q_scan_sched(c.q, qtool_list_one, &c);
        ret = rc < 0 || c.rc ? 1 : 0;
    } else if (strcmp(argv[0], "count") == 0 && argc == 1) {
        struct q_info info;
        rc = q_info_get(c.q, &info);
        if (rc == 0)
            printf("%" PRIu64 "\n", info.messages);
        ret = rc == 0 ? 0 : 1;
    } else if ((strcmp(argv[0], "show") == 0 || strcmp(argv[0], "cat") == 0) && argc > 1) {
        for (int i = 1; i < argc; i++)
            ret |= qtool_show(&c, argv[i], argv[0][0] == 'c');
    } else {
        fprintf(stderr, "usage: ringmta [-c FILE] queue list|count|show ID...|cat ID...\n");
        ret = 2;
    }
    fflush(stdout);
    free(c.rcpts);
    q_close(c.q);
    return ret;
}
