/* heapd_user: a program outside the tree that uses an installed libheapd
 * (scripts/test-install.sh builds it with pkg-config and with
 * find_package(heapd), against the .so and the .a). It attaches to the
 * daemon at $HEAPD_SOCKET, allocates a small and a large object, checks they
 * are usable and addressable by offset, frees them, and prints "ok". */
#include <heapd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define CHECK(c)                                                        \
    do {                                                                \
        if (!(c)) {                                                     \
            fprintf(stderr, "heapd_user: check failed: %s\n", #c);      \
            return 1;                                                   \
        }                                                               \
    } while (0)

int main(void)
{
    if (heapd_attach(NULL) != 0) {
        perror("heapd_user: heapd_attach");
        return 1;
    }
    char *small = heapd_malloc(100);
    char *large = heapd_malloc(1 << 20);
    CHECK(small && large);
    memset(small, 0xab, 100);
    memset(large, 0xcd, 1 << 20);
    CHECK(heapd_usable_size(small) >= 100);
    CHECK(heapd_usable_size(large) >= 1 << 20);
    uint64_t off = heapd_ptr_to_offset(small);
    CHECK(off != UINT64_MAX && heapd_offset_to_ptr(off) == small);
    CHECK((unsigned char)large[(1 << 20) - 1] == 0xcd);
    heapd_free(small);
    heapd_free(large);
    CHECK(heapd_bad_frees() == 0);
    CHECK(heapd_flush() == 0);
    printf("ok (%s)\n", heapd_transport());
    heapd_detach();
    return 0;
}
