"""Our contracts (protos/meshserve/v1) are documented: every service, rpc, message, field,
oneof, enum and enum value has a leading comment, and every file names its packages for
the other languages' code generators. The KServe V2 proto is third-party and not checked.

The .proto files are compiled with source info (comments and their locations), as
`buf lint` with the COMMENTS rules does (protos/buf.yaml), but with nothing beyond
grpc_tools, so the check runs wherever the unit tests do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
OURS = "meshserve/v1/"

# Field numbers in descriptor.proto: the paths of SourceCodeInfo.Location.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def compile_protos(proto_root: Path, files: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    """protoc with --include_source_info: a descriptor set that keeps the comments."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *files,
    ]
    assert protoc.main(args) == 0, f"protoc failed on {files}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Every element of `file` without a non-blank leading comment, as "kind full.name"."""
    comments = {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in file.source_code_info.location
    }
    missing: list[str] = []

    def check(path: tuple[int, ...], kind: str, name: str) -> None:
        if not comments.get(path):
            missing.append(f"{kind} {name}")

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        check(path, "enum", f"{scope}.{enum.name}")
        for i, value in enumerate(enum.value):
            check((*path, _ENUM_VALUE, i), "enum value", f"{scope}.{enum.name}.{value.name}")

    def walk_message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        if msg.options.map_entry:
            return  # the synthetic entry message of a map field: documented by the field
        name = f"{scope}.{msg.name}"
        check(path, "message", name)
        for i, field in enumerate(msg.field):
            check((*path, _MESSAGE_FIELD, i), "field", f"{name}.{field.name}")
        for i, oneof in enumerate(msg.oneof_decl):
            members = [f for f in msg.field if f.HasField("oneof_index") and f.oneof_index == i]
            if members and all(f.proto3_optional for f in members):
                continue  # synthetic oneof of a proto3 `optional` field
            check((*path, _MESSAGE_ONEOF, i), "oneof", f"{name}.{oneof.name}")
        for i, nested in enumerate(msg.nested_type):
            walk_message(nested, (*path, _MESSAGE_NESTED, i), name)
        for i, enum in enumerate(msg.enum_type):
            walk_enum(enum, (*path, _MESSAGE_ENUM, i), name)

    package = file.package
    for i, msg in enumerate(file.message_type):
        walk_message(msg, (_FILE_MESSAGE, i), package)
    for i, enum in enumerate(file.enum_type):
        walk_enum(enum, (_FILE_ENUM, i), package)
    for i, service in enumerate(file.service):
        check((_FILE_SERVICE, i), "service", f"{package}.{service.name}")
        for j, method in enumerate(service.method):
            check((_FILE_SERVICE, i, _SERVICE_METHOD, j), "rpc", f"{package}.{service.name}.{method.name}")
    return missing


def _our_files() -> list[str]:
    files = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / OURS).glob("*.proto"))
    assert files, f"no .proto files under {PROTO_ROOT / OURS}"
    return files


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    files = _our_files()
    fds = compile_protos(PROTO_ROOT, files, tmp_path_factory.mktemp("protos") / "ours.pb")
    by_name = {f.name: f for f in fds.file}
    return [by_name[name] for name in files]


def test_every_element_of_our_protos_has_a_leading_comment(ours: list[descriptor_pb2.FileDescriptorProto]) -> None:
    missing = [f"{f.name}: {what}" for f in ours for what in undocumented(f)]
    assert not missing, "add a leading comment (what it means, units, limits, defaults) to:\n  " + "\n  ".join(missing)


def test_the_check_sees_every_kind_of_element(ours: list[descriptor_pb2.FileDescriptorProto]) -> None:
    """Not vacuous: our files do have services, rpcs, messages, fields, oneofs, enums and values."""
    assert sum(len(f.service) for f in ours) >= 3
    assert sum(len(s.method) for f in ours for s in f.service) >= 4
    assert sum(len(m.oneof_decl) for f in ours for m in f.message_type) >= 2
    assert sum(len(e.value) for f in ours for e in f.enum_type) >= 8


def test_an_undocumented_element_is_reported(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "t.proto").write_text(
        'syntax = "proto3";\n'
        "package x;\n"
        "// Documented.\n"
        "service S {\n"
        "  rpc Call(M) returns (M);\n"
        "}\n"
        "// Documented.\n"
        "message M {\n"
        "  // Documented.\n"
        "  string a = 1;\n"
        "  int64 b = 2;  // a trailing comment is not a leading one\n"
        "  map<string, E> c = 3;\n"
        "  oneof o {\n"
        "    // Documented.\n"
        "    bool d = 4;\n"
        "  }\n"
        "  //\n"
        "  optional bool e = 5;\n"
        "  message Inner { int32 f = 1; }\n"
        "}\n"
        "enum E {\n"
        "  // Documented.\n"
        "  E_UNSPECIFIED = 0;\n"
        "  E_ONE = 1;\n"
        "}\n"
    )
    fds = compile_protos(tmp_path, ["x/t.proto"], tmp_path / "t.pb")
    assert sorted(undocumented(fds.file[0])) == sorted([
        "rpc x.S.Call",
        "field x.M.b",
        "field x.M.c",
        "oneof x.M.o",
        "field x.M.e",
        "message x.M.Inner",
        "field x.M.Inner.f",
        "enum x.E",
        "enum value x.E.E_ONE",
    ])


def test_our_protos_name_their_packages_for_other_languages(ours: list[descriptor_pb2.FileDescriptorProto]) -> None:
    for f in ours:
        o = f.options
        assert o.go_package == "github.com/meshserve/meshserve/gen/go/meshserve/v1;meshservev1", f.name
        assert o.java_package == "com.meshserve.v1" and o.java_multiple_files, f.name
        assert o.java_outer_classname == Path(f.name).stem.capitalize() + "Proto", f.name
        assert o.csharp_namespace == "Meshserve.V1" and o.php_namespace == "Meshserve\\V1", f.name
