"""Vcpu's and IoapicState's key(), clone() and same_key() spell their fields out for speed:
they must cover exactly VCPU_FIELDS / IOAPIC_FIELDS, in order (compiled, the fields are typed:
booleans stay booleans); keyparts reuses a parent's encoded parts only where they are equal."""

from __future__ import annotations

import marshal

from app.engine.keyparts import key_parts, successor_key_parts, vm_from_key_parts
from app.engine.state import IOAPIC_FIELDS, VCPU_FIELDS, IoapicState, Vcpu, VmConfig
from app.engine.vm import Vm

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


IO_LISTS = [f for f in IOAPIC_FIELDS if isinstance(getattr(IoapicState("kvm", 0x20), f), list)]


def io_sample() -> IoapicState:
    io = IoapicState("kvm", 0x20)
    for i, f in enumerate(IOAPIC_FIELDS):
        if f in IO_LISTS:
            setattr(io, f, [1000 + i + k for k in range(len(getattr(io, f)) or 2)])
        elif f != "flavour":
            setattr(io, f, 1000 + i)
    return io


def test_ioapic_key_and_clone_cover_every_field_in_order() -> None:
    io = io_sample()
    assert io.key() == tuple(
        tuple(getattr(io, f)) if f in IO_LISTS else getattr(io, f) for f in IOAPIC_FIELDS)
    c = io.clone()
    assert c is not io and c.key() == io.key() and c.same_key(io)
    for f in IO_LISTS:  # copied, not shared: the clone may be changed alone
        assert getattr(c, f) is not getattr(io, f)


def test_same_key_sees_every_field() -> None:
    v = Vcpu(2)
    for f in VCPU_FIELDS:
        c = v.clone()
        setattr(c, f, not getattr(v, f) if f in BOOLS else getattr(v, f) + 7)
        assert not c.same_key(v) and not v.same_key(c), f
        assert c.same_key(c.clone())
    io = io_sample()
    for f in IOAPIC_FIELDS:
        c = io.clone()
        old = getattr(io, f)
        if f in IO_LISTS:
            getattr(c, f)[-1] += 1
        else:
            setattr(c, f, "qemu" if f == "flavour" else old + 1)
        assert not c.same_key(io) and not io.same_key(c), f


def test_successor_key_parts_are_the_fresh_ones() -> None:
    vm = Vm(VmConfig(vcpus=3))
    parts = key_parts(vm)
    assert parts == [marshal.dumps(vm.ioapic.key(), 2),
                     *[marshal.dumps(v.key(), 2) for v in vm.vcpus]]
    for change in range(5):
        c = vm.clone()
        if change == 4:
            c.ioapic.redir[3] ^= 1 << 16
        elif change:
            c.vcpus[change - 1].irr |= 1 << 0x40
        got = successor_key_parts(c, vm, parts)
        assert got == key_parts(c)
        assert sum(a is b for a, b in zip(got, parts, strict=True)) == (4 if change == 0 else 3)


def test_from_key_round_trips() -> None:
    io = io_sample()
    assert IoapicState.from_key(io.key()).key() == io.key()
    v = Vcpu(5)
    for i, f in enumerate(VCPU_FIELDS):
        if f not in BOOLS and f != "idx":
            setattr(v, f, 1000 + i)
    v.in_guest = True
    assert Vcpu.from_key(v.key()).key() == v.key()


def test_vm_from_key_parts_rebuilds_the_key() -> None:
    vm = Vm(VmConfig(vcpus=3, irqchip="split"))
    vm.ioapic.redir[3] ^= 1 << 16
    vm.vcpus[2].irr |= 1 << 0x40
    vm.resamplers = {5: 2}
    vm.time = 17
    memo: dict[bytes, IoapicState | Vcpu] = {}
    for _ in range(2):  # decoded, then from the memo: never the memo's own objects
        got = vm_from_key_parts(Vm(VmConfig(vcpus=3, irqchip="split")), key_parts(vm),
                                vm.routes, dict(vm.resamplers), vm.time, memo)
        assert got.key() == vm.key()
        assert all(x is not y for x in [got.ioapic, *got.vcpus] for y in memo.values())
    assert len(memo) == 4  # the IOAPIC and each vCPU, decoded once
