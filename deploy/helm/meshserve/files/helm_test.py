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
completes without native sidecars), MESHSERVE_TEST_AUTH_MODE (the gateway's auth mode, when
on) and MESHSERVE_TEST_CREDENTIAL (sent as `authorization: Bearer`), MESHSERVE_TEST_TLS_CA (call over
TLS; MESHSERVE_TEST_TLS_CERT/_KEY: with a client certificate). With auth on and no
credential, step 2 becomes: an anonymous call must be refused with UNAUTHENTICATED.
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


def entity_request(driver: int, customer: int) -> prediction_pb2.PredictEntitiesRequest:
    request = prediction_pb2.PredictEntitiesRequest()
    row = request.entities.add()
    row.values["driver_id"].int64_value = driver
    row.values["customer_id"].int64_value = customer
    return request


def expect_refused(channel: grpc.Channel, driver: int, customer: int, mode: str) -> None:
    try:
        prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(entity_request(driver, customer), timeout=30)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            print(f"auth ({mode}): an anonymous call is refused: {err.details()}", flush=True)
            print("prediction skipped: no tests.credentials Secret to call with", flush=True)
            return
        raise SystemExit(f"FAIL: anonymous PredictEntities: expected UNAUTHENTICATED, got {err.code().name}: {err.details()}") from None
    raise SystemExit(f"FAIL: gateway.auth.mode is {mode} but an anonymous PredictEntities call was answered")


def predict(channel: grpc.Channel, driver: int, customer: int, credential: str = "") -> None:
    request = entity_request(driver, customer)
    metadata = [("authorization", f"Bearer {credential}")] if credential else None
    try:
        reply = prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(request, timeout=30, metadata=metadata)
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


def open_channel(target: str) -> grpc.Channel:
    """TLS when MESHSERVE_TEST_TLS_CA is set (mutual with MESHSERVE_TEST_TLS_CERT/_KEY), else plaintext."""
    ca = os.environ.get("MESHSERVE_TEST_TLS_CA")
    if not ca:
        return grpc.insecure_channel(target)

    def read(name: str) -> "bytes | None":
        path = os.environ.get(name)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(read("MESHSERVE_TEST_TLS_CA"), read("MESHSERVE_TEST_TLS_KEY"), read("MESHSERVE_TEST_TLS_CERT"))
    print(f"TLS to {target} (CA {ca})", flush=True)
    return grpc.secure_channel(target, creds)


def stop_sidecar() -> None:
    try:
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:15020/quitquitquit", method="POST"), timeout=3)
    except OSError:
        pass


def main() -> int:
    target = os.environ["MESHSERVE_TEST_TARGET"]
    try:
        with open_channel(target) as channel:
            timeout_s = float(os.environ.get("MESHSERVE_TEST_TIMEOUT_S", "300"))
            wait_serving(channel, os.environ["MESHSERVE_TEST_HEALTH_SERVICE"], timeout_s)
            driver, customer = int(os.environ["MESHSERVE_TEST_DRIVER"]), int(os.environ["MESHSERVE_TEST_CUSTOMER"])
            mode = os.environ.get("MESHSERVE_TEST_AUTH_MODE", "none")
            credential = os.environ.get("MESHSERVE_TEST_CREDENTIAL", "").strip()
            if mode != "none" and not credential:
                expect_refused(channel, driver, customer, mode)
            else:
                predict(channel, driver, customer, credential)
        return 0
    finally:
        if os.environ.get("MESHSERVE_TEST_ISTIO") == "true":
            stop_sidecar()


if __name__ == "__main__":
    sys.exit(main())
