"""Shared fixtures of the model tests."""

import socket

import pytest


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (models must load from local folders only)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
