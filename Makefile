bench:  ## run the benchmark suite (writes bench/results/latest.*)
	./dev bench

bench-quick:  ## the suite at smaller sizes, a few minutes
	./dev bench --quick

test:  ## the test suite
	./dev test

.PHONY: bench bench-quick test
