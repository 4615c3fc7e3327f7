"""Forward-pass floor: the registered model, loaded the way the model service loads it.

`python -m bench.forward OUT.json SECONDS` (MESHSERVE_HOME set): median time of one
forward pass at batch 1 and 64, one intra-op thread, inference mode.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from meshserve_model.model import load_model
    from meshserve_model.settings import ModelSettings

    out, seconds = Path(sys.argv[1]), float(sys.argv[2])
    s = ModelSettings()
    loaded = load_model(s.mlflow_tracking_uri, s.model_name, s.alias, "cpu", 1, (1, 64))
    result: dict[str, float | str] = {"model_version": loaded.artifact.version, "module": type(loaded.module).__name__}
    rng = np.random.default_rng(0)
    for batch in (1, 64):
        x = rng.standard_normal((batch, loaded.num_features)).astype(np.float32)
        times = []
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            loaded.predict(x)
            times.append(time.perf_counter() - t0)
        result[f"batch_{batch}_p50_ms"] = float(np.median(times) * 1e3)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
