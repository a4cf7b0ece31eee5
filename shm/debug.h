/* debug: HEAPD_DEBUG builds (cmake -DHEAPD_DEBUG=ON, `make debug`) check the
 * shared protocol's rules where they are applied: legal span-state moves at
 * every publish, "the object was FREE" when its owner allocates it, and the
 * daemon's invariants from its timer. A failed check prints what broke and
 * aborts: these builds exist to stop at the first broken rule. Release builds
 * compile every check away. */
#ifndef HEAPD_SHM_DEBUG_H
#define HEAPD_SHM_DEBUG_H

#ifndef HEAPD_DEBUG
#define HEAPD_DEBUG 0
#endif

#if HEAPD_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define HD_DEBUG_CHECK(cond, ...)                                                                  \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "heapd: HEAPD_DEBUG check failed at %s:%d: ", __FILE__, __LINE__);     \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#else
#define HD_DEBUG_CHECK(cond, ...) ((void)sizeof(!(cond)))   /* names its variables, runs nothing */
#endif

#endif
