"""Footprints on random small programs (hypothesis, derandomized): over every reachable state,
actions the model declares independent commute and do not disable each other, for the whole
step vocabulary (lines, MSIs, GSI routes, RTE writes, TPR and LDR writes, EOI, exit, cli/sti,
counters) under random presets, irqchip modes and APICv. This is what partial-order
reduction in the checker relies on; the library explorations alone use few of the ops."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine import flags as F
from app.explore.irq_model import IrqModel
from app.explore.model_api import independent
from tests.explore.test_model import reachable

VECTORS = (0x40, 0x50)

device_step = st.one_of(
    st.builds(lambda p, lv: {"op": "line", "pin": p, "level": lv},
              st.sampled_from([5, 6]), st.sampled_from([0, 1])),
    st.builds(lambda d, v: {"op": "msi", "decoded": {"dest": d, "vector": v}},
              st.sampled_from([0, 1]), st.sampled_from(VECTORS)),
    st.just({"op": "routes", "entries": [{"gsi": 5, "irqchip": {"chip": "ioapic", "pin": 5}},
                                         {"gsi": 6, "irqchip": {"chip": "ioapic", "pin": 6}}]}),
    st.just({"op": "count", "name": "n"}),
)
guest_step = st.one_of(
    device_step,
    st.builds(lambda p, d: {"op": "patch_rte", "pin": p, "fields": {"dest": d}},
              st.sampled_from([5, 6]), st.sampled_from([0, 1])),
    st.builds(lambda p, m: {"op": "patch_rte", "pin": p, "fields": {"masked": m}},
              st.sampled_from([5, 6]), st.booleans()),
    st.builds(lambda t: {"op": "lapic", "tpr": t}, st.sampled_from([0, 0x60])),
    st.just({"op": "lapic", "ldr": 0x02000000}),
    st.sampled_from([{"op": "eoi"}, {"op": "exit"}, {"op": "cli"}, {"op": "sti"}]),
)


@st.composite
def documents(draw: Any) -> tuple[dict[str, Any], str]:
    split = draw(st.booleans())
    vm = {"vcpus": 2, "irqchip": "split" if split else "kernel",
          "apicv": draw(st.booleans())}
    setup: list[dict[str, Any]] = []
    for pin, vec in ((5, 0x40), (6, 0x50)):
        trig = draw(st.sampled_from(["level", "edge"]))
        setup.append({"op": "write_rte", "vcpu": 0, "pin": pin,
                      "entry": {"vector": vec, "trigger": trig,
                                "dest": draw(st.sampled_from([0, 1]))}})
    setup += [{"op": "enter", "vcpu": 0}, {"op": "enter", "vcpu": 1}]
    handlers = {v: [*draw(st.lists(guest_step, max_size=2)), {"op": "eoi"}] for v in VECTORS}
    actors: dict[str, Any] = {"dev": {"steps": draw(st.lists(device_step, min_size=1,
                                                             max_size=2))}}
    if draw(st.booleans()):
        actors["main"] = {"vcpu": draw(st.sampled_from([0, 1])),
                          "steps": draw(st.lists(guest_step, min_size=1, max_size=2))}
    doc = {"name": "random", "vm": vm, "setup": setup, "handlers": handlers, "actors": actors,
           "properties": ["remote-irr-stuck", "eoi-not-forwarded"]}
    return doc, draw(st.sampled_from(list(F.PRESETS)))


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents())
def test_independent_actions_commute_on_random_programs(case: tuple[dict[str, Any], str]
                                                        ) -> None:
    doc, profile = case
    model = IrqModel(doc, profile)
    for s in reachable(model, 1500):
        acts = model.actions(s)
        for i, a in enumerate(acts):
            for b in acts[i + 1:]:
                if not independent(a, b):
                    continue
                after_a = model.step(s, a)
                after_b = model.step(s, b)
                b2 = [x for x in model.actions(after_a) if x.data == b.data]
                a2 = [x for x in model.actions(after_b) if x.data == a.data]
                assert b2 and a2, (profile, a.name, b.name)
                ab = model.step(after_a, b2[0])
                ba = model.step(after_b, a2[0])
                assert model.fingerprint(ab) == model.fingerprint(ba), (profile, a.name, b.name)
