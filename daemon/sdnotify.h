/* sdnotify: the two systemd protocols heapd speaks, by hand (no libsystemd).
 *
 *  - Readiness (Type=notify): a datagram "READY=1\nSTATUS=..." to the
 *    AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for the
 *    abstract namespace). Without $NOTIFY_SOCKET it does nothing.
 *  - Socket activation: systemd passes listening sockets as fds 3.. with
 *    $LISTEN_PID (must be our pid), $LISTEN_FDS (how many) and
 *    $LISTEN_FDNAMES (colon-separated FileDescriptorName= values).
 *
 * Owns nothing after the calls return; the fds taken belong to the caller.
 */
#ifndef HEAPD_DAEMON_SDNOTIFY_H
#define HEAPD_DAEMON_SDNOTIFY_H
#include <stdbool.h>
#include <stddef.h>

#define SD_LISTEN_FDS_START 3
#define SD_MAX_LISTEN_FDS   8

/* Send msg (lines "KEY=value\n...") to $NOTIFY_SOCKET. 0 if sent or not
 * under systemd, -errno if the socket is set but the datagram failed. */
int sd_notify_send(const char *msg);

typedef struct sd_fd {
    int fd;
    char name[64];              /* FileDescriptorName=, "" when not given */
} sd_fd_t;

/* The sockets systemd passed us: fills out[] (at most SD_MAX_LISTEN_FDS),
 * marks them close-on-exec, and unsets LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES
 * so children do not take them. Returns how many (0 when not activated), or
 * -1 with a message in err for a malformed environment. */
int sd_listen_fds_take(sd_fd_t *out, char *err, size_t errlen);

#endif
