"""Client channels between meshserve services, created once and reused.

Options are deliberate: round_robin over every address a DNS name resolves to (a
Kubernetes headless Service), keepalive so dead peers are noticed, message sizes that
match the servers', and retries of UNAVAILABLE through gRPC's service config (with
retry throttling so a sick backend does not get a retry storm).
"""

from __future__ import annotations

import json

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def service_config(retry_attempts: int = 3) -> str:
    """gRPC service config: round_robin, UNAVAILABLE retries with backoff, throttling."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{}],  # every method: all internal calls are idempotent reads/transforms
                "retryPolicy": {
                    "maxAttempts": retry_attempts,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        # Stop retrying when more than half the recent calls failed.
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return json.dumps(config)


def create_channel(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    retry_attempts: int = 3,
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to another meshserve service (mTLS comes from the mesh)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 1 if retry_attempts > 1 else 0),
        ("grpc.service_config", service_config(retry_attempts)),
        # Reconnect quickly after a pod restarts instead of the default 20 s+ backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    return grpc.aio.insecure_channel(target, options=options)
