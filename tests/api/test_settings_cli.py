"""Settings come from IRQLAB_* variables; `irqlab serve` honours them, flags override."""

from __future__ import annotations

from typing import Any

import pytest

from app import cli
from app.serve import DrainingHttpToolsProtocol
from app.settings import Settings, get_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "MAX_VMS", "MAX_VCPUS", "MAX_BODY_BYTES", "LOG_LEVEL",
                 "MAX_EVENTS_PAGE"):
        monkeypatch.delenv(f"IRQLAB_{name}", raising=False)
    s = Settings()
    assert (s.host, s.port, s.max_vms, s.max_vcpus, s.max_body_bytes, s.log_level,
            s.max_events_page) == ("127.0.0.1", 8000, 64, 4096, 1 << 20, "info", 1000)


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"IRQLAB_HOST": "0.0.0.0", "IRQLAB_PORT": "9001", "IRQLAB_MAX_VMS": "3",
           "IRQLAB_MAX_VCPUS": "8", "IRQLAB_MAX_BODY_BYTES": "2048", "IRQLAB_LOG_LEVEL": "DEBUG",
           "IRQLAB_MAX_EVENTS_PAGE": "10"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert (s.host, s.port, s.max_vms, s.max_vcpus, s.max_body_bytes, s.log_level,
            s.max_events_page) == ("0.0.0.0", 9001, 3, 8, 2048, "debug", 10)


def test_invalid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRQLAB_MAX_VCPUS", "5000")
    with pytest.raises(ValueError, match="max_vcpus"):
        Settings()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    import uvicorn

    def run(app: str, **kw: Any) -> None:
        calls.update(app=app, **kw)

    monkeypatch.setattr(uvicorn, "run", run)
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()


def test_serve_uses_environment(monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]
                                ) -> None:
    monkeypatch.setenv("IRQLAB_HOST", "127.0.0.2")
    monkeypatch.setenv("IRQLAB_PORT", "8123")
    monkeypatch.setenv("IRQLAB_LOG_LEVEL", "warning")
    monkeypatch.setenv("IRQLAB_SHUTDOWN_TIMEOUT", "3")
    assert cli.main(["serve"]) == 0
    assert served == {"app": "app.main:app", "host": "127.0.0.2", "port": 8123,
                      "log_level": "warning", "timeout_graceful_shutdown": 3,
                      "http": DrainingHttpToolsProtocol}


def test_serve_flags_override(monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]) -> None:
    monkeypatch.setenv("IRQLAB_PORT", "8123")
    assert cli.main(["serve", "--host", "127.0.0.3", "--port", "8124"]) == 0
    assert served["host"] == "127.0.0.3" and served["port"] == 8124


def test_serve_defaults(monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]) -> None:
    for name in ("HOST", "PORT", "LOG_LEVEL"):
        monkeypatch.delenv(f"IRQLAB_{name}", raising=False)
    assert cli.main(["serve"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8000
