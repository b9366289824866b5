"""Who is calling a service: an end user, an operator, an application without a user, or the mesh itself.

The gateway is the only door for people outside. For every request it
forwards it says who is behind it, in metadata that only it may set (it
refuses a request that tries to send `grpc-metadata-x-mesh-*` itself):

    x-mesh-app: <API key name>        the application, percent-encoded (always, for a request it admits)
    x-mesh-scopes: admin,rides        that key's scopes
    x-mesh-user: passengers/<id>      the signed-in passenger or driver, from a verified bearer token
    x-mesh-client: 203.0.113.7        the address the request came from (sign-in throttling, sessions.py)

Whom a service believes:

- **With `[tls]` on**, the metadata only on calls whose peer certificate is the
  gateway's (its SPIFFE id, identity.py). A call from any other member of the
  mesh is the mesh itself, whatever metadata it carries: a service can already
  do everything, so a claim to be a passenger gains it nothing and is ignored.
- **Without TLS** (`make run` on the loopback interface) no caller can be told
  from another: the metadata is believed from anyone, and a call without it is
  the mesh. Whoever reaches a service port can claim to be anyone, as they
  could call any method anyway: with TLS off, keep the ports on loopback.

`caller()` gives the servicer the principal of the call it is serving (the
call wrapper works it out once per call, `Trust.principal`); outside a served
call (a background task, a direct test) it is the mesh. Calls a service makes
to others carry none of it: the trip workflow calls drivers, billing, payments
and notifications as the mesh, on behalf of a step it has already checked.

A method the contract restricts (`google.api.method_visibility`: `ADMIN`,
`INTERNAL`) is refused to a principal holding none of its labels: the gateway
does not route it for them, and the service does not trust that it didn't.
The services check ownership themselves (`require_owner`): another's resource
answers exactly like a missing one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import grpc
from google.api import visibility_pb2
from google.protobuf import descriptor as d

from .config import MeshConfig
from .context import MESH, Principal, current_call
from .errors import MeshError, PermissionDenied, Unauthenticated
from .identity import peer_spiffe_id, spiffe_id

PREFIX = "x-mesh-"
USER = "x-mesh-user"
SCOPES = "x-mesh-scopes"
APP = "x-mesh-app"
CLIENT = "x-mesh-client"
INTERNAL = "INTERNAL"
"""The label of methods only services call: no caller from outside is granted it."""
_USER = re.compile(r"^(passengers|drivers)/[A-Za-z0-9_-]{1,64}$")


def caller() -> Principal:
    """The principal of the call being served (the mesh outside any)."""
    call = current_call.get()
    return MESH if call is None or call.principal is None else call.principal


def require_owner(owners: Iterable[str], missing: Callable[[], MeshError]) -> Principal:
    """The caller, if it may act on data of `owners`; else the error `missing()` makes (another's data
    does not exist for it), or SIGN_IN_REQUIRED for an application acting for nobody."""
    principal = caller()
    if principal.owns(*owners):
        return principal
    raise sign_in_required() if not principal.user else missing()


def signed_in() -> Principal:
    """The caller, unless it is an application acting for nobody (SIGN_IN_REQUIRED): read another's data
    only after this, so the answer to "whose is it?" never depends on whether it exists."""
    principal = caller()
    if not principal.admin and not principal.user:
        raise sign_in_required()
    return principal


def sign_in_required() -> Unauthenticated:
    return Unauthenticated(
        "this method acts for a signed-in passenger or driver: send Authorization: Bearer <access_token>",
        reason="SIGN_IN_REQUIRED",
    )


def restriction(method: d.MethodDescriptor) -> frozenset[str]:
    """The visibility labels of a method (`google.api.method_visibility`), upper-case; empty: public.

    Google's rule: a restricted method is visible to callers granted any one of its
    labels. An API key's scopes are its labels (`ADMIN` for the admin scope);
    `INTERNAL` is granted to no key, so only the mesh may call such a method.
    """
    options = method.GetOptions()
    if not options.HasExtension(visibility_pb2.method_visibility):
        return frozenset()
    labels = options.Extensions[visibility_pb2.method_visibility].restriction
    return frozenset(label.strip().upper() for label in labels.split(",") if label.strip())


def check_restricted(principal: Principal, method: str, labels: frozenset[str]) -> None:
    """PERMISSION_DENIED unless the caller holds one of a restricted method's labels (the mesh holds all)."""
    if principal.mesh or principal.labels & labels:
        return
    raise PermissionDenied(
        f"{method} is for {' or '.join(sorted(labels))} callers only",
        reason="METHOD_RESTRICTED",
        metadata={"method": method},
    )


class Trust:
    """Whose `x-mesh-*` metadata a service believes (see the module's docstring)."""

    def __init__(self, gateway: bytes | None = None) -> None:
        self.gateway = gateway
        """The gateway's SPIFFE id with TLS on; None: believe any caller."""

    @classmethod
    def of(cls, config: MeshConfig) -> Trust:
        return cls(spiffe_id(config, "gateway").encode() if config.tls.enabled else None)

    def principal(
        self, context: grpc.aio.ServicerContext[Any, Any], claims: Mapping[str, str] | None
    ) -> Principal:
        """Who the call is for, from the metadata it carries (`claims`: its `x-mesh-*` keys)."""
        if self.gateway is None:
            return MESH if not claims else from_claims(claims)
        if peer_spiffe_id(context) != self.gateway:
            return MESH
        return from_claims(claims or {})


def from_claims(claims: Mapping[str, str]) -> Principal:
    """The principal the gateway's metadata describes; a malformed user is no user."""
    user = claims.get(USER, "")
    scopes = claims.get(SCOPES, "")
    return Principal(
        user=user if _USER.match(user) else "",
        application=unquote(claims.get(APP, "")),
        scopes=frozenset(s for s in scopes.split(",") if s),
        client=_address(claims.get(CLIENT, "")),
    )


def _address(text: str) -> str:
    """An IP address as the gateway wrote it; anything else is no address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""
