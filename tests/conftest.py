"""Unit tests run with the network blocked; integration tests may use loopback only."""

from __future__ import annotations

import os

import pytest
from pytest_socket import disable_socket, socket_allow_hosts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("LANGSMITH_TRACING", "false")


@pytest.fixture(autouse=True)
def _network_policy(request: pytest.FixtureRequest):
    if request.node.get_closest_marker("integration"):
        socket_allow_hosts(["127.0.0.1", "localhost", "::1"], allow_unix_socket=True)
    else:
        disable_socket(allow_unix_socket=True)
    yield


from tests.chroma_server import chroma_server  # noqa: E402,F401 - shared fixture
