/* size: byte sizes written exactly as Go's GOMEMLIMIT takes them, for heapd
 * (--size, --memory-limit, --hard-limit) and heapctl (limit):
 *   a bare number is bytes; the suffixes are B, KiB, MiB, GiB, TiB (powers of
 *   1024, case as written); `off` means no limit (limits only).
 * Anything else (1G, 1GB, 1g, 1.5GiB, " 1GiB", -1) is rejected: the caller
 * prints HD_SIZE_FORMS so the user sees what is accepted. */
#ifndef HEAPD_SHM_SIZE_H
#define HEAPD_SHM_SIZE_H
#include <stdint.h>

#define HD_SIZE_FORMS "give bytes, or a number with a suffix B, KiB, MiB, GiB or TiB (like GOMEMLIMIT: 512MiB, 64GiB)"
#define HD_LIMIT_FORMS HD_SIZE_FORMS ", or off for no limit"

/* ^[0-9]+(B|KiB|MiB|GiB|TiB)?$ without overflow: 0 and *out, or -1. */
int hd_parse_size(const char *s, uint64_t *out);
/* A limit: a size as above, or "off" (*out = 0: no limit). 0 or -1. */
int hd_parse_limit(const char *s, uint64_t *out);

#endif
