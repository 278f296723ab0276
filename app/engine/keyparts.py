"""Vm.key()'s IOAPIC and vCPU parts as marshal bytes, for hashing a state cheaply.

A model checker over the engine (app/explore/irq_model.py) fingerprints every successor it
computes: most of that is encoding the IOAPIC's key and each vCPU's. A transition usually
changes one vCPU, so a successor may reuse its parent's bytes for every part it left as it was
(`same_key`, compared field by field, costs a fraction of an encoding). Compiled with the rest
of the engine, so the comparisons are native calls.

marshal version 2 encodes by value (no references or interning marks): equal keys give equal
bytes in every process. Each encoding delimits itself, so a concatenation of parts is
unambiguous.
"""

from __future__ import annotations

import marshal

from .state import IoapicState, RouteEntry, Vcpu
from .vm import Vm


def key_parts(vm: Vm) -> list[bytes]:
    """[IOAPIC key, vCPU 0 key, vCPU 1 key, ...], each as marshal bytes."""
    out = [marshal.dumps(vm.ioapic.key(), 2)]
    for v in vm.vcpus:
        out.append(marshal.dumps(v.key(), 2))
    return out


def successor_key_parts(vm: Vm, parent: Vm, parent_parts: list[bytes]) -> list[bytes]:
    """key_parts(vm), taking parent_parts' bytes (those of `parent`, a VM with the same
    configuration) for every part equal in both."""
    io = vm.ioapic
    out = [parent_parts[0] if io.same_key(parent.ioapic) else marshal.dumps(io.key(), 2)]
    vcpus, pv = vm.vcpus, parent.vcpus
    for i in range(len(vcpus)):
        v = vcpus[i]
        out.append(parent_parts[i + 1] if v.same_key(pv[i]) else marshal.dumps(v.key(), 2))
    return out


def vm_from_key_parts(template: Vm, parts: list[bytes], routes: dict[int, list[RouteEntry]],
                      resamplers: dict[int, int], time: int,
                      memo: dict[bytes, IoapicState | Vcpu]) -> Vm:
    """The VM whose key parts are `parts` (key_parts' bytes), with this routing table (shared,
    as Vm.clone shares it: tables are replaced whole, never edited), resamplers and time; its
    configuration, flags, VMM and log settings from `template`. A search meets few distinct
    IOAPIC and vCPU states: `memo` keeps one decoded copy of each part, which is cloned (the
    caller clears it when it grows too big)."""
    vm = template.shell()
    p = parts[0]
    io = memo.get(p)
    if not isinstance(io, IoapicState):
        io = IoapicState.from_key(marshal.loads(p))
        memo[p] = io
    vm.ioapic = io.clone()
    vcpus: list[Vcpu] = []
    for i in range(1, len(parts)):
        p = parts[i]
        v = memo.get(p)
        if not isinstance(v, Vcpu):
            v = Vcpu.from_key(marshal.loads(p))
            memo[p] = v
        vcpus.append(v.clone())
    vm.vcpus = vcpus
    vm.routes = routes
    vm.resamplers = resamplers
    vm.time = time
    return vm
