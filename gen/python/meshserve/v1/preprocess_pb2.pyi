from meshserve.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransformRequest(_message.Message):
    __slots__ = ("frame", "run_id")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    frame: _types_pb2.Frame
    run_id: str
    def __init__(self, frame: _Optional[_Union[_types_pb2.Frame, _Mapping]] = ..., run_id: _Optional[str] = ...) -> None: ...

class TransformResponse(_message.Message):
    __slots__ = ("tensor", "preprocessor")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_FIELD_NUMBER: _ClassVar[int]
    tensor: _types_pb2.Tensor
    preprocessor: _types_pb2.ArtifactIdentity
    def __init__(self, tensor: _Optional[_Union[_types_pb2.Tensor, _Mapping]] = ..., preprocessor: _Optional[_Union[_types_pb2.ArtifactIdentity, _Mapping]] = ...) -> None: ...

class GetPreprocessorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPreprocessorInfoResponse(_message.Message):
    __slots__ = ("input_columns", "num_outputs", "preprocessor")
    INPUT_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_FIELD_NUMBER: _ClassVar[int]
    input_columns: _containers.RepeatedScalarFieldContainer[str]
    num_outputs: int
    preprocessor: _types_pb2.ArtifactIdentity
    def __init__(self, input_columns: _Optional[_Iterable[str]] = ..., num_outputs: _Optional[int] = ..., preprocessor: _Optional[_Union[_types_pb2.ArtifactIdentity, _Mapping]] = ...) -> None: ...
