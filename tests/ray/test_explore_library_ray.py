"""Every library exploration, distributed over two Ray partition actors, gives the in-process
explorer's verdict, counterexample length and (when exhaustive) distinct-state count, under
each preset its document states an expectation for."""

from __future__ import annotations

from typing import Any

import pytest

from app import explorations
from app.explore.run import Options, explore


def _cases() -> list[tuple[str, str]]:
    out = []
    for name in explorations.names():
        expect = explorations.get(name).get("expect") or {"linux-latest": None}
        out += [(name, profile) for profile in expect]
    return out


@pytest.mark.parametrize(("name", "profile"), _cases())
def test_ray_bfs_agrees_with_in_process(ray_cluster: Any, name: str, profile: str) -> None:
    doc = explorations.get(name)
    here = explore(doc, profile, Options())
    there = explore(doc, profile, Options(ray="local", workers=2))
    assert there["verdict"] == here["verdict"]
    if here["verdict"] == "violation":
        assert there["property"] == here["property"]
        assert there["counterexample"]["length"] == here["counterexample"]["length"]
    else:
        assert there["stats"]["states"] == here["stats"]["states"]
    assert sum(there["stats"]["states_per_worker"]) == there["stats"]["states"]
