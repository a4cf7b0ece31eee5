/* lockorder.c: the held-rank stack behind the lock-order checker. See
 * lockorder.h for the table and the rule. */
#define _GNU_SOURCE
#include "lockorder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static __thread struct {
    unsigned rank[HD_LOCKORDER_DEPTH];
    const char *name[HD_LOCKORDER_DEPTH];
    unsigned n;
} lo_held __attribute__((tls_model("initial-exec")));

/* One line on stderr without stdio's locks or malloc, then abort. */
static void lo_die(const char *a, unsigned ra, const char *b, unsigned rb)
{
    char line[256];
    int n = snprintf(line, sizeof line,
                     "libheapd: lock order violated: took %s (rank %u) while holding %s (rank %u); "
                     "see client/lockorder.h\n", a, ra, b, rb);
    if (n > 0)
        (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    abort();
}

void hd_lockorder_taken(unsigned rank, const char *name)
{
    if (lo_held.n && lo_held.rank[lo_held.n - 1] >= rank)
        lo_die(name, rank, lo_held.name[lo_held.n - 1], lo_held.rank[lo_held.n - 1]);
    if (lo_held.n == HD_LOCKORDER_DEPTH)
        lo_die(name, rank, "too many locks", HD_LOCKORDER_DEPTH);
    lo_held.rank[lo_held.n] = rank;
    lo_held.name[lo_held.n] = name;
    lo_held.n++;
}

void hd_lockorder_dropped(unsigned rank)
{
    for (unsigned i = lo_held.n; i-- > 0;) {
        if (lo_held.rank[i] == rank) {
            memmove(&lo_held.rank[i], &lo_held.rank[i + 1], (lo_held.n - i - 1) * sizeof lo_held.rank[0]);
            memmove(&lo_held.name[i], &lo_held.name[i + 1], (lo_held.n - i - 1) * sizeof lo_held.name[0]);
            lo_held.n--;
            return;
        }
    }
}

void hd_lockorder_reset(void) { lo_held.n = 0; }

unsigned hd_lockorder_depth(void) { return lo_held.n; }
