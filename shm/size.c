/* size.c: byte sizes as GOMEMLIMIT writes them ("512MiB", "64GiB", "4096"). */
#include <ctype.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "segment.h"

int hd_parse_size(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    uint64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        unsigned d = (unsigned)(*s++ - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    static const struct { const char *suffix; unsigned shift; } units[] = {
        {"", 0},     {"B", 0},    {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
        {"K", 10},   {"M", 20},   {"G", 30},   {"T", 40},
        {"KB", 10},  {"MB", 20},  {"GB", 30},  {"TB", 40},
    };
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(s, units[i].suffix) != 0)
            continue;
        if (units[i].shift && v > (UINT64_MAX >> units[i].shift))
            return -1;
        *out = v << units[i].shift;
        return 0;
    }
    return -1;
}
