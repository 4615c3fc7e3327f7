"""`meshserve`: a small client for humans.

  meshserve predict --driver 1001 --customer 2001 [--driver 1002 --customer 2002 ...]
  meshserve predict-rows --row conv_rate=0.5,acc_rate=0.9,avg_daily_trips=10,current_balance=0.3,avg_passenger_count=1.2,lifetime_trip_count=100
  meshserve health
  meshserve up [--train-if-empty]     (the whole stack locally; same as `make run`)
"""

from __future__ import annotations

import argparse
import sys

import grpc
from google.protobuf.json_format import MessageToJson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2

from meshserve_local.stack import DEFAULT_PORTS, HEALTH_NAMES


def _value(text: str) -> types_pb2.Value:
    if text in ("", "null"):
        return types_pb2.Value(null_value=0)
    try:
        return types_pb2.Value(int64_value=int(text))
    except ValueError:
        pass
    try:
        return types_pb2.Value(double_value=float(text))
    except ValueError:
        return types_pb2.Value(string_value=text)


def _print_rpc_error(err: grpc.RpcError) -> int:
    print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
    return 1


def cmd_predict(args: argparse.Namespace) -> int:
    if len(args.driver) != len(args.customer):
        print("give one --customer per --driver", file=sys.stderr)
        return 2
    request = prediction_pb2.PredictEntitiesRequest()
    for d, c in zip(args.driver, args.customer):
        row = request.entities.add()
        row.values["driver_id"].int64_value = d
        row.values["customer_id"].int64_value = c
    with grpc.insecure_channel(args.target) as channel:
        try:
            reply = prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(request, timeout=args.timeout)
        except grpc.RpcError as err:
            return _print_rpc_error(err)
    print(MessageToJson(reply, indent=2))
    return 0


def cmd_predict_rows(args: argparse.Namespace) -> int:
    request = prediction_pb2.PredictRequest()
    for text in args.row:
        row = request.rows.add()
        for pair in text.split(","):
            name, _, value = pair.partition("=")
            row.values[name.strip()].CopyFrom(_value(value.strip()))
    with grpc.insecure_channel(args.target) as channel:
        try:
            reply = prediction_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=args.timeout)
        except grpc.RpcError as err:
            return _print_rpc_error(err)
    print(MessageToJson(reply, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    worst = 0
    for service, port in DEFAULT_PORTS.items():
        target = f"{args.host}:{port}"
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=args.timeout
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                status = f"unreachable ({err.code().name})"
        if status != "SERVING":
            worst = 1
        print(f"{service:<11} {target:<18} {status}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="score entity rows (features from the online store)")
    p.add_argument("--driver", type=int, action="append", required=True)
    p.add_argument("--customer", type=int, action="append", required=True)
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway address")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("predict-rows", help="score raw feature rows (no feature store)")
    p.add_argument("--row", action="append", required=True, help="name=value,name=value,...")
    p.add_argument("--target", default="127.0.0.1:50051", help="gateway address")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_predict_rows)

    p = sub.add_parser("health", help="health of the four local services")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("up", help="run the whole stack locally (same as `make run`)", add_help=False)
    p.set_defaults(func=None)

    args, rest = parser.parse_known_args(argv)
    if args.command == "up":
        from meshserve_local.stack import main as up

        return up(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
