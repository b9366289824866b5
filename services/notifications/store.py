"""Where notifications are kept: the repository interface and its SQLite implementation."""

from __future__ import annotations

import sqlite3
from typing import Protocol

from google.protobuf.message import Message
from rideshare.notifications.v1.notifications_pb2 import Notification

from services.runtime.aip import timestamp_from_ns
from services.runtime.storage import Database

MIGRATIONS = [
    """
    CREATE TABLE notifications (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        recipient   TEXT NOT NULL,
        title       TEXT NOT NULL,
        body        TEXT NOT NULL,
        trip        TEXT NOT NULL,
        create_time INTEGER NOT NULL
    );
    CREATE INDEX notifications_by_recipient ON notifications (recipient, seq)
    """,
]


class NotificationStore(Protocol):
    """What the servicer needs from storage; a PostgreSQL store would implement the same."""

    def create(self, notification: Notification, request: Message) -> tuple[Notification, int | None]: ...
    def since(self, seq: int, limit: int) -> list[tuple[int, Notification]]: ...
    def last_seq(self) -> int: ...
    def list(self, recipient: str, after: int, limit: int) -> tuple[list[Notification], int | None]: ...
    def close(self) -> None: ...


def _row_to_notification(row: sqlite3.Row) -> Notification:
    return Notification(
        name=f"{row['recipient']}/notifications/{row['id']}",
        recipient=row["recipient"],
        title=row["title"],
        body=row["body"],
        trip=row["trip"],
        create_time=timestamp_from_ns(row["create_time"]),
    )


class SqliteNotificationStore:
    """Notifications in the service's own SQLite file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, notification: Notification, request: Message) -> tuple[Notification, int | None]:
        """Store `notification` once per request_id: the answer, and its `seq` if this call stored it.

        A replay returns the first answer and None, so the caller does not deliver it twice.
        """
        seq: int | None = None

        def write(tx: sqlite3.Connection) -> Notification:
            nonlocal seq
            cursor = tx.execute(
                "INSERT INTO notifications (id, recipient, title, body, trip, create_time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    notification.name.rsplit("/", 1)[-1],
                    notification.recipient,
                    notification.title,
                    notification.body,
                    notification.trip,
                    notification.create_time.ToNanoseconds(),
                ),
            )
            seq = cursor.lastrowid
            return notification

        stored = self.db.idempotent("SendNotification", request, Notification, write)
        return stored, seq

    def since(self, seq: int, limit: int) -> list[tuple[int, Notification]]:
        """Every recipient's notifications after position `seq`, in commit order (the feed's read)."""
        rows = self.db.query("SELECT * FROM notifications WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [(row["seq"], _row_to_notification(row)) for row in rows]

    def last_seq(self) -> int:
        row = self.db.query_one("SELECT COALESCE(MAX(seq), 0) AS seq FROM notifications")
        return int(row["seq"]) if row is not None else 0

    def list(self, recipient: str, after: int, limit: int) -> tuple[list[Notification], int | None]:
        """Oldest first, after position `after`; the position of the last one if more follow."""
        rows = self.db.query(
            "SELECT * FROM notifications WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?",
            (recipient, after, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row_to_notification(r) for r in rows], (rows[-1]["seq"] if more else None)

    def close(self) -> None:
        self.db.close()
