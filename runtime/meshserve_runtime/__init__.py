"""meshserve's shared service runtime.

One module per concern:
- settings: pydantic-settings base class every service extends with its own env prefix
- server: grpc.aio start-up, health, reflection, metrics endpoint, graceful shutdown
- errors: typed errors that map to gRPC status codes
- interceptors: per-RPC metrics, error mapping and access logs, for every service
- metrics: Prometheus metric definitions shared by all services
- logging: structured JSON logs
- channels: client channels with deliberate options (retries, keepalive, sizes)
- codecs: conversion between wire messages (Frame, Tensor) and numpy, in one place
- registry: MLflow alias resolution and artifact identity (needs the `mlflow` extra)
"""
