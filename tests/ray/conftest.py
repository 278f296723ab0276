"""One local Ray cluster for the whole test session (its start-up costs seconds): tests that
need it take the `ray_cluster` fixture and skip, with the reason, where the 'ray' extra is not
installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed "
                                            "(pip install -e '.[ray]')")
    from app.campaign import on_ray

    on_ray.connect("local", num_cpus=2)
    yield ray
    ray.shutdown()
