/* An in-process daemon for unit suites that drive rpc_handle directly (no
 * loop, no socket): a real segment, mheap and mcentral at a given base. */
#ifndef HEAPD_TESTS_DAEMON_FIXTURE_H
#define HEAPD_TESTS_DAEMON_FIXTURE_H
#include <stdint.h>

#include "daemon.h"
#include "control.pb-c.h"
#include "heapd.pb-c.h"
#include "rpc.h"

/* A new daemon of size bytes mapped at base (CUnit-fatal on failure). */
daemon_t *fx_daemon_new(uint64_t size, uint64_t base);
/* Assert mheap_check and mcentral_check, printing what broke. */
void fx_check(daemon_t *d);
/* Close every client, check the heap's invariants, destroy and free d. */
void fx_daemon_free(daemon_t *d);
/* Pack m and hand it to rpc_handle for client c; the reply lands in out. */
enum rpc_verdict fx_send(daemon_t *d, client_t *c, Heapd__ClientMsg *m, rpc_out_t *out);
/* A client record on one end of a socketpair, past its Hello; *peer gets the
 * other end (unsolicited messages arrive there), *slot its stats slot. */
client_t *fx_client(daemon_t *d, rpc_out_t *out, int *peer, uint32_t *slot);
/* AllocLarge of pages for c: the span id, or -errno from the daemon's Error. */
int64_t fx_alloc_large(daemon_t *d, client_t *c, rpc_out_t *out, uint64_t pages);
/* control_handle: pack q, hand it to the daemon, unpack the reply (never
 * NULL: CUnit-fatal). *rc gets control_handle's result (-1: malformed). */
Heapdctl__ControlReply *fx_control(daemon_t *d, Heapdctl__ControlRequest *q, int *rc);
/* The Clients reply (the rows heapctl clients prints). */
Heapdctl__ControlReply *fx_clients(daemon_t *d);
#endif
