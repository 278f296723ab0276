"""The random operation sequences of the differential tests (hypothesis strategies), shared by
tests/kvm/test_random_diff.py and the upstream rig's guest (app.upstream.guest), which runs
them against each Debian kernel. Importing this module needs hypothesis (the `test` extra)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.campaign import sequences as CS
from app.engine import rte as R

from .differential import Observation, Step, first_divergence, run_engine, run_kvm

# The draw's alphabet is the campaigns' (app.campaign.sequences says why each value): one
# distribution for hypothesis here and for the seeded campaign generator there.
PINS = list(CS.PINS)
VECTORS = list(CS.VECTORS)
TPRS = list(CS.TPRS)
SPLIT_IOAPICS = list(CS.SPLIT_IOAPICS)
MAX_STEPS = CS.MAX_STEPS

Case = tuple[int, tuple[int, bool], list[Step]]  # vCPUs, split IOAPIC config, steps


def _rte(draw: st.DrawFn, vcpus: int) -> int:
    return R.encode(
        vector=draw(st.sampled_from(VECTORS)),
        trigger=draw(st.sampled_from(["edge", "level"])),
        masked=draw(st.integers(0, 5)) == 0,  # one write in six masks the pin
        # A vCPU's APIC ID, or now and then 0xff: physical broadcast to every vCPU.
        dest=draw(st.sampled_from([*range(vcpus), *range(vcpus), 0xFF])),
    )


@st.composite
def sequences(draw: st.DrawFn) -> Case:
    vcpus = draw(st.integers(1, 2))
    split_ioapic = draw(st.sampled_from(SPLIT_IOAPICS))
    cpu = st.integers(0, vcpus - 1)
    steps: list[Step] = []
    # Every sequence starts by programming one to three pins (they reset masked), so that
    # lines have somewhere to go.
    for pin in draw(st.lists(st.sampled_from(PINS), min_size=1, max_size=3, unique=True)):
        steps.append(("rte", draw(cpu), pin, _rte(draw, vcpus)))
    for _ in range(draw(st.integers(1, MAX_STEPS - len(steps)))):
        kind = draw(st.sampled_from(
            ["line", "line", "line", "rte", "msi", "ack", "ack", "ack", "ack", "eoi", "eoi",
             "tpr", "ioeoi"]))
        if kind == "line":
            pin = draw(st.sampled_from(PINS))
            action = draw(st.sampled_from(["assert", "deassert", "pulse"]))
            if action == "pulse":
                steps += [("line", pin, 1), ("line", pin, 0)]
            else:
                steps.append(("line", pin, 1 if action == "assert" else 0))
        elif kind == "rte":
            halves = draw(st.sampled_from(
                [("low", "high"), ("low", "high"), ("high", "low"), ("low",), ("high",)]))
            steps.append(("rte", draw(cpu), draw(st.sampled_from(PINS)), _rte(draw, vcpus),
                          halves))
        elif kind == "msi":
            level = draw(st.booleans())
            # Fixed, physical; level MSIs carry trigger (bit 15) and assert (bit 14).
            data = draw(st.sampled_from(VECTORS)) | (0xC000 if level else 0)
            steps.append(("msi", 0xFEE00000 | draw(cpu) << 12, 0, data))
        elif kind == "tpr":
            steps.append(("tpr", draw(cpu), draw(st.sampled_from(TPRS))))
        elif kind == "ioeoi":
            steps.append(("ioeoi", draw(cpu), draw(st.sampled_from(VECTORS))))
        else:
            steps.append((kind, draw(cpu)))
    return vcpus, split_ioapic, steps


def compare_case(case: Case, irqchip: str, profile: str
                 ) -> tuple[int, Observation, Observation] | None:
    """One sequence on the engine under `profile` and on this machine's KVM: the first
    divergence, or None."""
    vcpus, (version, routes_first), steps = case
    model = run_engine(steps, PINS, vcpus, profile=profile, irqchip=irqchip,
                       ioapic_version=version, routes_before_service=routes_first)
    real = run_kvm(steps, PINS, vcpus, irqchip=irqchip, ioapic_version=version,
                   routes_before_service=routes_first)
    return first_divergence(model, real)


def for_each_case(count: int, visit: Callable[[Case], None]) -> None:
    """Call `visit` on the first `count` sequences of the fixed-seed stream (derandomized:
    every run visits the same sequences). `visit` must not raise (hypothesis would shrink)."""

    @settings(max_examples=count, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=sequences())
    def run(case: Case) -> None:
        visit(case)

    run()
