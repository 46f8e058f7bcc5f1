/* mta/main.c: the ringmta command: the daemon, --check and the queue tool.
 *
 * The main thread loads the config, opens the queue and recovers what it
 * holds, starts the queue writer and the workers, then waits for signals:
 * SIGTERM/SIGINT drain (stop accepting, let sessions finish up to
 * shutdown_grace, commit, exit 0); a second one exits at once (status 1),
 * which loses nothing acknowledged, since a 250 is sent only after its commit.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../queue/q.h"
#include "auth.h"
#include "cfg.h"
#include "log.h"
#include "qtool.h"
#include "worker.h"

#define RINGMTA_VERSION     "0.1.0"
#define MAIN_EXIT_MARGIN_MS 15000u /* after shutdown_grace, before a forced exit */

static void usage(FILE *f)
{
    fprintf(f, "usage: ringmta [-c FILE] [--check]        run the daemon (or only check FILE)\n"
               "       ringmta [-c FILE] queue list|count|show ID...|cat ID...\n"
               "       ringmta passwd USER            a users-file line; password on stdin\n"
               "       ringmta --version\n"
               "Without -c, the built-in defaults: 127.0.0.1 on 587, 465 and 2525, queue in "
               "./var/queue.\n");
}

/* Reads one line of at most cap-1 octets from stdin, without echo when it
 * is a terminal. Returns its length, or -1 (EOF, too long). */
static int read_secret(const char *prompt, char *buf, size_t cap)
{
    struct termios old, quiet;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
    if (tty) {
        fprintf(stderr, "%s", prompt);
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    char *r = fgets(buf, (int)cap, stdin);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        fprintf(stderr, "\n");
    }
    if (!r)
        return -1;
    size_t n = strlen(buf);
    if (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    else if (n == cap - 1)
        return -1; /* longer than the buffer */
    return (int)n;
}

/* ringmta passwd USER: a users-file line (SHA-512-crypt) for the password
 * read from stdin (asked twice on a terminal). */
static int passwd_main(int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: ringmta passwd USER   (the password is read from stdin)\n");
        return 2;
    }
    char pw[AUTH_PASSWORD_MAX + 2], again[AUTH_PASSWORD_MAX + 2], line[AUTH_PASSWD_LINE_MAX];
    int n = read_secret("Password: ", pw, sizeof(pw));
    if (n > 0 && isatty(STDIN_FILENO)) {
        int m = read_secret("Again: ", again, sizeof(again));
        if (m != n || memcmp(pw, again, (size_t)n) != 0) {
            fprintf(stderr, "ringmta: passwd: the passwords differ\n");
            return 1;
        }
    }
    if (n <= 0) {
        fprintf(stderr, "ringmta: passwd: expected a password of 1 to %u octets on stdin\n",
                AUTH_PASSWORD_MAX);
        return 1;
    }
    int rc = auth_passwd_line(rm_span_str(argv[0]), rm_span_make(pw, (size_t)n), "$6$", line,
                              sizeof(line));
    explicit_bzero(pw, sizeof(pw));
    explicit_bzero(again, sizeof(again));
    if (rc < 0) {
        fprintf(stderr, "ringmta: passwd: %s\n", auth_strerror(rc));
        return 1;
    }
    fwrite(line, 1, (size_t)rc, stdout);
    return 0;
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -errno;
            buf[i] = c;
        }
    }
    return 0;
}

struct recover_ctx {
    struct worker_recovered *v;
    size_t n, cap;
};

static int recover_one(void *arg, const struct q_id *id, uint64_t due_ms)
{
    struct recover_ctx *c = arg;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        void *p = realloc(c->v, cap * sizeof(*c->v));
        if (!p)
            return -ENOMEM;
        c->v = p;
        c->cap = cap;
    }
    c->v[c->n].id = *id;
    c->v[c->n].due_ms = due_ms;
    c->n++;
    return 0;
}

/* Spreads recovered messages round-robin over the workers (DESIGN.md). */
static int recover_hand_out(struct worker **w, unsigned nw, const struct recover_ctx *c)
{
    for (unsigned k = 0; k < nw; k++) {
        size_t n = c->n / nw + (k < c->n % nw ? 1 : 0);
        struct worker_recovered *v = n ? malloc(n * sizeof(*v)) : NULL;
        if (n && !v)
            return -ENOMEM;
        for (size_t i = k, j = 0; i < c->n; i += nw)
            v[j++] = c->v[i];
        worker_give_recovered(w[k], v, n);
    }
    return 0;
}

static int open_delivery_log(const char *spec)
{
    if (strcmp(spec, "stdout") == 0)
        return STDOUT_FILENO;
    if (strcmp(spec, "stderr") == 0)
        return STDERR_FILENO;
    if (strcmp(spec, "none") == 0)
        return -1;
    int fd = open(spec, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    return fd >= 0 ? fd : -errno - 1000000; /* distinguishable from -1 ("none") */
}

static void print_stats(struct q *q, const struct worker_shared *sh)
{
    struct q_stats qs;
    q_stats_get(q, &qs);
    uint64_t msgs = 0, conns = 0, refused = 0, failed = 0;
    for (unsigned i = 0; i < sh->nworkers; i++) {
        msgs += atomic_load_explicit(&sh->stats[i].messages, memory_order_relaxed);
        conns += atomic_load_explicit(&sh->stats[i].accepted, memory_order_relaxed);
        refused += atomic_load_explicit(&sh->stats[i].refused, memory_order_relaxed);
        failed += atomic_load_explicit(&sh->stats[i].store_failed, memory_order_relaxed);
    }
    log_diag(LOG_INFO, "main", "-",
             "stats connections=%llu refused=%llu messages=%llu store_failed=%llu commits=%llu "
             "requests=%llu avg_batch=%.1f max_batch=%llu avg_commit_ms=%.2f max_commit_ms=%.2f",
             (unsigned long long)conns, (unsigned long long)refused, (unsigned long long)msgs,
             (unsigned long long)failed, (unsigned long long)qs.commits,
             (unsigned long long)qs.requests,
             qs.commits ? (double)qs.requests / (double)qs.commits : 0.0,
             (unsigned long long)qs.batch_max,
             qs.commits ? (double)qs.commit_ns_sum / (double)qs.commits / 1e6 : 0.0,
             (double)qs.commit_ns_max / 1e6);
}

/* The signals the main thread takes with sigtimedwait (blocked everywhere). */
static void daemon_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/* Waits for signals until every worker has finished. Returns the exit code. */
static int signal_loop(struct worker **w, unsigned nw, struct worker_shared *sh)
{
    sigset_t set;
    daemon_signals(&set);
    int phase = WORKER_RUN, rc = 0;
    struct timespec drain_start = {0, 0};
    for (;;) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            if (phase != WORKER_RUN) {
                log_diag(LOG_WARN, "main", "-",
                         "second signal: exiting now; committed mail is safe");
                _exit(1);
            }
            log_diag(LOG_INFO, "main", "-", "signal %d: draining (grace %llu ms)", sig,
                     (unsigned long long)sh->cfg->shutdown_grace_ms);
            phase = WORKER_DRAIN;
            clock_gettime(CLOCK_MONOTONIC, &drain_start);
        } else if (sig == SIGHUP) {
            log_diag(LOG_INFO, "main", "-",
                     "SIGHUP: nothing to reload yet (certificates and "
                     "users arrive with TLS and AUTH)");
        }
        unsigned done = 0;
        for (unsigned i = 0; i < nw; i++)
            done += worker_done(w[i]);
        if (done > 0 && phase == WORKER_RUN) { /* a worker failed on its own */
            log_diag(LOG_ERR, "main", "-", "a worker stopped unexpectedly: draining the others");
            phase = WORKER_DRAIN;
            rc = 1;
        }
        if (phase != WORKER_RUN &&
            atomic_load_explicit(&sh->stop_phase, memory_order_relaxed) != phase) {
            atomic_store_explicit(&sh->stop_phase, phase,
                                  memory_order_release); /* pairs with on_wake */
            for (unsigned i = 0; i < nw; i++)
                worker_wake(w[i]);
        }
        if (done == nw)
            return rc;
        if (phase != WORKER_RUN && drain_start.tv_sec != 0) {
            /* A worker stuck past the grace period (a log reader that never
             * reads, say) must not keep the process alive: committed mail is
             * on disk already. */
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            uint64_t ms = (uint64_t)(now.tv_sec - drain_start.tv_sec) * 1000;
            if (ms > sh->cfg->shutdown_grace_ms + MAIN_EXIT_MARGIN_MS) {
                log_diag(LOG_ERR, "main", "-",
                         "workers did not stop %u s after the grace period: "
                         "exiting now",
                         MAIN_EXIT_MARGIN_MS / 1000);
                _exit(1);
            }
        }
    }
}

/* Sessions need an fd each: raise the soft limit to the hard one and fit
 * max_sessions under it (a refused accept beats EMFILE at accept time). */
static void fit_fd_limit(struct cfg *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Listeners, log files, LMDB, eventfds, rings: a margin of 64 per worker. */
    uint64_t reserve = 64 + 64ull * cfg->workers + worker_listen_count(cfg) * cfg->workers;
    uint64_t room = rl.rlim_cur > reserve ? rl.rlim_cur - reserve : cfg->workers;
    if (cfg->sessions_max > room) {
        log_diag(LOG_WARN, "main", "-",
                 "max_sessions %u exceeds the open-file limit %llu: using %llu", cfg->sessions_max,
                 (unsigned long long)rl.rlim_cur, (unsigned long long)room);
        cfg->sessions_max = (uint32_t)RM_MAX(room, cfg->workers);
    }
}

/* Lines written by several threads and rings to a regular file need
 * O_APPEND, or concurrent writes at the shared offset overwrite each other. */
static void append_if_file(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl | O_APPEND);
    }
}

static int run_daemon(struct cfg *cfg)
{
    append_if_file(STDOUT_FILENO);
    append_if_file(STDERR_FILENO);
    fit_fd_limit(cfg);
    char err[512];
    int rc = mkdir_p(cfg->queue_dir);
    if (rc < 0) {
        fprintf(stderr, "ringmta: cannot create queue_dir %s: %s\n", cfg->queue_dir, strerror(-rc));
        return 1;
    }
    int dlog = open_delivery_log(cfg->delivery_log);
    if (dlog < -1) {
        fprintf(stderr, "ringmta: cannot open delivery_log %s: %s\n", cfg->delivery_log,
                strerror(-(dlog + 1000000)));
        return 1;
    }
    /* Signals are taken by the main thread only (sigtimedwait). */
    sigset_t set;
    daemon_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned nw = cfg->workers;
    struct q *q = NULL;
    rc = q_open(&q, cfg->queue_dir, cfg->queue_map_size, nw, 0);
    if (rc != 0) {
        fprintf(stderr, "ringmta: cannot open the queue in %s: %s\n", cfg->queue_dir,
                q_strerror(rc));
        return 1;
    }
    struct recover_ctx rec = {0};
    rc = q_scan_sched(q, recover_one, &rec);
    if (rc != 0) {
        fprintf(stderr, "ringmta: cannot scan the queue in %s: %s\n", cfg->queue_dir,
                q_strerror(rc));
        return 1;
    }
    static struct worker_shared sh;
    sh.cfg = cfg;
    sh.q = q;
    sh.nworkers = nw;
    sh.delivery_log_fd = dlog;
    if (getrandom(&sh.ip_key, sizeof(sh.ip_key), 0) != sizeof(sh.ip_key))
        sh.ip_key = (uint64_t)time(NULL);
    sh.iptabs = aligned_alloc(RM_CACHELINE, nw * sizeof(*sh.iptabs));
    sh.stats = aligned_alloc(RM_CACHELINE, nw * sizeof(*sh.stats));
    unsigned naddr = worker_listen_count(cfg);
    int *fds = calloc((size_t)nw * naddr, sizeof(int));
    struct worker **w = calloc(nw, sizeof(*w));
    if (!sh.iptabs || !sh.stats || !fds || !w) {
        fprintf(stderr, "ringmta: out of memory\n");
        return 1;
    }
    memset(sh.iptabs, 0, nw * sizeof(*sh.iptabs));
    memset(sh.stats, 0, nw * sizeof(*sh.stats));
    if (worker_listen_open(cfg, nw, fds, (size_t)nw * naddr, err, sizeof(err)) != 0) {
        fprintf(stderr, "ringmta: %s\n", err);
        return 1;
    }
    rc = q_writer_start(q);
    if (rc != 0) {
        fprintf(stderr, "ringmta: cannot start the queue writer: %s\n", q_strerror(rc));
        return 1;
    }
    for (unsigned i = 0; i < nw; i++) {
        rc = worker_new(&w[i], &sh, i, fds + (size_t)i * naddr, naddr);
        if (rc != 0) {
            fprintf(stderr, "ringmta: cannot create worker %u: %s\n", i, strerror(-rc));
            return 1;
        }
    }
    if (recover_hand_out(w, nw, &rec) != 0) {
        fprintf(stderr, "ringmta: out of memory\n");
        return 1;
    }
    cpu_set_t cpus;
    int ncpu = 0, cpu_list[CPU_SETSIZE];
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0)
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &cpus))
                cpu_list[ncpu++] = c;
    for (unsigned i = 0; i < nw; i++) {
        rc = worker_start(w[i], ncpu ? cpu_list[i % (unsigned)ncpu] : -1);
        if (rc != 0) {
            if (rc == -ENOSYS || rc == -EPERM)
                fprintf(stderr,
                        "ringmta: io_uring is not available (%s): a seccomp profile "
                        "blocks io_uring_setup (containers: run with the profile "
                        "deploy/seccomp-ringmta.json) or sysctl kernel.io_uring_disabled "
                        "is set\n",
                        strerror(-rc));
            else
                fprintf(stderr, "ringmta: cannot start worker %u: io_uring: %s\n", i,
                        strerror(-rc));
            _exit(1); /* the others hold no acknowledged mail yet */
        }
    }
    char lst[512] = "";
    size_t off = 0;
    for (unsigned l = 0; l < cfg->nlisteners; l++)
        for (unsigned a = 0; a < cfg->listeners[l].naddrs && off < sizeof(lst); a++)
            off += (size_t)snprintf(lst + off, sizeof(lst) - off, "%s%s=%s", off ? "," : "",
                                    cfg->listeners[l].name, cfg->listeners[l].addrs[a].text);
    log_diag(LOG_INFO, "main", "-",
             "ringmta %s ready pid=%d workers=%u listen=%s queue=%s recovered=%zu", RINGMTA_VERSION,
             (int)getpid(), nw, lst, cfg->queue_dir, rec.n);
    free(rec.v);

    int exit_code = signal_loop(w, nw, &sh);
    for (unsigned i = 0; i < nw; i++)
        worker_join(w[i]);
    q_writer_stop(q);
    print_stats(q, &sh);
    for (unsigned i = 0; i < nw; i++)
        worker_free(w[i]);
    q_close(q);
    log_diag(LOG_INFO, "main", "-", "stopped");
    free(w);
    free(fds);
    free(sh.iptabs);
    free(sh.stats);
    if (dlog > STDERR_FILENO)
        close(dlog);
    return exit_code;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool check = false;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "--check") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("ringmta %s\n", RINGMTA_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            usage(stderr);
            return 2;
        } else {
            break; /* a subcommand */
        }
    }
    if (i < argc && strcmp(argv[i], "passwd") == 0) /* needs no configuration */
        return passwd_main(argc - i - 1, argv + i + 1);
    static struct cfg cfg;
    char err[512];
    cfg_defaults(&cfg);
    if (path ? cfg_load(&cfg, path, err, sizeof(err)) : cfg_finish(&cfg, err, sizeof(err))) {
        fprintf(stderr, "ringmta: %s\n", err);
        return 2;
    }
    if (i < argc && strcmp(argv[i], "queue") == 0)
        return qtool_main(&cfg, argc - i - 1, argv + i + 1);
    if (i < argc) {
        usage(stderr);
        return 2;
    }
    if (check) {
        printf("ringmta: %s: configuration ok\n", cfg.path);
        return 0;
    }
    return run_daemon(&cfg);
}
