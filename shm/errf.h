/* errf: error messages into a caller's buffer (Redis anet style: functions
 * that can fail take `char *err, size_t errlen` and say what went wrong). */
#ifndef HEAPD_SHM_ERRF_H
#define HEAPD_SHM_ERRF_H
#include <stddef.h>

/* Format into err (if err and errlen are non-zero); always safe to call. */
void hd_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#endif
