"""What a failed call to another service says, and "could not reach it" in the caller's own words.

A service that calls another (trips calls five, payments calls billing) keeps
those calls in one client module; these are the pieces every such module
needs: the `ErrorInfo` a failure carries (its reason and metadata decide what
the failure means for the caller), and `reaching(service)`, which turns
UNAVAILABLE into the caller's own UNAVAILABLE naming the service, so its
client knows to repeat the call with the same request_id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .errors import Unavailable


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call; empty if it carries none."""
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            break
    return info


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return str(error_info(error).reason)


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return dict(error_info(error).metadata)


def failed_with(error: grpc.aio.AioRpcError, code: grpc.StatusCode, *reasons: str) -> bool:
    """The call failed with `code` (and, if any are given, one of `reasons`)."""
    return error.code() is code and (not reasons or error_reason(error) in reasons)


def unreachable(service: str, error: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(
        f"the {service} service is unavailable ({error.details() or error.code().name}); "
        "nothing was lost: repeat the call with the same request_id",
        metadata={"service": service},
    )


@contextmanager
def reaching(service: str) -> Iterator[None]:
    """Turn 'could not reach `service`' into UNAVAILABLE naming it; other failures pass."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            raise unreachable(service, error) from None
        raise
