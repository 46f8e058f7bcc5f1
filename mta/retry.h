/* mta/retry.h: the retry schedule for temporary delivery failures.
 *
 * Config (DESIGN.md "Life of a message", step 6):
 *   retry = 1m 5m 15m 30m 1h 2h   intervals after the 1st, 2nd, ... failed attempt;
 *                                 the last one repeats
 *   max_queue_lifetime = 5d       after arrival + this, the message expires (DSN)
 *
 * retry_sched_parse() turns the `retry` value into a fixed-size struct at
 * config load; retry_next_ms() is the pure function the delivery engine asks,
 * after every temporary failure, "when next, or is it over?".
 *
 * The lifetime rule (decided here, tested in test_dsn.c):
 * - The deadline is arrival_ms + lifetime_ms.
 * - A retry that would fall after the deadline is pulled back to exactly the
 *   deadline, so one last attempt always happens at the lifetime (as long as
 *   the failure happened before it). Without this a message with 2h intervals
 *   would expire up to 2h before max_queue_lifetime, after its last attempt
 *   fell just short of the deadline.
 * - Once a failure happens at or after the deadline, the message has expired.
 * - A message never attempted (attempts == 0) is due at once, unless it is
 *   already past its deadline (e.g. the daemon was down for longer than the
 *   lifetime): then it expires without an attempt. Exactly at the deadline it
 *   still gets its one attempt. So lifetime 0 means "try once" (Postfix's
 *   maximal_queue_lifetime = 0).
 *
 * Jitter: the caller passes a random 32-bit value (0 for none); the interval
 * grows by up to RETRY_JITTER_PCT percent of itself, in proportion to it, so a
 * backlog that failed together does not retry in lock step. The result is a
 * deterministic function of the arguments. Jitter never moves an attempt past
 * the deadline.
 *
 * Pure functions on caller memory: any thread, never allocate, log or block.
 */
#ifndef RETRY_H
#define RETRY_H

#include <stddef.h>
#include <stdint.h>

#include "../common/rm.h"

#define RETRY_STEPS_MAX           32u /* intervals in `retry`: a longer list is a mistake */
#define RETRY_INTERVAL_MAX_MS     (30ull * 86400 * 1000)  /* 30d: beyond any sane lifetime */
#define RETRY_SCHED_DEFAULT       "1m 5m 15m 30m 1h 2h"   /* DESIGN.md step 6 */
#define RETRY_LIFETIME_DEFAULT_MS (5ull * 86400 * 1000)   /* max_queue_lifetime, as Postfix */
#define RETRY_LIFETIME_MAX_MS     (100ull * 86400 * 1000) /* older is a stuck queue, not a retry */
#define RETRY_JITTER_PCT          10u                     /* at most +10% of the interval */
#define RETRY_EXPIRED             UINT64_MAX              /* retry_next_ms(): no more attempts */

static_assert(RETRY_INTERVAL_MAX_MS / 100 * RETRY_JITTER_PCT <= UINT32_MAX,
              "jitter math: max jitter * a 32-bit random value fits 64 bits");

/* A parsed `retry` value. Plain data: copy it freely. */
struct retry_sched {
    uint32_t count;                        /* intervals used, 1..RETRY_STEPS_MAX */
    uint64_t interval_ms[RETRY_STEPS_MAX]; /* each 1..RETRY_INTERVAL_MAX_MS */
};

/* Fills s with RETRY_SCHED_DEFAULT. */
void retry_sched_default(struct retry_sched *s);

/* Parses a NUL-terminated list of durations separated by spaces, tabs or
 * commas, each a decimal number with a unit: ms, s, m, h or d ("250ms",
 * "5m", "2h"). The unit is required: in a list of steps a bare "5" reads as
 * minutes as easily as seconds. Each interval is > 0 and <=
 * RETRY_INTERVAL_MAX_MS; there are 1..RETRY_STEPS_MAX of them; the order is
 * free (a shorter interval after a longer one is allowed).
 * Returns 0 and fills *out, or -EINVAL, leaves *out untouched and writes a
 * one-line message without the key name or position into err[0..err_len)
 * (e.g. `bad interval "5x": expected a number and a unit (ms, s, m, h, d)`),
 * which the config loader prefixes with "path:line: ". err may be NULL when
 * err_len is 0. */
RM_MUST_CHECK int retry_sched_parse(struct retry_sched *out, const char *s, char *err,
                                    size_t err_len);

/* The interval after the attempts-th failed attempt (attempts >= 1): entry
 * attempts-1, or the last entry once the list is used up. */
uint64_t retry_interval_ms(const struct retry_sched *s, uint32_t attempts);

/* When to try a message (or recipient) next, given its arrival time, the
 * attempts made so far, the time now (after the latest attempt failed), the
 * lifetime and a random value for jitter (0: none). Applies the rules at the
 * top of this file:
 *   attempts == 0:  now_ms, or RETRY_EXPIRED if now_ms > the deadline;
 *   otherwise:      now_ms + interval + jitter if that is <= the deadline,
 *                   else the deadline itself if now_ms < the deadline,
 *                   else RETRY_EXPIRED.
 * Saturating arithmetic: no argument values overflow (attempts up to
 * UINT32_MAX, times up to UINT64_MAX); a time is never RETRY_EXPIRED by
 * accident. */
uint64_t retry_next_ms(const struct retry_sched *s, uint64_t arrival_ms, uint32_t attempts,
                       uint64_t now_ms, uint64_t lifetime_ms, uint32_t rnd);

#endif /* RETRY_H */
