"""`mesh gateway` served by uvicorn's h11 protocol instead of httptools + edge.py: bench.rest's
`bridge-mesh-h11`, the alternative that limits head size by itself (h11's
`max_incomplete_event_size`). Only for measuring; the arguments are `mesh`'s."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from services.gateway import server
from services.mesh import cli


def h11_server(app: Any, grace: float, settings: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ws="none",
        proxy_headers=False,
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=settings.idle_timeout,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    return server._Server(config, server.Edge(settings))  # no EdgeProtocol: its sweep finds nothing


if __name__ == "__main__":
    server.uvicorn_server = h11_server
    sys.exit(cli.main(sys.argv[1:]))
