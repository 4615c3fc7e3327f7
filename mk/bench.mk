# `make bench`: the stack on Redis (db 14, home bench/tmp/home) under closed-loop load, plus the
# floors of this machine; writes bench/RESULTS.md and bench/results.json (about 15 minutes).
# Quick look: `make bench BENCH_SECONDS=3 BENCH_WARMUP_SECONDS=1 BENCH_FLOOR_SECONDS=2`
# (or `make bench-quick`); one cell: `BENCH_ONLY=entities_1_c1,echo4_chain_c1`.
.PHONY: bench bench-quick

bench: install  ## benchmark the stack on Redis against the issue's targets (bench/RESULTS.md)
	$(PY) -m bench

bench-quick: install  ## the same, 3 s per cell (numbers for a smoke check, not for RESULTS.md)
	BENCH_SECONDS=$${BENCH_SECONDS:-3} BENCH_WARMUP_SECONDS=$${BENCH_WARMUP_SECONDS:-1} BENCH_FLOOR_SECONDS=$${BENCH_FLOOR_SECONDS:-2} \
	    BENCH_OUT_DIR=$${BENCH_OUT_DIR:-bench/tmp/quick} $(PY) -m bench
