"""`helm test` check of a meshserve release, run by the gateway image's Python.

1. Waits until grpc.health.v1 reports SERVING for the gateway's own health name
   (meshserve.v1.PredictionService: artifacts loaded and warm).
2. Calls meshserve.v1.PredictionService/PredictEntities for one (driver, customer) row and
   fails unless the answer holds exactly one probability in [0, 1].
Uses only what the gateway image already has: grpcio, grpcio-health-checking and the
generated meshserve.v1 stubs.

Environment: MESHSERVE_TEST_TARGET (host:port), MESHSERVE_TEST_HEALTH_SERVICE,
MESHSERVE_TEST_DRIVER, MESHSERVE_TEST_CUSTOMER, MESHSERVE_TEST_TIMEOUT_S,
MESHSERVE_TEST_ISTIO ("true": ask the Istio sidecar to exit at the end, so the pod also
completes without native sidecars).
"""

import os
import sys
import time
import urllib.request

import grpc
from google.protobuf.json_format import MessageToJson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc


def wait_serving(channel: grpc.Channel, service: str, timeout_s: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                print(f"health {service!r}: SERVING", flush=True)
                return
        except grpc.RpcError as err:
            last = f"{err.code().name}: {err.details()}"
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: health {service!r} not SERVING after {timeout_s:.0f} s (last: {last})")
        time.sleep(2)


def predict(channel: grpc.Channel, driver: int, customer: int) -> None:
    request = prediction_pb2.PredictEntitiesRequest()
    row = request.entities.add()
    row.values["driver_id"].int64_value = driver
    row.values["customer_id"].int64_value = customer
    try:
        reply = prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(request, timeout=30)
    except grpc.RpcError as err:
        raise SystemExit(f"FAIL: PredictEntities: {err.code().name}: {err.details()}") from None
    print(MessageToJson(reply, indent=2), flush=True)
    if len(reply.predictions) != 1:
        raise SystemExit(f"FAIL: expected 1 prediction, got {len(reply.predictions)}")
    first = reply.predictions[0]
    if first.WhichOneof("result") != "probability":
        raise SystemExit(f"FAIL: row error {first.error.status}: {first.error.message}")
    if not 0.0 <= first.probability <= 1.0:
        raise SystemExit(f"FAIL: probability {first.probability} outside [0, 1]")
    print(f"prediction OK: probability={first.probability:.4f}", flush=True)


def stop_sidecar() -> None:
    try:
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:15020/quitquitquit", method="POST"), timeout=3)
    except OSError:
        pass


def main() -> int:
    target = os.environ["MESHSERVE_TEST_TARGET"]
    try:
        with grpc.insecure_channel(target) as channel:
            timeout_s = float(os.environ.get("MESHSERVE_TEST_TIMEOUT_S", "300"))
            wait_serving(channel, os.environ["MESHSERVE_TEST_HEALTH_SERVICE"], timeout_s)
            predict(channel, int(os.environ["MESHSERVE_TEST_DRIVER"]), int(os.environ["MESHSERVE_TEST_CUSTOMER"]))
        return 0
    finally:
        if os.environ.get("MESHSERVE_TEST_ISTIO") == "true":
            stop_sidecar()


if __name__ == "__main__":
    sys.exit(main())
