"""Asking a running service how it is: the gRPC health check, as `mesh` uses it."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
DOWN = "DOWN"


def check(
    address: str,
    service: str = "",
    timeout: float = 1.0,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> str:
    """SERVING, NOT_SERVING, or DOWN when nothing answers at `address`.

    With `credentials` (the `mesh` tool's identity, `identity.channel_credentials(config, "mesh")`)
    the check runs over mTLS, as a mesh with TLS on requires; `server_name`
    (`identity.server_name(config, service)`) is the name the server's certificate must carry.
    """
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        options = [] if server_name is None else [("grpc.ssl_target_name_override", server_name)]
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return NOT_SERVING
            return DOWN
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status
