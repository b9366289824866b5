"""docs/public-surface.md lists every method of the contracts with the audience its contract states."""

from __future__ import annotations

import re
from pathlib import Path

from google.api import annotations_pb2

from services.gateway import api, routes

DOC = Path(__file__).resolve().parents[2] / "docs" / "public-surface.md"
ROW = re.compile(r"^\| `(\w+)\.(\w+)` \| `(\w+) ([^`]+)` \| (public|[A-Z,]+) \|")


def test_the_documented_surface_is_the_contracts():
    documented = {
        (m[1], m[2]): (m[3], m[4], m[5]) for line in DOC.read_text().splitlines() if (m := ROW.match(line))
    }
    stated = {}
    for service in api.from_generated().services:
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            kind = rule.WhichOneof("pattern")
            audience = ",".join(sorted(routes.restriction(method))) or "public"
            stated[(service.name, method.name)] = (kind.upper(), getattr(rule, kind), audience)

    assert documented == stated
