"""KvmVm: irqlab's guest on the real /dev/kvm with the in-kernel irqchip (KVM_CREATE_IRQCHIP),
or with the split irqchip (KVM_CAP_SPLIT_IRQCHIP: LAPICs in-kernel, the IOAPIC in userspace).

In split mode irqlab is the VMM: `KvmVm.vmm` (app.kvm.split_vmm.SplitVmm) is QEMU's userspace
IOAPIC. The guest's accesses to the IOAPIC page arrive as KVM_EXIT_MMIO and go to it, it
commits the pins' MSI routes with KVM_SET_GSI_ROUTING and delivers with KVM_IRQ_LINE_STATUS,
and KVM_EXIT_IOAPIC_EOI exits go to its EOI broadcast; set_line and the IOAPIC state reads use
it. A caller that passes its own `mmio_handler` gets the raw exits instead and no VMM (the
IOAPIC state reads then refuse). KVM_EXIT_IOAPIC_EOI exits are recorded per step either way
(and passed to `eoi_handler`, an observer).

irqfds (`attach_irqfd`, `irqfd_trigger`, `resamples`): KVM_IRQFD, with KVM_IRQFD_FLAG_RESAMPLE
in-kernel; KVM refuses that flag with a split irqchip, so there the irqfd is plain and the
resamplefd is kicked by the VMM's EOI broadcast, as QEMU does.

Each vCPU is driven synchronously from the caller's thread, one command at a time: between
commands the vCPU is parked on its command IN (a KVM_EXIT_IO the host has not answered yet).
Every KVM_RUN is covered by a watchdog: a timer thread that, when the step overruns, sets
kvm_run.immediate_exit and kicks the vCPU thread with a signal until KVM_RUN returns EINTR; and
every step is bounded in exits. A vCPU that overran or faulted is marked dead and refuses
further commands.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from app.engine.events import EventLog

from . import guest as G
from . import ioctl as K
from .split_vmm import SplitVmm, SplitVmmError

KICK_SIGNAL = signal.SIGRTMIN + 1
DEFAULT_STEP_TIMEOUT = 2.0  # seconds of wall time one command may take
DEFAULT_MAX_EXITS = 1000  # exits one command may take
REMOTE_IRR_BIT = 1 << 14
CR4_OSFXSR = 1 << 9
GP_FAULT = 13  # #GP: what rdmsr/wrmsr of a register the LAPIC's mode lacks raises
# CPUID.1 bits the guest is given (from KVM_GET_SUPPORTED_CPUID): EDX FPU, MSR, APIC, MMX,
# FXSR, SSE, SSE2; ECX x2APIC only when asked for.
CPUID1_EDX_KEEP = (1 << 0) | (1 << 5) | (1 << 9) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
CPUID1_ECX_X2APIC = 1 << 21
# LAPIC registers by name (as app.engine.lapic.LAPIC_REGS), with their xAPIC page offsets;
# in x2APIC mode the MSR is 0x800 + offset >> 4. apic_base is the IA32_APIC_BASE MSR.
LAPIC_OFFSETS = {"id": 0x20, "tpr": 0x80, "ppr": 0xA0, "eoi": 0xB0, "ldr": 0xD0, "dfr": 0xE0,
                 "svr": 0xF0, "lvr": 0x30}


# (guest-physical address, is_write, length, value written) -> value read (None for writes)
MmioHandler = Callable[[int, bool, int, int], int | None]
EoiHandler = Callable[[int, int], None]  # (vcpu, vector)


class KvmVmError(RuntimeError):
    """The real VM could not do what was asked (a guest fault, an unexpected exit)."""


class GuestWedged(KvmVmError):
    """The watchdog stopped a command that did not return to the command loop."""


def _noop_handler(signum: int, frame: Any) -> None:
    return None


def ensure_kick_handler() -> None:
    """The watchdog interrupts KVM_RUN with KICK_SIGNAL, which must have a handler (the default
    action would kill the process). Python only installs handlers from the main thread."""
    current = signal.getsignal(KICK_SIGNAL)
    if current is _noop_handler:
        return
    if current not in (signal.SIG_DFL, None):
        raise KvmVmError(f"signal {KICK_SIGNAL} already has a handler; the watchdog needs it")
    if threading.current_thread() is not threading.main_thread():
        raise KvmVmError(
            "the KVM watchdog's signal handler must be installed from the main thread first "
            "(call app.kvm.vm.ensure_kick_handler() at startup)"
        )
    signal.signal(KICK_SIGNAL, _noop_handler)


class _Watchdog:
    """Kick one thread out of KVM_RUN if the step takes longer than `timeout` seconds."""

    def __init__(self, vcpu: K.VcpuFd, timeout: float) -> None:
        self.vcpu = vcpu
        self.timeout = timeout
        self.tid = threading.get_ident()
        self.done = threading.Event()
        self.fired = False
        self.thread = threading.Thread(target=self._watch, daemon=True, name="kvm-watchdog")

    def _watch(self) -> None:
        if self.done.wait(self.timeout):
            return
        self.fired = True
        # immediate_exit makes a KVM_RUN that has not entered yet return EINTR at once; the
        # signal gets one that is in the guest out. Repeat until the step gives up.
        while not self.done.is_set():
            self.vcpu.run.immediate_exit = 1
            signal.pthread_kill(self.tid, KICK_SIGNAL)
            self.done.wait(0.01)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.done.set()
        self.thread.join()
        self.vcpu.run.immediate_exit = 0


@dataclass
class StepResult:
    vectors: list[int] = field(default_factory=list)  # VECTOR_PORT reports, in order
    results: list[int] = field(default_factory=list)  # RESULT_PORT values
    exits: list[str] = field(default_factory=list)  # exit reasons seen, in order
    ioapic_eois: list[int] = field(default_factory=list)  # KVM_EXIT_IOAPIC_EOI vectors
    mmio: list[tuple[int, bool, int, int]] = field(default_factory=list)  # (gpa, write, len, val)
    faults: list[int] = field(default_factory=list)  # exceptions a command may raise (#GP)
    halted: bool = False  # a bounded CMD_HALT step: the vCPU was still halted at its deadline
    taken: list[int] = field(default_factory=list)  # CMD_HALT: the area's takes after the step


class Irqfd:
    """One irqfd irqlab attached to a GSI: the eventfd a device writes (`trigger`), and with
    resampling the eventfd signalled when the guest acknowledges the interrupt (`resample`).

    In-kernel resampling also holds an `anchor`: a second resampling irqfd on the same GSI that
    is never written (its own resamplefd, `anchor_resample`, drained and ignored). KVM keeps one
    resampler per GSI while any resampling irqfd uses it; the anchor keeps it (its ack notifier
    and its assertion of the line) alive while KvmVm.irqfd_trigger briefly deassigns `trigger`
    to wait for the injection (see there). Without one the deassign would lower the line."""

    def __init__(self, gsi: int, resample: bool) -> None:
        self.gsi = gsi
        self.trigger = K.EventFd()
        self.resample: K.EventFd | None = K.EventFd() if resample else None
        self.anchor: K.EventFd | None = None
        self.anchor_resample: K.EventFd | None = None
        self.kernel_resample = False  # KVM_IRQFD_FLAG_RESAMPLE (in-kernel irqchip only)
        self.signalled = 0  # resamplefd signals read so far (cumulative)

    def kvm_flags(self) -> tuple[int, int]:
        """(flags, resamplefd) of this irqfd's KVM_IRQFD assignment."""
        if self.kernel_resample and self.resample is not None:
            return K.KVM_IRQFD_FLAG_RESAMPLE, self.resample.fd
        return 0, 0

    def close(self) -> None:
        for efd in (self.trigger, self.resample, self.anchor, self.anchor_resample):
            if efd is not None:
                efd.close()


class KvmVcpu:
    def __init__(self, vm: KvmVm, fd: K.VcpuFd) -> None:
        self.vm = vm
        self.fd = fd
        self.idx = fd.vcpu_id
        self.dead: str | None = None
        self._parked = False
        self.halted = False  # inside CMD_HALT, still halted at the last step's deadline

    def setup(self) -> None:
        """Flat 32-bit protected mode at the guest's entry point, then run to the first
        command IN (the LAPIC set-up code runs on the way)."""
        sregs = self.fd.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            seg: K.KvmSegment = getattr(sregs, name)
            seg.base = 0
            seg.limit = 0xFFFFFFFF
            seg.present = 1
            seg.dpl = 0
            seg.db = 1
            seg.s = 1
            seg.l = 0
            seg.g = 1
            seg.avl = 0
            seg.unusable = 0
            if name == "cs":
                seg.selector = G.CODE_SEL
                seg.type = 0xB  # execute/read, accessed
            else:
                seg.selector = G.DATA_SEL
                seg.type = 0x3  # read/write, accessed
        sregs.gdt.base = G.GDT_ADDR
        sregs.gdt.limit = G.GDT_LIMIT
        sregs.idt.base = G.IDT_ADDR
        sregs.idt.limit = G.IDT_LIMIT
        # PE on, PG off; EM (bit 2) and TS (bit 3) clear so that MMX movq (the guest's 8-byte
        # MMIO access) neither #UDs nor #NMs.
        sregs.cr0 = (sregs.cr0 | 1) & ~((1 << 31) | (1 << 2) | (1 << 3))
        sregs.cr4 = CR4_OSFXSR  # KVM's emulator #UDs Mmx/Sse instructions without it
        sregs.efer = 0
        self.fd.set_sregs(sregs)
        if self.vm.x2apic_cpuid:
            self.fd.set_cpuid2(self.vm.cpuid_entries(self.idx))
        regs = K.KvmRegs()
        regs.rip = G.ENTRY
        regs.rsp = G.STACK_TOP
        regs.rflags = 0x2  # IF clear
        self.fd.set_regs(regs)
        # With the in-kernel LAPIC, APs start in wait-for-SIPI (UNINITIALIZED) and KVM_RUN
        # would block; irqlab starts every vCPU at its entry point directly.
        if self.fd.get_mp_state() != K.KVM_MP_STATE_RUNNABLE:
            self.fd.set_mp_state(K.KVM_MP_STATE_RUNNABLE)
        self._step(None, [])

    def command(self, cmd: int, args: list[int] | None = None) -> StepResult:
        if self.dead is not None:
            raise KvmVmError(f"vCPU {self.idx} is dead: {self.dead}")
        if self.vm.vmm is not None:
            self.vm.vmm.run_timers()  # QEMU's throttled re-service, if due
        return self._step(cmd, list(args or []))

    def halt(self, takes: int, eoi: bool, sti: bool, wait: float) -> StepResult:
        """CMD_HALT, bounded: run until the guest took `takes` interrupts and is back on the
        command IN, or until `wait` seconds passed with the vCPU halted (`halted`)."""
        if not 1 <= takes <= G.HALT_MAX_TAKES:
            raise ValueError(f"takes must be 1..{G.HALT_MAX_TAKES}")
        if self.dead is not None:
            raise KvmVmError(f"vCPU {self.idx} is dead: {self.dead}")
        if self.vm.vmm is not None:
            self.vm.vmm.run_timers()
        args = [G.halt_area(self.idx), int(eoi), int(sti), takes]
        return self._finish_halt(self._step(G.CMD_HALT, args, halt_wait=wait))

    def resume_halt(self, wake: str, wait: float) -> StepResult:
        """Run a vCPU left halted by `halt` again, bounded as `halt`. `wake`: "none" (KVM_RUN
        as it is: KVM blocks again unless something made the vCPU runnable), "runnable"
        (KVM_SET_MP_STATE RUNNABLE first: the guest resumes after its hlt, as after any wake-up
        that is not an interrupt), "abort" (also set the area's abort word: the command ends at
        that wake-up and reports what it took)."""
        if not self.halted:
            raise KvmVmError(f"vCPU {self.idx} is not halted in a HALT command")
        if wake not in ("none", "runnable", "abort"):
            raise ValueError("wake must be none, runnable or abort")
        if wake == "abort":
            self.vm.guest_memory.write(G.halt_area(self.idx) + G.HALT_ABORT, (1).to_bytes(4,
                                                                                       "little"))
        if wake != "none":
            self.fd.set_mp_state(K.KVM_MP_STATE_RUNNABLE)
        return self._finish_halt(self._step(None, [], halt_wait=wait))

    def halt_record(self) -> list[int]:
        """The vectors the current (or last) HALT command recorded, from the guest's area."""
        raw = self.vm.guest_memory.read(G.halt_area(self.idx), G.HALT_VECS + 4 * G.HALT_MAX_TAKES)
        count = min(int.from_bytes(raw[G.HALT_COUNT:G.HALT_COUNT + 4], "little"),
                    G.HALT_MAX_TAKES)
        return [int.from_bytes(raw[G.HALT_VECS + 4 * i:G.HALT_VECS + 4 * i + 4], "little")
                for i in range(count)]

    def _finish_halt(self, res: StepResult) -> StepResult:
        res.taken = self.halt_record()
        if not res.halted and res.vectors != res.taken:
            self._die(f"HALT reported {res.vectors} but recorded {res.taken}")
        return res

    def _step(self, cmd: int | None, args: list[int],
              halt_wait: float | None = None) -> StepResult:
        """Answer the parked command IN with `cmd` (None: first entry, or a halted vCPU
        resumed) and run until the guest is back on the command IN. With `halt_wait` the step
        is bounded by that many seconds instead of the step timeout, and a vCPU that
        KVM_GET_MP_STATE reports HALTED at the deadline ends the step with `halted` set: an
        answer, not a dead vCPU."""
        fd = self.fd
        res = StepResult()
        if cmd is not None:
            if not self._parked:
                raise KvmVmError(f"vCPU {self.idx} is not waiting for a command")
            _answer_in(fd, cmd)
        self._parked = False
        self.halted = False
        ensure_kick_handler()
        timeout = self.vm.step_timeout if halt_wait is None else halt_wait
        with _Watchdog(fd, timeout) as wd:
            for _ in range(self.vm.max_exits):
                reason = fd.run_once()
                res.exits.append(K.EXIT_NAMES.get(reason, str(reason)))
                if reason == K.KVM_EXIT_IO:
                    io = fd.run.u.io
                    port, inn = io.port, io.direction == K.KVM_EXIT_IO_IN
                    if inn and port == G.CMD_PORT:
                        self._parked = True
                        return res
                    if inn and port == G.ARG_PORT:
                        if not args:
                            self._die("the guest asked for an argument the command lacks")
                        _answer_in(fd, args.pop(0))
                    elif not inn and port == G.VECTOR_PORT:
                        res.vectors.append(fd.io_data()[0])
                    elif not inn and port == G.RESULT_PORT:
                        res.results.append(int.from_bytes(bytes(fd.io_data()), "little"))
                    elif not inn and port == G.WINDOW_PORT:
                        pass
                    elif not inn and port == G.FAULT_PORT:
                        vec = fd.io_data()[0]
                        if cmd in (G.CMD_RDMSR, G.CMD_WRMSR) and vec == GP_FAULT:
                            res.faults.append(vec)  # the guest is back on the command loop
                        else:
                            self._die(f"guest exception {vec}")
                    else:
                        self._die(f"unexpected port I/O: {'in' if inn else 'out'} 0x{port:x}")
                elif reason == K.KVM_EXIT_IOAPIC_EOI:
                    vec = int(fd.run.u.eoi.vector)
                    res.ioapic_eois.append(vec)
                    if self.vm.vmm is not None:
                        self.vm.vmm.eoi_exit(self.idx, vec)
                    if self.vm.eoi_handler is not None:
                        self.vm.eoi_handler(self.idx, vec)
                elif reason == K.KVM_EXIT_INTR:
                    if (wd.fired and halt_wait is not None
                            and fd.get_mp_state() == K.KVM_MP_STATE_HALTED):
                        # KVM_RUN was blocked in the halted vCPU (vcpu_block) and the kick
                        # ended it without changing the activity state: the step's result.
                        res.halted = self.halted = True
                        return res
                    if wd.fired:
                        self._die(
                            f"watchdog: the command did not finish in {self.vm.step_timeout}s",
                            GuestWedged,
                        )
                    # A stray signal: KVM_RUN resumes where it was.
                elif reason == K.KVM_EXIT_MMIO:
                    self._mmio_exit(res)
                elif reason == K.KVM_EXIT_FAIL_ENTRY:
                    fe = fd.run.u.fail_entry
                    self._die(f"KVM_EXIT_FAIL_ENTRY 0x{fe.hardware_entry_failure_reason:x}")
                elif reason == K.KVM_EXIT_INTERNAL_ERROR:
                    self._die(f"KVM_EXIT_INTERNAL_ERROR suberror {fd.run.u.internal.suberror}")
                else:
                    self._die(f"unexpected exit {K.EXIT_NAMES.get(reason, reason)}")
            self._die(f"the command took more than {self.vm.max_exits} exits", GuestWedged)
        raise AssertionError("unreachable")

    def _mmio_exit(self, res: StepResult) -> None:
        m = self.fd.run.u.mmio
        gpa, write, length = int(m.phys_addr), bool(m.is_write), int(m.len)
        if not 1 <= length <= 8:
            self._die(f"MMIO exit with length {length}")
        value = int.from_bytes(bytes(m.data[:length]), "little") if write else 0
        vmm = self.vm.vmm
        if vmm is not None:
            res.mmio.append((gpa, write, length, value))
            try:
                answer = vmm.mmio_exit(self.idx, gpa, write, length, value)
            except SplitVmmError as exc:
                self._die(str(exc))
            if not write:
                _fill(m.data, length, answer or 0)
            return
        handler = self.vm.mmio_handler
        if handler is None:
            self._die(
                f"unexpected MMIO exit at 0x{gpa:x} ({'write' if write else 'read'}, "
                f"{length} bytes) and no mmio_handler"
            )
            return
        res.mmio.append((gpa, write, length, value))
        answer = handler(gpa, write, length, value)
        if not write:
            _fill(m.data, length, answer or 0)

    def _die(self, why: str, kind: type[KvmVmError] = KvmVmError) -> None:
        self.dead = why
        raise kind(f"vCPU {self.idx}: {why}")

    def close(self) -> None:
        self.fd.close()


def _fill(data: Any, length: int, value: int) -> None:
    """The bytes of an MMIO read's answer, into kvm_run's mmio.data."""
    raw = (value & ((1 << 64) - 1)).to_bytes(8, "little")
    for i in range(length):
        data[i] = raw[i]


def _answer_in(fd: K.VcpuFd, value: int) -> None:
    data = fd.io_data()
    raw = (value & ((1 << (8 * len(data))) - 1)).to_bytes(len(data), "little")
    for i, b in enumerate(raw):
        data[i] = b


class KvmVm(K.Closing):
    """A real KVM VM with `vcpus` vCPUs running irqlab's guest: the in-kernel IOAPIC/PIC/LAPICs
    (irqchip "kernel"), or in-kernel LAPICs with irqlab's QEMU-flavour IOAPIC as the VMM
    (irqchip "split"; `ioapic_version` and `routes_before_service` configure that IOAPIC,
    `log` receives its events). Close it (or use it as a context manager) to release every
    fd and mapping."""

    def __init__(
        self,
        vcpus: int = 1,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        max_exits: int = DEFAULT_MAX_EXITS,
        device: str = "/dev/kvm",
        irqchip: str = "kernel",
        mmio_handler: MmioHandler | None = None,
        eoi_handler: EoiHandler | None = None,
        ioapic_version: int = 0x20,
        routes_before_service: bool = True,
        log: EventLog | None = None,
        log_cause: int | None = None,
        x2apic: bool = False,
        x2apic_format: bool = False,
        broadcast_quirk_disabled: bool = False,
        x2apic_cpuid: bool | None = None,
    ) -> None:
        if not 1 <= vcpus <= 64:
            raise ValueError("vcpus must be 1..64")
        if irqchip not in ("kernel", "split"):
            raise ValueError("irqchip must be kernel or split")
        self.irqchip = irqchip
        self.x2apic = x2apic
        self.x2apic_format = x2apic_format
        self.broadcast_quirk_disabled = broadcast_quirk_disabled
        self.x2apic_cpuid = x2apic if x2apic_cpuid is None else x2apic_cpuid
        if x2apic and not self.x2apic_cpuid:
            raise ValueError("an x2APIC guest needs CPUID.1:ECX.x2APIC (x2apic_cpuid)")
        self._supported_cpuid: list[K.KvmCpuidEntry2] = []
        self.mmio_handler = mmio_handler
        self.eoi_handler = eoi_handler
        self.step_timeout = step_timeout
        self.max_exits = max_exits
        self.vcpus: list[KvmVcpu] = []
        self.vmm: SplitVmm | None = None
        self.irqfds: dict[int, Irqfd] = {}  # gsi -> the irqfd irqlab attached there
        self._kvm: K.Kvm | None = None
        self._vm: K.VmFd | None = None
        self._mem: K.GuestMemory | None = None
        try:
            ensure_kick_handler()
            self._kvm = K.Kvm(device)
            if self._kvm.api_version() != K.KVM_API_VERSION:
                raise KvmVmError("KVM API version is not 12")
            self._vm = self._kvm.create_vm()
            self._mem = K.GuestMemory(G.MEM_SIZE)
            if self.x2apic_cpuid:
                self._supported_cpuid = self._kvm.supported_cpuid()
            for gpa, blob in G.image(x2apic).items():
                self._mem.write(gpa, blob)
            self._vm.set_user_memory_region(0, 0, self._mem)
            if irqchip == "kernel":
                self._vm.create_irqchip()
            else:
                # Must precede KVM_CREATE_VCPU; args[0] = GSIs reserved for the IOAPIC.
                self._vm.enable_split_irqchip(K.KVM_IOAPIC_NUM_PINS)
                if mmio_handler is None:
                    # QEMU's order: kvm_irqchip_create, then kvm_arch_init_irq_routing commits
                    # the 24 reserved MSI routes, all before the vCPUs exist.
                    self.vmm = SplitVmm(self._vm, version=ioapic_version,
                                        routes_before_service=routes_before_service, log=log,
                                        cause=log_cause, msi_ext_dest_id=x2apic_format)
            if self.x2apic_api_enabled:
                # QEMU's kvm_enable_x2apic; KVM applies the flags VM-wide (MSI decoding,
                # KVM_GET/SET_LAPIC's ID format, the 0xff broadcast). Flags 0 is accepted and
                # keeps the legacy formats, which is what an x2APIC guest gets by default.
                self._vm.enable_cap(K.KVM_CAP_X2APIC_API, self.x2apic_api_flags)
            for i in range(vcpus):
                self.vcpus.append(KvmVcpu(self, self._vm.create_vcpu(i)))
            for v in self.vcpus:
                v.setup()
        except BaseException:
            self.close()
            raise

    @property
    def x2apic_api_enabled(self) -> bool:
        """Whether KVM_ENABLE_CAP(KVM_CAP_X2APIC_API) is issued (with x2apic_api_flags)."""
        return self.x2apic or self.x2apic_format or self.broadcast_quirk_disabled

    @property
    def x2apic_api_flags(self) -> int:
        return ((K.KVM_X2APIC_API_USE_32BIT_IDS if self.x2apic_format else 0)
                | (K.KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK if self.broadcast_quirk_disabled
                   else 0))

    def cpuid_entries(self, vcpu_id: int) -> list[K.KvmCpuidEntry2]:
        """The guest's CPUID: leaf 0 (max basic leaf 1, the host vendor) and leaf 1 (family
        as KVM reports it, initial APIC id, FPU/MSR/APIC/MMX/FXSR/SSE/SSE2 and x2APIC).
        Nothing else is advertised, so no other CPUID-dependent KVM behaviour switches on."""
        sup = {(e.function, e.index): e for e in self._supported_cpuid}
        leaf0, leaf1 = sup.get((0, 0)), sup.get((1, 0))
        if leaf0 is None or leaf1 is None:
            raise KvmVmError("KVM_GET_SUPPORTED_CPUID lacks leaf 0 or 1")
        out = [K.KvmCpuidEntry2(function=0, eax=1, ebx=leaf0.ebx, ecx=leaf0.ecx, edx=leaf0.edx),
               K.KvmCpuidEntry2(function=1, eax=leaf1.eax, ebx=(vcpu_id & 0xFF) << 24,
                                ecx=CPUID1_ECX_X2APIC, edx=leaf1.edx & CPUID1_EDX_KEEP)]
        return out

    @property
    def guest_memory(self) -> K.GuestMemory:
        if self._mem is None:
            raise KvmVmError("the VM is closed")
        return self._mem

    @property
    def vmfd(self) -> K.VmFd:
        if self._vm is None:
            raise KvmVmError("the VM is closed")
        return self._vm

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        # Closing the VM fd releases KVM's irqfds (and its references to the eventfds); ours
        # are closed after it.
        if self._vm is not None:
            self._vm.close()
            self._vm = None
        if self._mem is not None:
            self._mem.close()
            self._mem = None
        for fd in self.irqfds.values():
            fd.close()
        self.irqfds = {}
        if self._kvm is not None:
            self._kvm.close()
            self._kvm = None

    def vcpu(self, n: int) -> KvmVcpu:
        if not 0 <= n < len(self.vcpus):
            raise KvmVmError(f"vCPU {n} does not exist (this VM has {len(self.vcpus)})")
        return self.vcpus[n]

    # ---- device side ----

    def set_line(self, pin: int, level: int) -> dict[str, Any]:
        """In-kernel: KVM_IRQ_LINE_STATUS on GSI `pin` (the default routing sends GSI n to
        IOAPIC pin n, and GSIs 0..15 also to the PIC, which the guest's LAPIC ignores: LINT0
        is masked). Split: the VMM's ioapic_set_irq (QEMU's; `status` is its path, as in the
        model, `kvm_status` what KVM answered to the KVM_IRQ_LINE_STATUS its ioapic_service
        issued for this pin, None if it issued none, and `outcome`/`reason` say what the
        IOAPIC decided)."""
        if level not in (0, 1):
            raise ValueError("level must be 0 or 1")
        if not 0 <= pin < K.KVM_IOAPIC_NUM_PINS:
            raise ValueError("pin must be 0..23")
        if self.irqchip == "split":
            return self._need_vmm("set_line").set_irq(pin, level)
        status = self.vmfd.irq_line_status(pin, level)
        return {"pin": pin, "level": level, "status": status, "remote_irr": self.remote_irr(pin)}

    def signal_msi(self, address_lo: int, address_hi: int, data: int) -> int:
        return self.vmfd.signal_msi(address_lo, address_hi, data)

    # ---- irqfds

    def attach_irqfd(self, gsi: int, resample: bool = False) -> Irqfd:
        """KVM_IRQFD: an eventfd that injects into `gsi`, one per GSI.

        In-kernel, `resample` is KVM_IRQFD_FLAG_RESAMPLE: the eventfd asserts the GSI with
        KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID and it stays asserted until the IOAPIC's ack notifier
        for the pin (an EOI of its vector, or on 6.3+ an unmask with a stale irr) lowers it
        and signals the resamplefd. Split: KVM refuses the flag (EINVAL, kvm_arch_irqfd_allowed),
        so irqlab does what QEMU's kvm_irqchip_assign_irqfd does: a plain irqfd (each write
        delivers the GSI's MSI route, bypassing the userspace IOAPIC) and the resamplefd kept
        by the VMM, kicked from its ioapic_eoi_broadcast."""
        if not 0 <= gsi < 4096:
            raise ValueError("gsi must be 0..4095")
        if gsi in self.irqfds:
            raise KvmVmError(f"an irqfd is already attached to gsi {gsi}")
        if resample and self.irqchip == "split":
            self._need_vmm("a split irqchip's resamplefd")
        fd = Irqfd(gsi, resample)
        try:
            if resample and self.irqchip == "kernel":
                fd.kernel_resample = True
                fd.anchor, fd.anchor_resample = K.EventFd(), K.EventFd()
                self.vmfd.irqfd(fd.anchor.fd, gsi, K.KVM_IRQFD_FLAG_RESAMPLE,
                                fd.anchor_resample.fd)
            flags, rfd = fd.kvm_flags()
            self.vmfd.irqfd(fd.trigger.fd, gsi, flags, rfd)
            if resample and self.irqchip == "split":
                assert self.vmm is not None and fd.resample is not None
                self.vmm.register_resamplefd(gsi, fd.resample)
        except BaseException:
            fd.close()
            raise
        self.irqfds[gsi] = fd
        return fd

    def irqfd_trigger(self, gsi: int) -> None:
        """The device writes the irqfd's eventfd, and irqlab waits until KVM has injected it.

        KVM consumes the eventfd in its wake-up callback (during the write) but injects an
        IOAPIC route from a work item (kvm_arch_set_irq_inatomic answers -EWOULDBLOCK), which
        on this host sometimes runs after the write returned. kvm_irqfd_deassign is the kernel's
        barrier: it flushes the irqfd's injection work before returning ("there will not be
        any more interrupts on this gsi once this deassign function returns"). So the irqfd is
        deassigned and assigned again (the anchor keeps an in-kernel resampler, and so the line
        it asserts, alive in between); the eventfd's counter is 0 by then, so the re-assignment
        injects nothing."""
        fd = self._irqfd(gsi)
        fd.trigger.signal()
        flags, rfd = fd.kvm_flags()
        self.vmfd.irqfd(fd.trigger.fd, gsi, K.KVM_IRQFD_FLAG_DEASSIGN)
        self.vmfd.irqfd(fd.trigger.fd, gsi, flags, rfd)

    def resamples(self, gsi: int) -> int:
        """How many times the resamplefd of `gsi` was signalled since the last read (a
        non-blocking read of the eventfd: KVM's eventfd_signal, or the split VMM's kick)."""
        fd = self._irqfd(gsi)
        if fd.resample is None:
            raise KvmVmError(f"the irqfd on gsi {gsi} has no resamplefd")
        if fd.anchor_resample is not None:
            fd.anchor_resample.take()  # the anchor's own signals: not the device's
        n = fd.resample.take()
        fd.signalled += n
        return n

    def resample_counts(self) -> dict[int, int]:
        """gsi -> resamplefd signals since the irqfd was attached (reads every resamplefd)."""
        out = {}
        for gsi, fd in sorted(self.irqfds.items()):
            if fd.resample is not None:
                self.resamples(gsi)
                out[gsi] = fd.signalled
        return out

    def _irqfd(self, gsi: int) -> Irqfd:
        fd = self.irqfds.get(gsi)
        if fd is None:
            raise KvmVmError(f"no irqfd is attached to gsi {gsi}")
        return fd

    # ---- guest side ----

    def ack(self, n: int) -> int | None:
        """The guest opens a one-instruction interrupt window; the vector it took, or None."""
        res = self.vcpu(n).command(G.CMD_ACK)
        if len(res.vectors) > 1:
            raise KvmVmError(f"one window took {len(res.vectors)} interrupts: {res.vectors}")
        return res.vectors[0] if res.vectors else None

    def eoi(self, n: int) -> None:
        """The guest writes 0 to the EOI register: the xAPIC page's, or MSR 0x80B in an
        x2APIC guest."""
        self.vcpu(n).command(G.CMD_EOI)

    def mmio_write(self, n: int, address: int, value: int, size: int = 4) -> None:
        """A guest store of `size` bytes (1: mov byte, 2: mov word, 4: mov dword, 8: MMX movq,
        one 8-byte access)."""
        cmd = G.MMIO_WRITE_CMDS.get(size)
        if cmd is None:
            raise ValueError("size must be 1, 2, 4 or 8")
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"value does not fit in {size} bytes")
        args = [address, value & 0xFFFFFFFF] + ([value >> 32] if size == 8 else [])
        self.vcpu(n).command(cmd, args)

    def mmio_read(self, n: int, address: int, size: int = 4) -> int:
        """A guest load of `size` bytes (zero-extended), as mmio_write."""
        cmd = G.MMIO_READ_CMDS.get(size)
        if cmd is None:
            raise ValueError("size must be 1, 2, 4 or 8")
        res = self.vcpu(n).command(cmd, [address])
        if len(res.results) != (2 if size == 8 else 1):
            raise KvmVmError("the MMIO read reported no value")
        return res.results[0] | (res.results[1] << 32 if size == 8 else 0)

    def mmio(self, n: int, op: str, offset: int, value: int = 0, size: int = 4) -> int | None:
        """A guest access of `size` bytes to the IOAPIC window (offset 0x00 IOREGSEL, 0x10
        IOWIN, 0x20, 0x40 EOI)."""
        if offset not in (0x00, 0x10, 0x20, 0x40):
            raise ValueError("offset must be 0x00, 0x10, 0x20 or 0x40")
        if op == "write":
            self.mmio_write(n, G.IOAPIC_BASE + offset, value, size)
            return None
        if op == "read":
            return self.mmio_read(n, G.IOAPIC_BASE + offset, size)
        raise ValueError("op must be read or write")

    def rdmsr(self, n: int, msr: int) -> int | None:
        """The guest's rdmsr; None if it raised #GP (the guest carries on)."""
        res = self.vcpu(n).command(G.CMD_RDMSR, [msr])
        if res.faults:
            return None
        if len(res.results) != 2:
            raise KvmVmError("the rdmsr reported no value")
        return res.results[0] | res.results[1] << 32

    def wrmsr(self, n: int, msr: int, value: int) -> bool:
        """The guest's wrmsr; False if it raised #GP (the guest carries on)."""
        res = self.vcpu(n).command(G.CMD_WRMSR, [msr, value & 0xFFFFFFFF, value >> 32])
        return not res.faults

    def lapic_mode(self, n: int) -> str:
        """"x2apic", "xapic" or "disabled", from IA32_APIC_BASE as KVM reports it (sregs)."""
        base = int(self.vcpu(n).fd.get_sregs().apic_base)
        if not base & G.APIC_BASE_EN:
            return "disabled"
        return "x2apic" if base & G.APIC_BASE_EXTD else "xapic"

    def lapic_write(self, n: int, reg: str, value: int) -> bool:
        """A guest write of a LAPIC register by name, as the guest's mode requires: a 4-byte
        MMIO store to the xAPIC page, or wrmsr 0x800 + offset >> 4 in x2APIC mode (EOI, TPR,
        SVR; ID, LDR are read-only there and DFR does not exist: #GP). `apic_base` is a wrmsr
        of IA32_APIC_BASE in either mode. False if the guest took #GP."""
        if reg == "apic_base":
            return self.wrmsr(n, G.MSR_APIC_BASE, value)
        off = LAPIC_OFFSETS.get(reg)
        if off is None:
            raise ValueError(f"unknown LAPIC register {reg!r}")
        if self.lapic_mode(n) == "x2apic":
            return self.wrmsr(n, G.x2apic_msr(off), value)
        self.mmio_write(n, G.LAPIC_BASE + off, value & 0xFFFFFFFF)
        return True

    def lapic_read(self, n: int, reg: str) -> int | None:
        """The guest's read of a LAPIC register (as lapic_write); None if it took #GP."""
        if reg == "apic_base":
            return self.rdmsr(n, G.MSR_APIC_BASE)
        off = LAPIC_OFFSETS.get(reg)
        if off is None:
            raise ValueError(f"unknown LAPIC register {reg!r}")
        if self.lapic_mode(n) == "x2apic":
            return self.rdmsr(n, G.x2apic_msr(off))
        return self.mmio_read(n, G.LAPIC_BASE + off)

    def write_rte(
        self, n: int, pin: int, entry: int, halves: tuple[str, ...] = ("low", "high")
    ) -> None:
        """Write an RTE as a guest does: IOREGSEL then IOWIN, once per half, in this order
        (the same default as app.engine.vm.Vm.write_rte)."""
        for h in halves:
            self.mmio(n, "write", 0x00, 0x10 + 2 * pin + (1 if h == "high" else 0))
            self.mmio(n, "write", 0x10, (entry >> 32) if h == "high" else entry & 0xFFFFFFFF)

    def halt(self, n: int, takes: int = 1, eoi: bool = True, sti: bool = True,
             wait: float = 0.3) -> StepResult:
        """The guest waits as kvm-unit-tests does: `sti; hlt` (or `hlt` with IF clear) until it
        has taken `takes` interrupts, each recorded without an exit and EOIed by the guest if
        `eoi`. KVM handles the HLT in the kernel; after `wait` seconds a vCPU still halted
        ends the step with `halted` set (see KvmVcpu.resume_halt to go on). `vectors` are the
        takes the guest reported when it finished, `taken` the area's record either way, and
        `ioapic_eois` the KVM_EXIT_IOAPIC_EOI exits of the step."""
        return self.vcpu(n).halt(takes, eoi, sti, wait)

    def resume_halt(self, n: int, wake: str = "runnable", wait: float = 0.3) -> StepResult:
        """Go on with a HALT step that ended halted (KvmVcpu.resume_halt)."""
        return self.vcpu(n).resume_halt(wake, wait)

    def mp_state(self, n: int) -> int:
        """KVM_GET_MP_STATE (0 runnable, 3 halted, ...)."""
        return self.vcpu(n).fd.get_mp_state()

    def spin(self, n: int) -> None:
        """Send the guest into `jmp $`: only the watchdog ends this step (test aid)."""
        self.vcpu(n).command(G.CMD_SPIN)

    # ---- state ----

    def _need_vmm(self, what: str) -> SplitVmm:
        if self.vmm is None:
            raise KvmVmError(f"{what} needs an IOAPIC: this split VM's IOAPIC MMIO goes to a "
                             "caller-supplied mmio_handler, not to irqlab's VMM")
        return self.vmm

    def ioapic_view(self) -> dict[str, Any]:
        """The IOAPIC's registers: KVM_GET_IRQCHIP(IOAPIC) in-kernel, the VMM's in split
        mode (where `eoi_counts` and `delayed_injection_at` are QEMU's storm throttle)."""
        if self.irqchip == "split":
            io = self._need_vmm("ioapic_view").ioapic
            redir = list(io.redir)
            view: dict[str, Any] = {
                "flavour": "qemu", "base_address": G.IOAPIC_BASE, "id": io.id,
                "version": io.version, "ioregsel": io.ioregsel, "irr": io.irr,
                "eoi_counts": list(io.irq_eoi), "delayed_injection_at": io.delayed_at,
            }  # fmt: skip
        else:
            kio = self.vmfd.get_ioapic()
            redir = [int(kio.redirtbl[p]) for p in range(K.KVM_IOAPIC_NUM_PINS)]
            view = {
                "flavour": "kvm", "base_address": int(kio.base_address), "id": int(kio.id),
                "version": None, "ioregsel": int(kio.ioregsel), "irr": int(kio.irr),
                "eoi_counts": None, "delayed_injection_at": None,
            }  # fmt: skip
        view["redir"] = redir
        view["remote_irr_pins"] = [p for p, e in enumerate(redir) if e & REMOTE_IRR_BIT]
        return view

    def redirection_table(self) -> list[int]:
        redir: list[int] = self.ioapic_view()["redir"]
        return redir

    def remote_irr(self, pin: int) -> bool:
        return bool(self.redirection_table()[pin] & REMOTE_IRR_BIT)

    def apic_id(self, page: K.LapicPage, mode: str) -> int:
        """The APIC id in a KVM_GET_LAPIC page: bits 31:24 of the ID register, except in
        x2APIC mode with KVM_X2APIC_API_USE_32BIT_IDS, where the register is the 32-bit id."""
        raw = page.reg(page.ID)
        return raw if mode == "x2apic" and self.x2apic_format else raw >> 24

    def vcpu_view(self, n: int) -> dict[str, Any]:
        """KVM_GET_LAPIC, plus the mode from IA32_APIC_BASE (KVM_GET_SREGS). In x2APIC mode
        the ID register holds the 32-bit x2APIC id when KVM_X2APIC_API_USE_32BIT_IDS is on,
        else the id << 24 (kvm_apic_state_fixup); LDR is KVM's derived cluster/bit value."""
        page = self.vcpu(n).fd.get_lapic()
        mode = self.lapic_mode(n)
        return {
            "vcpu": n,
            "apic_id": self.apic_id(page, mode),
            "x2apic": mode == "x2apic",
            "enabled": mode != "disabled",
            "ldr": page.reg(page.LDR),
            "dfr": page.reg(page.DFR),
            "irr": page.irr,
            "isr": page.isr,
            "tmr": page.tmr,
            "ppr": page.ppr,
            "tpr": page.tpr,
            "svr": page.svr,
            "handled_vectors": None,  # not exposed by the kernel
            "dead": self.vcpu(n).dead,
        }
