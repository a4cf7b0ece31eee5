# heapd: a thin wrapper over CMake. `make run` and `make test` are the two
# commands a newcomer needs; both install missing Debian packages first.
BUILD   ?= build
ASAN    ?= build-asan
CMAKE_FLAGS ?=
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build run demo test unit asan fuzz bench bench-pagealloc bench-alloc bench-limit clean

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

# Every test suite under AddressSanitizer and UBSan (CI runs this too).
asan: deps
	cmake -S . -B $(ASAN) -DHEAPD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug $(CMAKE_FLAGS)
	cmake --build $(ASAN) -j $(JOBS)
	@scripts/run-tests.sh $(ASAN) all

# libFuzzer harnesses (clang), each run for FUZZ_SECONDS from an empty corpus.
FUZZ ?= build-fuzz
FUZZ_SECONDS ?= 30
fuzz:
	@scripts/install-deps.sh --fuzz
	cmake -S . -B $(FUZZ) -DCMAKE_C_COMPILER=clang -DHEAPD_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)
	cmake --build $(FUZZ) -j $(JOBS) --target fuzz-rpc fuzz-control
	@for f in rpc control; do mkdir -p $(FUZZ)/corpus-$$f; \
	  $(FUZZ)/fuzz-$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ)/corpus-$$f || exit 1; done

bench-pagealloc: build
	$(BUILD)/bench-pagealloc

bench-alloc: build
	@scripts/install-deps.sh --bench
	$(BUILD)/bench-alloc

bench-limit: build
	@scripts/install-deps.sh --bench
	$(BUILD)/bench-limit --plot docs/limit.png

bench: bench-pagealloc bench-alloc bench-limit

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ) run
