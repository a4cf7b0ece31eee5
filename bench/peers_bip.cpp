// bench/peers_bip.cpp: the Boost.Interprocess peer of bench/peers.c.
//
// One managed_shared_memory segment (Boost's default: rbtree_best_fit under one
// process-shared mutex) per worker: created by the worker's parent process,
// its name removed at once (the mapping stays), and inherited by the forked
// processes that allocate from it, so K processes share one heap the way K
// heapd clients share the daemon's. C linkage: peers.c calls these directly.
#include <boost/interprocess/managed_shared_memory.hpp>
#include <cstdio>
#include <new>
#include <unistd.h>

namespace bip = boost::interprocess;

static bip::managed_shared_memory *seg;

extern "C" int bip_open(size_t bytes)
{
    char name[64];
    std::snprintf(name, sizeof(name), "heapd-bench-peers-%d", (int)getpid());
    try {
        bip::shared_memory_object::remove(name);
        seg = new bip::managed_shared_memory(bip::create_only, name, bytes);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "bench-peers: Boost.Interprocess segment of %zu bytes: %s\n", bytes, e.what());
        seg = nullptr;
    }
    bip::shared_memory_object::remove(name);   // mapped here and in every fork child: the name is not needed
    return seg ? 0 : -1;
}

extern "C" void *bip_malloc(size_t n)
{
    return seg->allocate(n, std::nothrow);
}

extern "C" void bip_free(void *p)
{
    seg->deallocate(p);
}
