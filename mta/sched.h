/* mta/sched.h: a worker's delivery schedule.
 *
 * The queue's sched database holds every message's next attempt time. A
 * worker keeps in memory only what it owns and what is due soon: a min-heap
 * of (due_ms, id) for entries due before `horizon_ms`, plus a set of the ids
 * it has taken out for delivery (in flight). sched_refill() moves the horizon
 * forward one window at a time, scanning the database from the old horizon;
 * when the heap is full it stops early (horizon = the first entry left out),
 * so memory stays bounded however large the backlog (issue 4).
 *
 * Ownership (shared-nothing, DESIGN.md "Threads"): a message belongs to
 * worker (id's worker field) % nworkers, so mail accepted by worker K is
 * delivered by K, and after a restart with another worker count the old
 * messages spread over the new workers.
 *
 * One struct sched per worker, used by that worker's thread only.
 */
#ifndef SCHED_H
#define SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/rm.h"
#include "../queue/q.h"

#define SCHED_WINDOW_MS_DEFAULT 60000u /* how far ahead a refill looks */
#define SCHED_CAP_DEFAULT       65536u /* heap entries per worker */

struct sched_entry {
    uint64_t due_ms;
    struct q_id id;
};

struct sched {
    struct sched_entry *heap; /* owned; min-heap on (due_ms, id) */
    uint32_t n, cap;
    struct q_id *taken;          /* owned; open-addressing set of ids in the heap or in flight */
    uint8_t *taken_used;         /* 0 empty, 1 used, 2 deleted */
    uint32_t taken_n, taken_cap; /* taken_cap = 2 * (cap + inflight_cap), a power of two */
    uint32_t inflight_cap;
    uint64_t horizon_ms; /* every owned entry due before it is in the heap or in flight */
    uint64_t window_ms;
    unsigned worker, nworkers;
};

/* cap: heap entries; inflight_cap: messages out for delivery at once. Returns 0 or -ENOMEM. */
RM_MUST_CHECK int sched_init(struct sched *s, uint32_t cap, uint32_t inflight_cap, unsigned worker,
                             unsigned nworkers, uint64_t window_ms);
void sched_fini(struct sched *s);

/* True when this worker delivers the message with this id. */
bool sched_owns(const struct sched *s, const struct q_id *id);

/* A message (owned) is due at due_ms: a new one just stored, or one
 * rescheduled after an attempt (call sched_done() first). Kept in memory
 * when due before the horizon; otherwise a later refill finds it. When the
 * heap is full, the horizon moves back to due_ms instead. */
void sched_add(struct sched *s, uint64_t due_ms, const struct q_id *id);

/* Takes the earliest entry due at or before now_ms; it stays "in flight"
 * (never loaded twice) until sched_done(). Returns false when none is due. */
bool sched_pop_due(struct sched *s, uint64_t now_ms, struct sched_entry *out);

/* The message taken with sched_pop_due is finished: call it only once the
 * queue has COMMITTED its delete or update (then sched_add the new due
 * time). Earlier, a refill could pass the new due time before the commit
 * and never see the entry. */
void sched_done(struct sched *s, const struct q_id *id);

/* Earliest due time in memory, or UINT64_MAX. */
uint64_t sched_next_due(const struct sched *s);

/* Scans the queue from the horizon up to now_ms + window for owned entries.
 * Reads LMDB (a short read transaction). Returns entries added, or a
 * negative q error. */
RM_MUST_CHECK int sched_refill(struct sched *s, struct q *q, uint64_t now_ms);

/* Messages in flight (popped, not done). */
uint32_t sched_inflight(const struct sched *s);

#endif /* SCHED_H */
