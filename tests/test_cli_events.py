"""`irqlab events VM`: the causal chain of README's seed-race section, from a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.cli import main
from tests.uvicorn_server import free_port, irqlab_server


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with irqlab_server() as base:
        yield base


def seed_race(base: str, profile: str) -> None:
    """README's curl walkthrough, step for step."""
    with httpx.Client(base_url=f"{base}/v1") as c:
        c.delete("/vms/race")
        c.post("/vms", json={"id": "race", "vcpus": 2, "irqchip": "split",
                             "profile": profile}).raise_for_status()
        c.put("/vms/race/ioapic/pins/5",
              json={"vector": "0x40", "trigger": "level", "dest": 0}).raise_for_status()
        steps = [("/vcpus/0/enter", None), ("/vcpus/1/enter", None),
                 ("/ioapic/pins/5/line", {"action": "assert"}), ("/vcpus/0/ack", None),
                 ("/ioapic/pins/5/line", {"action": "deassert"})]
        for path, body in steps:
            c.post(f"/vms/race{path}", json=body).raise_for_status()
        c.patch("/vms/race/ioapic/pins/5", json={"dest": 1}).raise_for_status()
        for path, body in [("/vcpus/0/enter", None), ("/vcpus/1/enter", None),
                           ("/vcpus/0/eoi", {"run_exits": True})]:
            c.post(f"/vms/race{path}", json=body).raise_for_status()


def test_lost_eoi_chain(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_race(server, "linux-6.1")
    assert main(["events", "race", "--after", "46", "--server", server]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "47 vcpu0 eoi               {'vector': 64, 'level': True, 'path': 'trap'}  cause None",
        "48 vcpu0 eoi-not-forwarded {'vector': 64, 'reason': 'not-handled'}        cause 47",
    ]


def test_fixed_chain_and_chain_option(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_race(server, "linux-6.2")
    assert main(["events", "race", "--chain", "50", "--server", server]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "47 vcpu0  eoi                {'vector': 64, 'level': True, 'path': 'trap'}  cause None",
        "49 vcpu0  exit-ioapic-eoi    {'vector': 64}                                 cause 47",
        "50 ioapic remote-irr-cleared {'pin': 5, 'vector': 64}                       cause 49",
    ]
    assert main(["events", "race", "--server", server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1, 51))


def test_errors(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "no-such-vm", "--server", server]) == 2
    assert "404" in capsys.readouterr().err
    seed_race(server, "linux-6.1")
    assert main(["events", "race", "--chain", "9999", "--server", server]) == 2
    assert "no event 9999" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["events", "race", "--server", dead]) == 2
    assert "cannot reach" in capsys.readouterr().err
