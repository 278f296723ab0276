"""Vcpu.key() and Vcpu.clone() spell their fields out for speed: they must cover exactly
VCPU_FIELDS, in its order (compiled, the fields are typed: booleans stay booleans)."""

from __future__ import annotations

from app.engine.state import VCPU_FIELDS, Vcpu

BOOLS = [f for f in VCPU_FIELDS if isinstance(getattr(Vcpu(0), f), bool)]


def check(v: Vcpu) -> None:
    assert v.key() == tuple(getattr(v, f) for f in VCPU_FIELDS)
    c = v.clone()
    assert c is not v and c.key() == v.key()


def test_key_and_clone_cover_every_field_in_order() -> None:
    v = Vcpu(3)
    for i, f in enumerate(VCPU_FIELDS):
        if f not in BOOLS:
            setattr(v, f, 1000 + i)
    for on in BOOLS:  # each boolean alone set, so that two swapped ones would show
        for f in BOOLS:
            setattr(v, f, f == on)
        check(v)
