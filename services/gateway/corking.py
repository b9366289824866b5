"""uvicorn's HTTP protocol, with one send per loop iteration per connection instead of one per write.

uvicorn writes a response's status line and headers, then its body, as two
`transport.write` calls, and uvloop sends each at once: two system calls
(and two wake-ups of the client) for every small JSON answer. Wrapping the
transport so that writes made in the same event-loop iteration are joined
and sent together halves that, at the cost of nothing but a `call_soon`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport:
    """A transport whose writes of one loop iteration leave in one `write` of the real one."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        size: int = self._transport.get_write_buffer_size()
        return size + sum(len(data) for data in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `CorkedTransport`."""

    def connection_made(self, transport: Any) -> None:
        corked: Any = CorkedTransport(transport, self.loop)
        super().connection_made(corked)
