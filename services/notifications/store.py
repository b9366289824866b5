"""Where notifications are kept: their table, the notification as a row, and the feed's reads.

`seq` is assigned in commit order, which is what the feed (feed.py) follows
and what List pages by: a reader that has seen `seq` n has seen every
notification committed before it. SQLite has one writer at a time. On
PostgreSQL an identity value is taken at insert, not at commit, so two
transactions committing out of order made a stream that read the later one
first skip the other; so the inserting transaction first takes an advisory
lock (`SEQUENCE_LOCK`), held to its commit: notifications are stored one at
a time across the replicas, and each takes its number in commit order. Each
storing transaction also tells the replicas' feeds its last `seq` (NOTIFY on
`CHANNEL`, sent on commit; one for a batch: a feed reads all after its position).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rideshare.notifications.v1.notifications_pb2 import Notification, SendNotificationRequest

from services.runtime.aip import timestamp_from_ns
from services.runtime.resources import (
    Backend,
    BatchLog,
    Resource,
    Row,
    Store,
    Tx,
    method_of,
)

MIGRATIONS = Path(__file__).with_name("migrations")
"""The schema: numbered SQL files, a PostgreSQL variant where the engines differ (runtime/migrations.py)."""
CHANNEL = "notifications"
"""Where each stored notification's `seq` is announced to the feeds (PostgreSQL's NOTIFY)."""
SEQUENCE_LOCK = "notifications.seq"
"""Held by each storing transaction until it commits, so `seq` follows commit order."""


def _notification(row: Row) -> Notification:
    return Notification(
        name=f"{row['recipient']}/notifications/{row['id']}",
        recipient=row["recipient"],
        title=row["title"],
        body=row["body"],
        trip=row["trip"],
        create_time=timestamp_from_ns(row["create_time"]),
    )


def _columns(notification: Notification) -> dict[str, Any]:
    return {
        "recipient": notification.recipient,
        "title": notification.title,
        "body": notification.body,
        "trip": notification.trip,
        "create_time": notification.create_time.ToNanoseconds(),
    }


NOTIFICATIONS = Resource(Notification, _notification, _columns, filters={"parent": "recipient"})


class NotificationStore(Store[Notification]):
    """The kit's List (by recipient) and Create, with the position each notification takes in the feed."""

    def __init__(self, db: Backend) -> None:
        super().__init__(db, NOTIFICATIONS)

    async def send(
        self, notification: Notification, request: SendNotificationRequest
    ) -> tuple[Notification, int | None]:
        """Store `notification` once per request_id: the answer, and its `seq` if this call stored it.

        A replay returns the first answer and None, so the caller does not deliver it twice.
        """
        seq: int | None = None

        async def write(tx: Tx) -> Notification:
            nonlocal seq
            await tx.lock(SEQUENCE_LOCK)
            seq = await self.insert(tx, notification)
            await tx.notify(CHANNEL, str(seq))
            return notification

        stored = await self.idempotent(request, write)
        return stored, seq

    async def send_batch(
        self, notifications: list[Notification], requests: list[SendNotificationRequest]
    ) -> tuple[list[Notification], list[tuple[int, Notification]]]:
        """Store each notification once per its request's request_id, all in one transaction (AIP-233).

        Returns the answers, in order, and the (seq, notification) of each one this call stored: an
        entry answered before (alone, in an earlier batch, or earlier in this one) gets its first
        answer and is not stored again. The sequence lock is taken before the request log is read,
        so no concurrent send of the same request_id can slip between the read and the write. What
        does not depend on the entry is done once: one read of the request log for every entry,
        one insert of the new notifications (in order, so their `seq`s follow the batch), one
        write of their answers, one NOTIFY (the last `seq`: a feed reads everything after its
        position).
        """
        # An entry and a lone send replay each other: one method in the log.
        log = BatchLog(method_of(SendNotificationRequest()), requests, Notification)
        answers: list[Notification] = []
        async with self.db.transaction() as tx:
            await tx.lock(SEQUENCE_LOCK)
            await log.read(tx)
            fresh: list[Notification] = []
            for index, notification in enumerate(notifications):
                first = log.first(index)
                if first is not None:
                    answers.append(first)
                    continue
                log.answered(index, notification)
                answers.append(notification)
                fresh.append(notification)
            stored: list[tuple[int, Notification]] = list(
                zip(await self.insert_many(tx, fresh), fresh, strict=True)
            )
            await log.write(tx)
            if stored:
                await tx.notify(CHANNEL, str(stored[-1][0]))
        return answers, stored

    async def since(self, seq: int, limit: int) -> list[tuple[int, Notification]]:
        """Every recipient's notifications after position `seq`, in commit order (the feed's read)."""
        rows = await self.db.query(
            "SELECT * FROM notifications WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [(row["seq"], _notification(row)) for row in rows]

    async def last_seq(self) -> int:
        row = await self.db.query_one("SELECT COALESCE(MAX(seq), 0) AS seq FROM notifications")
        return int(row["seq"]) if row is not None else 0
