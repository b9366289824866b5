"""DriverService profiles over a real grpc.aio channel: CRUD, list, replays, restarts."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2
from rideshare.drivers.v1 import drivers_pb2 as pb

NAME = re.compile(r"^drivers/[0-9a-f]{32}$")
DOMAIN = "drivers.rideshare"
MISSING = "drivers/" + "0" * 32


def update(drivers, driver: pb.Driver, *paths: str, request_id: str = "") -> pb.Driver:
    request = pb.UpdateDriverRequest(
        driver=driver, update_mask=field_mask_pb2.FieldMask(paths=list(paths)), request_id=request_id
    )
    return drivers.call(drivers.stub.UpdateDriver(request))


def list_all(drivers, page_size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        response = drivers.call(
            drivers.stub.ListDrivers(pb.ListDriversRequest(page_size=page_size, page_token=token))
        )
        pages.append([d.name for d in response.drivers])
        token = response.next_page_token
        if not token:
            return pages


def test_a_new_driver_is_offline_with_no_location(drivers):
    created = drivers.create(
        display_name="  Dee  ",
        vehicle=pb.Vehicle(make="Toyota", model="Prius", license_plate=" AB12 CDE "),
        name="drivers/mine",
        status=pb.DRIVER_STATUS_AVAILABLE,
        current_trip="trips/1",
    )

    assert NAME.match(created.name)
    assert created.display_name == "Dee"
    assert created.vehicle == pb.Vehicle(make="Toyota", model="Prius", license_plate="AB12 CDE")
    assert created.status == pb.DRIVER_STATUS_OFFLINE
    assert created.current_trip == ""
    assert not created.HasField("location")
    assert not created.HasField("location_update_time")
    assert created.update_time == created.create_time
    assert drivers.get(created.name) == created


def test_update_changes_profile_fields_only(drivers):
    created = drivers.create()
    online = drivers.go_online(created.name, 51.5, -0.1)

    changed = update(drivers, pb.Driver(name=created.name, display_name="Sam"), "display_name")
    assert changed.display_name == "Sam"
    assert changed.vehicle == created.vehicle
    assert (changed.status, changed.location) == (online.status, online.location)

    vehicle = pb.Vehicle(make="Kia", model="Niro", license_plate="XY99 ZZZ")
    replaced = update(drivers, pb.Driver(name=created.name, vehicle=vehicle))
    assert replaced.vehicle == vehicle
    assert replaced.display_name == "Sam"
    assert drivers.get(created.name) == replaced


@pytest.mark.parametrize("path", ["status", "location", "current_trip", "create_time"])
def test_update_refuses_fields_that_only_custom_methods_change(drivers, path):
    created = drivers.create()
    request = pb.UpdateDriverRequest(
        driver=pb.Driver(name=created.name, status=pb.DRIVER_STATUS_AVAILABLE),
        update_mask=field_mask_pb2.FieldMask(paths=[path]),
    )

    failure = drivers.fail(drivers.stub.UpdateDriver(request))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["update_mask"]
    assert drivers.get(created.name) == created


def test_update_to_an_incomplete_vehicle_is_refused(drivers):
    created = drivers.create()

    failure = drivers.fail(
        drivers.stub.UpdateDriver(
            pb.UpdateDriverRequest(
                driver=pb.Driver(name=created.name, vehicle=pb.Vehicle(make="Kia")),
                update_mask=field_mask_pb2.FieldMask(paths=["vehicle"]),
            )
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["driver.vehicle.model", "driver.vehicle.license_plate"]
    assert drivers.get(created.name) == created


@pytest.mark.parametrize(
    ("driver", "fields"),
    [
        (None, ["driver"]),
        (pb.Driver(display_name="Dee"), ["driver.vehicle"]),
        (
            pb.Driver(display_name=" ", vehicle=pb.Vehicle(make="Kia", model="Niro", license_plate="X")),
            ["driver.display_name"],
        ),
        (
            pb.Driver(
                display_name="Dee", vehicle=pb.Vehicle(make="Kia", model="m" * 101, license_plate="x" * 21)
            ),
            ["driver.vehicle.model", "driver.vehicle.license_plate"],
        ),
        (
            pb.Driver(display_name="Dee", vehicle=pb.Vehicle(make="Kia", model="Niro")),
            ["driver.vehicle.license_plate"],
        ),
    ],
)
def test_incomplete_or_bad_profiles_are_refused(drivers, driver, fields):
    failure = drivers.fail(drivers.stub.CreateDriver(pb.CreateDriverRequest(driver=driver)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == fields
    assert failure.info.domain == DOMAIN
    assert list_all(drivers, 10) == [[]]


@pytest.mark.parametrize(
    "rpc",
    [
        lambda stub: stub.GetDriver(pb.GetDriverRequest(name=MISSING)),
        lambda stub: stub.DeleteDriver(pb.DeleteDriverRequest(name=MISSING)),
        lambda stub: stub.UpdateDriver(
            pb.UpdateDriverRequest(driver=pb.Driver(name=MISSING, display_name="X"))
        ),
        lambda stub: stub.GoOnline(pb.GoOnlineRequest(name=MISSING, location={"latitude": 1})),
        lambda stub: stub.GoOffline(pb.GoOfflineRequest(name=MISSING)),
        lambda stub: stub.UpdateDriverLocation(
            pb.UpdateDriverLocationRequest(name=MISSING, location={"latitude": 1})
        ),
        lambda stub: stub.ReleaseTrip(pb.ReleaseTripRequest(name=MISSING, trip="trips/t1")),
    ],
)
def test_every_method_on_a_missing_driver_is_driver_not_found(drivers, rpc):
    failure = drivers.fail(rpc(drivers.stub))

    assert failure.code is grpc.StatusCode.NOT_FOUND
    assert failure.info.reason == "DRIVER_NOT_FOUND"
    assert failure.info.domain == DOMAIN
    assert dict(failure.info.metadata) == {"name": MISSING}


@pytest.mark.parametrize(
    ("rpc", "field"),
    [
        (lambda stub: stub.GetDriver(pb.GetDriverRequest(name="passengers/1")), "name"),
        (lambda stub: stub.ReleaseTrip(pb.ReleaseTripRequest(name="drivers/1", trip="trips/1/x")), "trip"),
        (lambda stub: stub.ListDrivers(pb.ListDriversRequest(page_token="forged")), "page_token"),
        (lambda stub: stub.ListDrivers(pb.ListDriversRequest(page_size=-1)), "page_size"),
    ],
)
def test_malformed_requests_name_the_field(drivers, rpc, field):
    failure = drivers.fail(rpc(drivers.stub))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == [field]


def test_list_pages_through_everything_in_registration_order(drivers):
    names = [drivers.create(display_name=f"Driver {i}").name for i in range(5)]

    assert list_all(drivers, 2) == [names[0:2], names[2:4], names[4:5]]
    assert list_all(drivers, 0) == [names]


def test_delete_removes_the_driver(drivers):
    created = drivers.create()

    deleted = drivers.call(drivers.stub.DeleteDriver(pb.DeleteDriverRequest(name=created.name)))

    assert deleted == empty_pb2.Empty()
    assert drivers.fail(drivers.stub.GetDriver(pb.GetDriverRequest(name=created.name))).info.reason == (
        "DRIVER_NOT_FOUND"
    )


def test_create_replayed_with_the_same_request_id_returns_the_same_driver(drivers):
    first = drivers.create(request_id="c-1")
    again = drivers.create(request_id="c-1")

    assert again == first
    assert list_all(drivers, 10) == [[first.name]]


def test_request_id_reused_for_a_different_request_is_refused(drivers):
    drivers.create(request_id="c-1")

    failure = drivers.fail(
        drivers.stub.CreateDriver(
            pb.CreateDriverRequest(
                driver=pb.Driver(
                    display_name="Other", vehicle=pb.Vehicle(make="Kia", model="Niro", license_plate="X")
                ),
                request_id="c-1",
            )
        )
    )

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert failure.fields == ["request_id"]
    assert len(list_all(drivers, 10)[0]) == 1


def test_update_and_delete_replays_return_the_first_answer(drivers):
    created = drivers.create()
    patch = pb.Driver(name=created.name, display_name="Sam")

    first = update(drivers, patch, request_id="u-1")
    update(drivers, pb.Driver(name=created.name, display_name="Later"))
    assert update(drivers, patch, request_id="u-1") == first
    assert drivers.get(created.name).display_name == "Later"

    delete = pb.DeleteDriverRequest(name=created.name, request_id="d-1")
    drivers.call(drivers.stub.DeleteDriver(delete))
    assert drivers.call(drivers.stub.DeleteDriver(delete)) == empty_pb2.Empty()


def test_drivers_and_replays_survive_a_restart(drivers):
    busy = drivers.online(51.5, -0.12, request_id="c-busy")
    busy = drivers.assign(busy.name, "trips/t1")
    free = drivers.online(51.5, -0.13)
    offline = drivers.create()

    drivers.restart()

    assert drivers.get(busy.name) == busy
    assert drivers.get(free.name) == free
    assert drivers.get(offline.name) == offline
    assert [r.driver.name for r in drivers.search(51.5, -0.12, 5000)] == [free.name]
    replayed = drivers.create(request_id="c-busy")
    assert replayed.name == busy.name
    assert replayed.status == pb.DRIVER_STATUS_OFFLINE
    assert list_all(drivers, 10) == [[busy.name, free.name, offline.name]]
