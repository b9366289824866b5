"""The runtime every rideshare service uses.

A service package needs only a `create(runtime) -> Service` function in its
`app` module; the runtime gives it config, storage, clients to other services,
validation, errors, logging, health, reflection and graceful shutdown.
"""

from .errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MeshError,
    NotFound,
    Unavailable,
)
from .server import Runtime, Service

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "MeshError",
    "NotFound",
    "Runtime",
    "Service",
    "Unavailable",
]
