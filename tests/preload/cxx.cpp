// cxx.cpp: a C++ program for scripts/test-preload.sh: std::map, std::string,
// std::vector growth, sized delete (-fsized-deallocation, C++14's default) and
// aligned new/delete (C++17), run with and without libheapd-malloc.so.
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

struct alignas(64) Line { unsigned char b[64]; };
struct alignas(4096) Page { unsigned char b[4096]; };

int main()
{
    std::map<std::string, std::vector<int>> m;
    uint64_t s = 1;
    for (int i = 0; i < 200000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        std::string k = "key-" + std::to_string((s >> 33) % 50000);
        m[k].push_back(i);
    }
    uint64_t sum = 0;
    for (auto &kv : m)
        sum += kv.first.size() * kv.second.size() + kv.second.back();
    int misaligned = 0;
    for (int i = 0; i < 1000; i++) {
        auto *l = new Line[1 + i % 7];               // aligned new[] / delete[]
        misaligned += reinterpret_cast<uintptr_t>(l) % 64 != 0;
        delete[] l;
        auto p = std::make_unique<Page>();           // aligned, sized delete
        misaligned += reinterpret_cast<uintptr_t>(p.get()) % 4096 != 0;
        auto *q = new std::string(100 + i, 'x');     // sized delete of a plain object
        sum += q->size();
        delete q;
    }
    std::printf("keys %zu sum %llu misaligned %d\n", m.size(), (unsigned long long)sum, misaligned);
    return misaligned != 0;
}
