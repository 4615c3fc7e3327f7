"""Forward-pass time of the registered model in each way we could serve it.

`python -m meshserve_model.bench_forward` (MESHSERVE_HOME pointing at a trained home):
the registered pt2 (torch.export) module as MLflow loads it, an eager nn.Module with the
same weights, torch.compile of both, and torch.jit.trace, at batch 1 and 64, 1 thread,
under inference_mode. Prints the median of many timed calls per cell (microseconds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from meshserve_model.settings import ModelSettings


def _median_us(fn: Callable[[], object], repeats: int = 2000) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    import mlflow.pytorch

    from meshserve_runtime.registry import resolve_alias

    torch.set_num_threads(1)
    s = ModelSettings()
    artifact = resolve_alias(s.mlflow_tracking_uri, s.model_name, s.alias)
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)
    pt2 = mlflow.pytorch.load_model(artifact.uri, map_location="cpu")
    variants: dict[str, Callable[[torch.Tensor], object]] = {"pt2 (MLflow default, torch.export)": pt2}
    state = {k: v for k, v in pt2.state_dict().items()}
    n_in = next(v for k, v in state.items() if k.endswith("weight")).shape[1]
    try:  # the eager equivalent needs the training code (bench only; serving never imports it)
        from meshserve_training.model import RankingMLP

        eager = RankingMLP(n_in)
        eager.load_state_dict(state)
        eager.eval()
        variants["eager nn.Module"] = eager
    except Exception as err:  # noqa: BLE001
        print(f"eager: skipped ({err})")
    example = torch.zeros(64, n_in)
    with torch.inference_mode():
        variants["torch.jit.trace(pt2)"] = torch.jit.trace(pt2, example, check_trace=False)
    for name in list(variants):
        if name.startswith(("pt2", "eager")):
            variants[f"torch.compile({name.split(' ')[0]})"] = torch.compile(variants[name], dynamic=True)
    print(f"model {artifact.uri}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| variant | batch 1 (us) | batch 64 (us) |\n|---|---|---|")
    for name, module in variants.items():
        cells = []
        for n in (1, 64):
            x = torch.randn(n, n_in)
            with torch.inference_mode():
                try:
                    cells.append(f"{_median_us(partial(module, x)):.1f}")
                except Exception as err:  # noqa: BLE001
                    cells.append(f"failed: {type(err).__name__}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
