"""Forward-pass floor: the registered model, loaded the way the model service loads it.

`python -m bench.forward OUT.json SECONDS` (MESHSERVE_HOME set): median time of one
forward pass at batch 1 and 64, one intra-op thread, inference mode: the module as
registered, and as the service serves it (its `optimize` setting).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _p50s(loaded: Any, seconds: float) -> dict[str, float]:
    rng = np.random.default_rng(0)
    out = {}
    for batch in (1, 64):
        x = rng.standard_normal((batch, loaded.num_features)).astype(np.float32)
        times = []
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            loaded.predict(x)
            times.append(time.perf_counter() - t0)
        out[f"batch_{batch}_p50_ms"] = float(np.median(times) * 1e3)
    return out


def main() -> None:
    from meshserve_model.model import load_model
    from meshserve_model.settings import ModelSettings

    out, seconds = Path(sys.argv[1]), float(sys.argv[2])
    s = ModelSettings()
    # The module as registered (MLflow's pt2 GraphModule), then as the service serves it
    # (its `optimize` setting, a checked jit trace by default): half the time each.
    registered = load_model(s.mlflow_tracking_uri, s.model_name, s.alias, "cpu", 1, (1, 64))
    result: dict[str, Any] = {"model_version": registered.artifact.version, "module": type(registered.module).__name__,
                              **_p50s(registered, seconds / 2)}
    served = load_model(s.mlflow_tracking_uri, s.model_name, s.alias, "cpu", 1, (1, 64), optimize=s.optimize)
    result["served"] = {"optimize": s.optimize, "module": type(served.module).__name__, **_p50s(served, seconds / 2)}
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
