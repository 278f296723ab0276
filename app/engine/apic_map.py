"""Destination matching (T5) and the optimized APIC map KVM builds for the delivery fast path.

`ApicMap` is derived state: rebuilt from the vCPUs whenever an ID, LDR, DFR, enable bit or
x2APIC mode changes (kvm_recalculate_apic_map). It answers "which vCPUs match (dest, mode)"
in time proportional to the answer, not to the number of vCPUs, which is what lets a full
rescan stay O(vCPUs + routes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .state import DFR_CLUSTER, DFR_FLAT, SPIV_APIC_ENABLED, Vcpu

APIC_BROADCAST: Final = 0xFF
X2APIC_BROADCAST: Final = 0xFFFFFFFF

# kvm_apic_map.logical_mode
LOGICAL_SW_DISABLED: Final = "sw-disabled"
LOGICAL_FLAT: Final = "xapic-flat"
LOGICAL_CLUSTER: Final = "xapic-cluster"
LOGICAL_X2APIC: Final = "x2apic"
LOGICAL_DISABLED: Final = "map-disabled"


def xapic_id(v: Vcpu) -> int:
    return (v.id_reg >> 24) & 0xFF


def apic_id(v: Vcpu) -> int:
    """The APIC ID as the guest sees it: vcpu_id in x2APIC mode, ID[31:24] in xAPIC mode."""
    return v.idx if v.x2apic else xapic_id(v)


def x2apic_ldr(vcpu_id: int) -> int:
    return ((vcpu_id >> 4) << 16) | (1 << (vcpu_id & 0xF))


def sw_enabled(v: Vcpu) -> bool:
    return bool(v.svr & SPIV_APIC_ENABLED)


def match_physical(v: Vcpu, mda: int) -> bool:
    """kvm_apic_match_physical_addr, with KVM's hotplug hack for ids above 0xff."""
    if v.x2apic:
        return mda == X2APIC_BROADCAST or mda == v.idx
    if mda == APIC_BROADCAST:
        return True
    if mda > 0xFF:
        return mda == v.idx
    return mda == xapic_id(v)


def match_logical(v: Vcpu, mda: int) -> bool:
    """kvm_apic_match_logical_addr."""
    if v.x2apic:
        if mda == X2APIC_BROADCAST:
            return True
        ldr = x2apic_ldr(v.idx)
        return (ldr >> 16) == (mda >> 16) and (ldr & mda & 0xFFFF) != 0
    if mda == APIC_BROADCAST:
        return True
    lid = (v.ldr >> 24) & 0xFF
    if v.dfr == DFR_FLAT:
        return (lid & mda) != 0
    if v.dfr == DFR_CLUSTER:
        return (lid >> 4) == (mda >> 4) and (lid & mda & 0xF) != 0
    return False


def mda_for(v: Vcpu, dest: int, quirk_disabled: bool) -> int:
    """kvm_apic_mda for a message with no source LAPIC (IOAPIC or MSI): the x2APIC broadcast
    quirk turns destination 0xff into the x2APIC broadcast for x2APIC-mode targets."""
    if not quirk_disabled and dest == APIC_BROADCAST and v.x2apic:
        return X2APIC_BROADCAST
    return dest


def match_dest(v: Vcpu, dest: int, logical: bool, quirk_disabled: bool) -> bool:
    """kvm_apic_match_dest(vcpu, NULL, APIC_DEST_NOSHORT, dest, mode). Does not look at the
    software-enable bit: the scan only requires the APIC to be present."""
    mda = mda_for(v, dest, quirk_disabled)
    return match_logical(v, mda) if logical else match_physical(v, mda)


class ApicMap:
    """Index of present vCPUs by physical and logical destination (kvm_recalculate_apic_map)."""

    __slots__ = (
        "all_present",
        "logical_clusters",
        "logical_mode",
        "max_apic_id",
        "phys_disabled",
        "phys_map",
        "quirk_disabled",
        "vcpus",
        "x2_by_id",
        "xapic_by_id",
        "xapic_cluster",
        "xapic_flat",
        "xapic_other",
    )

    def __init__(self, vcpus: Sequence[Vcpu], quirk_disabled: bool) -> None:
        self.vcpus = vcpus
        self.quirk_disabled = quirk_disabled
        present = [v for v in vcpus if v.apic_base_enabled]
        self.all_present = [v.idx for v in present]
        # Physical: x2APIC-mode vCPUs by vcpu_id, xAPIC-mode vCPUs by xAPIC id (may repeat).
        self.x2_by_id: dict[int, int] = {}
        self.xapic_by_id: dict[int, list[int]] = {}
        # Logical (all present vCPUs, for exact T5 matching).
        self.xapic_flat: list[list[int]] = [[] for _ in range(8)]
        self.xapic_cluster: dict[tuple[int, int], list[int]] = {}
        self.xapic_other: list[int] = []  # xAPIC vCPUs whose DFR is neither flat nor cluster
        # KVM's fast-path map.
        self.phys_map: dict[int, int] = {}
        self.phys_disabled = False
        self.logical_mode = LOGICAL_SW_DISABLED
        self.logical_clusters: dict[int, list[int | None]] = {}
        max_id = 0
        for v in present:
            if v.x2apic:
                self.x2_by_id[v.idx] = v.idx
                key = v.idx
            else:
                xid = xapic_id(v)
                self.xapic_by_id.setdefault(xid, []).append(v.idx)
                lid = (v.ldr >> 24) & 0xFF
                if v.dfr == DFR_FLAT:
                    for bit in range(8):
                        if lid >> bit & 1:
                            self.xapic_flat[bit].append(v.idx)
                elif v.dfr == DFR_CLUSTER:
                    for bit in range(4):
                        if lid >> bit & 1:
                            self.xapic_cluster.setdefault((lid >> 4, bit), []).append(v.idx)
                else:
                    self.xapic_other.append(v.idx)
                key = xid
            if key in self.phys_map:
                # Duplicate physical IDs: KVM cannot optimise; model it as the slow path.
                self.phys_disabled = True
            else:
                self.phys_map[key] = v.idx
            max_id = max(max_id, key, v.idx if not v.x2apic else 0)
            self._add_logical(v)
        self.max_apic_id = max_id
        if self.phys_disabled:
            # kvm_recalculate_phys_map fails on aliased ids: no map at all, so logical
            # delivery takes the slow path too.
            self.logical_mode = LOGICAL_DISABLED

    def _add_logical(self, v: Vcpu) -> None:
        """kvm_recalculate_logical_map: only software-enabled APICs with a non-zero LDR; one
        logical mode for all of them, single-bit and unaliased, or the map is disabled."""
        if self.logical_mode == LOGICAL_DISABLED or not sw_enabled(v):
            return
        if v.x2apic:
            mode = LOGICAL_X2APIC
        else:
            if not (v.ldr >> 24) & 0xFF:
                return
            mode = LOGICAL_FLAT if v.dfr == DFR_FLAT else LOGICAL_CLUSTER
        if self.logical_mode == LOGICAL_SW_DISABLED:
            self.logical_mode = mode
        elif self.logical_mode != mode:
            self.logical_mode = LOGICAL_DISABLED
            return
        if v.x2apic:
            return  # x2APIC logical delivery reuses the physical map
        lid = (v.ldr >> 24) & 0xFF
        if mode == LOGICAL_FLAT:
            cluster, mask = 0, lid
        else:
            cluster, mask = lid >> 4, lid & 0xF
        if not mask:
            return
        slot = mask.bit_length() - 1
        slots = self.logical_clusters.setdefault(cluster, [None] * 16)
        if mask & (mask - 1) or slots[slot] is not None:
            self.logical_mode = LOGICAL_DISABLED
        else:
            slots[slot] = v.idx

    # ---- exact matching (T5) over present vCPUs, sorted by vCPU index ----

    def matching(self, dest: int, logical: bool) -> list[int]:
        """All present vCPUs for which kvm_apic_match_dest(NULL, NOSHORT, dest, mode) holds."""
        out: set[int] = set()
        x2_mda = X2APIC_BROADCAST if (dest == APIC_BROADCAST and not self.quirk_disabled) else dest
        if x2_mda == X2APIC_BROADCAST:
            out.update(self.x2_by_id.values())
        elif logical:
            base = (x2_mda >> 16) << 4
            low = x2_mda & 0xFFFF
            while low:
                bit = (low & -low).bit_length() - 1
                low &= low - 1
                idx = self.x2_by_id.get(base + bit)
                if idx is not None:
                    out.add(idx)
        else:
            idx = self.x2_by_id.get(x2_mda)
            if idx is not None:
                out.add(idx)
        # xAPIC-mode targets see the destination unchanged.
        if dest == APIC_BROADCAST:
            for ids in self.xapic_by_id.values():
                out.update(ids)
        elif logical:
            for bit in range(8):
                if dest >> bit & 1:
                    out.update(self.xapic_flat[bit])
            if dest <= 0xFF:
                for bit in range(4):
                    if dest >> bit & 1:
                        out.update(self.xapic_cluster.get((dest >> 4, bit), ()))
        elif dest > 0xFF:
            # Hotplug hack: xAPIC targets are matched by vcpu_id when dest exceeds 8 bits.
            v = self.vcpus[dest] if dest < len(self.vcpus) else None
            if v is not None and v.apic_base_enabled and not v.x2apic:
                out.add(dest)
        else:
            out.update(self.xapic_by_id.get(dest, ()))
        return sorted(out)

    def is_broadcast(self, dest: int) -> bool:
        """kvm_apic_is_broadcast_dest for a message with no source APIC."""
        if self.quirk_disabled:
            return (
                dest == APIC_BROADCAST and self.logical_mode != LOGICAL_X2APIC
            ) or dest == X2APIC_BROADCAST
        return dest == APIC_BROADCAST
