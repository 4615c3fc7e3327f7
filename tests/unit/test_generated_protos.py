"""gen/python is committed; this fails when it differs from a fresh generation."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_stubs_match_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh = _tree(tmp_path / "meshserve")
    committed = _tree(ROOT / "gen" / "python" / "meshserve")
    assert sorted(fresh) == sorted(committed), "run `make protos`: generated file set differs"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"run `make protos`: stale generated files {stale}"


def test_v2_contract_field_numbers() -> None:
    """Spot-check the Open Inference Protocol numbers any V2 client relies on."""
    from meshserve.inference.v2 import open_inference_pb2 as v2

    req = v2.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert {n: req[n].number for n in ("model_name", "model_version", "id", "parameters", "inputs", "outputs", "raw_input_contents")} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6, "raw_input_contents": 7,
    }
    res = v2.ModelInferResponse.DESCRIPTOR.fields_by_name
    assert res["raw_output_contents"].number == 6 and res["outputs"].number == 5
    contents = v2.InferTensorContents.DESCRIPTOR.fields_by_name
    assert contents["fp32_contents"].number == 6 and contents["bytes_contents"].number == 8
    assert v2.DESCRIPTOR.package == "inference"
    assert [m.name for m in v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    ]


def test_the_stubs_package_is_typed_and_not_pinned(tmp_path: Path) -> None:
    """meshserve-protos, as a client installs it: a wheel with the .pyi stubs and PEP 561's
    py.typed, depending on version ranges (an exact pin would clash with the client's own)."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT / "gen" / "python")], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("meshserve_protos-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "meshserve/py.typed" in names
    assert {"meshserve/v1/prediction_pb2.pyi", "meshserve/v1/types_pb2.pyi"} <= names
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [r for r in requires if "==" in r], requires
