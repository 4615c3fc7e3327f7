from meshserve.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictEntitiesRequest(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[_types_pb2.Row]
    def __init__(self, entities: _Optional[_Iterable[_Union[_types_pb2.Row, _Mapping]]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_types_pb2.Row]
    def __init__(self, rows: _Optional[_Iterable[_Union[_types_pb2.Row, _Mapping]]] = ...) -> None: ...

class RowError(_message.Message):
    __slots__ = ("code", "status", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    status: str
    message: str
    def __init__(self, code: _Optional[int] = ..., status: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RowPrediction(_message.Message):
    __slots__ = ("probability", "error")
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    probability: float
    error: RowError
    def __init__(self, probability: _Optional[float] = ..., error: _Optional[_Union[RowError, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions", "model", "preprocessor")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[RowPrediction]
    model: _types_pb2.ArtifactIdentity
    preprocessor: _types_pb2.ArtifactIdentity
    def __init__(self, predictions: _Optional[_Iterable[_Union[RowPrediction, _Mapping]]] = ..., model: _Optional[_Union[_types_pb2.ArtifactIdentity, _Mapping]] = ..., preprocessor: _Optional[_Union[_types_pb2.ArtifactIdentity, _Mapping]] = ...) -> None: ...
