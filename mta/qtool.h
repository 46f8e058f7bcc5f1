/* mta/qtool.h: `ringmta queue ...`: read the queue of a running or stopped
 * daemon (read-only LMDB transactions; never takes the writer's place). */
#ifndef QTOOL_H
#define QTOOL_H

#include "cfg.h"

/* Runs "queue list|count|show ID...|cat ID...". Returns the process exit code:
 * 0, 1 (a message not found or a queue error), 2 (usage). */
int qtool_main(const struct cfg *cfg, int argc, char **argv);

#endif /* QTOOL_H */
