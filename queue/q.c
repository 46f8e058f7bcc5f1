/* queue/q.c: the LMDB environment, the envelope record and the readers (see q.h).
 *
 * The writer thread and its rings are in writer.c; q_internal.h holds struct q.
 */
#include "q.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#include "q_internal.h"

static const char *const q_db_names[Q_DB_COUNT] = {"msg", "env", "sched"};

const char *q_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case Q_ERR_MAP_FULL:
        return "queue map full";
    case Q_ERR_IO:
        return "queue I/O error";
    case Q_ERR_NOT_FOUND:
        return "no such message";
    case Q_ERR_CORRUPT:
        return "corrupt queue record";
    case Q_ERR_RANGE:
        return "capacity too small";
    case Q_ERR_STOPPED:
        return "queue writer stopped";
    default:
        break;
    }
    /* strerrordesc_np, unlike strerror, returns a static string: safe from any thread. */
    const char *s = err < 0 && err > -4096 ? strerrordesc_np(-err) : NULL;
    return s ? s : "unknown error";
}

int q_lmdb_err(int rc)
{
    RM_ASSERT(rc != 0);
    if (rc == MDB_MAP_FULL)
        return Q_ERR_MAP_FULL;
    if (rc == MDB_NOTFOUND)
        return Q_ERR_NOT_FOUND;
    return Q_ERR_IO;
}

void q_sched_key(uint8_t key[Q_SCHED_KEY_BYTES], uint64_t due_ms, const struct q_id *id)
{
    rm_put_be64(key, due_ms);
    memcpy(key + 8, id->b, sizeof(id->b));
}

/* ---- envelope record -------------------------------------------------------
 *
 * Version 1, all integers little-endian, every string a u32 length then its bytes:
 *   u8 version, u8 ret, u32 flags, u32 attempts, u64 arrival_ms, u64 next_attempt_ms,
 *   u64 size, u32 rcpt_count (Q_ENV_FIXED_BYTES so far),
 *   str sender, envid, auth_user, client, helo, listener,
 *   rcpt_count times: u32 attempts, u16 last_code, u8 notify, u8 state,
 *                     str addr, orcpt, last_reply.
 * A record is exactly that long: trailing bytes make it corrupt. A new field means a new
 * version; q_env_decode rejects versions it does not know.
 */

static size_t q_str_bytes(struct rm_span s)
{
    RM_ASSERT(s.p != NULL || s.len == 0);
    RM_ASSERT(s.len <= Q_ENV_BYTES_MAX);
    return 4 + s.len;
}

size_t q_env_encoded_size(const struct q_env *e)
{
    RM_ASSERT(e->rcpt_count >= 1);
    RM_ASSERT(e->rcpt_count <= Q_RCPT_MAX);
    RM_ASSERT(e->rcpts != NULL);
    size_t n = Q_ENV_FIXED_BYTES + q_str_bytes(e->sender) + q_str_bytes(e->envid) +
               q_str_bytes(e->auth_user) + q_str_bytes(e->client) + q_str_bytes(e->helo) +
               q_str_bytes(e->listener);
    for (uint32_t i = 0; i < e->rcpt_count; i++) {
        const struct q_rcpt *r = &e->rcpts[i];
        n += 8 + q_str_bytes(r->addr) + q_str_bytes(r->orcpt) + q_str_bytes(r->last_reply);
    }
    return n;
}

struct q_enc {
    uint8_t *p;
    size_t off;
};

static void q_put_le(struct q_enc *w, uint64_t v, size_t bytes)
{
    for (size_t i = 0; i < bytes; i++, v >>= 8)
        w->p[w->off + i] = (uint8_t)v;
    w->off += bytes;
}

static void q_put_str(struct q_enc *w, struct rm_span s)
{
    q_put_le(w, s.len, 4);
    if (s.len > 0)
        memcpy(w->p + w->off, s.p, s.len);
    w->off += s.len;
}

int64_t q_env_encode(const struct q_env *e, uint8_t *out, size_t cap)
{
    size_t need = q_env_encoded_size(e);
    if (need > cap)
        return Q_ERR_RANGE;
    RM_ASSERT(e->ret <= Q_RET_HDRS);
    struct q_enc w = {out, 0};
    q_put_le(&w, Q_ENV_VERSION, 1);
    q_put_le(&w, e->ret, 1);
    q_put_le(&w, e->flags, 4);
    q_put_le(&w, e->attempts, 4);
    q_put_le(&w, e->arrival_ms, 8);
    q_put_le(&w, e->next_attempt_ms, 8);
    q_put_le(&w, e->size, 8);
    q_put_le(&w, e->rcpt_count, 4);
    RM_ASSERT(w.off == Q_ENV_FIXED_BYTES);
    q_put_str(&w, e->sender);
    q_put_str(&w, e->envid);
    q_put_str(&w, e->auth_user);
    q_put_str(&w, e->client);
    q_put_str(&w, e->helo);
    q_put_str(&w, e->listener);
    for (uint32_t i = 0; i < e->rcpt_count; i++) {
        const struct q_rcpt *r = &e->rcpts[i];
        RM_ASSERT(r->state <= Q_RCPT_EXPIRED);
        q_put_le(&w, r->attempts, 4);
        q_put_le(&w, r->last_code, 2);
        q_put_le(&w, r->notify, 1);
        q_put_le(&w, r->state, 1);
        q_put_str(&w, r->addr);
        q_put_str(&w, r->orcpt);
        q_put_str(&w, r->last_reply);
    }
    RM_ASSERT(w.off == need);
    return (int64_t)need;
}

/* A bounds-checked reader: every q_get_* fails, reading nothing, when fewer bytes remain
 * than it needs. Invariant: off <= len. */
struct q_dec {
    const uint8_t *p;
    size_t len;
    size_t off;
};

static bool q_get_le(struct q_dec *d, size_t bytes, uint64_t *v)
{
    RM_ASSERT(d->off <= d->len);
    if (d->len - d->off < bytes)
        return false;
    uint64_t x = 0;
    for (size_t i = bytes; i > 0; i--)
        x = x << 8 | d->p[d->off + i - 1];
    d->off += bytes;
    *v = x;
    return true;
}

static bool q_get_str(struct q_dec *d, struct rm_span *s)
{
    uint64_t n;
    if (!q_get_le(d, 4, &n) || d->len - d->off < n)
        return false;
    *s = rm_span_make(d->p + d->off, (size_t)n);
    d->off += (size_t)n;
    return true;
}

static bool q_get_rcpt(struct q_dec *d, struct q_rcpt *r)
{
    uint64_t attempts;
    uint64_t code;
    uint64_t notify;
    uint64_t state;
    if (!q_get_le(d, 4, &attempts) || !q_get_le(d, 2, &code) || !q_get_le(d, 1, &notify) ||
        !q_get_le(d, 1, &state) || state > Q_RCPT_EXPIRED)
        return false;
    r->attempts = (uint32_t)attempts;
    r->last_code = (uint16_t)code;
    r->notify = (uint8_t)notify;
    r->state = (uint8_t)state;
    return q_get_str(d, &r->addr) && q_get_str(d, &r->orcpt) && q_get_str(d, &r->last_reply);
}

static bool q_get_head(struct q_dec *d, struct q_env *e)
{
    uint64_t version;
    uint64_t ret;
    uint64_t flags;
    uint64_t attempts;
    uint64_t count;
    if (!q_get_le(d, 1, &version) || version != Q_ENV_VERSION || !q_get_le(d, 1, &ret) ||
        ret > Q_RET_HDRS || !q_get_le(d, 4, &flags) || !q_get_le(d, 4, &attempts) ||
        !q_get_le(d, 8, &e->arrival_ms) || !q_get_le(d, 8, &e->next_attempt_ms) ||
        !q_get_le(d, 8, &e->size) || !q_get_le(d, 4, &count))
        return false;
    e->ret = (uint8_t)ret;
    e->flags = (uint32_t)flags;
    e->attempts = (uint32_t)attempts;
    e->rcpt_count = (uint32_t)count;
    return q_get_str(d, &e->sender) && q_get_str(d, &e->envid) && q_get_str(d, &e->auth_user) &&
           q_get_str(d, &e->client) && q_get_str(d, &e->helo) && q_get_str(d, &e->listener);
}

int q_env_decode(struct q_env *e, const uint8_t *in, size_t len, struct q_rcpt *rcpts,
                 size_t rcpt_cap)
{
    RM_ASSERT(in != NULL || len == 0);
    if (len > Q_ENV_BYTES_MAX)
        return Q_ERR_CORRUPT;
    struct q_dec d = {in, len, 0};
    struct q_env x;
    memset(&x, 0, sizeof(x));
    if (!q_get_head(&d, &x))
        return Q_ERR_CORRUPT;
    /* The count must fit what is left before we trust it as a loop bound. */
    if (x.rcpt_count < 1 || x.rcpt_count > Q_RCPT_MAX ||
        x.rcpt_count > (d.len - d.off) / Q_RCPT_MIN_BYTES)
        return Q_ERR_CORRUPT;
    /* Recipients past rcpt_cap are still checked, so that a record that is both corrupt and
     * too big for rcpts[] is reported as corrupt. */
    for (uint32_t i = 0; i < x.rcpt_count; i++) {
        struct q_rcpt tmp;
        if (!q_get_rcpt(&d, i < rcpt_cap ? &rcpts[i] : &tmp))
            return Q_ERR_CORRUPT;
    }
    if (d.off != d.len)
        return Q_ERR_CORRUPT;
    if (x.rcpt_count > rcpt_cap)
        return Q_ERR_RANGE;
    x.rcpts = rcpts;
    *e = x;
    return 0;
}

/* ---- the environment -------------------------------------------------------
 *
 * LMDB forbids opening one environment twice in a process (lmdb.h, "Caveats"): the second
 * mdb_env_open takes the lock file's fcntl lock as if it were alone (POSIX locks do not
 * conflict within a process) and re-initialises the shared lock region, mutexes and reader
 * table included, under the first handle; closing either handle drops the other's locks.
 * So q_open refuses, with -EBUSY, a directory this process already has open. The key is
 * the directory's device and inode, which symlinks and bind mounts cannot disguise.
 * XXX: a child forked after q_open inherits the registry but not the locks; it must not
 * use the queue (LMDB forbids that too) and should exec before opening it.
 */
static pthread_mutex_t q_dirs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    dev_t dev;
    ino_t ino;
    bool used;
} q_dirs[Q_OPEN_ENVS_MAX]; /* guarded by q_dirs_lock */

static int q_dir_claim(dev_t dev, ino_t ino)
{
    int rc = -EMFILE;
    size_t free_slot = Q_OPEN_ENVS_MAX;
    (void)pthread_mutex_lock(&q_dirs_lock);
    for (size_t i = 0; i < Q_OPEN_ENVS_MAX; i++) {
        if (q_dirs[i].used && q_dirs[i].dev == dev && q_dirs[i].ino == ino) {
            rc = -EBUSY;
            goto out_unlock;
        }
        if (!q_dirs[i].used && free_slot == Q_OPEN_ENVS_MAX)
            free_slot = i;
    }
    if (free_slot < Q_OPEN_ENVS_MAX) {
        q_dirs[free_slot].dev = dev;
        q_dirs[free_slot].ino = ino;
        q_dirs[free_slot].used = true;
        rc = 0;
    }
out_unlock:
    (void)pthread_mutex_unlock(&q_dirs_lock);
    return rc;
}

static void q_dir_release(dev_t dev, ino_t ino)
{
    (void)pthread_mutex_lock(&q_dirs_lock);
    for (size_t i = 0; i < Q_OPEN_ENVS_MAX; i++) {
        if (q_dirs[i].used && q_dirs[i].dev == dev && q_dirs[i].ino == ino) {
            q_dirs[i].used = false;
            break;
        }
    }
    (void)pthread_mutex_unlock(&q_dirs_lock);
}

/* Maps a code from mdb_env_* or mdb_dbi_open: errno values stay -errno (ENOENT, EACCES
 * say more than Q_ERR_IO), MDB_INVALID and friends mean the files are not a queue. */
static int q_env_err(int rc)
{
    RM_ASSERT(rc != 0);
    if (rc > 0)
        return -rc;
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
        rc == MDB_INCOMPATIBLE)
        return Q_ERR_CORRUPT;
    return q_lmdb_err(rc);
}

/* Opens the named databases: creates them in a writable open; in a RDONLY open a missing
 * one is remembered as absent, so readers report it empty. The txn is committed, not
 * aborted, because LMDB keeps handles opened in a txn only when it commits. */
static int q_open_dbs(struct q *q)
{
    bool rdonly = (q->flags & Q_OPEN_RDONLY) != 0;
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->env, NULL, rdonly ? MDB_RDONLY : 0, &txn);
    if (rc != 0)
        return q_env_err(rc);
    for (int i = 0; i < Q_DB_COUNT; i++) {
        rc = mdb_dbi_open(txn, q_db_names[i], rdonly ? 0 : MDB_CREATE, &q->dbi[i]);
        if (rc == MDB_NOTFOUND && rdonly)
            continue;
        if (rc != 0) {
            mdb_txn_abort(txn);
            return q_env_err(rc);
        }
        q->dbi_ok[i] = true;
    }
    rc = mdb_txn_commit(txn);
    return rc == 0 ? 0 : q_env_err(rc);
}

static int q_open_env(struct q *q, const char *dir, uint64_t map_size)
{
    int rc = mdb_env_create(&q->env);
    if (rc != 0)
        return q_env_err(rc);
    unsigned env_flags = MDB_NOTLS; /* default sync: see q.h and ../shared/TESTING.md */
    if (q->flags & Q_OPEN_RDONLY)
        env_flags |= MDB_RDONLY;
    rc = mdb_env_set_maxdbs(q->env, Q_DBS_MAX);
    /* A reader maps at least what the writer configured (map size 0: the size in the
     * meta page). With a smaller map than the file grows to, its txns would fail with
     * MDB_MAP_RESIZED once the daemon writes past it. */
    if (rc == 0)
        rc = mdb_env_set_mapsize(q->env, (q->flags & Q_OPEN_RDONLY) ? 0 : (size_t)map_size);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(q->env, Q_READERS_MAX);
    if (rc == 0)
        rc = mdb_env_open(q->env, dir, env_flags, 0600);
    MDB_envinfo ei;
    if (rc == 0 && (q->flags & Q_OPEN_RDONLY) && mdb_env_info(q->env, &ei) == 0 &&
        ei.me_mapsize < map_size)
        rc = mdb_env_set_mapsize(q->env, (size_t)map_size); /* no txn is open yet */
    if (rc != 0)
        goto out_close;
    rc = q_open_dbs(q);
    if (rc != 0)
        goto out_close_mapped;
    return 0;
out_close:
    rc = q_env_err(rc);
out_close_mapped:
    mdb_env_close(q->env);
    q->env = NULL;
    return rc;
}

int q_open(struct q **out, const char *dir, uint64_t map_size, unsigned workers, unsigned flags)
{
    RM_ASSERT(out != NULL);
    RM_ASSERT(dir != NULL);
    *out = NULL;
    bool rdonly = (flags & Q_OPEN_RDONLY) != 0;
    if ((flags & ~Q_OPEN_RDONLY) != 0 || map_size < Q_MAP_SIZE_MIN || map_size > SIZE_MAX ||
        workers > Q_WORKERS_MAX || (rdonly && workers != 0))
        return -EINVAL;
    struct stat st;
    if (stat(dir, &st) != 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    int rc = q_dir_claim(st.st_dev, st.st_ino);
    if (rc != 0)
        return rc;
    /* aligned_alloc: struct q has cache-line aligned atomics, more than malloc promises. */
    size_t bytes = (sizeof(struct q) + RM_CACHELINE - 1) / RM_CACHELINE * RM_CACHELINE;
    struct q *q = aligned_alloc(RM_CACHELINE, bytes);
    if (q == NULL) {
        rc = -ENOMEM;
        goto out_release;
    }
    memset(q, 0, sizeof(*q));
    q->flags = flags;
    q->workers = workers;
    q->dir_dev = st.st_dev;
    q->dir_ino = st.st_ino;
    q->wake_fd = -1;
    rc = q_open_env(q, dir, map_size);
    if (rc != 0)
        goto out_free;
    if (!rdonly) {
        rc = q_writer_init(q);
        if (rc != 0)
            goto out_env;
    }
    *out = q;
    return 0;
out_env:
    mdb_env_close(q->env);
out_free:
    free(q);
out_release:
    q_dir_release(st.st_dev, st.st_ino);
    return rc;
}

void q_close(struct q *q)
{
    if (q == NULL)
        return;
    RM_ASSERT(!q->running);
    if (!(q->flags & Q_OPEN_RDONLY))
        q_writer_fini(q);
    mdb_env_close(q->env);
    q_dir_release(q->dir_dev, q->dir_ino);
    free(q);
}

/* ---- readers ------------------------------------------------------------- */

struct q_read {
    struct q *q;  /* borrowed: outlives the read */
    MDB_txn *txn; /* owned: a MDB_RDONLY txn, ended by q_read_end */
};

int q_read_begin(struct q *q, struct q_read **out)
{
    RM_ASSERT(q != NULL);
    RM_ASSERT(out != NULL);
    *out = NULL;
    struct q_read *r = malloc(sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    r->q = q;
    int rc = mdb_txn_begin(q->env, NULL, MDB_RDONLY, &r->txn);
    if (rc != 0) {
        free(r);
        return rc == ENOMEM ? -ENOMEM : Q_ERR_IO;
    }
    *out = r;
    return 0;
}

void q_read_end(struct q_read *r)
{
    if (r == NULL)
        return;
    mdb_txn_abort(r->txn);
    free(r);
}

static int q_read_get(struct q_read *r, enum q_db db, const struct q_id *id, struct rm_span *out)
{
    RM_ASSERT(r != NULL);
    RM_ASSERT(id != NULL);
    if (!r->q->dbi_ok[db])
        return Q_ERR_NOT_FOUND;
    struct q_id k = *id; /* MDB_val wants a mutable pointer; LMDB does not write keys */
    MDB_val key = {sizeof(k.b), k.b};
    MDB_val val;
    int rc = mdb_get(r->txn, r->q->dbi[db], &key, &val);
    if (rc != 0)
        return q_lmdb_err(rc);
    *out = rm_span_make(val.mv_data, val.mv_size);
    return 0;
}

int q_read_msg(struct q_read *r, const struct q_id *id, struct rm_span *out)
{
    return q_read_get(r, Q_DB_MSG, id, out);
}

int q_read_env(struct q_read *r, const struct q_id *id, struct rm_span *out)
{
    return q_read_get(r, Q_DB_ENV, id, out);
}

/* Walks sched in key order; bounded by the entry count of the snapshot. */
static int q_scan_txn(struct q *q, MDB_txn *txn, uint64_t from_due_ms, q_sched_cb *cb, void *ctx)
{
    MDB_stat ms;
    int rc = mdb_stat(txn, q->dbi[Q_DB_SCHED], &ms);
    if (rc != 0)
        return q_lmdb_err(rc);
    MDB_cursor *cur;
    rc = mdb_cursor_open(txn, q->dbi[Q_DB_SCHED], &cur);
    if (rc != 0)
        return q_lmdb_err(rc);
    uint8_t start[Q_SCHED_KEY_BYTES] = {0};
    rm_put_be64(start, from_due_ms);
    MDB_val key = {sizeof(start), start};
    MDB_val val;
    /* MDB_SET_RANGE: the first key >= (from_due_ms, id 0). */
    MDB_cursor_op op = from_due_ms ? MDB_SET_RANGE : MDB_FIRST;
    for (size_t i = 0; i <= ms.ms_entries; i++, op = MDB_NEXT) {
        rc = mdb_cursor_get(cur, &key, &val, op);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            goto out_cursor;
        }
        if (rc != 0) {
            rc = q_lmdb_err(rc);
            goto out_cursor;
        }
        if (key.mv_size != Q_SCHED_KEY_BYTES || val.mv_size != 0) {
            rc = Q_ERR_CORRUPT;
            goto out_cursor;
        }
        struct q_id id;
        memcpy(id.b, (const uint8_t *)key.mv_data + 8, sizeof(id.b));
        rc = cb(ctx, &id, rm_get_be64(key.mv_data));
        if (rc != 0)
            goto out_cursor;
    }
    rc = Q_ERR_CORRUPT; /* more entries than the snapshot counts */
out_cursor:
    mdb_cursor_close(cur);
    return rc;
}

int q_scan_sched(struct q *q, q_sched_cb *cb, void *ctx)
{
    return q_scan_sched_from(q, 0, cb, ctx);
}

int q_scan_sched_from(struct q *q, uint64_t from_due_ms, q_sched_cb *cb, void *ctx)
{
    RM_ASSERT(q != NULL);
    RM_ASSERT(cb != NULL);
    if (!q->dbi_ok[Q_DB_SCHED])
        return 0;
    struct q_read *r;
    int rc = q_read_begin(q, &r);
    if (rc != 0)
        return rc;
    rc = q_scan_txn(q, r->txn, from_due_ms, cb, ctx);
    q_read_end(r);
    return rc;
}

int q_info_get(struct q *q, struct q_info *out)
{
    RM_ASSERT(q != NULL);
    RM_ASSERT(out != NULL);
    struct q_read *r;
    int rc = q_read_begin(q, &r);
    if (rc != 0)
        return rc;
    MDB_envinfo ei;
    MDB_stat es;
    MDB_stat ms = {0};
    rc = mdb_env_info(q->env, &ei);
    if (rc == 0)
        rc = mdb_env_stat(q->env, &es);
    if (rc == 0 && q->dbi_ok[Q_DB_ENV])
        rc = mdb_stat(r->txn, q->dbi[Q_DB_ENV], &ms);
    q_read_end(r);
    if (rc != 0)
        return q_lmdb_err(rc);
    out->messages = ms.ms_entries;
    out->map_size = ei.me_mapsize;
    out->map_used = ((uint64_t)ei.me_last_pgno + 1) * es.ms_psize;
    return 0;
}
