/* metrics_http: `heapd --metrics-listen ADDR:PORT`, a Prometheus scrape
 * endpoint on the daemon's libuv loop (off by default).
 *
 * Serves GET (and HEAD) /metrics (a query string is ignored) with
 * metrics_text(): OpenMetrics when the Accept header asks for
 * application/openmetrics-text, else the text format 0.0.4. Anything else:
 * 404 for another path, 405 (Allow: GET, HEAD) for another method, 400 for a
 * malformed request, 431 for a request head over HTTP_MAX_REQ bytes. One
 * request per connection (Connection: close). At most HTTP_MAX_CONNS
 * connections at once (more are accepted and closed at once), and each
 * must send its request within HTTP_TIMEOUT_MS. Nothing a peer sends can stall the loop: reads and
 * writes are asynchronous, and the reply is built only for a complete request.
 *
 * ADDR is an IPv4 address, or an IPv6 one in brackets ([::1]:9464); the
 * listening socket is bound in main (before the fork, so errors go to the
 * terminal) and served from daemon_run.
 */
#ifndef HEAPD_DAEMON_METRICS_HTTP_H
#define HEAPD_DAEMON_METRICS_HTTP_H
#include <stddef.h>

#include "daemon.h"

#define HTTP_MAX_REQ     8192u
#define HTTP_MAX_CONNS   16u
#define HTTP_TIMEOUT_MS  10000u

/* Parse ADDR:PORT and bind + listen a TCP socket. 0, or -errno with a
 * message in err (a bad address is -EINVAL). */
int metrics_http_listen(daemon_t *d, const char *addr, char *err, size_t errlen);
/* Serve it on d->loop (no-op without metrics_http_listen). 0 or a libuv error. */
int metrics_http_start(daemon_t *d);
/* Close the listener and every connection (daemon_stop). */
void metrics_http_shutdown(daemon_t *d);
/* Free what metrics_http_listen made (daemon_destroy). */
void metrics_http_free(daemon_t *d);

#endif
