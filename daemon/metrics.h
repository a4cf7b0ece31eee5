/* metrics: the Prometheus text heapd serves, on the control socket (heapctl
 * metrics) and over HTTP (--metrics-listen, metrics_http.c).
 *
 * The text is mstats_prometheus's (the whole heap) followed by:
 *   heapd_build_info{version,protocol,layout} 1
 *   process_start_time_seconds     (Unix time the daemon process started)
 *   per-client gauges, labelled by the client's name (its Hello name, the
 *   program name by default): heapd_client_processes, heapd_client_live_bytes,
 *   heapd_client_cached_bytes. Clients with the same name are summed; at most
 *   METRICS_MAX_CLIENT_NAMES names (those with the most live bytes) get their
 *   own series, the rest are summed under name="_other", so the label
 *   cardinality is bounded whatever connects.
 *
 * Two encodings of the same samples: the Prometheus text format 0.0.4
 * (METRICS_CT_PROM), and OpenMetrics 1.0.0 (METRICS_CT_OPENMETRICS: counter
 * families named without their _total suffix in HELP/TYPE, "# EOF" last),
 * which a scraper gets by asking for it in Accept.
 */
#ifndef HEAPD_DAEMON_METRICS_H
#define HEAPD_DAEMON_METRICS_H
#include <stdbool.h>
#include <stddef.h>

#include "daemon.h"

#define METRICS_MAX_CLIENT_NAMES 32u
#define METRICS_CT_PROM "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_CT_OPENMETRICS "application/openmetrics-text; version=1.0.0; charset=utf-8"

/* The text, malloc'd (NUL-terminated, *len bytes), or NULL when out of memory. */
char *metrics_text(daemon_t *d, bool openmetrics, size_t *len);

#endif
