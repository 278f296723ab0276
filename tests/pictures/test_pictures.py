"""app.pictures on real runs: the seed race's timeline, spans and findings; 16 vCPUs; the SVG
is well-formed XML with the expected lanes and spans; the Perfetto trace keeps the trace-event
rules; the VCD read back with pyvcd holds the engine's own state after every step of every
library scenario; the HTML report is self-contained."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest
import yaml

from app import scenarios as library
from app.engine.scenario import run_scenario
from app.engine.vm import Vm, config_from_dict
from app.pictures import (
    build,
    from_variant,
    from_vm,
    from_vm_steps,
    perfetto,
    render_html,
    timeline_svg,
    timelines_svg,
    vcd,
)
from app.pictures.html_report import compare
from app.pictures.vcd_trace import scope_name
from tests.pictures.signals import read_vcd, value_at
from tests.pictures.trace_rules import check_trace

SVG = "{http://www.w3.org/2000/svg}"
SEED = "seed-race-split"


def seed_run() -> tuple[dict[str, Any], dict[str, Any]]:
    doc = library.get(SEED)
    assert doc is not None
    return doc, run_scenario(doc, observe=True)


def variant(result: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(v for v in result["variants"] if v["name"].startswith(prefix))


# ---- the timeline model


def test_seed_race_before_the_fix_leaves_remote_irr_open_and_the_eoi_lost() -> None:
    doc, result = seed_run()
    tl = build(from_variant(variant(result, "linux-6.1"), SEED, doc))
    assert [la.title for la in tl.lanes] == ["device / pins", "IOAPIC", "VMM / KVM", "vCPU 0",
                                             "vCPU 1"]
    rirr = [sp for sp in tl.spans if sp.kind == "remote-irr"]
    assert len(rirr) == 1 and rirr[0].name == "pin 5"
    assert rirr[0].end is None and rirr[0].stuck  # never closes, marked by the finding
    assert tl.rows[rirr[0].start].kind == "deliver"
    isr = next(sp for sp in tl.spans if sp.kind == "isr")
    assert (tl.rows[isr.start].kind, tl.rows[isr.end].kind) == ("ack", "eoi")
    lost = [r for r in tl.rows if r.lost]
    assert [r.kind for r in lost] == ["eoi", "eoi-not-forwarded"]
    assert {m.kind for m in tl.marks} == {"eoi-not-forwarded", "eoi-will-be-lost",
                                          "remote-irr-stuck"}
    # The finding that names its event is marked at that event's row.
    mark = next(m for m in tl.marks if m.kind == "eoi-not-forwarded")
    assert mark.row is not None and tl.rows[mark.row].kind == "eoi"
    # Every cross-lane cause has an arrow: the line's delivery, the MSI, the acceptance.
    kinds = {(tl.rows[a.src].kind, tl.rows[a.dst].kind) for a in tl.arrows}
    assert {("line", "deliver"), ("deliver", "msi"), ("msi", "accepted")} <= kinds


def test_seed_race_with_the_fix_clears_remote_irr() -> None:
    doc, result = seed_run()
    tl = build(from_variant(variant(result, "linux-6.2"), SEED, doc))
    rirr = [sp for sp in tl.spans if sp.kind == "remote-irr"]
    assert tl.rows[rirr[0].end].kind == "remote-irr-cleared"  # type: ignore[index]
    assert not any(sp.stuck for sp in tl.spans)
    assert not any(r.lost for r in tl.rows)
    # The re-assert after the EOI is delivered to vCPU1 and still pending at the end.
    assert rirr[1].end is None and not rirr[1].stuck
    assert any(sp.kind == "irr" and sp.actor == "vcpu1" and sp.end is None for sp in tl.spans)


SIXTEEN = """
name: sixteen
vm: {vcpus: 16, irqchip: split, profile: linux-6.1}
steps:
  - {op: write_rte, vcpu: 0, pin: 5, entry: {vector: 0x40, trigger: level, dest: 3}}
  - {op: write_rte, vcpu: 0, pin: 9, entry: {vector: 0x51, trigger: edge, dest: 7}}
  - {op: settle}
  - {op: line, pin: 5, level: 1}
  - {op: line, pin: 9, level: 1}
  - {op: ack, vcpu: 3}
  - {op: ack, vcpu: 7}
  - {op: eoi, vcpu: 7}
  - {op: line, pin: 5, level: 0}
  - {op: patch_rte, vcpu: 3, pin: 5, fields: {dest: 12}}
  - {op: settle}
  - {op: eoi, vcpu: 3}
  - {op: settle}
"""


def test_sixteen_vcpus_group_the_quiet_ones_into_one_lane() -> None:
    doc = yaml.safe_load(SIXTEEN)
    result = run_scenario(doc, observe=True)
    v = result["variants"][0]
    tl = build(from_variant(v, "sixteen", doc))
    titles = [la.title for la in tl.lanes]
    assert titles == ["device / pins", "IOAPIC", "VMM / KVM", "vCPU 0", "vCPU 3", "vCPU 7",
                      "vCPUs 1–2,4–6,8–15"]
    # Housekeeping of the quiet vCPUs shares rows: far fewer rows than events.
    assert len(tl.rows) < len(v["events"]) / 2
    # The edge EOI is not a lost EOI; the level one is.
    lost = [(r.actor, r.kind) for r in tl.rows if r.lost]
    assert lost == [("vcpu3", "eoi"), ("vcpu3", "eoi-not-forwarded")]
    svg = timeline_svg(from_variant(v, "sixteen", doc))
    root = ET.fromstring(svg)
    assert float(root.get("width", "0")) < 1800  # 7 lanes, not 19


def test_a_window_after_the_start_draws_what_was_set_before_it() -> None:
    vm = Vm(config_from_dict({"vcpus": 2, "irqchip": "kernel"}))
    vm.write_rte(0, 3, 0x8041)  # level, vector 0x41, dest 0
    vm.set_line(3, level=1)
    vm.ack(0)
    after = vm.log.next_seq - 1
    vm.eoi(0)
    full = build(from_vm(vm, "vm"))
    window = build(from_vm(vm, "vm", after=after))
    assert not window.rec.complete
    isr = [sp for sp in window.spans if sp.kind == "isr"]
    assert len(isr) == 1 and isr[0].start is None and isr[0].end is not None
    # Remote IRR: set before the window, cleared by the EOI inside it.
    rirr = [sp for sp in window.spans if sp.kind == "remote-irr"]
    assert rirr and rirr[0].start is None and rirr[0].end is not None
    assert all(sp.start is not None for sp in full.spans)


def test_the_end_state_draws_what_the_window_never_saw_set() -> None:
    vm = Vm(config_from_dict({"vcpus": 1, "irqchip": "kernel"}))
    vm.write_rte(0, 3, 0x8041)
    vm.set_line(3, level=1)
    after = vm.log.next_seq - 1
    vm.enter(0)
    tl = build(from_vm(vm, "vm", after=after))
    kinds = {(sp.kind, sp.start, sp.end) for sp in tl.spans}
    assert ("remote-irr", None, None) in kinds and ("irr", None, None) in kinds


# ---- SVG


def test_svg_is_well_formed_with_lanes_spans_and_findings() -> None:
    doc, result = seed_run()
    svg = timeline_svg(from_variant(variant(result, "linux-6.1"), SEED, doc))
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    lanes = [g.get("data-lane") for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    assert lanes == ["device", "ioapic", "vmm", "vcpu0", "vcpu1"]
    spans = [(g.get("data-kind"), g.get("data-name"), g.get("data-stuck"))
             for g in root.iter(f"{SVG}g") if g.get("class") == "span"]
    assert ("remote-irr", "Remote IRR pin 5", "true") in spans
    assert ("isr", "vcpu0 ISR 0x40", "false") in spans
    findings = [g.get("data-kind") for g in root.iter(f"{SVG}g") if g.get("class") == "finding"]
    assert sorted(findings) == ["eoi-not-forwarded", "eoi-will-be-lost", "remote-irr-stuck"]
    steps = [g for g in root.iter(f"{SVG}g") if g.get("class") == "step"]
    assert len(steps) == len(doc["steps"])
    events = [g for g in root.iter(f"{SVG}g") if g.get("class") == "event"]
    assert len(events) == len(variant(result, "linux-6.1")["events"])
    assert "never cleared: Remote IRR pin 5" in svg


def test_svg_escapes_what_a_document_names() -> None:
    doc = {"name": "a <b> & \"c\" \x01", "vm": {"vcpus": 1},
           "steps": [{"op": "write_rte", "pin": 1, "entry": {"vector": 0x30}},
                     {"op": "expect", "label": "<&>'\"", "remote_irr": [1]}]}
    result = run_scenario(doc, observe=True)
    svg = timelines_svg([from_variant(v, doc["name"], doc) for v in result["variants"]])
    root = ET.fromstring(svg)  # raises on anything unescaped
    text = "".join(root.itertext())
    assert "a <b> & \"c\" \ufffd" in text and "[<&>'\"]" in text


def test_several_variants_stack_in_one_svg() -> None:
    doc, result = seed_run()
    svg = timelines_svg([from_variant(v, SEED, doc) for v in result["variants"]])
    root = ET.fromstring(svg)
    inner = root.findall(f"{SVG}svg")
    assert len(inner) == 3
    ys = [float(s.get("y", "0")) for s in inner]
    assert ys == sorted(ys) and len(set(ys)) == 3
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids))


# ---- Perfetto


def test_perfetto_trace_keeps_the_trace_event_rules() -> None:
    doc, result = seed_run()
    recs = [from_variant(v, SEED, doc) for v in result["variants"]]
    trace = json.loads(perfetto(recs))
    assert check_trace(trace) == []
    events = trace["traceEvents"]
    processes = [e["args"]["name"] for e in events if e["name"] == "process_name"]
    assert processes == [r.title for r in recs]
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert {(1, "ioapic"), (1, "vcpu0"), (1, "device"), (1, "ioapic · Remote IRR pin 5"),
            (1, "vcpu0 · ISR 0x40")} <= threads
    stuck = [e for e in events if e["ph"] == "X" and e["pid"] == 1 and e["cat"] == "remote-irr"]
    assert [e["name"] for e in stuck] == ["Remote IRR pin 5 (never cleared)"]
    assert stuck[0]["args"]["still_set_at_end"] is True
    n_causes = sum(1 for e in result["variants"][0]["events"] if e["cause"] is not None)
    assert sum(1 for e in events if e["ph"] == "s" and e["pid"] == 1) == n_causes
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert {"vcpu0 IRR/ISR", "Remote IRR pins"} <= counters
    instants = [e["name"] for e in events if e["ph"] == "i" and e["pid"] == 1]
    assert "finding: remote-irr-stuck" in instants and "EOI 0x40 lost" in instants


def test_the_rule_checker_catches_broken_traces() -> None:
    good = {"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "p"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "t"}},
        {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 1, "dur": 1},
        {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 3, "dur": 1},
        {"ph": "s", "name": "c", "id": 7, "pid": 1, "tid": 1, "ts": 1},
        {"ph": "f", "bp": "e", "name": "c", "id": 7, "pid": 1, "tid": 1, "ts": 3},
    ]}
    assert check_trace(good) == []
    for broken in (
        {"ph": "X", "name": "d", "pid": 1, "tid": 1, "ts": 1, "dur": -1},  # negative dur
        {"ph": "X", "name": "d", "pid": 1, "tid": 1, "ts": 0.5, "dur": 1},  # overlaps a
        {"ph": "X", "name": "d", "pid": 1, "tid": 2, "ts": 9, "dur": 1},  # unnamed thread
        {"ph": "s", "name": "c", "id": 7, "pid": 1, "tid": 1, "ts": 1},  # second start
        {"ph": "f", "name": "c", "id": 8, "pid": 1, "tid": 1, "ts": 3},  # finish alone
        {"ph": "E", "pid": 1, "tid": 1, "ts": 5},  # E without B
        {"ph": "i", "name": "x", "pid": 1, "tid": 1, "ts": 5, "s": "q"},  # bad scope
    ):
        assert check_trace({"traceEvents": [*good["traceEvents"], broken]}), broken


# ---- VCD


@pytest.mark.parametrize("name", library.names())
def test_vcd_round_trips_to_the_engine_state_after_every_step(name: str) -> None:
    """The spans are rebuilt from events alone (no end state): read back from the VCD, the
    Remote IRR of every pin and every vCPU's IRR and ISR equal what the engine reports after
    each step."""
    doc = library.get(name)
    result = run_scenario(doc, observe=True)
    for v in result["variants"]:
        rec = from_variant(v, name, doc)
        rec.end = None
        signals = read_vcd(vcd([rec]))
        scope = f"irqlab.{scope_name(rec.title)}"
        for step in v["steps"]:
            t, state = step["last_seq"], step["state"]
            for pin in range(24):
                key = f"{scope}.ioapic.pin{pin}_remote_irr"
                got = value_at(signals[key], t) if key in signals else 0
                assert got == int(pin in state["remote_irr"]), (v["name"], step["index"], pin)
            for cpu in state["vcpus"]:
                for kind in ("irr", "isr"):
                    key = f"{scope}.vcpu{cpu['vcpu']}.{kind}"
                    got = value_at(signals[key], t) if key in signals else 0
                    want = sum(1 << x for x in cpu[kind])
                    assert got == want, (v["name"], step["index"], cpu["vcpu"], kind)


def test_vcd_of_the_seed_race() -> None:
    doc, result = seed_run()
    recs = [from_variant(v, SEED, doc) for v in result["variants"][:2]]
    signals = read_vcd(vcd(recs))
    old, new = (f"irqlab.{scope_name(r.title)}" for r in recs)
    rirr_old = signals[f"{old}.ioapic.pin5_remote_irr"]
    assert rirr_old[-1][1] == 1  # set at the delivery, never cleared
    assert [v for _, v in signals[f"{new}.ioapic.pin5_remote_irr"]] == [0, 1, 0, 1]
    isr = signals[f"{old}.vcpu0.isr"]
    assert (29, 1 << 0x40) in isr and (47, 0) in isr
    assert value_at(signals[f"{old}.vcpu0.isr_count"], 30) == 1
    assert value_at(signals[f"{old}.ioapic.pin5_line"], 25) == 1


# ---- HTML


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href")]


def test_html_report_is_self_contained_with_checks_findings_and_the_divergence() -> None:
    doc, result = seed_run()
    html = render_html(result, doc)
    parser = _Collect()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert all(ref.startswith("#") for ref in parser.refs)  # only in-page anchors
    assert parser.tags.count("svg") == 3  # a timeline per variant
    assert "First divergence after <b>step 10</b>: vcpu0 handled: ∅ vs {0x40}" in html
    assert "⚠ <b>remote-irr-stuck</b>" in html
    assert "<code>remote_irr</code> = <code>[5]</code>" in html
    div = compare(variant(result, "linux-6.1"), variant(result, "linux-6.2"))
    assert div["step"] == 10 and div["what"] == {"vcpu0 handled": ["∅", "{0x40}"]}


def test_html_report_shows_failed_checks() -> None:
    doc = {"name": "fails", "vm": {"vcpus": 1},
           "steps": [{"op": "expect", "label": "wrong", "remote_irr": [3]}]}
    html = render_html(run_scenario(doc, observe=True), doc)
    assert "✗ failed" in html
    assert "<code>remote_irr</code>: expected <code>[3]</code>, got <code>[]</code>" in html


def test_a_vm_without_an_event_log_is_drawn_from_its_state() -> None:
    vm = Vm(config_from_dict({"vcpus": 1, "irqchip": "kernel", "event_log": False}))
    vm.write_rte(0, 3, 0x8041)
    vm.set_line(3, level=1)
    tl = build(from_vm(vm, "vm"))
    assert tl.rows == []
    spans = {(sp.kind, sp.name, sp.start, sp.end) for sp in tl.spans}
    assert {("remote-irr", "pin 3", None, None), ("irr", "0x41", None, None)} <= spans
    ET.fromstring(timeline_svg(from_vm(vm, "vm")))


def test_steps_of_a_replayed_trace_become_bands() -> None:
    """An explorer's counterexample: actions replayed on a VM, each with its last seq."""
    vm = Vm(config_from_dict({"vcpus": 1, "irqchip": "kernel"}))
    steps = []
    vm.write_rte(0, 3, 0x8041)
    steps.append(("program pin 3", vm.log.next_seq - 1))
    vm.set_line(3, level=1)
    steps.append(("line 3 up", vm.log.next_seq - 1))
    rec = from_vm_steps(vm, "cex", steps)
    svg = ET.fromstring(timeline_svg(rec))
    bands = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "step"]
    assert len(bands) == 2
    assert "step 1: line 3 up" in "".join(svg.itertext())


def test_a_broadcast_to_thousands_of_vcpus_folds_into_few_rows() -> None:
    vm = Vm(config_from_dict({"vcpus": 512, "irqchip": "split", "x2apic": True}))
    vm.write_rte(0, 5, 0x8040 | (7 << 56))  # the RTE write asks every vCPU to rescan
    vm.set_line(5, level=1)
    tl = build(from_vm(vm, "big"))
    assert [la.title for la in tl.lanes][-3:] == ["vCPU 0", "vCPU 7", "vCPUs 1–6,8–511"]
    assert len(tl.rows) < 40 < len(tl.rec.events)
    folded = [r for r in tl.rows if r.merged]
    assert sum(len(r.merged) for r in folded) + len(tl.rows) - len(folded) == len(
        tl.rec.events)
    assert [r.label for r in folded] == ["vcpu1–6: request×6", "vcpu8–511: request×504"]
