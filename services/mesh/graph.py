"""`mesh graph`: the live call graph, from what the callers' client metrics observed, as DOT or SVG.

Nodes are the mesh's services (and the gateway, and callers seen from outside
the mesh); an edge caller -> service is labelled with its requests/s, success
rate and p99 (see stats.py for how they are computed). The SVG is drawn here,
without Graphviz: nodes in columns by call depth (gateway -> trips -> the
rest), edges as straight arrows to a deeper column and as curves otherwise.

`render_mesh_page(config)` is the gateway's `/mesh` page: the SVG and the
tables, refreshing itself every few seconds; each render scrapes every
process once and compares with the previous render for the rates.
"""

from __future__ import annotations

import asyncio
import html
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.runtime.config import MeshConfig

from .stats import QUANTILES, Golden, Report, Scrape, report, snapshot

NODE_W, NODE_H = 180, 54
#: Wide enough for an edge label between two columns.
COLUMN_GAP, ROW_GAP, MARGIN = 240, 46, 30
PAGE_REFRESH_SECONDS = 5


def _rate(golden: Golden) -> str:
    return f"{golden.rps:.2f} rps" if golden.rps < 10 else f"{golden.rps:.0f} rps"


def _success(golden: Golden) -> str:
    rate = golden.success_rate
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _p99(golden: Golden) -> str:
    p99 = golden.quantile(0.99)
    if p99 is None:
        return ""
    return f" · p99 {p99 * 1000:.1f} ms" if p99 < 0.1 else f" · p99 {p99 * 1000:.0f} ms"


def edge_label(golden: Golden) -> str:
    return f"{_rate(golden)} · {_success(golden)}{_p99(golden)}"


def _color(golden: Golden | None) -> str:
    rate = None if golden is None else golden.success_rate
    if rate is None:
        return "#9aa0a6"
    if rate >= 0.99:
        return "#1e8e3e"
    return "#f29900" if rate >= 0.95 else "#d93025"


def nodes_of(config: MeshConfig, result: Report) -> list[str]:
    """The mesh's services, the gateway when it runs, and every caller or callee seen."""
    names = list(config.services)
    if config.gateway.enabled:
        names.insert(0, "gateway")
    for caller, service in result.edges:
        for name in (caller, service):
            if name not in names:
                names.append(name)
    return names


def layers(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Column of each node: its longest call path from a node nobody calls (cycles cut off)."""
    names = list(nodes)
    links = [(a, b) for a, b in edges if a != b]
    depth = dict.fromkeys(names, 0)
    for _ in range(len(names)):
        changed = False
        for caller, callee in links:
            if depth.get(callee, 0) < depth.get(caller, 0) + 1 <= len(names):
                depth[callee] = depth[caller] + 1
                changed = True
        if not changed:
            break
    linked = {n for link in links for n in link}
    if "gateway" in depth:
        # Services nobody called yet sit right of the gateway, where callers will find them.
        for name in names:
            if name not in linked and name != "gateway":
                depth[name] = max(depth[name], 1)
    return depth


def to_dot(config: MeshConfig, result: Report) -> str:
    """The graph in Graphviz's language: `mesh graph --format dot | dot -Tpng`."""
    lines = [
        "digraph mesh {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#f8f9fa", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for name in nodes_of(config, result):
        served = result.services.get(name)
        label = name if served is None else f"{name}\\n{_rate(served)} · {_success(served)}"
        lines.append(f'  "{_dot_escape(name)}" [label="{_dot_escape(label)}"];')
    for (caller, service), golden in sorted(result.edges.items()):
        style = ', style="dashed"' if result.edge_sources.get((caller, service)) == "server" else ""
        lines.append(
            f'  "{_dot_escape(caller)}" -> "{_dot_escape(service)}" '
            f'[label="{_dot_escape(edge_label(golden))}", color="{_color(golden)}"{style}];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace('"', '\\"')


@dataclass(frozen=True)
class _Box:
    x: float
    y: float

    @property
    def middle(self) -> float:
        return self.y + NODE_H / 2


def _positions(names: list[str], depth: Mapping[str, int]) -> tuple[dict[str, _Box], float, float]:
    columns: dict[int, list[str]] = {}
    for name in names:
        columns.setdefault(depth[name], []).append(name)
    tallest = max(len(c) for c in columns.values())
    height = 2 * MARGIN + tallest * NODE_H + (tallest - 1) * ROW_GAP + 30
    width = 2 * MARGIN + (max(columns) + 1) * (NODE_W + COLUMN_GAP) - COLUMN_GAP
    boxes: dict[str, _Box] = {}
    for column, members in columns.items():
        used = len(members) * NODE_H + (len(members) - 1) * ROW_GAP
        top = (height - used) / 2
        for row, name in enumerate(members):
            boxes[name] = _Box(MARGIN + column * (NODE_W + COLUMN_GAP), top + row * (NODE_H + ROW_GAP))
    return boxes, width, height


def to_svg(config: MeshConfig, result: Report) -> str:
    """The graph as a standalone SVG document."""
    names = nodes_of(config, result)
    depth = layers(names, result.edges)
    boxes, width, height = _positions(names, depth)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
        "<defs>",
        *(
            f'<marker id="arrow-{color[1:]}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
            for color in ("#9aa0a6", "#1e8e3e", "#f29900", "#d93025")
        ),
        "</defs>",
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    labels: list[tuple[float, float, str]] = []
    for (caller, service), golden in sorted(result.edges.items()):
        start, end = boxes[caller], boxes[service]
        color = _color(golden)
        dashed = ' stroke-dasharray="6 4"' if result.edge_sources.get((caller, service)) == "server" else ""
        thickness = 1.5 + min(3.0, math.log10(1 + golden.rps))
        x1, y1 = start.x + NODE_W, start.middle
        if end.x > start.x:
            x2, y2 = end.x, end.middle
            path = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            # The label sits in the first gap after the caller, where no box can cover it.
            lx = x1 + COLUMN_GAP / 2
            ly = y1 + (y2 - y1) * (lx - x1) / (x2 - x1)
        else:
            # Same column or backwards: a loop out to the right of both boxes.
            x2, y2 = end.x + NODE_W, end.middle + (8 if caller != service else NODE_H / 2)
            bulge = max(x1, x2) + 60
            path = f"M{x1:.1f},{y1:.1f} C{bulge:.1f},{y1:.1f} {bulge:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            lx, ly = bulge - 15, (y1 + y2) / 2
        out.append(
            f'<path d="{path}" fill="none" stroke="{color}" stroke-width="{thickness:.1f}"{dashed} '
            f'marker-end="url(#arrow-{color[1:]})">'
            f"<title>{html.escape(f'{caller} -> {service}')}</title></path>"
        )
        labels.append((lx, ly, f"{service}: {edge_label(golden)}"))
    out.extend(_labels(labels))
    for name in names:
        box = boxes[name]
        served = result.services.get(name)
        up, total = result.instances.get(name, (0, 0))
        stroke = _color(served) if served is not None else ("#d93025" if total and not up else "#9aa0a6")
        detail = (
            f"{_rate(served)} · {_success(served)}"
            if served is not None
            else ("down" if total and not up else "")
        )
        if total > 1:
            detail = f"{detail} · {up}/{total} up".lstrip(" ·")
        out.append(
            f'<g><rect x="{box.x:.1f}" y="{box.y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="8" '
            f'fill="#f8f9fa" stroke="{stroke}" stroke-width="2"/>'
            f'<text x="{box.x + NODE_W / 2:.1f}" y="{box.y + 22:.1f}" font-size="15" font-weight="bold" '
            f'text-anchor="middle" fill="#202124">{html.escape(name)}</text>'
            f'<text x="{box.x + NODE_W / 2:.1f}" y="{box.y + 41:.1f}" font-size="11" text-anchor="middle" '
            f'fill="#5f6368">{html.escape(detail)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _labels(labels: list[tuple[float, float, str]]) -> list[str]:
    """Edge labels on a white plate, nudged apart vertically where they would overlap."""
    drawn: list[str] = []
    placed: dict[int, list[float]] = {}
    for lx, ly, text in sorted(labels, key=lambda label: (label[0], label[1])):
        column = placed.setdefault(round(lx), [])
        if column and ly < column[-1] + 18:
            ly = column[-1] + 18
        column.append(ly)
        width = 6.1 * len(text) + 8
        drawn.append(
            f'<rect x="{lx - width / 2:.1f}" y="{ly - 10:.1f}" width="{width:.1f}" height="16" rx="3" '
            f'fill="white" fill-opacity="0.9"/>'
            f'<text x="{lx:.1f}" y="{ly + 2:.1f}" font-size="11" text-anchor="middle" fill="#3c4043">'
            f"{html.escape(text)}</text>"
        )
    return drawn


_previous: dict[str, tuple[float, list[Scrape]]] = {}
_previous_lock = threading.Lock()
#: A previous render older than this is not compared with: rates since start instead.
_MAX_COMPARE_AGE = 300.0


def live_report(config: MeshConfig) -> Report:
    """Rates since the previous call (for this mesh file), or since start on the first call."""
    now = snapshot(config)
    key = str(config.source)
    with _previous_lock:
        before = _previous.get(key)
        _previous[key] = (time.monotonic(), now)
    if before is not None and 0.5 <= time.monotonic() - before[0] <= _MAX_COMPARE_AGE:
        return report(now, before[1])
    return report(now)


def _rows(result: Report) -> tuple[str, str]:
    def cells(golden: Golden) -> str:
        quantiles = "".join(
            f"<td>{'-' if (v := golden.quantile(q)) is None else f'{v * 1000:.1f} ms'}</td>"
            for q in QUANTILES
        )
        return f"<td>{_success(golden)}</td><td>{golden.rps:.2f}</td>{quantiles}"

    services = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{up}/{total}</td>"
        f"{cells(result.services.get(name, Golden()))}</tr>"
        for name, (up, total) in sorted(result.instances.items())
    )
    edges = "".join(
        f"<tr><td>{html.escape(caller)}</td><td>{html.escape(service)}</td>{cells(golden)}</tr>"
        for (caller, service), golden in sorted(result.edges.items())
    )
    return services, edges


def render_mesh_page(config: MeshConfig) -> str:
    """The `/mesh` page: the live graph and golden metrics, reloading itself.

    Blocking (it scrapes every process, each bounded by a 2 s timeout): an
    async server should call it in a thread (`asyncio.to_thread`).
    """
    result = live_report(config)
    services, edges = _rows(result)
    heading = (
        "since each process started" if result.window is None else f"over the last {result.window:.1f} s"
    )
    head = "<th>success</th><th>rps</th><th>p50</th><th>p95</th><th>p99</th>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{PAGE_REFRESH_SECONDS}">
<title>rideshare mesh</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 24px; color: #202124; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; }}
th, td {{ padding: 4px 12px; text-align: right; border-bottom: 1px solid #e8eaed; }}
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) {{ text-align: left; }}
.muted {{ color: #5f6368; font-size: 13px; }}
</style></head>
<body>
<h1>rideshare mesh</h1>
<p class="muted">Calls {heading}; refreshed every {PAGE_REFRESH_SECONDS} s at
{time.strftime("%H:%M:%S")}. Success = not a server error (5xx-like codes).</p>
{to_svg(config, result)}
<h2>Services</h2>
<table><tr><th>service</th><th>up</th>{head}</tr>{services}</table>
<h2>Edges</h2>
<table><tr><th>from</th><th>to</th>{head}</tr>{edges}</table>
</body></html>
"""


class MeshPage:
    """`GET /mesh`: the live call graph and golden metrics, a page that reloads itself."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config

    async def __call__(self, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        page = await asyncio.to_thread(render_mesh_page, self.config)
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
        return 200, headers, page.encode("utf-8")
