"""The README's settings table is generated from the settings classes; keep it current."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_is_current(monkeypatch) -> None:
    monkeypatch.delenv("MESHSERVE_HOME", raising=False)
    monkeypatch.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import settings_table
    finally:
        sys.path.pop(0)
    readme = (ROOT / "README.md").read_text()
    assert settings_table.render_readme(readme) == readme, "run `python tools/settings_table.py --write`"
