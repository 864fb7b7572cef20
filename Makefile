bench:  ## run the benchmark suite (writes ~/.cache/raylane/bench/latest.*)
	./dev bench

bench-quick:  ## the suite at smaller sizes, a few minutes
	./dev bench --quick

SEED ?= 1
MINUTES ?= 30
soak:  ## the randomized fault test, long: make soak SEED=7 MINUTES=30
	CHAOS_SEED=$(SEED) CHAOS_MINUTES=$(MINUTES) ./dev test tests/test_chaos.py -s

test:  ## lint, then the unit tier, then the stack tier
	./dev test

lint:  ## ruff (lint and format check) and mypy
	./dev lint

unit:  ## the unit tier alone (no services, seconds)
	./dev test tests/unit

.PHONY: bench bench-quick lint soak test unit
