import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import latlng_pb2 as _latlng_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriverStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIVER_STATUS_UNSPECIFIED: _ClassVar[DriverStatus]
    DRIVER_STATUS_OFFLINE: _ClassVar[DriverStatus]
    DRIVER_STATUS_AVAILABLE: _ClassVar[DriverStatus]
    DRIVER_STATUS_ON_TRIP: _ClassVar[DriverStatus]
DRIVER_STATUS_UNSPECIFIED: DriverStatus
DRIVER_STATUS_OFFLINE: DriverStatus
DRIVER_STATUS_AVAILABLE: DriverStatus
DRIVER_STATUS_ON_TRIP: DriverStatus

class Driver(_message.Message):
    __slots__ = ("name", "display_name", "vehicle", "status", "location", "current_trip", "location_update_time", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TRIP_FIELD_NUMBER: _ClassVar[int]
    LOCATION_UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    vehicle: Vehicle
    status: DriverStatus
    location: _latlng_pb2.LatLng
    current_trip: str
    location_update_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., vehicle: _Optional[_Union[Vehicle, _Mapping]] = ..., status: _Optional[_Union[DriverStatus, str]] = ..., location: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., current_trip: _Optional[str] = ..., location_update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Vehicle(_message.Message):
    __slots__ = ("make", "model", "license_plate")
    MAKE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LICENSE_PLATE_FIELD_NUMBER: _ClassVar[int]
    make: str
    model: str
    license_plate: str
    def __init__(self, make: _Optional[str] = ..., model: _Optional[str] = ..., license_plate: _Optional[str] = ...) -> None: ...

class CreateDriverRequest(_message.Message):
    __slots__ = ("driver", "request_id")
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    driver: Driver
    request_id: str
    def __init__(self, driver: _Optional[_Union[Driver, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetDriverRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDriversRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDriversResponse(_message.Message):
    __slots__ = ("drivers", "next_page_token")
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    drivers: _containers.RepeatedCompositeFieldContainer[Driver]
    next_page_token: str
    def __init__(self, drivers: _Optional[_Iterable[_Union[Driver, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateDriverRequest(_message.Message):
    __slots__ = ("driver", "update_mask", "request_id")
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    driver: Driver
    update_mask: _field_mask_pb2.FieldMask
    request_id: str
    def __init__(self, driver: _Optional[_Union[Driver, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteDriverRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GoOnlineRequest(_message.Message):
    __slots__ = ("name", "location", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    location: _latlng_pb2.LatLng
    request_id: str
    def __init__(self, name: _Optional[str] = ..., location: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GoOfflineRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateDriverLocationRequest(_message.Message):
    __slots__ = ("name", "location", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    location: _latlng_pb2.LatLng
    request_id: str
    def __init__(self, name: _Optional[str] = ..., location: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SearchDriversRequest(_message.Message):
    __slots__ = ("location", "radius_meters", "page_size")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    location: _latlng_pb2.LatLng
    radius_meters: float
    page_size: int
    def __init__(self, location: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., radius_meters: _Optional[float] = ..., page_size: _Optional[int] = ...) -> None: ...

class SearchDriversResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DriverSearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DriverSearchResult, _Mapping]]] = ...) -> None: ...

class DriverSearchResult(_message.Message):
    __slots__ = ("driver", "distance_meters")
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    driver: Driver
    distance_meters: float
    def __init__(self, driver: _Optional[_Union[Driver, _Mapping]] = ..., distance_meters: _Optional[float] = ...) -> None: ...

class AssignTripRequest(_message.Message):
    __slots__ = ("name", "trip", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRIP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    trip: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., trip: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReleaseTripRequest(_message.Message):
    __slots__ = ("name", "trip", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRIP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    trip: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., trip: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
