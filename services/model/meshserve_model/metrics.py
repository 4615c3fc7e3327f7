"""Model service metrics (meshserve_model_ prefix): batching, inference and the device."""

from __future__ import annotations

import torch
from prometheus_client import Counter, Gauge, Histogram, Info

from meshserve_runtime.metrics import LATENCY_BUCKETS

# Rows per forward pass: powers of two, the sizes the batcher's warm-up covers.
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

BATCH_SIZE = Histogram(
    "meshserve_model_batch_size",
    "Rows per forward pass (after merging concurrent ModelInfer calls).",
    buckets=_ROW_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "meshserve_model_queue_depth",
    "ModelInfer calls waiting for a forward pass.",
)
QUEUE_WAIT = Histogram(
    "meshserve_model_queue_wait_seconds",
    "Time a call waited in the batching queue before its forward pass started.",
    buckets=LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    "meshserve_model_inference_seconds",
    "Time of one forward pass (merge, copy to device, forward, copy back).",
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "meshserve_model_queue_rejected_total",
    "ModelInfer calls answered RESOURCE_EXHAUSTED because the batching queue was full.",
)
RELOADS = Counter(
    "meshserve_model_reloads_total",
    "Hot reloads after the served alias moved, by outcome.",
    ["outcome"],
)
DEVICE_INFO = Info(
    "meshserve_model_device",
    "Where inference runs: device, dtype, torch threads, torch version.",
)
# Registered on the first GPU model only (export_device): a CPU pod exports no CUDA series
# at all, rather than a 0 that reads as "a GPU with nothing allocated".
CUDA_MEMORY: Gauge | None = None


def export_device(device: torch.device, dtype: str, num_threads: int) -> None:
    DEVICE_INFO.info({"device": str(device), "dtype": dtype, "threads": str(num_threads), "torch": torch.__version__})
    global CUDA_MEMORY
    if device.type == "cuda":
        if CUDA_MEMORY is None:
            CUDA_MEMORY = Gauge(
                "meshserve_model_cuda_memory_allocated_bytes",
                "CUDA memory held by tensors (only exported when the model runs on a GPU).",
            )
        # Read at scrape time: no per-request cost.
        CUDA_MEMORY.set_function(lambda: float(torch.cuda.memory_allocated(device)))
