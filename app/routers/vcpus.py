"""vCPUs: LAPIC views, guest LAPIC writes, KVM_RUN, interrupt acknowledge and EOI."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from app.api import examples as X
from app.api import kvm_ops as KO
from app.api import models as M
from app.api import ops
from app.api.deps import VcpuPath, VmPath
from app.api.problems import problem_responses
from app.api.run import act, view

router = APIRouter(prefix="/v1/vms/{vm}/vcpus", tags=["vcpus"],
                   responses=problem_responses(422))


@router.get(
    "", response_model=M.VcpuList, summary="List vCPUs",
    description="Every vCPU's local APIC (KVM_GET_LAPIC) plus the arch fields KVM keeps for "
                "EOI interception: ioapic_handled_vectors, the loaded EOI-exit bitmap, "
                "pending requests (kvm_make_request) and pending_ioapic_eoi.",
    responses={**X.response("vcpus"), **problem_responses(404)},
)
async def list_vcpus(vm: VmPath, request: Request) -> Response:
    return await view(request, vm, M.VcpuList, lambda e: ops.vcpus(e.vm),
                      KO.vcpus)


@router.get(
    "/{n}", response_model=M.VcpuView, summary="Get a vCPU",
    description="One vCPU's local APIC (KVM_GET_LAPIC: APIC id, LDR, DFR, TPR, PPR, SVR, "
                "IRR, ISR, TMR), its PIR (APICv), ioapic_handled_vectors, pending requests "
                "and pending_ioapic_eoi. Bitmaps are {vectors, hex}.",
    responses={**X.response("vcpu"), **problem_responses(404)},
)
async def get_vcpu(vm: VmPath, n: VcpuPath, request: Request) -> Response:
    return await view(request, vm, M.VcpuView, lambda e: e.vm.vcpu_view(n),
                      lambda h: KO.vcpu_view(h, n))


@router.patch(
    "/{n}/lapic", response_model=M.LapicPatchResult, summary="Write LAPIC registers",
    description="Guest writes to LAPIC registers (kvm_lapic_reg_write; APIC_BASE through "
                "kvm_set_apic_base), in the order apic_base, id, dfr, ldr, tpr, svr. A change "
                "of id, LDR, DFR, enable or x2APIC mode runs kvm_recalculate_apic_map, which "
                "requests SCAN_IOAPIC on every vCPU. All or nothing: a write the guest would "
                "take a #GP for is 400 and changes nothing. On the kvm backend irqlab's "
                "guest does each write (xAPIC: a store to the LAPIC page; x2APIC: wrmsr "
                "0x800 + offset >> 4) and reads the register back; ID, DFR and LDR in "
                "x2APIC mode are the guest's #GP (the same 400); `apic_base` is 409 "
                "unsupported (the guest stays in the mode it was created in).",
    responses={**X.response("lapic"), **problem_responses(400, 404, 413, 422)},
)
async def patch_lapic(
    vm: VmPath, n: VcpuPath,
    body: Annotated[M.LapicPatch, Body(openapi_examples=X.REQUESTS["lapic"])],
    request: Request,
) -> Response:
    return await act(request, vm, M.LapicPatchResult,
                     lambda v: ops.lapic_patch(v, n, body),
                     kvm=lambda h: KO.lapic_patch(h, n, body))


@router.post(
    "/{n}/enter", response_model=M.EnterResult, summary="Enter the guest (KVM_RUN)",
    description="KVM_RUN until the vCPU runs guest code: vcpu_enter_guest consumes pending "
                "requests in KVM's order (IOAPIC_EOI_EXIT -> KVM_EXIT_IOAPIC_EOI to the VMM, "
                "which runs QEMU's ioapic_eoi_broadcast and re-enters; SCAN_IOAPIC -> "
                "vcpu_scan_ioapic; LOAD_EOI_EXITMAP; EVENT).",
    responses={**X.response("enter_eoi"), **problem_responses(404)},
)
async def enter_guest(vm: VmPath, n: VcpuPath, request: Request
                ) -> Response:
    return await act(request, vm, M.EnterResult, lambda v: v.enter(n))


@router.post(
    "/{n}/exit", response_model=M.ExitResult, summary="Leave guest mode",
    description="The vCPU leaves guest mode: KVM_RUN returns (e.g. KVM_EXIT_HLT) or KVM "
                "handles a VM exit. With APICv, posted interrupts then wait in the PIR "
                "(pi_desc) until the next VM entry syncs them (vmx_sync_pir_to_irr).",
    responses={**X.response("exit"), **problem_responses(404)},
)
async def exit_guest(vm: VmPath, n: VcpuPath, request: Request
                     ) -> Response:
    return await act(request, vm, M.ExitResult, lambda v: v.exit_guest(n))


@router.post(
    "/{n}/ack", response_model=M.AckResult, summary="Acknowledge an interrupt",
    description="The guest opens an interrupt window and takes the highest deliverable "
                "interrupt: kvm_cpu_get_interrupt + kvm_apic_ack_interrupt move the highest "
                "IRR vector above PPR to ISR. `vector` is null when nothing is deliverable. "
                "Pending requests are consumed first (the vCPU must be in the guest).",
    responses={**X.response("ack"), **problem_responses(404)},
)
async def ack_interrupt(vm: VmPath, n: VcpuPath, request: Request
              ) -> Response:
    return await act(request, vm, M.AckResult, lambda v: v.ack(n),
                     kvm=lambda h: KO.ack(h, n))


@router.post(
    "/{n}/eoi", response_model=M.EoiResult, summary="Write the LAPIC EOI register",
    description="The guest writes APIC_EOI: apic_set_eoi retires the highest ISR vector and "
                "kvm_ioapic_send_eoi forwards it only if the vector is set in "
                "ioapic_handled_vectors: in-kernel to kvm_ioapic_update_eoi (Remote IRR "
                "cleared, re-delivery), in split mode as KVM_REQ_IOAPIC_EOI_EXIT, i.e. a "
                "KVM_EXIT_IOAPIC_EOI at the vCPU's next entry (`run_exits: true` takes it "
                "now). With APICv a vector not in the EOI-exit bitmap is retired by the CPU.",
    responses={**X.response("eoi"), **problem_responses(404, 413, 422)},
)
async def write_eoi(
    vm: VmPath, n: VcpuPath, request: Request,
    body: Annotated[M.EoiRequest | None, Body(openapi_examples=X.REQUESTS["eoi"])] = None,
) -> Response:
    run_exits = body.run_exits if body is not None else False
    return await act(request, vm, M.EoiResult,
                     lambda v: v.eoi(n, run_exits=run_exits),
                     kvm=lambda h: KO.eoi(h, n))
