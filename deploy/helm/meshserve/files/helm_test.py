"""`helm test` check of a meshserve release, run with the gateway image's Python.

1. Waits until the gateway's grpc.health.v1 service reports SERVING for its own
   health name (meshserve.v1.PredictionService: artifacts loaded and warm).
2. Makes one real prediction with `python -m meshserve_local.cli predict`.

Configured by environment: MESHSERVE_TEST_TARGET (host:port), MESHSERVE_TEST_HEALTH_SERVICE,
MESHSERVE_TEST_DRIVER, MESHSERVE_TEST_CUSTOMER, MESHSERVE_TEST_TIMEOUT_S,
MESHSERVE_TEST_ISTIO ("true": ask the Istio sidecar to exit at the end, so the pod completes
even without native sidecars).
"""

import os
import runpy
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_serving(target: str, service: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    print(f"health {service!r} at {target}: SERVING", flush=True)
                    return
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            if time.monotonic() > deadline:
                raise SystemExit(f"health {service!r} at {target} not SERVING after {timeout_s:.0f} s (last: {last})")
            time.sleep(2)


def predict(target: str, driver: str, customer: str) -> int:
    sys.argv = ["meshserve_local.cli", "predict", "--target", target, "--driver", driver, "--customer", customer]
    try:
        runpy.run_module("meshserve_local.cli", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        if done.code is None or done.code == 0:
            return 0
        if isinstance(done.code, int):
            return done.code
        print(done.code, file=sys.stderr)
        return 1
    return 0


def stop_sidecar() -> None:
    try:
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:15020/quitquitquit", method="POST"), timeout=3)
    except OSError:
        pass


def main() -> int:
    target = os.environ["MESHSERVE_TEST_TARGET"]
    try:
        wait_serving(target, os.environ["MESHSERVE_TEST_HEALTH_SERVICE"], float(os.environ.get("MESHSERVE_TEST_TIMEOUT_S", "300")))
        code = predict(target, os.environ["MESHSERVE_TEST_DRIVER"], os.environ["MESHSERVE_TEST_CUSTOMER"])
        print("prediction OK" if code == 0 else f"prediction failed (exit {code})", flush=True)
        return code
    finally:
        if os.environ.get("MESHSERVE_TEST_ISTIO") == "true":
            stop_sidecar()


if __name__ == "__main__":
    sys.exit(main())
