"""`meshserve`: a small client for humans.

  meshserve predict --driver 1001 --customer 2001 [--driver 1002 --customer 2002 ...]
  meshserve predict-rows --row conv_rate=0.5,acc_rate=0.9,avg_daily_trips=10,current_balance=0.3,avg_passenger_count=1.2,lifetime_trip_count=100
  meshserve health [--port-offset N] [--target SVC=HOST:PORT ...]
  meshserve dev-certs DIR             (a throw-away CA and certificate to try TLS locally)
  meshserve api-key --caller NAME     (a new API key and its line for the gateway's keys file)
  meshserve up [--train-if-empty] [--port-offset N]  (the whole stack locally; same as `make run`)

TLS: give --tls-ca (and --tls-cert/--tls-key for mutual TLS), or --tls-dir DIR holding
ca.crt, tls.crt, tls.key (what `meshserve dev-certs` writes and `meshserve up --tls-dir` serves).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToJson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2

from meshserve_local.stack import DEFAULT_PORTS, HEALTH_NAMES, PORT_OFFSET_ENV, StackConfig, StackError


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


#: Where --api-key / --token are read from when not given (keeps them out of `ps` and shell history).
API_KEY_ENV = "MESHSERVE_API_KEY"
TOKEN_ENV = "MESHSERVE_TOKEN"


def _credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Call metadata carrying the caller's API key or JWT (none when neither is set)."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV, "")
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if api_key and token:
        raise SystemExit(f"give an API key or a token, not both (--api-key/{API_KEY_ENV}, --token/{TOKEN_ENV})")
    if api_key:
        return [("x-api-key", api_key)]
    if token:
        return [("authorization", f"Bearer {token}")]
    return []


def _add_credential_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", default="", help=f"API key, when the gateway runs with auth_mode=api_key (default: ${API_KEY_ENV})")
    p.add_argument("--token", default="", help=f"JWT, when the gateway runs with auth_mode=jwt (default: ${TOKEN_ENV})")


def _add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", type=Path, default=None, help="PEM CA that signed the server's certificate: call over TLS")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM client certificate (mutual TLS; with --tls-key)")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", default="", help="name to check the server's certificate against (default: the target's host)")
    p.add_argument("--tls-dir", type=Path, default=None, help="DIR/ca.crt, DIR/tls.crt, DIR/tls.key as --tls-ca, --tls-cert, --tls-key")


def _channel(args: argparse.Namespace, target: str) -> grpc.Channel:
    """A plaintext channel, or TLS when a CA was given (mutual with a client certificate)."""
    from meshserve_runtime.tls import PemSetting, TLSConfigError, client_tls

    d = args.tls_dir
    ca = args.tls_ca or (d / "ca.crt" if d else None)
    cert = args.tls_cert or (d / "tls.crt" if d else None)
    key = args.tls_key or (d / "tls.key" if d else None)
    try:
        tls = client_tls(
            PemSetting("--tls-ca", ca) if ca else None,
            PemSetting("--tls-cert", cert) if cert else None,
            PemSetting("--tls-key", key) if key else None,
            args.tls_server_name or None,
            ca_setting="--tls-ca",
        )
        if tls is None:
            return grpc.insecure_channel(target)
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        return grpc.secure_channel(target, tls.credentials(), options=options)
    except TLSConfigError as err:
        raise SystemExit(f"error: {err}") from None


def cmd_dev_certs(args: argparse.Namespace) -> int:
    from meshserve_local.devcerts import write_dev_certs

    issued = write_dev_certs(args.dir, days=args.days, hosts=tuple(args.host))
    print(f"wrote {issued.ca}, {issued.cert}, {issued.key} (valid {args.days} days; for local use only)")
    print(f"  {Path(sys.argv[0]).name} up --tls-dir {args.dir}          # mutual TLS on every hop")
    print(f"  {Path(sys.argv[0]).name} predict --tls-dir {args.dir} --driver 1001 --customer 2001")
    return 0


def _print_rpc_error(err: grpc.RpcError) -> int:
    print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
    return 1


#: Exit status when the call succeeded but some rows carry an error (a script can tell).
EXIT_SOME_ROWS_FAILED = 3


def _print_reply(reply: prediction_pb2.PredictResponse) -> int:
    print(MessageToJson(reply, indent=2))
    failed = [i for i, p in enumerate(reply.predictions) if p.WhichOneof("result") == "error"]
    if failed:
        print(f"error: {len(failed)} of {len(reply.predictions)} rows failed (rows {failed[:10]})", file=sys.stderr)
        return EXIT_SOME_ROWS_FAILED
    return 0


def _int64(text: str) -> int:
    """argparse type of an entity id: an int64, or a usage error naming the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is outside the int64 range of entity keys")
    return value


GATEWAY_TARGET_HELP = (
    f"gateway address (default: as `meshserve up` runs it: 127.0.0.1:50051 plus ${PORT_OFFSET_ENV}, or MESHSERVE_GATEWAY_PORT/_HOST)"
)


def local_stack_config(port_offset: int) -> StackConfig:
    """Where `meshserve up` places each service (MESHSERVE_<SVC>_PORT/_HOST, the port offset).
    SystemExit(2) names a bad value."""
    from meshserve_runtime.settings import meshserve_home

    try:
        return StackConfig.from_env(meshserve_home(), port_offset=port_offset)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def gateway_target(args: argparse.Namespace) -> str:
    """--target, else where `meshserve up` puts the gateway (MESHSERVE_GATEWAY_PORT/_HOST,
    $MESHSERVE_LOCAL_PORT_OFFSET), as `meshserve health` finds it. SystemExit(2) names a bad value."""
    if args.target:
        return args.target
    offset = os.environ.get(PORT_OFFSET_ENV, "").strip() or "0"
    try:
        port_offset = int(offset)
    except ValueError:
        print(f"error: {PORT_OFFSET_ENV}={offset!r}: expected an integer", file=sys.stderr)
        raise SystemExit(2) from None
    return local_stack_config(port_offset).target("gateway")


def cmd_predict(args: argparse.Namespace) -> int:
    if len(args.driver) != len(args.customer):
        print("give one --customer per --driver", file=sys.stderr)
        return 2
    request = prediction_pb2.PredictEntitiesRequest()
    for d, c in zip(args.driver, args.customer):
        row = request.entities.add()
        row.values["driver_id"].int64_value = d
        row.values["customer_id"].int64_value = c
    with _channel(args, gateway_target(args)) as channel:
        try:
            reply = prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(
                request, timeout=args.timeout, metadata=_credentials(args)
            )
        except grpc.RpcError as err:
            return _print_rpc_error(err)
    return _print_reply(reply)


def cmd_predict_rows(args: argparse.Namespace) -> int:
    request = prediction_pb2.PredictRequest()
    for text in args.row:
        row = request.rows.add()
        for pair in text.split(","):
            name, eq, value = pair.partition("=")
            if not eq or not name.strip():
                # A usage error (exit 2), not a null value the server would then refuse
                # as a missing or unknown column.
                print(f"--row {text!r}: {pair!r} is not name=value (name=null or name= for a missing value)", file=sys.stderr)
                return 2
            row.values[name.strip()].CopyFrom(_value(value.strip()))
    with _channel(args, gateway_target(args)) as channel:
        try:
            reply = prediction_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=args.timeout, metadata=_credentials(args)
            )
        except grpc.RpcError as err:
            return _print_rpc_error(err)
    return _print_reply(reply)


def health_targets(args: argparse.Namespace) -> dict[str, str]:
    """Where each service is: found as `meshserve up` places them (MESHSERVE_<SVC>_PORT/_HOST,
    --port-offset), then --host and --target. SystemExit(2) names a bad value."""
    config = local_stack_config(args.port_offset)
    targets = {s: f"{args.host}:{config.ports[s]}" if args.host else config.target(s) for s in DEFAULT_PORTS}
    for item in args.target:
        service, _, address = item.partition("=")
        if service not in targets or not re.fullmatch(r"\S+:\d+", address):
            print(f"--target {item!r}: expected SVC=HOST:PORT with SVC one of {', '.join(targets)}", file=sys.stderr)
            raise SystemExit(2)
        targets[service] = address
    return targets


def cmd_health(args: argparse.Namespace) -> int:
    worst = 0
    for service, target in health_targets(args).items():
        with _channel(args, target) as channel:
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


def cmd_api_key(args: argparse.Namespace) -> int:
    """A random key for the caller, and the keys-file line that holds only its sha256."""
    # The gateway's rule for caller ids (meshserve_gateway.auth.CALLER_ID); checked here too
    # so a bad name fails now rather than when the gateway loads the file.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.caller) or args.caller in ("other", "unauthenticated"):
        print(f"caller id {args.caller!r}: use letters, digits, . _ - (at most 64, not other/unauthenticated)", file=sys.stderr)
        return 2
    key = secrets.token_urlsafe(32)
    print(f"# line for the gateway's keys file (MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE):\n{args.caller}:{hashlib.sha256(key.encode()).hexdigest()}")
    print(f"# the key, for {args.caller} only (shown once; store it in the caller's secret store):\n{key}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="score entity rows (features from the online store)")
    p.add_argument("--driver", type=_int64, action="append", required=True)
    p.add_argument("--customer", type=_int64, action="append", required=True)
    p.add_argument("--target", default=None, help=GATEWAY_TARGET_HELP)
    p.add_argument("--timeout", type=float, default=10.0)
    _add_credential_args(p)
    _add_tls_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("predict-rows", help="score raw feature rows (no feature store)")
    p.add_argument("--row", action="append", required=True, help="name=value,name=value,...")
    p.add_argument("--target", default=None, help=GATEWAY_TARGET_HELP)
    p.add_argument("--timeout", type=float, default=10.0)
    _add_credential_args(p)
    _add_tls_args(p)
    p.set_defaults(func=cmd_predict_rows)

    p = sub.add_parser("health", help="health of the four local services")
    p.add_argument("--host", default=None, help="host of all four (default: MESHSERVE_<SVC>_HOST, else 127.0.0.1)")
    p.add_argument(
        "--port-offset", type=int, metavar="N", default=os.environ.get(PORT_OFFSET_ENV, "0"),
        help=f"the stack runs on the default ports plus N, as `meshserve up --port-offset N` (default: ${PORT_OFFSET_ENV} or 0); "
        "MESHSERVE_<SVC>_PORT, where set, wins",
    )
    p.add_argument("--target", action="append", default=[], metavar="SVC=HOST:PORT",
                   help="address of one service, e.g. gateway=127.0.0.1:60051 (repeatable; wins over the others)")
    p.add_argument("--timeout", type=float, default=2.0)
    _add_tls_args(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("dev-certs", help="write a throw-away CA and a certificate (ca.crt, tls.crt, tls.key) to try TLS locally")
    p.add_argument("dir", type=Path)
    p.add_argument("--days", type=int, default=30, help="validity of the certificate")
    p.add_argument("--host", action="append", default=[], help="extra DNS name or IP in the certificate (besides localhost, 127.0.0.1, ::1)")
    p.set_defaults(func=cmd_dev_certs)

    p = sub.add_parser("api-key", help="make a new API key for a caller, and its line for the gateway's keys file")
    p.add_argument("--caller", required=True, help="caller id: letters, digits, . _ - (it becomes a metric label)")
    p.set_defaults(func=cmd_api_key)

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
