/* paths.c: default socket paths and the clients' search. See paths.h. */
#include "paths.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *env(const char *name)
{
    const char *e = getenv(name);
    return e && *e ? e : NULL;
}

static int put(char *buf, size_t len, const char *a, const char *b, const char *suffix)
{
    int n = snprintf(buf, len, "%s%s%s", a, b, suffix);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

static int tmp_dir_socket(char *buf, size_t len, const char *suffix)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/heapd-%u/", (unsigned)geteuid());
    return put(buf, len, dir, HD_SOCKET_NAME, suffix);
}

unsigned hd_socket_candidates(const char *suffix, char out[][HD_PATH_MAX])
{
    unsigned n = 0;
    const char *e;
    if ((e = env("HEAPD_SOCKET")) && put(out[n], HD_PATH_MAX, e, "", suffix) == 0)
        n++;
    if ((e = env("XDG_RUNTIME_DIR")) && put(out[n], HD_PATH_MAX, e, "/" HD_SOCKET_NAME, suffix) == 0)
        n++;
    if (put(out[n], HD_PATH_MAX, HD_SYSTEM_SOCKET_DIR "/", HD_SOCKET_NAME, suffix) == 0)
        n++;
    if (tmp_dir_socket(out[n], HD_PATH_MAX, suffix) == 0)
        n++;
    return n;
}

int hd_find_socket(const char *suffix, char *buf, size_t len)
{
    char cand[HD_MAX_CANDIDATES][HD_PATH_MAX];
    unsigned n = hd_socket_candidates(suffix, cand);
    if (n == 0)
        return -1;
    unsigned pick = 0;
    for (unsigned i = 0; i < n; i++) {
        struct stat st;
        if (stat(cand[i], &st) == 0 && S_ISSOCK(st.st_mode)) {
            pick = i;
            break;
        }
    }
    return put(buf, len, cand[pick], "", "");
}

int hd_default_socket(char *buf, size_t len)
{
    return hd_find_socket("", buf, len);
}

int hd_daemon_socket(char *buf, size_t len, int *own_dir)
{
    const char *e;
    *own_dir = 0;
    if ((e = env("HEAPD_SOCKET")))
        return put(buf, len, e, "", "");
    if ((e = env("XDG_RUNTIME_DIR")))
        return put(buf, len, e, "/" HD_SOCKET_NAME, "");
    *own_dir = 1;
    if (geteuid() == 0)
        return put(buf, len, HD_SYSTEM_SOCKET_DIR "/", HD_SOCKET_NAME, "");
    return tmp_dir_socket(buf, len, "");
}
