"""The AIP resource kit: the standard methods of a resource, written once, over a small database seam.

A service describes its resource once, in a `Resource`: the contract's message
(whose `google.api.resource` option gives the collection and the singular),
how a row becomes that message and back, and which taken unique column means
which ALREADY_EXISTS. A `Store` over it gives the standard methods:

- Get (AIP-131): NOT_FOUND `<SINGULAR>_NOT_FOUND` with metadata `name`;
- List (AIP-132, AIP-158): keyset pages in `seq` order, with an opaque page
  token bound to the query's filters (a token from another query, or forged,
  is INVALID_ARGUMENT on `page_token`);
- Create (AIP-133) and every write, replayed by request_id (AIP-155: the first
  answer is stored in `request_log` in the same transaction as the write; the
  same request_id with another request is INVALID_ARGUMENT REQUEST_ID_REUSED);
  a unique column already taken is the resource's own ALREADY_EXISTS;
- Update (AIP-134): read, change, write back in one transaction, where the
  change applies the field mask (`aip.apply_update_mask`); an unchanged
  resource is not written;
- Delete (AIP-135), after an optional check of the stored resource.

A store says only what is special about its resource: its own queries and
steps, built from the same pieces (`idempotent`, `read`, `insert`, `save`).

The kit reaches the database only through `Backend`: a transaction, reads,
opening and closing, and what engines do differently: which unique column a
failed write hit, how a read locks the row it will change or passes over
rows others hold, named locks (for a transaction, or across a block's
transactions) and notifications on commit (for replicas on several hosts).
`storage.SqliteBackend` (the default) and `postgres.PostgresBackend` (psycopg's
async pool) implement them. The SQL written here is portable: `?`
placeholders (the PostgreSQL backend rewrites them), `INSERT ... RETURNING`,
no engine functions. Tables follow one
convention: an integer `seq` assigned in insertion order (the keyset) and a
unique text `id`, the last segment of the resource name.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from google.api import resource_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from . import aip
from .errors import InvalidArgument, MeshError, NotFound

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
T = TypeVar("T")


class Row(Protocol):
    """A row read from the database, by column name (sqlite3.Row, psycopg's dict rows)."""

    def __getitem__(self, column: str, /) -> Any: ...


class Tx(Protocol):
    """An open transaction: everything done through it commits together or not at all."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""
        ...

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def lock(self, key: str) -> None:
        """Hold `key` until this transaction ends, against every transaction taking it
        (PostgreSQL's advisory lock; SQLite's transaction holds the whole database already)."""
        ...

    async def notify(self, channel: str, payload: str) -> None:
        """Hand `payload` to the listeners of `channel` (`Backend.listen`) once this transaction
        commits, in commit order; nothing if it rolls back (SQLite has no listeners: replicas poll)."""
        ...


class Backend(ABC):
    """The seam between the kit and a database engine; the request log is written on top of it."""

    row_lock: str = ""
    """Appended to a read inside a transaction that changes the row: PostgreSQL's ` FOR UPDATE`.
    SQLite needs none: `BEGIN IMMEDIATE` holds the whole database."""

    trouble: asyncio.Event | None = None
    """Set when a call found the database out of reach (readiness.py then asks at once); None for
    an engine that is never out of reach (a file)."""

    skip_locked: str = ""
    """Appended to a read that claims rows for its transaction, passing over rows another
    transaction holds: PostgreSQL's ` FOR UPDATE SKIP LOCKED`. SQLite needs none (one writer)."""

    @abstractmethod
    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold `key` for the length of a block that runs transactions of its own, against every
        other holder of it, in this process or another on this database (a block nested in one
        holding it shares it); let go at once if the holder dies. A wait ends when the key is
        free or the waiting call is cancelled (PostgreSQL's session advisory lock, a byte of a
        lock file next to SQLite's)."""

    def listen(self, channel: str) -> AsyncGenerator[str | None, None] | None:
        """What transactions `notify` on `channel`, as they commit, in commit order; None first and
        after every reconnection, when something may have been missed (read the table then). None
        where the engine has no notifications (SQLite: replicas on one host poll the file)."""
        return None

    async def open(self) -> None:
        """Connect and apply pending migrations, before the service serves (SQLite did both when built)."""
        return None

    async def ping(self) -> None:
        """Return if the database can be reached now, else raise UNAVAILABLE naming it (readiness.py)."""
        return None

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: committed when the block ends, rolled back if it raises."""

    @abstractmethod
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read outside any transaction."""

    @abstractmethod
    async def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    @abstractmethod
    def unique_violation(self, error: BaseException) -> str | None:
        """The column whose unique constraint `error` reports, or None if it reports something else."""

    @abstractmethod
    async def close(self) -> None: ...

    async def replay(self, method: str, request: Message, response_type: type[R]) -> R | None:
        """The stored answer to `request.request_id`, or None if it is new (or absent).

        Raises INVALID_ARGUMENT REQUEST_ID_REUSED if the key answered another request.
        """
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            return None
        row = await self.query_one(_LOGGED, (method, request_id))
        return _stored(row, method, request_id, fingerprint(request), response_type)

    async def idempotent(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        write: Callable[[Tx], Awaitable[R]],
        *,
        looked_up: bool = False,
    ) -> R:
        """Run `write` once per `request.request_id`; repeats get the stored answer.

        `looked_up`: the caller found no answer (`replay`) while holding something every repeat
        of `request` holds too (a lock on its resource), so it is not looked up again; the same
        request_id sent with another request still collides on the log's key, and is refused.
        """
        request_id: str = getattr(request, "request_id", "")
        digest = fingerprint(request) if request_id else ""  # before the transaction: it holds a lock
        try:
            async with self.transaction() as tx:
                if not request_id:
                    return await write(tx)
                stored = None if looked_up else await logged(tx, method, request_id, digest, response_type)
                if stored is not None:
                    return stored
                response = await write(tx)
                await log_answer(tx, method, request_id, digest, response)
                return response
        except Exception as error:
            # The same request_id, written meanwhile on another connection (PostgreSQL runs
            # transactions side by side): ours rolled back, on the request log's key, or on a
            # unique column (an email) the other's write took first; its answer is the answer.
            taken = isinstance(error, _Taken) or self.unique_violation(error) is not None
            if not request_id or not taken:
                raise
            replayed = await self.replay(method, request, response_type)
            if replayed is None:  # another request holds the value: the conflict is real
                raise
            return replayed


_LOGGED = "SELECT fingerprint, response FROM request_log WHERE method = ? AND request_id = ?"


async def logged(tx: Tx, method: str, request_id: str, digest: str, response_type: type[R]) -> R | None:
    """Inside a transaction: the stored answer to `request_id`, or None if it is new."""
    row = await tx.query_one(_LOGGED, (method, request_id))
    return _stored(row, method, request_id, digest, response_type)


async def log_answer(tx: Tx, method: str, request_id: str, digest: str, response: Message) -> None:
    """Inside the transaction that wrote it: `response` is the answer to `request_id` from now on."""
    await log_answers(tx, method, [(request_id, digest, response)])


class BatchLog(Generic[R]):
    """The request log of one AIP-233 batch, each entry replayed by its own request_id, as
    `Backend.idempotent` replays one request: made before the transaction (the digests), read once
    inside it, then per entry `first(i)`, the answer it already has (logged by an earlier call, or
    given to an earlier entry of this batch with the same request_id and request) or None to apply
    it now, and `answered(i, response)` once applied; `write` logs the new answers in one statement.

    A request_id that answered another request, before or earlier in the batch, is INVALID_ARGUMENT
    REQUEST_ID_REUSED on `requests[i].request_id` (the batch's field).
    """

    def __init__(self, method: str, requests: Sequence[Message], response_type: type[R]) -> None:
        self.method = method
        self.response_type = response_type
        self.keys: list[tuple[str, str] | None] = [
            (request_id, fingerprint(request)) if (request_id := getattr(request, "request_id", "")) else None
            for request in requests
        ]
        """(request_id, digest) of each entry, None for one sent without a request_id."""
        self.logged: list[R | None] = [None] * len(self.keys)
        self.new: dict[str, tuple[str, R]] = {}
        """request_id -> (digest, answer) of the entries applied by this batch."""

    async def read(self, tx: Tx) -> None:
        """The answers logged for the batch's request_ids, in one read (inside its transaction)."""
        wanted = sorted({key[0] for key in self.keys if key is not None})
        if not wanted:
            return
        found = await tx.query(f"{_LOGGED_MANY} ({', '.join('?' for _ in wanted)})", (self.method, *wanted))
        rows = {row["request_id"]: row for row in found}
        for index, key in enumerate(self.keys):
            if key is not None:
                self.logged[index] = self._stored(index, key, rows.get(key[0]))

    def first(self, index: int) -> R | None:
        key = self.keys[index]
        if key is None:
            return None
        if self.logged[index] is None and key[0] in self.new:  # twice in this batch
            digest, answer = self.new[key[0]]
            if digest != key[1]:
                raise self._entry(index, _reused(key[0], self.method))
            return answer
        return self.logged[index]

    def answered(self, index: int, response: R) -> None:
        key = self.keys[index]
        if key is not None:
            self.new[key[0]] = (key[1], response)

    async def write(self, tx: Tx) -> None:
        await log_answers(tx, self.method, [(rid, digest, one) for rid, (digest, one) in self.new.items()])

    def _stored(self, index: int, key: tuple[str, str], row: Row | None) -> R | None:
        try:
            return _stored(row, self.method, *key, self.response_type)
        except InvalidArgument as error:
            raise self._entry(index, error) from None

    @staticmethod
    def _entry(index: int, error: InvalidArgument) -> InvalidArgument:
        """REQUEST_ID_REUSED on the entry's own field."""
        why = error.violations[0].description
        return InvalidArgument.field(f"requests[{index}].request_id", why, reason=error.reason)


_LOGGED_MANY = "SELECT request_id, fingerprint, response FROM request_log WHERE method = ? AND request_id IN"


async def log_answers(tx: Tx, method: str, answers: Sequence[tuple[str, str, Message]]) -> None:
    """Inside the transaction that wrote them: each (request_id, digest, response) is the answer to
    its request_id from now on (one statement)."""
    if not answers:
        return
    stamp = time.time_ns()
    await tx.execute(
        "INSERT INTO request_log (method, request_id, fingerprint, response, create_time) VALUES "
        + ", ".join("(?, ?, ?, ?, ?)" for _ in answers),
        [
            value
            for request_id, digest, response in answers
            for value in (method, request_id, digest, response.SerializeToString(), stamp)
        ],
    )


def _stored(row: Row | None, method: str, request_id: str, digest: str, response_type: type[R]) -> R | None:
    if row is None:
        return None
    if row["fingerprint"] != digest:
        raise _reused(request_id, method)
    return response_type.FromString(bytes(row["response"]))


def _reused(request_id: str, method: str) -> InvalidArgument:
    return InvalidArgument.field(
        "request_id",
        f"{request_id!r} was already used for a different {method} request",
        reason="REQUEST_ID_REUSED",
    )


def fingerprint(request: Message) -> str:
    """A digest of the request without its request_id: what 'the same request' means."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def method_of(request: Message) -> str:
    """`CreatePassengerRequest` -> `CreatePassenger`: the key a request's answers are logged under."""
    return str(request.DESCRIPTOR.name).removesuffix("Request")


Conflict = Callable[[M, M | None], MeshError]
"""What a taken unique column means: (the resource written, the one holding the value) -> an error."""


@dataclass(frozen=True)
class Resource(Generic[M]):
    """What the kit needs to know about one kind of resource, besides its contract."""

    message: type[M]
    from_row: Callable[[Row], M]
    to_row: Callable[[M], dict[str, Any]]
    """The columns to write, except `id` and `seq`."""
    unique: Mapping[str, Conflict[M]] = field(default_factory=dict)
    """Unique columns by name, each with its ALREADY_EXISTS."""
    filters: Mapping[str, str] = field(default_factory=dict)
    """List query keys whose column has another name (`parent` -> `recipient`)."""
    visible: str = ""
    """An SQL condition a row meets to exist for Get, List, Update and Delete (trips hide MATCHING)."""
    table: str = ""
    """The table, if it is not named after the collection (the contract's `plural`)."""


def _contract(message: type[Message]) -> tuple[str, str]:
    """(plural, SINGULAR) from the message's `google.api.resource` option."""
    option = message.DESCRIPTOR.GetOptions().Extensions[resource_pb2.resource]
    if not option.plural or not option.singular:
        raise TypeError(f"{message.DESCRIPTOR.full_name} declares no google.api.resource plural and singular")
    return option.plural, re.sub(r"(?<!^)(?=[A-Z])", "_", option.singular).upper()


class PageRequest(Protocol):
    """What a List request carries (AIP-158)."""

    @property
    def page_token(self) -> str: ...
    @property
    def page_size(self) -> int: ...


@dataclass(frozen=True)
class Page(Generic[M]):
    """One page of a List: the resources and the token of the next page ("" on the last)."""

    items: list[M]
    next_page_token: str


class Store(Generic[M]):
    """The standard methods of one resource over a `Backend`."""

    def __init__(self, db: Backend, resource: Resource[M]) -> None:
        self.db = db
        self.resource = resource
        self.collection, singular = _contract(resource.message)
        self.table = resource.table or self.collection
        self.not_found_reason = f"{singular}_NOT_FOUND"
        self._visible = f" AND {resource.visible}" if resource.visible else ""
        self._by_id = f"SELECT * FROM {self.table} WHERE id = ?{self._visible}"

    # --- the standard methods ------------------------------------------------------

    async def get(self, name: str, field: str = "name") -> M:
        resource_id = self.id_of(name, field)
        row = await self.db.query_one(self._by_id, (resource_id,))
        if row is None:
            raise self.not_found(resource_id)
        return self.resource.from_row(row)

    async def list(self, request: PageRequest, **query: str) -> Page[M]:
        """List: the page after `request.page_token` of the rows whose columns equal the non-empty `query`.

        The token carries the last `seq` and the whole query, so it only continues the same query.
        """
        after = aip.decode_page_token(request.page_token, query, kind=int) or 0
        limit = aip.page_size(request.page_size)
        conditions = [f"seq > ?{self._visible}"]
        params: list[Any] = [after]
        for key, value in query.items():
            if value:
                conditions.append(f"{self.resource.filters.get(key, key)} = ?")
                params.append(value)
        rows = await self.db.query(
            f"SELECT * FROM {self.table} WHERE {' AND '.join(conditions)} ORDER BY seq LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        token = aip.encode_page_token(rows[-1]["seq"], query) if more else ""
        return Page([self.resource.from_row(row) for row in rows], token)

    async def create(self, resource: M, request: Message, **extra: Any) -> M:
        """Insert `resource` (with `extra` columns the message does not carry), once per request_id."""

        async def write(tx: Tx) -> M:
            await self.insert(tx, resource, **extra)
            return resource

        return await self.idempotent(request, write)

    async def update(self, name: str, change: Callable[[M], M], request: Message, field: str = "name") -> M:
        """Read, `change`, and write back in one transaction; an unchanged resource is not written."""
        resource_id = self.id_of(name, field)

        async def write(tx: Tx) -> M:
            current = await self.read(tx, resource_id)
            changed = change(current)
            if changed is not current and changed != current:
                await self.save(tx, changed)
            return changed

        return await self.idempotent(request, write)

    async def delete(self, name: str, request: Message, check: Callable[[M], None] | None = None) -> None:
        """Delete after `check(stored)` (which raises to refuse); NOT_FOUND if it is not there."""
        resource_id = self.id_of(name)

        async def write(tx: Tx) -> Empty:
            current = await self.read(tx, resource_id)
            if check is not None:
                check(current)
            await tx.execute(f"DELETE FROM {self.table} WHERE id = ?", (resource_id,))
            return Empty()

        await self.db.idempotent(method_of(request), request, Empty, write)

    # --- the pieces, for a store's own steps -------------------------------------------

    async def idempotent(
        self, request: Message, write: Callable[[Tx], Awaitable[M]], *, looked_up: bool = False
    ) -> M:
        """`write` in a transaction, once per request_id (AIP-155); a taken unique column: ALREADY_EXISTS.
        `looked_up`: as `Backend.idempotent`'s."""
        try:
            return await self.db.idempotent(
                method_of(request), request, self.resource.message, write, looked_up=looked_up
            )
        except _Taken as taken:
            # Looked up after the rollback: PostgreSQL refuses any statement in a failed transaction.
            holder = await self.db.query_one(
                f"SELECT * FROM {self.table} WHERE {taken.column} = ?", (taken.value,)
            )
            existing = None if holder is None else self.resource.from_row(holder)
            raise self.resource.unique[taken.column](taken.resource, existing) from None

    async def replayed(self, request: Message) -> M | None:
        """The stored answer to this request_id, None if there is none (REQUEST_ID_REUSED if reused)."""
        return await self.db.replay(method_of(request), request, self.resource.message)

    async def fetch(self, tx: Tx, resource_id: str) -> Row:
        """The row of a visible resource, locked until the transaction ends, or its NOT_FOUND."""
        row = await tx.query_one(self._by_id + self.db.row_lock, (resource_id,))
        if row is None:
            raise self.not_found(resource_id)
        return row

    async def read(self, tx: Tx, resource_id: str) -> M:
        return self.resource.from_row(await self.fetch(tx, resource_id))

    async def read_many(self, tx: Tx, resource_ids: Iterable[str]) -> dict[str, M]:
        """The visible resources among `resource_ids`, by id (those missing are left out), in one
        read, locked until the transaction ends. Locked in id order: two transactions locking
        overlapping sets on PostgreSQL take their rows in one order, so neither waits on the other
        while holding a row the other waits for (a deadlock)."""
        wanted = sorted(set(resource_ids))
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        rows = await tx.query(
            f"SELECT * FROM {self.table} WHERE id IN ({marks}){self._visible} ORDER BY id{self.db.row_lock}",
            wanted,
        )
        return {row["id"]: self.resource.from_row(row) for row in rows}

    async def insert(self, tx: Tx, resource: M, **extra: Any) -> int:
        """Insert `resource` (and `extra` columns the message does not carry); its `seq`."""
        values = {"id": _own_id(resource), **self.resource.to_row(resource), **extra}
        sql = (
            f"INSERT INTO {self.table} ({', '.join(values)}) "
            f"VALUES ({', '.join('?' for _ in values)}) RETURNING seq"
        )
        rows = await self._write(tx.query, sql, values, resource)
        return int(rows[0]["seq"])

    async def insert_many(self, tx: Tx, resources: Sequence[M]) -> Sequence[int]:
        """Insert `resources` in one statement; their `seq`s, which follow the order given (both
        engines number the rows of one VALUES list in order; tests/mesh/test_resources.py). For a
        resource with no unique column of its own (which one was taken could not be told: `insert`)."""
        if self.resource.unique:
            raise TypeError(f"{self.table} has unique columns: insert them one by one")
        if not resources:
            return []
        rows = [{"id": _own_id(resource), **self.resource.to_row(resource)} for resource in resources]
        columns = ", ".join(rows[0])
        marks = ", ".join(f"({', '.join('?' for _ in row)})" for row in rows)
        found = await tx.query(
            f"INSERT INTO {self.table} ({columns}) VALUES {marks} RETURNING id, seq",
            [value for row in rows for value in row.values()],
        )
        seqs = {row["id"]: int(row["seq"]) for row in found}  # RETURNING's order is not promised
        return [seqs[row["id"]] for row in rows]

    async def save(self, tx: Tx, resource: M) -> None:
        """Write every column of `resource` over its row."""
        values = self.resource.to_row(resource)
        sql = f"UPDATE {self.table} SET {', '.join(f'{c} = ?' for c in values)} WHERE id = ?"
        await self._write(tx.execute, sql, {**values, "id": _own_id(resource)}, resource)

    async def _write(
        self,
        run: Callable[[str, Sequence[Any]], Awaitable[T]],
        sql: str,
        values: dict[str, Any],
        resource: M,
    ) -> T:
        try:
            return await run(sql, tuple(values.values()))
        except Exception as error:
            column = self.db.unique_violation(error)
            if column is None or column not in self.resource.unique:
                raise
            raise _Taken(column, values[column], resource) from error

    def id_of(self, name: str, field: str = "name") -> str:
        """`passengers/abc` -> `abc`; INVALID_ARGUMENT on `field` for another shape."""
        return aip.resource_id(name, self.collection, field)

    def not_found(self, resource_id: str) -> NotFound:
        name = f"{self.collection}/{resource_id}"
        return NotFound(f"{name} does not exist", reason=self.not_found_reason, metadata={"name": name})

    async def close(self) -> None:
        await self.db.close()


class _Taken(Exception):
    """A write hit a unique column the resource maps to ALREADY_EXISTS; resolved after the rollback."""

    def __init__(self, column: str, value: Any, resource: Message) -> None:
        super().__init__(f"{column} {value!r} is taken")
        self.column = column
        self.value = value
        self.resource: Any = resource


def _own_id(resource: Message) -> str:
    """The id of a resource the service named itself: the last segment of its name."""
    name: str = getattr(resource, "name")  # noqa: B009 - every resource has one (AIP-122)
    return name.rsplit("/", 1)[-1]
