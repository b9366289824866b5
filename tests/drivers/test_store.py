"""The SQLite driver store: the search prefilter is an index range scan."""

from __future__ import annotations

import pytest
from google.type import latlng_pb2

from services.domain import geo
from services.drivers.store import MIGRATIONS, search_query
from services.runtime.storage import Database


@pytest.mark.parametrize(
    "center",
    [latlng_pb2.LatLng(latitude=51.5, longitude=-0.1), latlng_pb2.LatLng(latitude=0, longitude=179.99)],
)
def test_the_search_prefilter_scans_the_position_index(center):
    db = Database(":memory:", MIGRATIONS)
    try:
        sql, params = search_query(geo.bounding_box(center, 5000))
        plan = " ".join(row["detail"] for row in db.query(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        db.close()

    assert "USING INDEX drivers_by_status_position (status=? AND latitude>? AND latitude<?)" in plan
