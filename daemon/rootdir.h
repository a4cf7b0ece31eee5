/* rootdir: the daemon's side of the named roots (shm/roots.h has the table
 * and its seqlock; clients read it without asking us).
 *
 * Owns every write to the roots directory in the meta memfd (loop thread
 * only) and the rules a RootUpdate must pass:
 *  - name: 1..HD_ROOT_NAME_MAX bytes (EINVAL empty, ENAMETOOLONG longer),
 *    printable ASCII (EINVAL otherwise: names show up in heapctl roots);
 *  - offset: HD_NULL_OFFSET (remove the name), or the start of a live heap
 *    object (shm/live.h; EINVAL otherwise). Checked when the name is set
 *    only: a root names a pointer, and freeing the object leaves it dangling;
 *  - set: creates or replaces; ENOSPC when HD_MAX_ROOTS names exist;
 *  - delete (set to HD_NULL_OFFSET without cas): ENOENT when absent;
 *  - cas: expected HD_NULL_OFFSET means "absent"; EAGAIN when the current
 *    value differs, ENOENT when expected is an offset and the name is absent.
 */
#ifndef HEAPD_DAEMON_ROOTDIR_H
#define HEAPD_DAEMON_ROOTDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "roots.h"      /* shm/roots.h: the table */

typedef struct daemon daemon_t;

/* Commit the directory and mark every entry empty. 0 or -errno. */
int roots_init(daemon_t *d);

/* Apply one RootUpdate (see above). 0, or -errno with a message in err. */
int roots_update(daemon_t *d, const char *name, uint64_t offset, bool cas, uint64_t expected, char *err,
                 size_t errlen);

/* One named root, for heapctl roots. */
typedef struct roots_entry {
    char name[64];
    uint64_t offset;
} roots_entry_t;
/* The roots that exist, sorted by name, into out (room for HD_MAX_ROOTS).
 * Returns how many. */
size_t roots_list(const daemon_t *d, roots_entry_t *out);

#endif
