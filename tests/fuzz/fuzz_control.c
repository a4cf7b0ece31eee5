/* fuzz-control: libFuzzer harness for the control socket's decoder and
 * handlers (daemon/control.c: control_handle), with a real daemon state.
 *
 * The first input byte picks a raw request (the rest of the input, any
 * bytes) or a well-formed ControlRequest built from the following bytes
 * (every body type; SetLimit with any soft/hard values). Every reply must be
 * a ControlReply that unpacks; the heap's invariants are checked every 64
 * inputs. The limits are reset after each input so inputs stay independent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "control.pb-c.h"
#include "daemon.h"
#include "mcentral.h"
#include "memlimit.h"
#include "scavenge.h"

static daemon_t *D;

static uint64_t take(const uint8_t **p, size_t *n, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        v = v << 8 | (*n ? (--*n, *(*p)++) : 0);
    }
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    if (!D) {
        D = calloc(1, sizeof(*D));
        char err[256];
        daemon_opts_t o = {.size = 64ull << 20, .base = 0x3d0000000000ull, .quiet = true};
        if (!D || daemon_init(D, &o, err, sizeof(err)) != 0) {
            fprintf(stderr, "fuzz-control: daemon_init: %s\n", err);
            abort();
        }
    }
    const uint8_t *p = data;
    size_t n = size;
    uint8_t buf[4096];
    const uint8_t *req = p;
    size_t len;
    if (take(&p, &n, 1) < 64) {                 /* raw bytes */
        req = p;
        len = n;
    } else {
        Heapdctl__ControlRequest m = HEAPDCTL__CONTROL_REQUEST__INIT;
        Heapdctl__StatsRequest st = HEAPDCTL__STATS_REQUEST__INIT;
        Heapdctl__ClientsRequest cl = HEAPDCTL__CLIENTS_REQUEST__INIT;
        Heapdctl__MetricsRequest me = HEAPDCTL__METRICS_REQUEST__INIT;
        Heapdctl__SetLimitRequest sl = HEAPDCTL__SET_LIMIT_REQUEST__INIT;
        Heapdctl__GetLimitRequest gl = HEAPDCTL__GET_LIMIT_REQUEST__INIT;
        Heapdctl__ScavengeRequest sc = HEAPDCTL__SCAVENGE_REQUEST__INIT;
        Heapdctl__FlushRequest fl = HEAPDCTL__FLUSH_REQUEST__INIT;
        m.seq = take(&p, &n, 1);
        switch (take(&p, &n, 1) % 8) {
        case 0: m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_STATS; m.stats = &st; break;
        case 1: m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS; m.clients = &cl; break;
        case 2: m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_METRICS; m.metrics = &me; break;
        case 3:
            sl.set_soft = take(&p, &n, 1) & 1;
            sl.soft = take(&p, &n, 1) < 128 ? take(&p, &n, 8) : take(&p, &n, 2) << 16;
            sl.set_hard = take(&p, &n, 1) & 1;
            sl.hard = take(&p, &n, 1) < 128 ? take(&p, &n, 8) : take(&p, &n, 2) << 16;
            m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_SET_LIMIT;
            m.set_limit = &sl;
            break;
        case 4: m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_GET_LIMIT; m.get_limit = &gl; break;
        case 5: m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_SCAVENGE; m.scavenge = &sc; break;
        case 6: m.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH; m.flush = &fl; break;
        default: break;                         /* no body */
        }
        len = heapdctl__control_request__pack(&m, buf);
        req = buf;
    }
    uint8_t *reply = NULL;
    size_t rlen = 0;
    control_handle(D, req, len, &reply, &rlen);
    if (!reply)
        abort();                                /* every request gets a reply, even an Error */
    Heapdctl__ControlReply *r = heapdctl__control_reply__unpack(NULL, rlen, reply);
    if (!r)
        abort();
    heapdctl__control_reply__free_unpacked(r, NULL);
    free(reply);
    limits_set(D, 0, 0);
    if (++runs % 64 == 0) {
        char err[256];
        if (!mheap_check(&D->heap, err, sizeof(err)) || !mcentral_check(&D->central, err, sizeof(err))) {
            fprintf(stderr, "fuzz-control: invariant broken: %s\n", err);
            abort();
        }
    }
    return 0;
}
