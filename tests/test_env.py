"""attn.env.getenv: os.environ.get's answers, read cheaply (the switches read at every op call)."""
from __future__ import annotations

import os

import pytest

from attn import env


@pytest.mark.parametrize("fast", [True, False], ids=["direct", "os.environ"])
def test_getenv_sees_what_os_environ_sees(monkeypatch, fast):
    if fast and os.name != "posix":
        pytest.skip("the direct read is POSIX only")
    monkeypatch.setattr(env, "_POSIX", fast and os.name == "posix")
    name = "ATTN_TEST_GETENV_SWITCH"
    monkeypatch.delenv(name, raising=False)
    assert env.getenv(name) is None and env.getenv(name, "dflt") == "dflt"
    monkeypatch.setenv(name, "pingpong")
    assert env.getenv(name) == "pingpong" == os.environ.get(name)
    os.environ[name] = "ünïcode"  # set and changed through os.environ, as monkeypatch does
    assert env.getenv(name, "dflt") == "ünïcode"
    monkeypatch.setenv(name, "")
    assert env.getenv(name, "dflt") == ""  # set but empty is not unset
    monkeypatch.delenv(name)
    assert env.getenv(name, "dflt") == "dflt"


def test_getenv_falls_back_when_os_environ_has_no_plain_dict(monkeypatch):
    class Mapping(dict):
        pass

    monkeypatch.setattr(os, "environ", Mapping(ATTN_TEST_GETENV_SWITCH="x"))
    assert env.getenv("ATTN_TEST_GETENV_SWITCH") == "x" and env.getenv("ATTN_TEST_GETENV_NONE", "d") == "d"
