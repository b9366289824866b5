"""Who a call is for: the gateway's x-mesh-* metadata, believed from the gateway alone; restricted methods.

A stand-in PassengerService answers GetPassenger with the principal it sees
(kind in display_name, user in email, application in phone), so each test reads
what the runtime told the servicer.
"""

from __future__ import annotations

import grpc
import pytest
from google.type import latlng_pb2
from rideshare.drivers.v1 import drivers_pb2, drivers_pb2_grpc
from rideshare.passengers.v1 import passengers_pb2 as pb
from rideshare.passengers.v1 import passengers_pb2_grpc

from services.mesh import certs
from services.runtime import identity, principal
from services.runtime.config import load_config
from services.runtime.server import Service

from ..conftest import MESH_TOML, write_mesh_file

PASSENGER = "passengers/0123456789abcdef0123456789abcdef"
AS_PASSENGER = (("x-mesh-user", PASSENGER), ("x-mesh-scopes", "rides"), ("x-mesh-app", "rider%20app"))


class Mirror(passengers_pb2_grpc.PassengerServiceServicer):
    async def GetPassenger(self, request, context):
        who = principal.caller()
        return pb.Passenger(name=request.name, display_name=who.kind, email=who.user, phone=who.application)

    async def ListPassengers(self, request, context):
        return pb.ListPassengersResponse()


def mirror(runtime):
    return [
        Service(
            pb.DESCRIPTOR.services_by_name["PassengerService"],
            Mirror(),
            passengers_pb2_grpc.add_PassengerServiceServicer_to_server,
        )
    ]


def who(server, stub=None, metadata=()) -> pb.Passenger:
    stub = stub or server.stub
    return server.call(stub.GetPassenger(pb.GetPassengerRequest(name=PASSENGER), metadata=metadata))


def test_without_tls_the_metadata_is_believed_and_its_absence_is_the_mesh(serve):
    server = serve(make=mirror)

    assert who(server).display_name == "mesh"
    seen = who(server, metadata=AS_PASSENGER)
    assert (seen.display_name, seen.email, seen.phone) == ("user", PASSENGER, "rider app")
    operator = who(server, metadata=(("x-mesh-app", "ops"), ("x-mesh-scopes", "admin")))
    assert (operator.display_name, operator.email) == ("admin", "")
    app = who(server, metadata=(("x-mesh-app", "ops"), ("x-mesh-scopes", "")))
    assert app.display_name == "application"
    forged = who(server, metadata=(("x-mesh-user", "trips/x"), ("x-mesh-app", "a")))
    assert (forged.display_name, forged.email) == ("application", ""), "only a passenger or driver is a user"


def test_a_method_the_contract_keeps_for_operators_is_refused_to_others(serve):
    server = serve(make=mirror)

    def listing(metadata):
        return server.stub.ListPassengers(pb.ListPassengersRequest(), metadata=metadata)

    refused = server.fail(listing(AS_PASSENGER))
    assert (refused.code, refused.info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_RESTRICTED")
    assert server.call(listing((("x-mesh-scopes", "admin,rides"), ("x-mesh-user", PASSENGER)))) is not None
    assert server.call(listing(())) is not None, "the mesh may call anything"


def test_internal_methods_are_for_the_mesh_alone(serve, tmp_path):
    config = load_config(write_mesh_file(tmp_path, MESH_TOML + "\n[services.drivers]\nport = 0\n"), env={})
    drivers = serve("drivers", config=config)
    stub = drivers_pb2_grpc.DriverServiceStub(drivers.channel)
    pickup = latlng_pb2.LatLng(latitude=51.5, longitude=-0.1)
    request = drivers_pb2.AssignNearestDriverRequest(trip="trips/t1", pickup=pickup, radius_meters=1000)

    refused = drivers.fail(stub.AssignNearestDriver(request, metadata=(("x-mesh-scopes", "admin"),)))

    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    through = drivers.fail(stub.AssignNearestDriver(request))  # the mesh gets through, to no driver
    assert (through.code, through.info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_DRIVER_AVAILABLE")

    # Freeing drivers mid-trip in bulk is the trips outbox's alone, too.
    release = drivers_pb2.ReleaseTripRequest(name="drivers/d1", trip="trips/t1")
    batch = drivers_pb2.BatchReleaseTripsRequest(requests=[release])
    admin = drivers.fail(stub.BatchReleaseTrips(batch, metadata=(("x-mesh-scopes", "admin"),)))
    assert (admin.code, admin.info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_RESTRICTED")
    missing = drivers.fail(stub.BatchReleaseTrips(batch))  # the mesh gets through, to no driver
    assert missing.code == grpc.StatusCode.NOT_FOUND


# -- with TLS: the gateway's certificate is what makes its word count -------------------------------------

TLS_MESH = MESH_TOML + "\n[tls]\nenabled = true\n\n[services.trips]\nport = 6003\n"


@pytest.fixture
def tls_server(serve, tmp_path):
    config = load_config(write_mesh_file(tmp_path, TLS_MESH), env={})
    certs.ensure(config)
    return config, serve(config=config, make=mirror)


def stub_as(config, name: str, port: int) -> passengers_pb2_grpc.PassengerServiceStub:
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        identity.channel_credentials(config, name),
        options=identity.channel_options(config, "passengers"),
    )
    return passengers_pb2_grpc.PassengerServiceStub(channel)


def test_with_tls_only_the_gateways_metadata_is_believed(tls_server):
    config, server = tls_server
    gateway, trips = stub_as(config, "gateway", server.port), stub_as(config, "trips", server.port)

    assert who(server, gateway, AS_PASSENGER).email == PASSENGER
    claimed = who(server, trips, AS_PASSENGER)
    assert (claimed.display_name, claimed.email) == ("mesh", ""), "another service's claim is ignored"
    assert who(server, trips).display_name == "mesh"
    assert who(server, gateway).display_name == "application", "the gateway without a word is no one special"


@pytest.mark.parametrize(
    ("sent", "client"),
    [("203.0.113.7", "203.0.113.7"), ("2001:db8::0:1", "2001:db8::1"), ("not an address", ""), ("", "")],
)
def test_the_client_address_is_an_ip_address_or_none(sent, client):
    assert principal.from_claims({principal.CLIENT: sent}).client == client
