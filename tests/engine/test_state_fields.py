"""Vcpu.key() and Vcpu.clone() spell their fields out for speed: they must cover exactly
VCPU_FIELDS, in its order."""

from __future__ import annotations

from app.engine.state import VCPU_FIELDS, Vcpu


def test_key_and_clone_cover_every_field_in_order() -> None:
    v = Vcpu(3)
    for i, f in enumerate(VCPU_FIELDS):
        setattr(v, f, 1000 + i)
    assert v.key() == tuple(1000 + i for i in range(len(VCPU_FIELDS)))
    c = v.clone()
    assert [getattr(c, f) for f in VCPU_FIELDS] == [getattr(v, f) for f in VCPU_FIELDS]
    assert c.key() == v.key() and c is not v
