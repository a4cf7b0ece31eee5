/* paths.c: where the daemon listens and clients connect by default. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "segment.h"

int hd_default_socket(char *buf, size_t len)
{
    const char *e = getenv("HEAPD_SOCKET");
    int n;
    if (e && *e)
        n = snprintf(buf, len, "%s", e);
    else if ((e = getenv("XDG_RUNTIME_DIR")) && *e)
        n = snprintf(buf, len, "%s/heapd.sock", e);
    else
        n = snprintf(buf, len, "/tmp/heapd-%u/heapd.sock", (unsigned)getuid());
    return n < 0 || (size_t)n >= len ? -1 : 0;
}
