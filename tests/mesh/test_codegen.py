"""`mesh generate`: what it needs is named when it is missing."""

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
