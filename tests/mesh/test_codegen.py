"""`mesh generate` and `mesh lint-protos`: what they need is named when it is missing, and what they read."""

from __future__ import annotations

import sysconfig

import pytest

from services.mesh import codegen


def test_a_missing_stub_plugin_is_named_with_what_installs_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(SystemExit) as caught:
        codegen.generate(tmp_path / "generated")

    assert str(caught.value) == (
        "mesh generate: protoc-gen-mypy not found; install mypy-protobuf (pip install -e '.[test]')"
    )
    assert not (tmp_path / "generated").exists()


def test_buf_lint_gets_the_rules_and_exceptions_written_in_buf_yaml():
    """`mesh lint-protos` passes buf.yaml's lint section to buf: the AIP exceptions must reach it."""
    config = codegen.buf_lint_config()

    exceptions = ["RPC_RESPONSE_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE"]
    assert config == {"version": "v2", "lint": {"use": ["STANDARD"], "except": exceptions}}
