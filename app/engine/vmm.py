"""The split-mode userspace VMM: stands for QEMU around its IOAPIC. It handles a vCPU's IOAPIC
MMIO exit, keeps the MSI routes of unmasked pins in step with the RTEs and commits them
(KVM_SET_GSI_ROUTING, which makes KVM rescan every vCPU), and handles KVM_EXIT_IOAPIC_EOI."""

from __future__ import annotations

from typing import Any

from . import rte as R
from .ioapic_qemu import (
    QemuIoapicHost,
    ioapic_eoi_broadcast,
    ioapic_service,
    read_reg,
    write_reg,
)
from .msi import qemu_rte_to_msi, swizzle_msi_ext_dest_id
from .state import RouteEntry


class Vmm:
    """Stateless apart from the VM it serves: QEMU's IOAPIC state is vm.ioapic and its copy of
    the routing table is the table it last committed (vm.routes). The VM is the engine's model
    VM or, for a real split irqchip, app.kvm.split_vmm.SplitVmm."""

    __slots__ = ()

    def handle_mmio(
        self, vm: QemuIoapicHost, op: str, offset: int, size: int, value: int, cause: int | None
    ) -> dict[str, Any]:
        """KVM_EXIT_MMIO on the IOAPIC page. QEMU's memory core splits an 8-byte access into
        two 4-byte ones (ioapic_io_ops has no .impl sizes)."""
        offset &= 0xFF
        parts = [(offset, 4), (offset + 4, 4)] if size == 8 else [(offset, size)]
        if op == "read":
            result = 0
            for i, (off, sz) in enumerate(parts):
                result |= read_reg(vm, off, sz) << (32 * i)
            return {"value": result}
        touched: list[dict[str, Any]] = []
        for i, (off, sz) in enumerate(parts):
            part = (value >> (32 * i)) & ((1 << (sz * 8)) - 1)
            touched.append(self._write_one(vm, off, sz, part, cause))
        return {"writes": touched}

    def _write_one(
        self, vm: QemuIoapicHost, offset: int, size: int, value: int, cause: int | None
    ) -> dict[str, Any]:
        before = vm.flags.qemu_routes_before_service
        what = write_reg(vm, offset, size, value, cause)
        seq = what.pop("seq", cause)
        if what["kind"] == "rte":
            if before:
                self.update_kvm_routes(vm, seq)
            what["service"] = ioapic_service(vm, seq)
        if not before:
            # QEMU <= 7.2: ioapic_update_kvm_routes at the end of every ioapic_mem_write.
            self.update_kvm_routes(vm, seq)
        return what

    def update_kvm_routes(self, vm: QemuIoapicHost, cause: int | None) -> None:
        """ioapic_update_kvm_routes: rewrite GSI i from RTE i for every *unmasked* pin (masked
        pins keep their previous route), then kvm_irqchip_commit_routes. Each route passes
        kvm_arch_fixup_msi_route, which swizzles the extended destination when QEMU
        advertises KVM_FEATURE_MSI_EXT_DEST_ID."""
        table: dict[int, list[RouteEntry]] = {g: list(es) for g, es in vm.routes.items()}
        swizzle = vm.msi_ext_dest_id
        for pin, e in enumerate(vm.ioapic.redir):
            if e & R.MASK_BIT:
                continue
            addr, data = qemu_rte_to_msi(e)
            if swizzle:
                addr = swizzle_msi_ext_dest_id(addr)
            table[pin] = [("msi", addr & 0xFFFFFFFF, addr >> 32, data)]
        seq = vm.log.emit("vmm", "commit-routes", cause)
        vm.install_routes(table, seq)

    def handle_eoi_exit(
        self, vm: QemuIoapicHost, vector: int, cause: int | None
    ) -> list[dict[str, Any]]:
        """kvm_arch_handle_exit(KVM_EXIT_IOAPIC_EOI) -> ioapic_eoi_broadcast(vector). The
        exit event is the cause of whatever the IOAPIC does; QEMU adds nothing in between."""
        return ioapic_eoi_broadcast(vm, vector, cause)
