/* rpc: decode, validate and dispatch one client packet; encode the reply.
 *
 * Owns the protocol rules of docs/protocol.md on the daemon side, and the
 * books refills and bad_requests. No sockets here: rpc_handle turns a packet
 * into reply bytes, fds to pass and a verdict, so the unit tests drive it with
 * a client record that has no socket, and client.c does the I/O.
 *
 * Validation (the daemon never trusts a client):
 *  - undecodable, empty, oversized, no body, a second Hello -> RPC_DISCONNECT;
 *  - first message not Hello -> Error{EPROTO}, then close; Hello with another
 *    protocol version -> Error{EPROTONOSUPPORT, "client speaks protocol X,
 *    daemon speaks Y"}, then close;
 *  - Refill: class 1..67, count 1..HD_MAX_BATCH, else Error{EINVAL};
 *  - Release: each id a span CACHED by this client; FreeLarge: each id a LARGE
 *    span with the given gen; more than HD_MAX_BATCH ids, or gens not matching
 *    ids one to one, refuses the whole request. Refused ids are skipped and
 *    counted in bad_requests; the reply (seq != 0 only) is Error{EINVAL} naming
 *    the first, else Ack;
 *  - AllocLarge: pages >= 1, align_pages 0 or a power of two (EINVAL); more
 *    pages than the heap has, or no room: ENOMEM. A hard limit or quota
 *    (memlimit.h) refuses with ENOMEM too, after sending this client Flush
 *    and Pressure{3} (so they arrive ahead of the reply);
 *  - SetQuota (this client's), SetLimit (the daemon's; EINVAL when hard <
 *    soft), Scavenge (release every free page): Ack.
 *  - RootUpdate: the rules of rootdir.h; Ack or Error{its errno}.
 * Hello, Refill, AllocLarge, SetQuota, SetLimit, Scavenge and RootUpdate are always
 * answered (echoing seq, even 0); Release and FreeLarge only when seq != 0.
 */
#ifndef HEAPD_DAEMON_RPC_H
#define HEAPD_DAEMON_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "daemon.h"

enum rpc_verdict {
    RPC_OK = 0,         /* send the reply (if out->len) and keep serving */
    RPC_CLOSE,          /* send the reply (if out->len), then close */
    RPC_DISCONNECT,     /* malformed: close now, nothing to send */
};

typedef struct rpc_out {
    uint8_t *buf;       /* reply bytes (caller's buffer of cap >= HD_MAX_MSG) */
    size_t cap, len;    /* len 0: no reply */
    int fds[3];         /* fds to pass with the reply (Welcome: meta, heap, its stats slot) */
    unsigned nfds;
    const char *why;    /* for RPC_CLOSE/RPC_DISCONNECT: a reason for the log */
} rpc_out_t;

/* Handle one packet from client c. out->buf/cap must be set; the rest is
 * filled. Never fails in any other way, whatever pkt holds. */
enum rpc_verdict rpc_handle(daemon_t *d, client_t *c, const uint8_t *pkt, size_t len, rpc_out_t *out);

/* Encode an unsolicited Flush (seq 0) into out. 0, or -1 if it does not fit. */
int rpc_encode_flush(rpc_out_t *out);
/* Encode Ack with seq into out (a reply sent later: Scavenge). 0, or -1 if it does not fit. */
int rpc_encode_ack(rpc_out_t *out, uint64_t seq);
/* Encode Error{err, msg} with seq into out (out->len 0 if it does not fit). */
void rpc_encode_error(rpc_out_t *out, uint64_t seq, int err, const char *msg);

#endif
