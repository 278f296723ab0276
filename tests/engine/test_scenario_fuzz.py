"""Malformed scenario documents: whatever the shape, run_scenario either runs or raises an
EngineError that names a path; never TypeError, AttributeError, KeyError or the like (the
service would turn those into 500s)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine.errors import EngineError
from app.engine.scenario import STEP_OPS, run_scenario

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.text(max_size=4),
                    st.sampled_from(["0x40", "assert", "level", "edge", "low-first"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
KEYS = ["pin", "level", "action", "gsi", "vcpu", "entry", "fields", "offset", "size", "value",
        "access", "counter", "equals", "steps", "label", "remote_irr", "pins", "vcpus",
        "events", "no_events", "event_counts", "counters", "findings", "saved", "ioapic",
        "decoded", "entries", "data", "us", "name", "budget", "save", "order", "run_exits"]
steps = st.builds(lambda op, extra: {"op": op, **extra}, st.sampled_from(STEP_OPS),
                  st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
docs = st.fixed_dictionaries(
    {"steps": st.lists(steps, max_size=4)},
    optional={"vm": st.one_of(values, st.fixed_dictionaries(
                  {}, optional={"vcpus": st.integers(0, 3), "irqchip": scalars,
                                "profile": scalars})),
              "handlers": st.one_of(values, st.dictionaries(
                  st.sampled_from(["0x40", "64", "x"]), st.lists(steps, max_size=2),
                  max_size=2)),
              "matrix": st.one_of(values, st.lists(st.fixed_dictionaries(
                  {}, optional={"name": scalars, "vm": values, "expect": values}), max_size=2))})


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(docs)
def test_malformed_documents_raise_engine_errors_only(doc: dict[str, Any]) -> None:
    try:
        run_scenario(doc)
    except EngineError as exc:
        assert exc.field is not None


MALFORMED = [
    ({"steps": [{"op": "expect", "events": 5}]}, "steps[0].events"),
    ({"steps": [{"op": "expect", "no_events": "x"}]}, "steps[0].no_events"),
    ({"steps": [{"op": "expect", "remote_irr": 5}]}, "steps[0].remote_irr"),
    ({"steps": [{"op": "expect", "findings": 5}]}, "steps[0].findings"),
    ({"steps": [{"op": "expect", "vcpus": {"0": {"pending_requests": 5}}}]},
     "steps[0].vcpus.0.pending_requests"),
    ({"steps": [{"op": "routes", "entries": [{"gsi": 1, "irqchip": 3}]}]},
     "steps[0].entries[0].irqchip"),
    ({"steps": [{"op": "expect", "label": [1]}]}, "steps[0].label"),
    ({"steps": [{"op": "line", "pin": 1, "action": "zap"}]}, "steps[0].action"),
    ({"steps": [{"op": "mmio", "offset": 0, "access": "poke"}]}, "steps[0].access"),
    ({"steps": [{"op": "patch_rte", "pin": 1, "fields": {"trigger": 5}}]},
     "steps[0].fields.trigger"),
    # A non-string order reached the compiled engine's typed parameters (TypeError).
    ({"steps": [{"op": "patch_rte", "pin": 1, "fields": {"vector": 3}, "order": 5}]},
     "steps[0].order"),
    ({"steps": [{"op": "write_rte", "pin": 1, "entry": {"vector": 3}, "order": "up"}]},
     "steps[0].order"),
    ({"matrix": [{"vm": {"vcpus": 0}}, {"vm": {}}], "steps": []}, "matrix[0].vm.vcpus"),
    ({"vm": {"vcpus": 0}, "steps": []}, "vm.vcpus"),
]


def test_known_malformed_shapes_name_their_path() -> None:
    for doc, field in MALFORMED:
        try:
            run_scenario(doc)
        except EngineError as exc:
            assert exc.field == field, (doc, exc.field, exc.detail)
        else:
            raise AssertionError(f"{doc} ran")
