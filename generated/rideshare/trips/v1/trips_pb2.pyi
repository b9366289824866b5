import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.type import latlng_pb2 as _latlng_pb2
from google.type import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TripState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIP_STATE_UNSPECIFIED: _ClassVar[TripState]
    TRIP_STATE_DRIVER_ASSIGNED: _ClassVar[TripState]
    TRIP_STATE_ACCEPTED: _ClassVar[TripState]
    TRIP_STATE_IN_PROGRESS: _ClassVar[TripState]
    TRIP_STATE_COMPLETED: _ClassVar[TripState]
    TRIP_STATE_CANCELLED: _ClassVar[TripState]

class TripPaymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIP_PAYMENT_STATE_UNSPECIFIED: _ClassVar[TripPaymentState]
    TRIP_PAYMENT_STATE_NOT_CHARGED: _ClassVar[TripPaymentState]
    TRIP_PAYMENT_STATE_SUCCEEDED: _ClassVar[TripPaymentState]
    TRIP_PAYMENT_STATE_DECLINED: _ClassVar[TripPaymentState]
TRIP_STATE_UNSPECIFIED: TripState
TRIP_STATE_DRIVER_ASSIGNED: TripState
TRIP_STATE_ACCEPTED: TripState
TRIP_STATE_IN_PROGRESS: TripState
TRIP_STATE_COMPLETED: TripState
TRIP_STATE_CANCELLED: TripState
TRIP_PAYMENT_STATE_UNSPECIFIED: TripPaymentState
TRIP_PAYMENT_STATE_NOT_CHARGED: TripPaymentState
TRIP_PAYMENT_STATE_SUCCEEDED: TripPaymentState
TRIP_PAYMENT_STATE_DECLINED: TripPaymentState

class Trip(_message.Message):
    __slots__ = ("name", "passenger", "driver", "pickup", "dropoff", "state", "fare", "distance_meters", "estimated_duration", "payment_method", "invoice", "payment", "payment_state", "cancel_reason", "create_time", "update_time", "start_time", "end_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSENGER_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    PICKUP_FIELD_NUMBER: _ClassVar[int]
    DROPOFF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FARE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_DURATION_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_STATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    passenger: str
    driver: str
    pickup: _latlng_pb2.LatLng
    dropoff: _latlng_pb2.LatLng
    state: TripState
    fare: _money_pb2.Money
    distance_meters: float
    estimated_duration: _duration_pb2.Duration
    payment_method: str
    invoice: str
    payment: str
    payment_state: TripPaymentState
    cancel_reason: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., passenger: _Optional[str] = ..., driver: _Optional[str] = ..., pickup: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., dropoff: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., state: _Optional[_Union[TripState, str]] = ..., fare: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., distance_meters: _Optional[float] = ..., estimated_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., payment_method: _Optional[str] = ..., invoice: _Optional[str] = ..., payment: _Optional[str] = ..., payment_state: _Optional[_Union[TripPaymentState, str]] = ..., cancel_reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RequestTripRequest(_message.Message):
    __slots__ = ("passenger", "pickup", "dropoff", "payment_method", "request_id")
    PASSENGER_FIELD_NUMBER: _ClassVar[int]
    PICKUP_FIELD_NUMBER: _ClassVar[int]
    DROPOFF_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    passenger: str
    pickup: _latlng_pb2.LatLng
    dropoff: _latlng_pb2.LatLng
    payment_method: str
    request_id: str
    def __init__(self, passenger: _Optional[str] = ..., pickup: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., dropoff: _Optional[_Union[_latlng_pb2.LatLng, _Mapping]] = ..., payment_method: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetTripRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListTripsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "passenger", "driver")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PASSENGER_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    passenger: str
    driver: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., passenger: _Optional[str] = ..., driver: _Optional[str] = ...) -> None: ...

class ListTripsResponse(_message.Message):
    __slots__ = ("trips", "next_page_token")
    TRIPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trips: _containers.RepeatedCompositeFieldContainer[Trip]
    next_page_token: str
    def __init__(self, trips: _Optional[_Iterable[_Union[Trip, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AcceptTripRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartTripRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CompleteTripRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelTripRequest(_message.Message):
    __slots__ = ("name", "reason", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
