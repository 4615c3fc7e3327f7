"""Print (or check) the README's settings table, generated from the settings classes.

Usage: python tools/settings_table.py          # print the markdown table
       python tools/settings_table.py --write  # replace the table between the README markers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def settings_classes() -> list[tuple[str, type]]:
    from meshserve_feature_repo.config import FeastSettings
    from meshserve_features.settings import FeaturesSettings
    from meshserve_gateway.settings import GatewaySettings
    from meshserve_model.settings import ModelSettings
    from meshserve_preprocess.settings import PreprocessSettings

    return [
        ("gateway", GatewaySettings),
        ("features", FeaturesSettings),
        ("preprocess", PreprocessSettings),
        ("model", ModelSettings),
    ]


def _default(field) -> str:
    if field.default_factory is not None:
        text = str(field.default_factory())
        home = str(ROOT / ".meshserve")
        return text.replace(home, "$MESHSERVE_HOME")
    return str(field.default)


def table() -> str:
    """Shared server settings once (as MESHSERVE_<SERVICE>_*), then each service's own."""
    from meshserve_runtime.settings import ServerSettings
    from meshserve_training.settings import TrainingSettings

    lines = ["| service | variable | default | meaning |", "|---|---|---|---|"]
    shared = ServerSettings.model_fields
    for name, field in shared.items():
        if name in ("port", "metrics_port"):
            continue  # each service has its own default, listed below
        lines.append(_line("every service", f"MESHSERVE_<SERVICE>_{name.upper()}", field))
    for service, cls in [*settings_classes(), ("training", TrainingSettings)]:
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            if name in shared and name not in ("port", "metrics_port"):
                continue
            lines.append(_line(service, f"{prefix}{name.upper()}", field))
    return "\n".join(lines)


def _line(service: str, variable: str, field) -> str:
    desc = (field.description or "").replace("\n", " ").replace("|", "\\|")
    default = _default(field).replace("|", "\\|")
    return f"| {service} | `{variable}` | `{default}` | {desc} |"


def render_readme(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        import os

        os.environ.pop("MESHSERVE_HOME", None)
        README.write_text(render_readme(README.read_text()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
