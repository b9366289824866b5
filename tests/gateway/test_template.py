"""Path templates: the grammar of google/api/http.proto, and what a capture decodes to."""

from __future__ import annotations

import re

import pytest

from services.gateway.template import DOUBLE_STAR, STAR, TemplateError, decode_multi, decode_single, parse


@pytest.mark.parametrize(
    ("source", "segments", "variables", "verb"),
    [
        ("/v1/passengers", ("v1", "passengers"), [], None),
        ("/v1/{name=messages/*}", ("v1", "messages", STAR), [("name", 1, 3, True)], None),
        ("/v1/messages/{message_id}", ("v1", "messages", STAR), [("message_id", 2, 3, False)], None),
        (
            "/v1/{book.name=shelves/*/books/*}",
            ("v1", "shelves", STAR, "books", STAR),
            [("book.name", 1, 5, True)],
            None,
        ),
        ("/v1/{name=trips/*}:accept", ("v1", "trips", STAR), [("name", 1, 3, True)], "accept"),
        ("/v1/{name=files/**}", ("v1", "files", DOUBLE_STAR), [("name", 1, None, True)], None),
        ("/v1/{path=**}:get", ("v1", DOUBLE_STAR), [("path", 1, None, True)], "get"),
        (
            "/v1/*/x/{a}/{b.c}",
            ("v1", STAR, "x", STAR, STAR),
            [("a", 3, 4, False), ("b.c", 4, 5, False)],
            None,
        ),
        ("/v1/{single=*}", ("v1", STAR), [("single", 1, 2, False)], None),
        ("/v1/**", ("v1", DOUBLE_STAR), [], None),
    ],
)
def test_templates_parse_into_segments_and_variables(source, segments, variables, verb):
    template = parse(source)

    assert template.segments == segments
    assert [(v.name, v.start, v.end, v.multi_segment) for v in template.variables] == variables
    assert template.verb == verb


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("v1/x", "must start with '/'"),
        ("/v1/**/x", "'**' may only be the last segment"),
        ("/v1/{name=**}/x", "'**' may only be the last segment"),
        ("/v1/{name", "'{' without '}'"),
        ("/v1/{na-me}", "bad field path"),
        ("/v1/{a={b}}", "cannot nest"),
        ("/v1//x", "empty segment"),
        ("/v1/a*b", "bad segment"),
        ("/v1/{a}/{a}", "bound twice"),
        ("/v1/x:", "bad verb"),
    ],
)
def test_bad_templates_are_refused_with_the_problem(source, problem):
    with pytest.raises(TemplateError, match=re.escape(problem)):
        parse(source)


@pytest.mark.parametrize(
    ("raw", "single", "multi"),
    [
        ("plain", "plain", "plain"),
        ("a%2Fb", "a/b", "a%2Fb"),
        ("a%2fb", "a/b", "a%2fb"),
        ("a%20b", "a b", "a b"),
        ("a+b", "a+b", "a+b"),
        ("%E2%82%AC", "€", "€"),
        ("x/%41%2F%42", "x/A/B", "x/A%2FB"),
    ],
)
def test_single_segment_captures_decode_everything_multi_segment_ones_keep_slashes(raw, single, multi):
    assert decode_single(raw) == single
    assert decode_multi(raw) == multi


def test_expand_writes_variables_as_openapi_parameters():
    assert parse("/v1/{name=trips/*}:accept").expand({}) == "/v1/{name}:accept"
    assert parse("/v1/{a.b}/x/{c=**}").expand({}) == "/v1/{a.b}/x/{c}"
