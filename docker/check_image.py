"""Build-time check of a service venv (run by docker/Dockerfile's builder stage).

    python check_image.py SERVICE TORCH_VARIANT

Fails the build when the venv holds a package its service must not have, when the
service's modules do not import, or when torch is not the requested build (cpu, cu126...).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import sys

# feast only in features: it registers an MLflow plugin, so wherever it is installed the
# first MLflow call imports all of feast (6 s). torch only in model; mlflow only where a
# model is loaded from the registry.
FORBIDDEN = {
    "gateway": {"feast", "torch", "mlflow", "mlflow-skinny"},
    "features": {"torch", "mlflow", "mlflow-skinny"},
    "preprocess": {"feast", "torch"},
    "model": {"feast"},
}
REQUIRED = {
    "gateway": {"meshserve-gateway"},
    "features": {"meshserve-features", "feast", "redis"},
    "preprocess": {"meshserve-preprocess", "mlflow", "scikit-learn", "skops"},
    "model": {"meshserve-model", "mlflow", "torch"},
}
# Installer tooling has no business in a runtime venv (setuptools may stay: torch
# declares it as a run-time dependency).
TOOLING = {"pip", "wheel"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(service: str, torch_variant: str) -> int:
    if service not in FORBIDDEN:
        print(f"unknown service {service!r}: one of {sorted(FORBIDDEN)}", file=sys.stderr)
        return 2
    present = {normalize(d.metadata["Name"]): d.version for d in md.distributions()}
    errors = []
    if bad := sorted(FORBIDDEN[service] & present.keys()):
        errors.append(f"must not contain {bad}")
    if missing := sorted(REQUIRED[service] - present.keys()):
        errors.append(f"missing {missing}")
    if tooling := sorted(TOOLING & present.keys()):
        errors.append(f"build tooling in the runtime venv: {tooling}")
    torch_version = present.get("torch")
    if service == "model" and torch_version and not torch_version.endswith("+" + torch_variant):
        errors.append(f"torch {torch_version} is not the {torch_variant} build (TORCH_VARIANT)")
    if errors:
        print(f"meshserve-{service} image: " + "; ".join(errors), file=sys.stderr)
        return 1
    importlib.import_module(f"meshserve_{service}.service")
    print(f"meshserve-{service}: {len(present)} distributions, imports OK"
          + (f", torch {torch_version}" if torch_version else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
