"""The OpenAPI 3.1 document: valid, complete, and describing URLs the bridge really routes."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from services.gateway import api, openapi, routes

METHODS = ("get", "put", "post", "delete", "patch", "head")


@pytest.fixture(scope="module")
def project():
    loaded = api.from_generated()
    table = routes.build(loaded)
    return table, openapi.document(loaded, table)


@pytest.fixture(scope="module")
def test_document(test_api, table):
    return openapi.document(test_api, table, api_keys=False)


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_documents_validate(project, test_document):
    validate(project[1])
    validate(test_document)


def test_one_operation_per_binding(project, table, test_document):
    for built, document in ((project[0], project[1]), (table, test_document)):
        assert len(list(operations(document))) == len(built.bindings)
        ids = [op["operationId"] for _, _, op in operations(document)]
        assert len(ids) == len(set(ids))


def test_every_documented_url_routes_to_its_rpc(project, table, test_document):
    for built, document in ((project[0], project[1]), (table, test_document)):
        for path, method, operation in operations(document):
            url = re.sub(r"\{[^}]+\}", "x1", path)
            match = built.match(method.upper(), url)
            assert match is not None, (method, path)
            assert f"gRPC: `{match.binding.rpc.path}`" in operation["description"], (method, path)


def test_paths_spell_out_resource_collections(project):
    paths = project[1]["paths"]
    get = paths["/v1/passengers/{passenger}"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in get["parameters"]] == [("passenger", "path", True)]
    assert {"get", "patch", "delete"} <= set(paths["/v1/passengers/{passenger}"])
    assert "/v1/passengers/{passenger}/notifications:stream" in paths


def test_query_parameters_are_the_fields_not_bound_by_path_or_body(project, test_document):
    listing = project[1]["paths"]["/v1/trips"]["get"]
    assert [p["name"] for p in listing["parameters"]] == ["pageSize", "pageToken", "passenger", "driver"]
    assert listing["parameters"][0]["schema"] == {"type": "integer", "format": "int32", "minimum": 0}

    echo = test_document["paths"]["/v1/echo/{id}"]["get"]
    names = [p["name"] for p in echo["parameters"]]
    assert names[0] == "id"
    assert {"int64Value", "colors", "nested.label", "nested.depth", "when", "mask", "maybeInt"} <= set(names)
    # maps, repeated messages, and a recursive message past its first level are not listed
    assert not {"labels", "items", "nested.child.label"} & set(names)
    colors = next(p for p in echo["parameters"] if p["name"] == "colors")
    assert colors["explode"] is True
    assert colors["schema"]["items"]["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"]

    nested_body = test_document["paths"]["/v1/echo/{id}/nested"]["put"]
    assert not [p for p in nested_body["parameters"] if p["name"].startswith("nested")]
    star_body = test_document["paths"]["/v1/echo"]["post"]
    assert star_body["parameters"] == []


def test_schemas_carry_comments_required_read_only_and_json_types(project):
    schemas = project[1]["components"]["schemas"]
    passenger = schemas["rideshare.passengers.v1.Passenger"]
    assert passenger["description"] == "A person who requests rides."
    assert passenger["required"] == ["displayName", "email"]
    assert passenger["properties"]["createTime"]["readOnly"] is True
    assert passenger["properties"]["createTime"]["format"] == "date-time"
    assert passenger["properties"]["email"]["description"].startswith("The address receipts are sent to")
    assert "readOnly" not in passenger["properties"]["email"]


def test_schemas_refuse_unknown_fields_and_empty_required_strings(project):
    schemas = project[1]["components"]["schemas"]
    passenger = schemas["rideshare.passengers.v1.Passenger"]
    assert passenger["additionalProperties"] is False
    assert passenger["properties"]["displayName"]["minLength"] == 1
    assert "minLength" not in passenger["properties"]["phone"]


def test_an_update_body_has_no_required_fields(project):
    schemas = project[1]["components"]["schemas"]
    patch = project[1]["paths"]["/v1/passengers/{passenger}"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "required" not in body
    assert "minLength" not in body["properties"]["displayName"]
    assert body["properties"].keys() == schemas["rideshare.passengers.v1.Passenger"]["properties"].keys()
    assert "required" not in schemas["rideshare.passengers.v1.Passenger.partial"]


def test_fields_the_path_sets_are_not_required_in_the_body(project):
    paths = project[1]["paths"]
    move = paths["/v1/drivers/{driver}:updateLocation"]["post"]
    body = move["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["location"]
    assert "Set by the URL path" in body["properties"]["name"]["description"]
    accept = paths["/v1/trips/{trip}:accept"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in accept.get("required", [])


def test_restricted_methods_are_not_in_the_public_document(project):
    documented = {op["operationId"] for _, _, op in operations(project[1])}
    restricted = {"CreateInvoice", "ListInvoices", "CreatePayment", "ListPayments", "RefundPayment"}
    restricted |= {"AssignNearestDriver", "ReleaseTrip", "ListDrivers", "SearchDrivers", "SendNotification"}
    restricted |= {"BatchSendNotifications", "BatchReleaseTrips"}
    restricted |= {"ListPassengers"}
    methods = {operation_id.split("_")[1] for operation_id in documented}  # Service_Method[_n]
    assert not methods & restricted
    assert {"GetPayment", "QuoteFare", "RequestTrip", "GetPassenger"} <= methods
    assert "/v1/payments/{payment}:refund" not in project[1]["paths"]
    assert "post" not in project[1]["paths"]["/v1/passengers/{passenger}/notifications"]


def test_resource_references_carry_their_name_patterns(project):
    schemas = project[1]["components"]["schemas"]
    trip = schemas["rideshare.trips.v1.Trip"]
    assert trip["properties"]["passenger"]["pattern"] == "^(passengers/[^/\\s]+)?$"
    assert schemas["google.type.LatLng"]["properties"]["latitude"]["maximum"] == 90


def test_int64_is_a_string_and_enums_are_names(test_document):
    thing = test_document["components"]["schemas"]["gatewaytest.v1.Thing"]
    assert thing["properties"]["size"] == {
        "type": "string",
        "format": "int64",
        "pattern": "^-?[0-9]+$",
        "description": "Its size.",
    }
    assert thing["properties"]["color"]["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"]


def test_errors_streams_and_response_body_are_described(test_document):
    fail = test_document["paths"]["/v1/fail"]["post"]
    assert fail["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Status"
    }
    assert test_document["components"]["schemas"]["Status"]["required"] == ["code", "message", "details"]

    count = test_document["paths"]["/v1/count/{count}"]["get"]["responses"]["200"]["content"]
    assert set(count) == {"application/x-ndjson", "text/event-stream"}
    assert count["application/x-ndjson"]["schema"]["properties"]["result"] == {
        "$ref": "#/components/schemas/gatewaytest.v1.CountReply"
    }

    content = test_document["paths"]["/v1/files/{file}:content"]["get"]["responses"]["200"]
    assert content["content"]["application/json"]["schema"]["contentEncoding"] == "base64"


def test_the_api_key_and_bearer_token_security_schemes(project, test_document):
    schemes = project[1]["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["ApiKeyQuery"] == {"type": "apiKey", "in": "query", "name": "key"}
    assert (schemes["BearerToken"]["type"], schemes["BearerToken"]["scheme"]) == ("http", "bearer")
    # a key alone, or a key and a signed-in user's token
    assert project[1]["security"] == [
        {"ApiKeyHeader": []},
        {"ApiKeyQuery": []},
        {"ApiKeyHeader": [], "BearerToken": []},
        {"ApiKeyQuery": [], "BearerToken": []},
    ]
    assert "security" not in test_document


def test_the_running_gateway_serves_the_document_and_swagger_ui_from_itself(kitchen_gateway):
    document = kitchen_gateway.request("GET", "/openapi.json")
    assert document.status == 200
    validate(document.json)

    page = kitchen_gateway.request("GET", "/docs")
    assert page.status == 200
    assert page.header("content-type").startswith("text/html")
    assets = re.findall(rb'(?:src|href)="([^"]+)"', page.body)
    assert assets
    for asset in assets:
        assert asset.startswith(b"/docs/"), "every asset comes from the bridge itself"
        served = kitchen_gateway.request("GET", asset.decode())
        assert served.status == 200, asset
    bundle = kitchen_gateway.request("GET", "/docs/swagger-ui-bundle.js")
    assert bundle.header("content-type").startswith("text/javascript")
    assert b"SwaggerUIBundle" in bundle.body
    assert kitchen_gateway.request("GET", "/docs/../openapi.json").status == 404
