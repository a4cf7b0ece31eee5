# heapd: a thin wrapper over CMake. `make run` and `make test` are the two
# commands a newcomer needs; both install missing Debian packages first.
BUILD   ?= build
ASAN    ?= build-asan
CMAKE_FLAGS ?=
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build run demo test test-timing unit asan tsan debug fuzz fuzz-build fuzz-corpus bench bench-pagealloc bench-alloc bench-limit bench-peers bench-bufpool bench-preload clean install deb test-deb

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

# Starts heapd in the foreground (socket run/heapd.sock) and says how to use it.
run: build
	@scripts/run.sh $(BUILD)

# The page allocator on its own, on a 64 GiB segment.
demo: build
	$(BUILD)/pagealloc-demo

test: build
	@scripts/run-tests.sh $(BUILD)

# Bounds on CPU time, rates and latencies (the suites named "timing"): they
# depend on the machine, so `make test` and CI never gate on them.
test-timing: build
	HEAPD_UNIT_SUITES=timing $(BUILD)/heapd-itest

# Preload mode's cost: the preload suite's programs under glibc, jemalloc,
# mimalloc and libheapd-malloc.so, median wall times (docs/preload.md).
bench-preload: build
	scripts/install-deps.sh --bench
	scripts/bench-preload.sh $(BUILD) $(or $(RUNS),5)

# Installs into PREFIX (default /usr/local; DESTDIR honoured): heapd, heapctl,
# libheapd (.so, .a), heapd.h, heapd.pc, the CMake package, man pages, units, docs.
PREFIX ?= /usr/local
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

# A .deb (CPack) from its own build directory configured for /usr; test-deb
# checks what dpkg -c lists and the maintainer scripts (CI runs it).
DEB ?= build-deb
deb: deps
	cmake -S . -B $(DEB) -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON $(CMAKE_FLAGS)
	cmake --build $(DEB) -j $(JOBS) --target heapd heapctl heapd_client heapd_static heapd_malloc
	cd $(DEB) && cpack -G DEB
test-deb: deb
	@scripts/test-deb.sh $(DEB)

# Every test suite under AddressSanitizer and UBSan (CI runs this too).
asan: deps
	cmake -S . -B $(ASAN) -DHEAPD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS)
	cmake --build $(ASAN) -j $(JOBS)
	@scripts/run-tests.sh $(ASAN) all

# HEAPD_DEBUG: every suite with the protocol checks on (shm/debug.h): legal
# span-state moves at each publish, "the object was FREE" at each allocation,
# the daemon's invariants (mheap_check, pa_check, mcentral_check) every tick.
DEBUG_BUILD ?= build-debug
debug: deps
	cmake -S . -B $(DEBUG_BUILD) -DHEAPD_DEBUG=ON $(CMAKE_FLAGS)
	cmake --build $(DEBUG_BUILD) -j $(JOBS)
	@scripts/run-tests.sh $(DEBUG_BUILD) all

# ThreadSanitizer: the unit suites whose code runs on several threads of one
# process (mcache: the client library, cross-thread frees, thread exit; span:
# concurrent frees and sweeps). Suites that map a real segment at a fixed
# address (0x2000..., 0x3000...), and the integration tests' daemons and
# clients, cannot run under TSan: its shadow memory owns those addresses.
TSAN ?= build-tsan
TSAN_SUITES ?= mcache,span
tsan: deps
	cmake -S . -B $(TSAN) -DHEAPD_TSAN=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS)
	cmake --build $(TSAN) -j $(JOBS) --target heapd-unit
	HEAPD_UNIT_SUITES=$(TSAN_SUITES) TSAN_OPTIONS="halt_on_error=1 $(TSAN_OPTIONS)" $(TSAN)/heapd-unit

# libFuzzer harnesses (clang), each run for FUZZ_SECONDS. Each starts from the
# seeds in tests/fuzz/corpus/<harness>/, copied into the build directory's
# working corpus (the repo copy is never written by a run). `make fuzz-corpus`
# merges what the runs found back into the seeds (small: -set_cover_merge=1
# adds only inputs that add coverage; keep each harness under ~200 files, 1 MiB).
FUZZ ?= build-fuzz
FUZZ_SECONDS ?= 30
FUZZERS ?= rpc control free
fuzz-build:
	@scripts/install-deps.sh --fuzz
	cmake -S . -B $(FUZZ) -DCMAKE_C_COMPILER=clang -DHEAPD_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)
	cmake --build $(FUZZ) -j $(JOBS) $(addprefix --target fuzz-,$(FUZZERS))

fuzz: fuzz-build
	@for f in $(FUZZERS); do mkdir -p $(FUZZ)/corpus-$$f; \
	  if [ -d tests/fuzz/corpus/$$f ]; then cp -R tests/fuzz/corpus/$$f/. $(FUZZ)/corpus-$$f/; fi; \
	  $(FUZZ)/fuzz-$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ)/corpus-$$f || exit 1; done

fuzz-corpus: fuzz-build
	@for f in $(FUZZERS); do mkdir -p tests/fuzz/corpus/$$f $(FUZZ)/corpus-$$f; \
	  $(FUZZ)/fuzz-$$f -set_cover_merge=1 tests/fuzz/corpus/$$f $(FUZZ)/corpus-$$f || exit 1; done

bench-pagealloc: build
	$(BUILD)/bench-pagealloc

bench-alloc: build
	@scripts/install-deps.sh --bench
	$(BUILD)/bench-alloc

bench-limit: build
	@scripts/install-deps.sh --bench
	$(BUILD)/bench-limit --plot docs/limit.png

# heapd (K processes) against the malloc libraries (K threads) and
# Boost.Interprocess (K processes) on five patterns; BENCH_PEERS_FLAGS=--quick for a smoke run.
bench-peers: deps
	@scripts/install-deps.sh --bench
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)
	$(BUILD)/bench-peers --data $(BUILD)/peers.dat --plot docs/peers.png $(BENCH_PEERS_FLAGS)

# A shared buffer pool against private ones, then a soft limit lowered under
# load (docs/performance.md "Buffer pool"; writes docs/bufpool.tsv and .png).
bench-bufpool: build
	@scripts/install-deps.sh --bench
	$(BUILD)/bench-bufpool --samples docs/bufpool.tsv --plot docs/bufpool.png

bench: bench-pagealloc bench-alloc bench-limit bench-peers bench-bufpool

clean:
	rm -rf $(BUILD) $(ASAN) $(TSAN) $(FUZZ) $(DEB) run
