"""The split-mode race of issue §3, replayed over real HTTP against `irqlab serve`.

A uvicorn process is started on 127.0.0.1 at a free port (through the CLI, configured by
IRQLAB_HOST / IRQLAB_PORT), and the race runs under linux-6.1 (before fceb3a36c29a: the EOI
is lost and the pin stays blocked) and linux-6.2 (fixed). After every step the test reads
GET /bitmaps and the vCPUs and checks Remote IRR and the handled vectors.

2 vCPUs, split irqchip, pin P=5, level, vector V=0x40, destination APIC id 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.uvicorn_server import irqlab_server

P, V = 5, 0x40
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with irqlab_server() as base:
        yield base


class Race:
    def __init__(self, http: httpx.Client, vm: str) -> None:
        self.http = http
        self.base = f"/v1/vms/{vm}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        r = self.http.request(method, self.base + path, json=body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def check(self, rirr: int, h0: int, h1: int) -> list[dict[str, Any]]:
        """Remote IRR of P and bit V of each vCPU's handled vectors, from GET /bitmaps
        (and the same bits as GET /vcpus reports them)."""
        b = self.call("GET", "/bitmaps")
        assert (P in b["remote_irr"]["pins"]) == bool(rirr), b["remote_irr"]
        assert int(b["remote_irr"]["hex"], 16) >> P & 1 == rirr
        handled = [V in h["vectors"] for h in b["handled_vectors"]]
        assert handled == [bool(h0), bool(h1)], b["handled_vectors"]
        for h in b["handled_vectors"]:
            assert (int(h["hex"], 16) >> V & 1) == (V in h["vectors"])
        vcpus: list[dict[str, Any]] = self.call("GET", "/vcpus")["vcpus"]
        assert [V in v["handled_vectors"]["vectors"] for v in vcpus] == handled
        return vcpus


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.2"])
def test_split_race_over_http(server: str, profile: str) -> None:
    fixed = profile == "linux-6.2"
    with httpx.Client(base_url=server, timeout=10) as http:
        r = http.post("/v1/vms", json={"vcpus": 2, "irqchip": "split", "profile": profile})
        assert r.status_code == 201, r.text
        vm = r.json()["id"]
        assert r.json()["flags"]["split_scan_keeps_pending_level"] is fixed
        race = Race(http, vm)
        try:
            # 0. vCPU 0 programs the RTE (split: QEMU commits the MSI route, KVM rescans).
            pin = race.call("PUT", f"/ioapic/pins/{P}",
                            {"vector": V, "trigger": "level", "dest": 0, "vcpu": 0})
            assert pin["trigger"] == "level" and pin["dest"] == 0
            for n in (0, 1):
                race.call("POST", f"/vcpus/{n}/enter")
            race.check(rirr=0, h0=1, h1=0)

            # 1. The device raises the line: delivered to vCPU 0, Remote IRR set.
            line = race.call("POST", f"/ioapic/pins/{P}/line", {"action": "assert"})
            assert line["steps"][0]["delivered_to"] == [0] and line["remote_irr"] is True
            vcpus = race.check(rirr=1, h0=1, h1=0)
            assert V in vcpus[0]["irr"]["vectors"]

            # 2. vCPU 0 takes the interrupt.
            assert race.call("POST", "/vcpus/0/ack")["vector"] == V
            vcpus = race.check(rirr=1, h0=1, h1=0)
            assert V in vcpus[0]["isr"]["vectors"] and V not in vcpus[0]["irr"]["vectors"]

            # 3. The device lowers the line.
            race.call("POST", f"/ioapic/pins/{P}/line", {"action": "deassert"})
            race.check(rirr=1, h0=1, h1=0)

            # 4. vCPU 0 retargets the pin to APIC id 1 while V is in service on vCPU 0.
            pin = race.call("PATCH", f"/ioapic/pins/{P}", {"dest": 1, "vcpu": 0})
            assert pin["dest"] == 1
            vcpus = race.check(rirr=1, h0=1, h1=0)
            assert all("SCAN_IOAPIC" in v["pending_requests"] for v in vcpus)

            # 5. vCPU 0 rescans: the bug drops V although it is still in vCPU 0's ISR.
            race.call("POST", "/vcpus/0/enter")
            race.check(rirr=1, h0=int(fixed), h1=0)

            # 6. vCPU 1 rescans: it is the new destination.
            race.call("POST", "/vcpus/1/enter")
            race.check(rirr=1, h0=int(fixed), h1=1)

            # 7. vCPU 0 EOIs V.
            eoi = race.call("POST", "/vcpus/0/eoi")
            assert eoi["vector"] == V
            vcpus = race.check(rirr=1, h0=int(fixed), h1=1)
            if fixed:
                assert eoi["forwarded"] is True and eoi["eoi_exit"] == "pending"
                assert "IOAPIC_EOI_EXIT" in eoi["pending_requests"]
                assert "IOAPIC_EOI_EXIT" in vcpus[0]["pending_requests"]
            else:
                assert eoi["forwarded"] is False  # the EOI never reaches QEMU's IOAPIC
                assert "IOAPIC_EOI_EXIT" not in vcpus[0]["pending_requests"]

            # 8. vCPU 0 re-enters: the fixed kernel exits to QEMU, which clears Remote IRR.
            enter = race.call("POST", "/vcpus/0/enter")
            if fixed:
                assert [e["reason"] for e in enter["exits"]] == ["KVM_EXIT_IOAPIC_EOI"]
                assert enter["exits"][0]["ioapic"][0]["remote_irr_cleared"] is True
            else:
                assert enter["exits"] == []
            race.check(rirr=0 if fixed else 1, h0=int(fixed), h1=1)

            # 9. The device raises the line again.
            line = race.call("POST", f"/ioapic/pins/{P}/line", {"action": "assert"})
            step = line["steps"][0]
            vcpus = race.check(rirr=1, h0=int(fixed), h1=1)
            if fixed:
                assert step["outcome"] == "delivered" and step["delivered_to"] == [1]
                assert V in vcpus[1]["irr"]["vectors"]
            else:
                # Stuck: Remote IRR was never cleared, nothing is delivered, ever.
                assert step["outcome"] == "blocked" and step["reason"] == "remote-irr"
                assert step["delivered_to"] == []
                assert all(V not in v["irr"]["vectors"] for v in vcpus)
        finally:
            assert http.delete(f"/v1/vms/{vm}").status_code == 204
