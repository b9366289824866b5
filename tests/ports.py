"""Free ports for meshes written by tests, so `make test` runs beside `make run` and itself.

A mesh file derives more ports than it names: replica k of a service listens
on `port + k * replica_port_step` and serves /metrics on that + the admin
offset. The config refuses a file where two of those meet, so a port picked
for one service must also keep clear of what the others' ports derive.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

#: The default mesh ports (`make run` may hold them).
RESERVED_PORTS = frozenset({*range(50051, 50057), 8080})
#: How far apart derived ports can land: the admin offset (1000) plus replicas on a step of 10.
DERIVED_SPAN = 1000 + 10 * 10
REPLICA_PORT_STEP = 10


def clashes(port: int, other: int) -> bool:
    """Whether two picked ports could derive the same port (a replica's or an admin port)."""
    apart = abs(port - other)
    return apart == 0 or (apart % REPLICA_PORT_STEP == 0 and apart <= DERIVED_SPAN)


def free_port(taken: Sequence[int] = ()) -> int:
    """A port nothing listens on now (bind port 0, close) that derives nothing `taken` derives.

    It may be taken again before use; every caller starts what it needs soon after.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS and not any(clashes(port, other) for other in taken):
            return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, none deriving a port another derives."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(ports))
    return ports
