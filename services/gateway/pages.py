"""The bridge's own pages: `/openapi.json`, and `/docs` (Swagger UI from the swagger-ui-py package).

The document is rendered once at start-up. Swagger UI's assets are read from
the installed package on first use and kept in memory; no page loads anything
from outside the bridge (no CDN), and the initialiser is a file of its own so a
strict Content-Security-Policy holds.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from .app import Headers, Page
from .transcode import dumps

_ASSETS = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": b"text/javascript; charset=utf-8",
    "favicon-32x32.png": b"image/png",
    "favicon-16x16.png": b"image/png",
}
_INDEX = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>API documentation</title>
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
_INIT = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
});
"""
_CSP = (
    b"content-security-policy",
    b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'",
)


class _Static:
    def __init__(self, content_type: bytes, body: bytes | None = None, asset: str | None = None) -> None:
        self.content_type = content_type
        self.body = body
        self.asset = asset

    async def __call__(self, path: str) -> tuple[int, Headers, bytes]:
        if self.body is None:
            assert self.asset is not None
            self.body = (importlib.resources.files("swagger_ui") / "static" / self.asset).read_bytes()
        headers: Headers = [
            (b"content-type", self.content_type),
            (b"cache-control", b"public, max-age=3600"),
            _CSP,
        ]
        return 200, headers, self.body


def pages(document: dict[str, Any]) -> dict[str, Page]:
    """The bridge's pages by path."""
    found: dict[str, Page] = {
        "/openapi.json": _Static(b"application/json", dumps(document)),
        "/docs": _Static(b"text/html; charset=utf-8", _INDEX),
        "/docs/": _Static(b"text/html; charset=utf-8", _INDEX),
        "/docs/init.js": _Static(b"text/javascript; charset=utf-8", _INIT),
    }
    for name, content_type in _ASSETS.items():
        found[f"/docs/{name}"] = _Static(content_type, asset=name)
    return found
