/* sdnotify.c: systemd readiness and socket activation by hand. See sdnotify.h. */
#define _GNU_SOURCE
#include "sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "errf.h"

int sd_notify_send(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path))
        return -EINVAL;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = 0;                     /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    ssize_t w = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    int e = errno;
    close(fd);
    return w < 0 ? -e : 0;
}

static void unset_listen_env(void)
{
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
}

int sd_listen_fds_take(sd_fd_t *out, char *err, size_t errlen)
{
    const char *spid = getenv("LISTEN_PID"), *sfds = getenv("LISTEN_FDS");
    if (!spid || !sfds)
        return 0;
    char *end;
    errno = 0;
    long pid = strtol(spid, &end, 10);
    if (errno || *end || end == spid || pid <= 0) {
        hd_errf(err, errlen, "bad LISTEN_PID '%s'", spid);
        return -1;
    }
    if (pid != (long)getpid())          /* meant for another process (our parent's) */
        return 0;
    long n = strtol(sfds, &end, 10);
    if (errno || *end || end == sfds || n < 0 || n > SD_MAX_LISTEN_FDS) {
        hd_errf(err, errlen, "bad LISTEN_FDS '%s' (heapd takes at most %d sockets)", sfds, SD_MAX_LISTEN_FDS);
        return -1;
    }
    const char *names = getenv("LISTEN_FDNAMES");
    for (long i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + (int)i;
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
            hd_errf(err, errlen, "LISTEN_FDS says %ld sockets, but fd %d is not open", n, fd);
            return -1;
        }
        out[i].fd = fd;
        out[i].name[0] = 0;
        if (names && *names) {          /* the i-th colon-separated field */
            const char *colon = strchr(names, ':');
            size_t len = colon ? (size_t)(colon - names) : strlen(names);
            snprintf(out[i].name, sizeof(out[i].name), "%.*s", (int)len, names);
            names = colon ? colon + 1 : names + len;
        }
    }
    unset_listen_env();
    return (int)n;
}
