# `make fuzz`: atheris (libFuzzer) over each service's request parsing, FUZZ_SECONDS per
# harness (default 60; 4 harnesses), corpora kept in $(MESHSERVE_HOME)/fuzz; writes
# fuzz/RESULTS.md and fails when a harness found something.
# One harness: `make fuzz FUZZ_ONLY=model`; replay an input: `$(PY) -m fuzz.run_one model FILE`.
FUZZ_SECONDS ?= 60
FUZZ_ONLY ?= gateway,features,preprocess,model

.PHONY: fuzz

fuzz: install  ## fuzz every service's request parsing for FUZZ_SECONDS each (writes fuzz/RESULTS.md)
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) --only $(FUZZ_ONLY) --out fuzz/RESULTS.md
