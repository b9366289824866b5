"""Wires the trip service into the mesh runtime: store, downstream clients, workflow and background tasks."""

from __future__ import annotations

import asyncio

from rideshare.trips.v1 import trips_pb2, trips_pb2_grpc

from services.runtime import Runtime, Service, log
from services.runtime.errors import ConfigError, MeshError

from .background import Background
from .clients import Downstream
from .outbox import Outbox, OutboxMetrics
from .servicer import TripServicer
from .store import MIGRATIONS, RELEASE, TripStore
from .workflow import TripWorkflow

#: The largest radius DriverService.AssignNearestDriver accepts.
MAX_SEARCH_RADIUS = 50_000.0

_log = log.get_logger("rideshare.trips")


def _positive(runtime: Runtime, key: str, default: float, upper: float = float("inf")) -> float:
    value: float = runtime.service.setting(key, float, default)
    if not 0 < value <= upper:
        raise ConfigError(
            runtime.service.source,
            f"services.{runtime.service.name}.settings.{key}",
            f"expected a number greater than 0{f' and at most {upper:g}' if upper < float('inf') else ''}, "
            f"got {value!r}",
        )
    return value


def create(runtime: Runtime) -> Service:
    search_radius = _positive(runtime, "search_radius_meters", 5000.0, MAX_SEARCH_RADIUS)
    matching_timeout = _positive(runtime, "matching_timeout_seconds", 60.0)
    outbox_max_backoff = _positive(runtime, "outbox_max_backoff_seconds", 5.0)

    store = TripStore(runtime.backend(MIGRATIONS))
    downstream = Downstream(runtime.clients)
    outbox = Outbox(
        store,
        downstream.send_notification,
        send_batch=downstream.send_notifications,
        max_backoff=outbox_max_backoff,
    )
    releases = Outbox(
        store,
        downstream.send_release,
        send_batch=downstream.send_releases,
        max_backoff=outbox_max_backoff,
        kind=RELEASE,
    )
    workflow = TripWorkflow(store, downstream, outbox, releases, search_radius)
    if runtime.telemetry.metrics is not None:
        runtime.telemetry.metrics.registry.register(OutboxMetrics([outbox, releases]))

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(min(matching_timeout / 2, 30.0))
            try:
                await workflow.sweep_abandoned(matching_timeout)
            except MeshError as error:
                _log.warning(
                    "could not sweep abandoned trip requests yet", extra={"fields": {"error": str(error)}}
                )

    janitor = Background("trips-janitor", sweep_forever)

    def start() -> None:
        outbox.task.start()
        releases.task.start()
        janitor.start()

    async def stop() -> None:
        await outbox.stop()
        await releases.stop()
        await janitor.stop()

    return Service(
        descriptor=trips_pb2.DESCRIPTOR.services_by_name["TripService"],
        servicer=TripServicer(store, workflow),
        register=trips_pb2_grpc.add_TripServiceServicer_to_server,
        on_start=start,
        on_stop=stop,
    )
