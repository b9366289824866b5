"""Where the routes come from: the generated modules, a descriptor set file, or server reflection."""

from __future__ import annotations

import pytest

from services.gateway import api, routes


def test_the_generated_modules_give_every_service_of_the_project_with_no_bad_binding():
    built = routes.build(api.from_generated())

    assert built.problems == []
    paths = {(b.http_method, b.template.source, b.rpc.path) for b in built.bindings}
    assert (
        "GET",
        "/v1/{name=passengers/*}",
        "/rideshare.passengers.v1.PassengerService/GetPassenger",
    ) in paths
    assert (
        "PATCH",
        "/v1/{passenger.name=passengers/*}",
        "/rideshare.passengers.v1.PassengerService/UpdatePassenger",
    ) in paths
    packages = {b.rpc.service.file.package for b in built.bindings}
    assert "rideshare.passengers.v1" in packages
    assert all(p.startswith("rideshare.") for p in packages)


def test_the_generated_api_carries_the_proto_comments():
    loaded = api.from_generated(["rideshare.passengers.v1"])

    assert [s.full_name for s in loaded.services] == ["rideshare.passengers.v1.PassengerService"]
    proto = loaded.files["rideshare/passengers/v1/passengers.proto"]
    assert any(
        "A person who requests rides." in loc.leading_comments for loc in proto.source_code_info.location
    )


def test_a_descriptor_set_gives_its_services_with_classes_from_its_own_pool(test_api):
    assert "gatewaytest.v1.Kitchen" in [s.full_name for s in test_api.services]
    thing = test_api.message_class(test_api.pool.FindMessageTypeByName("gatewaytest.v1.Thing"))
    assert thing(name="things/a").SerializeToString() == b"\n\x08things/a"


def test_a_missing_or_broken_descriptor_set_is_an_api_error(tmp_path):
    with pytest.raises(api.ApiError, match="cannot read"):
        api.from_descriptor_set(tmp_path / "missing.binpb")
    broken = tmp_path / "broken.binpb"
    broken.write_bytes(b"\xff\xff\xff")
    with pytest.raises(api.ApiError, match="not a FileDescriptorSet"):
        api.from_descriptor_set(broken)


def test_a_descriptor_set_without_its_imports_is_an_api_error(tmp_path, test_api):
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet(file=[test_api.files["gatewaytest/v1/gatewaytest.proto"]])
    partial = tmp_path / "partial.binpb"
    partial.write_bytes(files.SerializeToString())
    with pytest.raises(api.ApiError, match=r"imports google/api/annotations\.proto"):
        api.from_descriptor_set(partial)
