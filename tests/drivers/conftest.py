"""A running driver service on a free port, with helpers to make drivers in a given state."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.type import latlng_pb2
from rideshare.drivers.v1 import drivers_pb2 as pb
from rideshare.drivers.v1 import drivers_pb2_grpc

from services.drivers.store import MIGRATIONS, DriverStore
from tests.conftest import MESH_TOML, Running, ServeFactory, write_mesh_file
from tests.postgres import Backends

MESH = MESH_TOML + "\n[services.drivers]\nport = 0\n"

#: Trafalgar Square; the tests place drivers around it.
CENTER = latlng_pb2.LatLng(latitude=51.508, longitude=-0.128)


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return write_mesh_file(tmp_path, MESH)


class Drivers:
    """The running service and shorthands for its RPCs."""

    def __init__(self, serve: ServeFactory) -> None:
        self._serve = serve
        self.running = self._start()

    def _start(self) -> Running:
        running = self._serve("drivers")
        running.stub = drivers_pb2_grpc.DriverServiceStub(running.channel)
        return running

    def restart(self) -> None:
        """Stop the server and start a new one on the same data directory."""
        self.running.stop()
        self.running = self._start()

    @property
    def stub(self) -> drivers_pb2_grpc.DriverServiceStub:
        return self.running.stub

    def call(self, awaitable):
        return self.running.call(awaitable)

    def fail(self, awaitable):
        return self.running.fail(awaitable)

    def create(self, request_id: str = "", **fields) -> pb.Driver:
        values = {
            "display_name": "Dee Driver",
            "vehicle": pb.Vehicle(make="Toyota", model="Prius", license_plate="AB12 CDE"),
        }
        values.update(fields)
        request = pb.CreateDriverRequest(driver=pb.Driver(**values), request_id=request_id)
        return self.call(self.stub.CreateDriver(request))

    def get(self, name: str) -> pb.Driver:
        return self.call(self.stub.GetDriver(pb.GetDriverRequest(name=name)))

    def go_online(self, name: str, latitude: float, longitude: float, request_id: str = "") -> pb.Driver:
        location = latlng_pb2.LatLng(latitude=latitude, longitude=longitude)
        request = pb.GoOnlineRequest(name=name, location=location, request_id=request_id)
        return self.call(self.stub.GoOnline(request))

    def online(self, latitude: float = CENTER.latitude, longitude: float = CENTER.longitude, **fields):
        """A new AVAILABLE driver at the given place."""
        return self.go_online(self.create(**fields).name, latitude, longitude)

    def assign_nearest(
        self, trip: str, latitude: float = CENTER.latitude, longitude: float = CENTER.longitude, radius=1000.0
    ) -> pb.Driver:
        pickup = latlng_pb2.LatLng(latitude=latitude, longitude=longitude)
        request = pb.AssignNearestDriverRequest(trip=trip, pickup=pickup, radius_meters=radius)
        return self.call(self.stub.AssignNearestDriver(request))

    def assign(self, name: str, trip: str) -> pb.Driver:
        """`name` (AVAILABLE, and the nearest to where it is) put ON_TRIP for `trip`."""
        here = self.get(name).location
        assigned = self.assign_nearest(trip, here.latitude, here.longitude, radius=1.0)
        assert assigned.name == name, f"{assigned.name} was nearer {here} than {name}"
        return assigned

    def release(self, name: str, trip: str, request_id: str = "") -> pb.Driver:
        return self.call(
            self.stub.ReleaseTrip(pb.ReleaseTripRequest(name=name, trip=trip, request_id=request_id))
        )

    def search(self, latitude: float, longitude: float, radius: float, page_size: int = 0):
        request = pb.SearchDriversRequest(
            location=latlng_pb2.LatLng(latitude=latitude, longitude=longitude),
            radius_meters=radius,
            page_size=page_size,
        )
        return self.call(self.stub.SearchDrivers(request)).results


@pytest.fixture
def drivers(serve: ServeFactory) -> Drivers:
    return Drivers(serve)


@pytest.fixture
def replicas(postgres_databases, tmp_path, runner):
    """Two drivers stores on one PostgreSQL database, as two replicas of the service have."""
    backends = Backends("postgres", tmp_path, runner, postgres_databases)
    yield DriverStore(backends.open(MIGRATIONS)), DriverStore(backends.open(MIGRATIONS))
    backends.close()
