/* paths: where heapd listens by default, and where clients and heapctl look
 * for it. Shared by heapd (daemon/main.c), libheapd (client/attach.c) and
 * heapctl, so the defaults find each other.
 *
 * Clients search, in order, and take the first that exists as a socket:
 *   $HEAPD_SOCKET                  (if set and not empty)
 *   $XDG_RUNTIME_DIR/heapd.sock    (if set and not empty: a user's session daemon)
 *   /run/heapd/heapd.sock          (the system service, systemd/heapd.service)
 *   /tmp/heapd-UID/heapd.sock      (a user's daemon started without a session)
 * When none exists they use the first candidate, so the error names the path
 * the user most likely meant.
 *
 * heapd itself listens on the first of $HEAPD_SOCKET, $XDG_RUNTIME_DIR/heapd.sock,
 * then /run/heapd/heapd.sock when it runs as root, else /tmp/heapd-UID/heapd.sock.
 * It creates only the last two directories (its own), never a --socket's parent.
 */
#ifndef HEAPD_SHM_PATHS_H
#define HEAPD_SHM_PATHS_H
#include <stddef.h>

#define HD_SYSTEM_SOCKET_DIR "/run/heapd"
#define HD_SOCKET_NAME       "heapd.sock"
#define HD_PATH_MAX          4096
#define HD_MAX_CANDIDATES    4

/* The candidate paths in search order (see above), each with suffix appended
 * ("" or ".ctl"); those that do not fit HD_PATH_MAX are left out. Returns how
 * many were written to out (at most HD_MAX_CANDIDATES). */
unsigned hd_socket_candidates(const char *suffix, char out[][HD_PATH_MAX]);

/* The first candidate (with suffix) that exists and is a socket, else the
 * first candidate. 0, or -1 if it does not fit len. */
int hd_find_socket(const char *suffix, char *buf, size_t len);

/* Clients' default socket: hd_find_socket("", ...). */
int hd_default_socket(char *buf, size_t len);

/* The daemon's default socket (see above). *own_dir is set when its
 * directory is one heapd creates itself (/run/heapd, /tmp/heapd-UID).
 * 0, or -1 if it does not fit len. */
int hd_daemon_socket(char *buf, size_t len, int *own_dir);

#endif
