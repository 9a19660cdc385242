# Thin wrapper over CMake. `make demo` and `make test` do all the set-up.
BUILD       ?= build
BUILD_TEST  ?= build-test
BUILD_BENCH ?= build-bench
JOBS        ?= $(shell nproc)

.PHONY: deps build test demo bench clean format

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBOSUN_BUILD_TESTS=OFF
	cmake --build $(BUILD) -j $(JOBS)

# ASan + UBSan; every test, through ctest.
test: deps
	cmake -S . -B $(BUILD_TEST) -DCMAKE_BUILD_TYPE=Debug -DBOSUN_SANITIZE=ON -DBOSUN_BUILD_TESTS=ON
	cmake --build $(BUILD_TEST) -j $(JOBS)
	cd $(BUILD_TEST) && ctest --output-on-failure -j $(JOBS) --timeout 600

demo: build
	@bash scripts/demo.sh $(BUILD)

bench: deps
	cmake -S . -B $(BUILD_BENCH) -DCMAKE_BUILD_TYPE=Release -DBOSUN_BUILD_TESTS=OFF -DBOSUN_BUILD_BENCH=ON
	cmake --build $(BUILD_BENCH) -j $(JOBS)
	@bash scripts/bench.sh $(BUILD_BENCH)

format:
	@git ls-files '*.c' '*.h' '*.cpp' '*.hpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(BUILD_TEST) $(BUILD_BENCH)
