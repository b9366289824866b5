"""The processes behind one service name: replicas, their ports, and how clients reach them all.

`replicas = N` in a service's table makes `mesh up` start N `mesh serve <name>
--replica K` processes; replica K listens on `port + K * replica_port_step`
(step 10 by default, so passengers' replicas take 50051, 50061, ... and never
the other services' 50052-50056). They share the service's data directory.

Clients do not pick a replica: they get one gRPC target naming all of them
(`ipv4:127.0.0.1:50051,127.0.0.1:50061`, or the service's `discovery` target,
e.g. a Kubernetes headless service `dns:///passengers.default.svc.cluster.local:50051`)
and grpcio balances, health-checks and ejects per replica (see traffic.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .config import ServiceConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Replica:
    """One process of a service."""

    service: ServiceConfig
    index: int

    @property
    def name(self) -> str:
        """`passengers` for a single replica, `passengers-0`, `passengers-1`, ... otherwise."""
        return label(self.service, self.index)

    @property
    def port(self) -> int:
        return self.service.replica_port(self.index)

    @property
    def address(self) -> str:
        return self.service.replica_address(self.index)


def label(service: ServiceConfig, index: int) -> str:
    """How logs and `mesh status` name a replica ('-' cannot occur in a service name)."""
    return service.name if service.replicas == 1 else f"{service.name}-{index}"


def replicas_of(services: Iterable[ServiceConfig]) -> list[Replica]:
    """Every process the services run, in order: passengers-0, passengers-1, drivers, ..."""
    return [Replica(service, index) for service in services for index in range(service.replicas)]


def check_replica(service: ServiceConfig, index: int) -> None:
    """`mesh serve NAME --replica K` must name a replica the clients know about."""
    if not 0 <= index < service.replicas:
        known = "0" if service.replicas == 1 else f"0 to {service.replicas - 1}"
        raise ConfigError(
            service.source,
            f"services.{service.name}.replicas",
            f"is {service.replicas}, so --replica must be {known}, not {index}",
        )


def target(service: ServiceConfig) -> str:
    """The gRPC target naming every replica of `service` (its `discovery` target when it has one)."""
    if service.discovery is not None:
        return service.discovery
    addresses = [service.replica_port(k) for k in range(service.replicas)]
    try:
        ip = ipaddress.ip_address(service.host)
    except ValueError:
        # A host name (one replica; config.py refuses more): gRPC's DNS resolver finds it.
        return f"dns:///{service.host}:{service.port}"
    if ip.version == 6:
        return "ipv6:" + ",".join(f"[{service.host}]:{port}" for port in addresses)
    return "ipv4:" + ",".join(f"{service.host}:{port}" for port in addresses)
