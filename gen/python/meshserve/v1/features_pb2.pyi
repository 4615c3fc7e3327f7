from meshserve.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    FEATURE_STATUS_PRESENT: _ClassVar[FeatureStatus]
    FEATURE_STATUS_NOT_FOUND: _ClassVar[FeatureStatus]
    FEATURE_STATUS_OUTSIDE_MAX_AGE: _ClassVar[FeatureStatus]
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
FEATURE_STATUS_PRESENT: FeatureStatus
FEATURE_STATUS_NOT_FOUND: FeatureStatus
FEATURE_STATUS_OUTSIDE_MAX_AGE: FeatureStatus

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("entities", "feature_service")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    entities: _types_pb2.Frame
    feature_service: str
    def __init__(self, entities: _Optional[_Union[_types_pb2.Frame, _Mapping]] = ..., feature_service: _Optional[str] = ...) -> None: ...

class FeatureStatusColumn(_message.Message):
    __slots__ = ("name", "statuses")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    def __init__(self, name: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("features", "statuses", "feature_service")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    features: _types_pb2.Frame
    statuses: _containers.RepeatedCompositeFieldContainer[FeatureStatusColumn]
    feature_service: str
    def __init__(self, features: _Optional[_Union[_types_pb2.Frame, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatusColumn, _Mapping]]] = ..., feature_service: _Optional[str] = ...) -> None: ...
