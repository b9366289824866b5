"""Asking a running service how it is: the gRPC health check, as `mesh` uses it."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
DOWN = "DOWN"


def check(address: str, service: str = "", timeout: float = 1.0) -> str:
    """SERVING, NOT_SERVING, or DOWN when nothing answers at `address`."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return NOT_SERVING
            return DOWN
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status
