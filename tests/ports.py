"""Free ports for meshes written by tests, so `make test` runs beside `make run` and itself.

A mesh file derives more ports than it names: replica k of a service listens
on `port + k * replica_port_step` and serves /metrics on that + the admin
offset. The config refuses a file where two of those meet, so a port picked
for one service must also keep clear of what the others' ports derive.

A port picked free may still be taken by another process before the mesh
binds it; `held_by` tells whether the mesh's own process is the one listening.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The default mesh ports (`make run` may hold them).
RESERVED_PORTS = frozenset({*range(50051, 50057), 8080})
#: The admin port of a service is its port + this, unless the mesh file says otherwise.
ADMIN_PORT_OFFSET = 1000
#: How far apart derived ports can land: the admin offset (1000) plus replicas on a step of 10.
DERIVED_SPAN = ADMIN_PORT_OFFSET + 10 * 10
REPLICA_PORT_STEP = 10


def clashes(port: int, other: int) -> bool:
    """Whether two picked ports could derive the same port (a replica's or an admin port)."""
    apart = abs(port - other)
    return apart == 0 or (apart % REPLICA_PORT_STEP == 0 and apart <= DERIVED_SPAN)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except (OSError, OverflowError):  # OverflowError: past 65535
            return False
    return True


def free_port(taken: Sequence[int] = ()) -> int:
    """A port nothing listens on now (bind port 0, close) that derives nothing `taken` derives.

    Its admin port (+1000) is free now too: a service whose admin port is taken
    runs without /metrics, and the e2e harness then starts the mesh again. Either
    may be taken again before use; every caller starts what it needs soon after.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if (
            port not in RESERVED_PORTS
            and not any(clashes(port, other) for other in taken)
            and _bindable(port + ADMIN_PORT_OFFSET)
        ):
            return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, none deriving a port another derives."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(ports))
    return ports


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on `port`, on any address (/proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(fields[9])
    return found


def held_by(port: int, pids: Iterable[int]) -> bool:
    """Whether one of `pids` is what listens on `port` (not merely something)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return False
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return True
    return False
