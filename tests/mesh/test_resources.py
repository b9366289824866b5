"""The resource kit: the standard methods every service's store gets, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from rideshare.passengers.v1 import passengers_pb2 as pb

from services.runtime import aip
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.runtime.resources import Resource, Row, Store, method_of
from tests.postgres import Backends, write_migrations

PEOPLE_TABLE = """
    CREATE TABLE people (
        seq          {seq},
        id           TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        email        TEXT NOT NULL UNIQUE,
        phone        TEXT NOT NULL
    )
"""
MIGRATIONS = {
    "0001_people.sql": PEOPLE_TABLE.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT"),
    "0001_people.postgres.sql": PEOPLE_TABLE.format(seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    "0002_note.sql": "ALTER TABLE people ADD COLUMN note TEXT",
}


def _person(row: Row) -> pb.Passenger:
    return pb.Passenger(
        name=f"passengers/{row['id']}",
        display_name=row["display_name"],
        email=row["email"],
        phone=row["phone"],
    )


def _columns(person: pb.Passenger) -> dict[str, Any]:
    return {"display_name": person.display_name, "email": person.email, "phone": person.phone}


def _email_taken(person: pb.Passenger, holder: pb.Passenger | None) -> AlreadyExists:
    return AlreadyExists(
        f"{person.email} is taken",
        reason="EMAIL_TAKEN",
        metadata={"holder": holder.name if holder else ""},
    )


PEOPLE = Resource(
    pb.Passenger,
    _person,
    _columns,
    unique={"email": _email_taken},
    filters={"parent": "phone"},
    visible="display_name <> 'hidden'",
    table="people",
)


@pytest.fixture
def store(backends: Backends, tmp_path: Path) -> Store[pb.Passenger]:
    return Store(backends.open(write_migrations(tmp_path / "migrations", MIGRATIONS)), PEOPLE)


def person(
    number: int, request_id: str = "", **fields: str
) -> tuple[pb.Passenger, pb.CreatePassengerRequest]:
    values = {
        "name": f"passengers/p{number}",
        "display_name": f"P{number}",
        "email": f"p{number}@example.com",
    }
    values.update(fields)
    made = pb.Passenger(**values)
    return made, pb.CreatePassengerRequest(passenger=made, request_id=request_id)


async def create(
    store: Store[pb.Passenger], number: int, request_id: str = "", **fields: str
) -> pb.Passenger:
    return await store.create(*person(number, request_id, **fields))


def test_the_collection_and_the_not_found_reason_come_from_the_contract(store):
    assert (store.collection, store.table, store.not_found_reason) == (
        "passengers",
        "people",
        "PASSENGER_NOT_FOUND",
    )
    with pytest.raises(TypeError, match=r"google\.api\.resource"):
        Store(store.db, Resource(pb.GetPassengerRequest, lambda row: pb.GetPassengerRequest(), lambda m: {}))


def test_the_logged_method_is_the_request_type_without_request():
    assert method_of(pb.CreatePassengerRequest()) == "CreatePassenger"
    assert method_of(pb.UpdatePassengerRequest()) == "UpdatePassenger"


def test_get_returns_what_create_stored_and_not_found_names_the_resource(store, runner):
    async def scenario() -> None:
        created = await create(store, 1)
        assert await store.get("passengers/p1") == created

        with pytest.raises(NotFound) as missing:
            await store.get("passengers/nobody")
        assert (missing.value.reason, missing.value.metadata) == (
            "PASSENGER_NOT_FOUND",
            {"name": "passengers/nobody"},
        )
        assert str(missing.value) == "passengers/nobody does not exist"

        with pytest.raises(InvalidArgument) as shape:
            await store.get("drivers/p1", field="passenger.name")
        assert [v.field for v in shape.value.violations] == ["passenger.name"]

    runner.run(scenario())


def test_a_taken_unique_column_is_the_resources_already_exists_naming_the_holder(store, runner):
    async def scenario() -> None:
        first = await create(store, 1, email="same@example.com")
        with pytest.raises(AlreadyExists) as taken:
            await create(store, 2, request_id="k", email="same@example.com")
        assert (taken.value.reason, taken.value.metadata) == ("EMAIL_TAKEN", {"holder": first.name})
        assert await store.replayed(person(2, "k", email="same@example.com")[1]) is None, "nothing was logged"

        second = await create(store, 2)
        with pytest.raises(AlreadyExists):
            await store.update(
                second.name, lambda p: pb.Passenger(name=p.name, email=first.email), person(2)[1]
            )
        assert (await store.get(second.name)).email == second.email

    runner.run(scenario())


def test_create_replays_by_request_id_and_refuses_a_reused_one(store, runner):
    async def scenario() -> None:
        first = await create(store, 1, request_id="k")
        assert await create(store, 1, request_id="k") == first
        with pytest.raises(InvalidArgument) as reused:
            await create(store, 2, request_id="k")
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert len((await store.list(pb.ListPassengersRequest())).items) == 1

    runner.run(scenario())


def test_list_pages_in_creation_order_with_tokens_bound_to_the_query(store, runner):
    async def pages(size: int, **query: str) -> list[list[str]]:
        found, token = [], ""
        while True:
            page = await store.list(pb.ListPassengersRequest(page_size=size, page_token=token), **query)
            found.append([p.name for p in page.items])
            token = page.next_page_token
            if not token:
                return found

    async def scenario() -> None:
        for number in range(5):
            await create(store, number, phone="+1" if number % 2 else "+2")
        await create(store, 9, display_name="hidden")

        assert await pages(2) == [
            ["passengers/p0", "passengers/p1"],
            ["passengers/p2", "passengers/p3"],
            ["passengers/p4"],
        ]
        assert await pages(10, parent="+1") == [["passengers/p1", "passengers/p3"]]
        assert await pages(0, parent="") == [[f"passengers/p{n}" for n in range(5)]], "empty: no filter"

        token = (await store.list(pb.ListPassengersRequest(page_size=1), parent="+1")).next_page_token
        with pytest.raises(InvalidArgument) as other:
            await store.list(pb.ListPassengersRequest(page_token=token), parent="+2")
        assert other.value.violations[0].field == "page_token"
        with pytest.raises(InvalidArgument):
            await store.list(pb.ListPassengersRequest(page_token=token + "x"), parent="+1")

    runner.run(scenario())


def test_tokens_are_the_ones_issued_before_the_kit(store, runner):
    async def scenario() -> None:
        for number in range(3):
            await create(store, number)
        page = await store.list(pb.ListPassengersRequest(page_size=1))
        assert page.next_page_token == aip.encode_page_token(1)
        rest = await store.list(pb.ListPassengersRequest(page_token=aip.encode_page_token(2)))
        assert [p.name for p in rest.items] == ["passengers/p2"]

    runner.run(scenario())


def test_update_writes_the_change_once_and_an_unchanged_resource_is_returned_as_it_was(store, runner):
    async def scenario() -> None:
        created = await create(store, 1)
        request = pb.UpdatePassengerRequest(passenger=pb.Passenger(name=created.name), request_id="u")

        def rename(current: pb.Passenger) -> pb.Passenger:
            changed = pb.Passenger()
            changed.CopyFrom(current)
            changed.display_name = "Renamed"
            return changed

        renamed = await store.update(created.name, rename, request)
        assert (await store.get(created.name)).display_name == "Renamed"
        assert (
            await store.update(created.name, lambda p: pytest.fail("replayed, not run"), request) == renamed
        )

        unchanged = await store.update(created.name, lambda p: p, pb.UpdatePassengerRequest())
        assert unchanged == renamed

        with pytest.raises(NotFound):
            await store.update("passengers/nobody", rename, pb.UpdatePassengerRequest())

    runner.run(scenario())


def test_delete_checks_first_and_a_hidden_row_does_not_exist(store, runner):
    async def scenario() -> None:
        kept = await create(store, 1)
        hidden = await create(store, 2, display_name="hidden")

        def refuse(current: pb.Passenger) -> None:
            raise FailedPrecondition(f"{current.name} is busy", reason="BUSY")

        with pytest.raises(FailedPrecondition):
            await store.delete(kept.name, pb.DeletePassengerRequest(name=kept.name), refuse)
        assert await store.get(kept.name) == kept

        await store.delete(kept.name, pb.DeletePassengerRequest(name=kept.name, request_id="d"))
        await store.delete(kept.name, pb.DeletePassengerRequest(name=kept.name, request_id="d"))  # a replay
        for name in (kept.name, hidden.name):
            with pytest.raises(NotFound):
                await store.get(name)
        with pytest.raises(NotFound):
            await store.delete(hidden.name, pb.DeletePassengerRequest(name=hidden.name))

    runner.run(scenario())


def test_insert_takes_extra_columns_and_answers_the_seq(store, runner):
    async def scenario() -> None:
        async with store.db.transaction() as tx:
            first = await store.insert(tx, person(1)[0], note="kept")
            second = await store.insert(tx, person(2)[0])
        assert (first, second) == (1, 2)
        row = await store.db.query_one("SELECT note FROM people WHERE id = 'p1'")
        assert row["note"] == "kept"

    runner.run(scenario())


def test_insert_many_numbers_the_rows_in_the_order_given_in_one_statement(store, runner):
    plain = Store(store.db, Resource(pb.Passenger, _person, _columns, table="people"))  # no unique column

    async def scenario() -> tuple[list[int], list[str]]:
        made = [person(n)[0] for n in [31, 4, 15, 9, 26, 5, 35, 8, 97, 93]]
        async with store.db.transaction() as tx:
            assert await plain.insert_many(tx, []) == []
            seqs = list(await plain.insert_many(tx, made))
        rows = await store.db.query("SELECT id FROM people ORDER BY seq")
        return seqs, [row["id"] for row in rows]

    seqs, ids = runner.run(scenario())
    assert seqs == list(range(1, 11))
    assert ids == [f"p{n}" for n in [31, 4, 15, 9, 26, 5, 35, 8, 97, 93]]


def test_insert_many_refuses_a_resource_with_unique_columns(store, runner):
    async def scenario() -> None:
        async with store.db.transaction() as tx:
            await store.insert_many(tx, [person(1)[0]])

    with pytest.raises(TypeError, match="unique"):
        runner.run(scenario())


def test_concurrent_updates_of_one_resource_take_turns_and_none_is_lost(store, runner):
    # PostgreSQL runs the transactions side by side on pooled connections: without the row lock,
    # two would read the same name and one append would be lost.
    def append(current: pb.Passenger) -> pb.Passenger:
        changed = pb.Passenger()
        changed.CopyFrom(current)
        changed.display_name += "x"
        return changed

    async def scenario() -> None:
        created = await create(store, 1, display_name="")
        updates = [store.update(created.name, append, pb.UpdatePassengerRequest()) for _ in range(8)]
        await asyncio.gather(*updates)
        assert (await store.get(created.name)).display_name == "x" * 8

    runner.run(scenario())
