"""Who may call which method: `[services.<name>.authz]`, enforced from the caller's certificate.

    [services.payments.authz]
    "*" = ["trips", "gateway", "mesh"]         # every method that has no rule of its own
    "CreatePayment" = ["trips", "gateway"]     # only these may charge a card
    "PaymentService/RefundPayment" = ["gateway"]   # qualified: when two contracts share a method name

A method's own rule replaces the "*" rule (the most specific wins). Callers
are the mesh's services, `gateway`, `mesh` (the CLI), or "*" for any holder of
a certificate from the mesh CA. Once a service has any rule, a method no rule
covers is denied to everyone (default deny). Health checks and reflection are
not wrapped, so they always answer.

Rules need TLS (config.py refuses them without): the caller is the SPIFFE id
in its client certificate, which grpc has already checked against the CA and
parsed at the handshake (`auth_context()["peer_spiffe_id"]`). The table is
compiled once at start, with every selector checked against the service's
contracts; per call the check is that lookup, a dict lookup and a set
membership. A denied call is PERMISSION_DENIED, ErrorInfo reason
`CALLER_NOT_ALLOWED`, metadata `caller` and `method`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as d

from .config import MeshConfig, ServiceConfig
from .errors import ConfigError, PermissionDenied
from .identity import identities, peer_spiffe_id, spiffe_id

ANY = "*"
REASON = "CALLER_NOT_ALLOWED"

Check = Callable[[grpc.aio.ServicerContext[Any, Any]], None]


@dataclass(frozen=True)
class Rule:
    """Who may call one method, and which line of mesh.toml said so."""

    callers: frozenset[str]
    """Member names, or ANY."""
    selector: str


def compile_rules(
    config: MeshConfig, service: ServiceConfig, descriptors: Sequence[d.ServiceDescriptor]
) -> dict[str, Rule]:
    """Method path (`/pkg.Service/Method`) -> its rule; empty when the service has no rules (all allowed).

    Every method of a service with rules gets an entry; one no rule covers allows nobody.
    """
    if not service.authz:
        return {}
    methods = [f"/{s.full_name}/{m.name}" for s in descriptors for m in s.methods]
    default = service.authz.get(ANY)
    rules = {m: Rule(frozenset(default or ()), ANY if default is not None else "") for m in methods}
    claimed: dict[str, str] = {}
    for selector, callers in service.authz.items():
        if selector == ANY:
            continue
        path = _resolve(selector, methods, service)
        if path in claimed:
            raise ConfigError(
                service.source,
                f"services.{service.name}.authz.{selector}",
                f"names the same method as {claimed[path]!r}",
            )
        claimed[path] = selector
        rules[path] = Rule(frozenset(callers), selector)
    return rules


def _resolve(selector: str, methods: Sequence[str], service: ServiceConfig) -> str:
    """The one method path a selector (`Method`, `Service/Method`, `pkg.Service/Method`) names."""
    wanted = selector.lstrip("/")

    def matches(path: str, fold: bool) -> bool:
        full = path[1:]
        short = full.rsplit(".", 1)[-1]  # "PaymentService/CreatePayment"
        method = full.rsplit("/", 1)[-1]
        candidates = (full, short, method)
        return wanted.lower() in (c.lower() for c in candidates) if fold else wanted in candidates

    # Environment overrides lower-case their keys (MESH_SERVICES__X__AUTHZ__CREATEPAYMENT), hence the fold.
    found = [p for p in methods if matches(p, False)] or [p for p in methods if matches(p, True)]
    key = f"services.{service.name}.authz.{selector}"
    if len(found) == 1:
        return found[0]
    if found:
        options = ", ".join(p[1:].rsplit(".", 1)[-1] for p in found)
        raise ConfigError(service.source, key, f"names several methods ({options}); qualify it")
    names = tuple(p.rsplit("/", 1)[-1] for p in methods)
    hint = next(iter(difflib.get_close_matches(wanted.rsplit("/", 1)[-1], names, n=1)), None)
    raise ConfigError(
        service.source,
        key,
        f"no such method in {service.name}'s contracts" + (f" (did you mean '{hint}'?)" if hint else ""),
    )


def checks(
    config: MeshConfig, service: ServiceConfig, descriptors: Sequence[d.ServiceDescriptor]
) -> dict[str, Check]:
    """Method path -> the check the call wrapper runs first; empty when the service has no rules."""
    rules = compile_rules(config, service, descriptors)
    names = {spiffe_id(config, n).encode(): n for n in identities(config)}
    ours = spiffe_id(config, "").encode()
    return {path: _check(path[1:], rule, names, ours) for path, rule in rules.items()}


def _check(method: str, rule: Rule, names: Mapping[bytes, str], ours: bytes) -> Check:
    allowed = frozenset(spiffe for spiffe, name in names.items() if name in rule.callers)
    anyone = ANY in rule.callers

    def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        caller = peer_spiffe_id(context)
        if caller in allowed or (anyone and caller.startswith(ours)):
            return
        who = names.get(caller) or caller_name(caller, ours)
        raise PermissionDenied(
            f"{who} may not call {method}", reason=REASON, metadata={"caller": who, "method": method}
        )

    return check


def caller_name(spiffe: bytes, ours: bytes) -> str:
    """A caller's name for messages: the member name for our trust domain, else the raw id."""
    if not spiffe:
        return "unidentified"
    text = spiffe.decode(errors="replace")
    return text[len(ours) :] if spiffe.startswith(ours) and len(spiffe) > len(ours) else text
