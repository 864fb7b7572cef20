bench:  ## run the benchmark suite (writes bench/results/latest.*)
	./dev bench

bench-quick:  ## the suite at smaller sizes, a few minutes
	./dev bench --quick

SEED ?= 1
MINUTES ?= 30
soak:  ## the randomized fault test, long: make soak SEED=7 MINUTES=30
	CHAOS_SEED=$(SEED) CHAOS_MINUTES=$(MINUTES) ./dev test tests/test_chaos.py -s

test:  ## the test suite
	./dev test

.PHONY: bench bench-quick soak test
