"""`python -m meshserve_training train [--if-empty] [--alias NAME] [--seed N] [--online-store sqlite|redis] [--redis-url URL] [--materialize-redis URL]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

from meshserve_runtime.logging import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshserve_training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the demo model, register it in MLflow, materialize features")
    t.add_argument("--if-empty", action="store_true", help="do nothing if both aliases already resolve (refresh stale online features only)")
    t.add_argument("--alias", help="alias to set on the new versions (default: MESHSERVE_TRAINING_ALIAS or production)")
    t.add_argument("--seed", type=int, help="training seed (default: MESHSERVE_TRAINING_SEED or 7)")
    t.add_argument("--online-store", choices=["sqlite", "redis"], help="online store to materialize into (default: MESHSERVE_FEATURES_ONLINE_STORE or sqlite)")
    t.add_argument("--redis-url", help="Redis for --online-store redis (default: MESHSERVE_FEATURES_REDIS_URL or 127.0.0.1:6379)")
    t.add_argument("--materialize-redis", metavar="URL", help="also materialize into this Redis (host:port[,db=N]) next to the configured store")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("INFO", json_lines=False)
    logging.getLogger("feast").setLevel(logging.WARNING)  # it logs every registry refresh at INFO
    # Imported after parsing so --help is instant (feast and torch take seconds).
    from meshserve_feature_repo.config import FeastSettings
    from meshserve_training.preflight import PreflightError
    from meshserve_training.settings import TrainingSettings
    from meshserve_training.train import train

    overrides = {k: v for k, v in (("alias", args.alias), ("seed", args.seed)) if v is not None}
    settings = TrainingSettings(**overrides)
    store_overrides = {k: v for k, v in (("online_store", args.online_store), ("redis_url", args.redis_url)) if v is not None}
    feast = FeastSettings(**store_overrides)
    extra = []
    if args.materialize_redis:
        extra.append(FeastSettings(online_store="redis", redis_url=args.materialize_redis))
    start = time.perf_counter()
    try:
        result = train(settings, feast, extra_stores=extra, if_empty=args.if_empty)
    except PreflightError as err:
        # A setting to fix, not a crash: one line (the stack launcher repeats it) and exit 2.
        print(f"cannot train: {err}", file=sys.stderr)
        return 2
    summary = {
        "trained": result.pair is not None,
        "pair": dataclasses.asdict(result.pair) if result.pair is not None else None,
        "metrics": result.metrics,
        "materialized": result.materialized,
        "seconds": {**result.seconds, "total": round(time.perf_counter() - start, 2)},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
