"""The servers `bench/unary.py` compares, one per process: `python -m bench.servers VARIANT MESH_TOML`.

Every variant serves PassengerService.GetPassenger from the same SQLite file
with the same query and row mapping (the resource kit's `Store.get`; the
thread-pool variants run its query on the synchronous `Database` under a
lock, since the kit is async); they differ only in the server model and in
whether the runtime's per-call work runs:

- `runtime`: the real `MeshServer` (grpc.aio, every handler wrapped by calls.py);
- `aio`: a bare `grpc.aio` server with the service's own `PassengerServicer`;
- `sync`: a bare grpcio thread-pool server with a synchronous copy of that handler;
- `sync-wrapped`: `sync` plus a synchronous twin of the calls.py wrapper
  (validation, error mapping, contextvars, access-log check). It exists only
  to price the runtime's work on the other server model.

The process prints its bound port on stdout, then serves until its stdin
closes (the bench is gone), SIGTERM, or `--max-seconds`, so it cannot linger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from rideshare.passengers.v1 import passengers_pb2, passengers_pb2_grpc
from rideshare.passengers.v1.passengers_pb2 import GetPassengerRequest, Passenger

from services.passengers import app as passengers_app
from services.passengers.store import MIGRATIONS, PASSENGERS
from services.runtime import calls, log
from services.runtime.config import MeshConfig, load_config
from services.runtime.resources import Store
from services.runtime.server import SERVER_OPTIONS, MeshServer, Runtime, _Capture, load_services, run
from services.runtime.storage import Database, SqliteBackend
from services.runtime.validation import RequestValidator, ResourceRegistry

VARIANTS = ("runtime", "aio", "sync", "sync-wrapped")
SERVICE = passengers_pb2.DESCRIPTOR.services_by_name["PassengerService"]
#: Thread-pool size of the sync servers; on one core more threads only add GIL hand-offs.
SYNC_WORKERS = 8


def _runtime(config: MeshConfig) -> Runtime:
    return Runtime(config, config.service("passengers"))


def _backend(config: MeshConfig) -> SqliteBackend:
    return SqliteBackend(_runtime(config).data_path("passengers.db"), MIGRATIONS)


class SyncPassengerServicer(passengers_pb2_grpc.PassengerServiceServicer):
    """The same GetPassenger as `PassengerServicer`, for a thread-pool server.

    It reads as the kit's `Store.get` does, through the file's one sqlite3
    connection (`check_same_thread=False`), which is not safe to use from
    several threads at once, hence the lock.
    """

    def __init__(self, backend: SqliteBackend) -> None:
        self.db: Database = backend.file
        self.store = Store(backend, PASSENGERS)
        self.lock = threading.Lock()

    def GetPassenger(self, request: GetPassengerRequest, context: grpc.ServicerContext) -> Passenger:
        passenger_id = self.store.id_of(request.name)
        with self.lock:
            row = self.db.query_one("SELECT * FROM passengers WHERE id = ?", (passenger_id,))
        if row is None:
            raise self.store.not_found(passenger_id)
        return PASSENGERS.from_row(row)


class SyncCallWrapper:
    """A synchronous twin of `calls.CallWrapper` for unary methods, built from the same parts."""

    def __init__(self, domain: str, validators: Mapping[str, RequestValidator]) -> None:
        self.validators = validators
        self.errors = calls.CallWrapper(domain, validators)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary is None:
            return handler
        return calls.replace(handler, unary_unary=self._unary(method, handler.unary_unary))

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        validate = self.validators.get(method)

        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            tokens, _ = calls._enter(method, context)  # type: ignore[arg-type]
            code = grpc.StatusCode.OK
            try:
                if validate is not None:
                    validate(request)
                return behavior(request, context)
            except Exception as exc:
                outcome = self.errors._outcome(exc)
                code = outcome.code
                context.set_trailing_metadata(outcome.trailing_metadata)
                context.abort(outcome.code, outcome.details)
            finally:
                calls._leave(tokens, method, code, started)

        return handler


def _validators() -> dict[str, RequestValidator]:
    resources = ResourceRegistry()
    resources.add_file(SERVICE.file)
    return {
        f"/{SERVICE.full_name}/{m.name}": RequestValidator(m.input_type, resources) for m in SERVICE.methods
    }


def _sync_server(config: MeshConfig, wrapped: bool) -> tuple[grpc.Server, Database]:
    backend = _backend(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS), options=SERVER_OPTIONS)
    servicer = SyncPassengerServicer(backend)
    if not wrapped:
        passengers_pb2_grpc.add_PassengerServiceServicer_to_server(servicer, server)
        return server, backend.file
    wrapper = SyncCallWrapper(config.service("passengers").domain, _validators())
    capture = _Capture()
    passengers_pb2_grpc.add_PassengerServiceServicer_to_server(servicer, capture)
    for name, handlers in capture.handlers.items():
        wrapped_handlers = {m: wrapper.wrap(f"/{name}/{m}", h) for m, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, wrapped_handlers),))
        server.add_registered_method_handlers(name, wrapped_handlers)
    return server, backend.file


def _announce(port: int) -> None:
    if port == 0:
        raise SystemExit("bench server: could not bind 127.0.0.1:0")
    print(port, flush=True)


def _stop_on_stdin_eof(stop: Callable[[], None]) -> None:
    """The bench holds our stdin open; EOF means it ended (even if it was killed)."""

    def watch() -> None:
        while os.read(0, 4096):
            pass
        stop()

    threading.Thread(target=watch, daemon=True).start()


def serve_sync(config: MeshConfig, wrapped: bool, max_seconds: float) -> None:
    server, store = _sync_server(config, wrapped)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    _stop_on_stdin_eof(stopped.set)
    _announce(port)
    stopped.wait(max_seconds)
    server.stop(0).wait(5)
    store.close()


async def serve_aio(config: MeshConfig, runtime: bool, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)

    def stop() -> None:
        loop.call_soon_threadsafe(stopped.set)

    _stop_on_stdin_eof(stop)
    if runtime:
        rt = _runtime(config)
        mesh = MeshServer(rt, load_services(rt), port=0)
        _announce(await mesh.start())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), max_seconds)
        await mesh.stop(0)
        return
    bare = _runtime(config)
    service = passengers_app.create(bare)  # the same servicer, without the runtime around it
    server = grpc.aio.server(options=SERVER_OPTIONS)
    service.register(service.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(port)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), max_seconds)
    await server.stop(0)
    for backend in bare.backends:
        await backend.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("config", type=Path, help="the bench's mesh.toml (data_dir holds the database)")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    config = load_config(args.config, env={})
    log.configure("passengers", config.log_level)
    if args.variant in ("sync", "sync-wrapped"):
        serve_sync(config, args.variant == "sync-wrapped", args.max_seconds)
    else:
        # The runtime's variant runs as `mesh serve` does (uvloop); bare aio as a plain grpc.aio program.
        if args.variant == "runtime":
            run(serve_aio(config, True, args.max_seconds))
        else:
            asyncio.run(serve_aio(config, False, args.max_seconds))


if __name__ == "__main__":
    main()
