"""Shared test setup: corpora come from the shared mirror, the cache is per test, the network is off."""

import os
import socket
from pathlib import Path

import pytest

# Named corpora load from the checked-in mirror (<repo>/../shared/data) unless the caller chose another.
os.environ.setdefault("GPTLAB_MIRROR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
# A fixed thread count for every run of the suite (its children too): by default gptlab follows the machine's load
# (gptlab.cores), and runs that must compute the same numbers need the same count. test_cores unsets it.
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                 else os.cpu_count() or 1)))
# Child processes (the CLI, torchrun's workers) import this checkout, whatever gptlab is installed.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

_LOOPBACK = ("127.", "::1", "localhost")


class NetworkAccessError(RuntimeError):
    """A test tried to reach a non-loopback host. Not an OSError, so no code under test can swallow it."""


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    return str(address[0]).startswith(_LOOPBACK)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Allow connections to 127.0.0.1 / ::1 only (a test's own HTTP server); fail loudly on anything else."""
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)

    def connect(self, address):
        if not _is_loopback(address):
            raise NetworkAccessError(f"test tried to connect to {address}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _is_loopback(address):
            raise NetworkAccessError(f"test tried to connect to {address}")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not str(host).startswith(_LOOPBACK):
            raise NetworkAccessError(f"test tried to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own empty GPTLAB_CACHE."""
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "gptlab-cache"))
