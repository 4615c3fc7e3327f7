"""gRPC core's process-wide switches, which it reads from the environment when grpc is imported.

They cannot be settings of a service: by the time a settings class is read, grpc is
imported and has read them. So they are set where a process is started instead: the
container image (docker/Dockerfile), the Helm chart (`grpc.experiments`), the local stack
(meshserve_local.stack) and the benchmark, all from the value below (tests check they agree).

GRPC_EXPERIMENTS: grpcio 1.80+ moves Python's TCP I/O to the EventEngine, whose own
threads read and write the sockets and hand each completion on to the thread that polls
for grpc.aio. The previous I/O path (still shipped in the pinned grpcio, and gRPC's own
documented rollback switch) polls the sockets in that thread directly: one thread hop
less per event. Measured here in interleaved A/B runs: an echo hop 0.54 -> 0.44-0.46 ms
at concurrency 1, with 15-20% less CPU per call; the whole stack, 1 entity at
concurrency 1, 5.5 -> 4.8 ms p50, 100 entities 8.1 -> 6.2 ms, the same at concurrency 64
(bench/HISTORY.md). A grpcio that no longer knows these experiments logs "Unknown
experiment" once at start-up and runs its default; set GRPC_EXPERIMENTS to "" (chart:
`grpc.experiments: ""`) for gRPC's default path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
"""meshserve's default for GRPC_EXPERIMENTS (see the module docstring)."""


def with_grpc_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of a child process's environment with meshserve's gRPC defaults, where it sets none.

    A GRPC_EXPERIMENTS already there, even empty, is the operator's choice and is kept.
    """
    out = dict(env)
    out.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    return out


def active_experiments() -> str:
    """GRPC_EXPERIMENTS as this process got it ("" when unset: gRPC's defaults), for the start-up log."""
    return os.environ.get("GRPC_EXPERIMENTS", "")
