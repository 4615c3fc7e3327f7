"""Coverage-guided fuzzers (atheris) over each service's request parsing.

One harness per service (gateway, features, preprocess, model). Each feeds fuzzer bytes
through the same path a real call takes in-process: the gRPC request deserializer and
the shared ServerInterceptor around the real servicer method. The first input byte picks
the RPC and the mode: the rest of the input is either the serialized request itself
(random, truncated, mutated protobuf) or, through atheris.FuzzedDataProvider, the recipe
of a structured hostile request (huge repeated fields, huge strings, odd values, wrong
dtypes and shapes, raw tensors whose length disagrees with their shape), serialized and
sent down the same path. The only acceptable outcomes are a valid response or a refusal
with one of the service's allowed status codes and a message; anything else is a finding.

`make fuzz` (fuzz/run.py) runs every harness for FUZZ_SECONDS and writes fuzz/RESULTS.md;
`python -m fuzz.run_one NAME CRASH_FILE` replays one input.
"""
