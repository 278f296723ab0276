"""A scenario run as one self-contained HTML file: inline CSS, inline SVG, no script, no
request to anywhere.

Per variant: its steps (the document's step, what came of it, the expect checks with
expected/actual, the findings at the step where they arose) and its timeline. Then, for each
pair of neighbouring variants (typically a kernel before a fix and one with it), the steps
side by side with Remote IRR and each vCPU's handled vectors, ISR and IRR after every step,
the first step where they differ highlighted.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .recording import from_variant, step_text
from .svg import render_svg
from .timeline import build, vec
from .xml import clip, esc

CSS = """
body{font-family:DejaVu Sans,Verdana,sans-serif;font-size:13px;margin:18px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 6px;border-bottom:2px solid
#ddd;padding-bottom:3px}h3{font-size:14px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#f3f3f3}
.pass{color:#1b5e20;font-weight:bold}.fail{color:#b71c1c;font-weight:bold}
.refused{color:#8a6d00}.finding{color:#b71c1c}.muted{color:#777}
tr.failed td{background:#fdecea}tr.diverge td{background:#fff3cd}
td.diff{background:#ffe0b2 !important;font-weight:bold}
code{font-family:DejaVu Sans Mono,monospace;font-size:12px}
.tl{overflow-x:auto;border:1px solid #ddd;margin:8px 0}
.note{background:#fff3cd;border:1px solid #e0c36c;padding:6px 8px;margin:6px 0}
ul.checks{margin:0;padding-left:16px}
"""


def _verdict(passed: Any) -> str:
    if passed is True:
        return '<span class="pass">✓ passed</span>'
    if passed is False:
        return '<span class="fail">✗ failed</span>'
    return ""


def _brief_json(value: Any, n: int = 140) -> str:
    return clip(json.dumps(value, ensure_ascii=False, default=str), n)


def _vecs(vs: list[int]) -> str:
    return "{" + ",".join(vec(v) for v in vs) + "}" if vs else "∅"


def _checks(result: Any) -> str:
    if not isinstance(result, dict):
        return ""
    items = []
    for c in result.get("checks") or []:
        mark = '<span class="pass">✓</span>' if c.get("ok") else '<span class="fail">✗</span>'
        if c.get("ok"):
            items.append(f"<li>{mark} <code>{esc(c.get('path'))}</code> = "
                         f"<code>{esc(_brief_json(c.get('actual'), 80))}</code></li>")
        else:
            items.append(f"<li>{mark} <code>{esc(c.get('path'))}</code>: expected "
                         f"<code>{esc(_brief_json(c.get('expected'), 80))}</code>, got "
                         f"<code>{esc(_brief_json(c.get('actual'), 80))}</code></li>")
    return f'<ul class="checks">{"".join(items)}</ul>' if items else ""


def _steps_table(variant: dict[str, Any], doc_steps: list[Any]) -> str:
    rows = ["<table><tr><th>#</th><th>step</th><th>outcome</th><th>events</th>"
            "<th>findings</th></tr>"]
    prev = 0
    for s in variant.get("steps") or []:
        i = int(s["index"])
        text = step_text(doc_steps[i]) if i < len(doc_steps) else str(s.get("op"))
        if s.get("label"):
            text += f" [{s['label']}]"
        if not s.get("ok", True):
            err = s.get("error") or {}
            outcome = f'<span class="refused">refused: {esc(err.get("detail"))}</span>'
        elif s.get("op") == "expect":
            outcome = _verdict(s.get("passed")) + _checks(s.get("result"))
        else:
            outcome = f"<code>{esc(_brief_json(s.get('result')))}</code>"
        last = s.get("last_seq")
        events = (f"#{prev + 1}–#{last}" if last is not None and last > prev else
                  "—" if last is not None else "")
        if last is not None:
            prev = int(last)
        findings = "".join(f'<div class="finding">⚠ <b>{esc(f.get("kind"))}</b>: '
                           f'{esc(f.get("detail"))}</div>' for f in s.get("findings") or [])
        cls = ' class="failed"' if s.get("passed") is False or s.get("findings") else ""
        rows.append(f"<tr{cls}><td>{i}</td><td><code>{esc(text)}</code></td>"
                    f"<td>{outcome}</td><td class=muted>{events}</td><td>{findings}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _signature(state: dict[str, Any] | None) -> dict[str, str]:
    """What the side-by-side compares after a step, as column -> text."""
    if not isinstance(state, dict):
        return {}
    out = {"Remote IRR": ", ".join(f"pin {p}" for p in state.get("remote_irr", [])) or "∅"}
    for v in state.get("vcpus", []):
        n = v["vcpu"]
        out[f"vcpu{n} handled"] = _vecs(v.get("handled_vectors", []))
        out[f"vcpu{n} ISR/IRR"] = f"{_vecs(v.get('isr', []))} / {_vecs(v.get('irr', []))}"
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The first step after which Remote IRR or a handled-vector bitmap differs between two
    variants (and what differs), or {"step": None}."""
    for sa, sb in zip(a.get("steps") or [], b.get("steps") or [], strict=False):
        ga, gb = _signature(sa.get("state")), _signature(sb.get("state"))
        keys = [k for k in ga if (k == "Remote IRR" or k.endswith("handled"))
                and ga.get(k) != gb.get(k)]
        if keys:
            return {"step": sa["index"], "what": {k: [ga.get(k), gb.get(k)] for k in keys}}
    return {"step": None, "what": {}}


def _side_by_side(a: dict[str, Any], b: dict[str, Any], doc_steps: list[Any]) -> str:
    first = compare(a, b)
    sa_steps, sb_steps = a.get("steps") or [], b.get("steps") or []
    if not sa_steps or "state" not in sa_steps[0]:
        return '<p class="muted">(the run was not observed: no per-step state)</p>'
    cols = list(dict.fromkeys([*_signature(sa_steps[0].get("state")),
                               *_signature((sb_steps or [{}])[0].get("state"))]))
    out = [f"<h3>{esc(a['name'])} ⟷ {esc(b['name'])}</h3>"]
    if first["step"] is None:
        out.append('<p class="muted">No divergence of Remote IRR or handled vectors.</p>')
    else:
        what = "; ".join(f"{k}: {x} vs {y}" for k, (x, y) in first["what"].items())
        out.append(f'<div class="note">First divergence after <b>step {first["step"]}</b>: '
                   f"{esc(what)}</div>")
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    out.append(f'<table><tr><th rowspan=2>#</th><th rowspan=2>step</th>'
               f'<th colspan={len(cols)}>{esc(a["name"])}</th>'
               f'<th colspan={len(cols)}>{esc(b["name"])}</th></tr><tr>{head}{head}</tr>')
    for sa, sb in zip(sa_steps, sb_steps, strict=False):
        i = int(sa["index"])
        ga, gb = _signature(sa.get("state")), _signature(sb.get("state"))
        cls = ' class="diverge"' if i == first["step"] else ""
        text = step_text(doc_steps[i]) if i < len(doc_steps) else str(sa.get("op"))
        cells = []
        for g, other in ((ga, gb), (gb, ga)):
            for c in cols:
                diff = ' class="diff"' if g.get(c) != other.get(c) else ""
                cells.append(f"<td{diff}><code>{esc(g.get(c, ''))}</code></td>")
        out.append(f"<tr{cls}><td>{i}</td><td><code>{esc(clip(text, 60))}</code></td>"
                   f"{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(result: dict[str, Any], doc: Any = None) -> str:
    """The report of a scenario run (a result of run_scenario with observe on)."""
    doc_steps: list[Any] = doc.get("steps") or [] if isinstance(doc, dict) else []
    name = str(result.get("name") or "scenario")
    variants = list(result.get("variants") or [])
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>irqlab report: {esc(name)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(name)} {_verdict(result.get('passed'))}</h1>"]
    if result.get("description"):
        out.append(f"<p>{esc(str(result['description']).strip())}</p>")
    if result.get("commits"):
        out.append("<p class=muted>commits: "
                   + ", ".join(f"<code>{esc(c)}</code>" for c in result["commits"]) + "</p>")
    out.append("<table><tr><th>variant</th><th>profile</th><th>irqchip</th><th>vCPUs</th>"
               "<th>verdict</th><th>findings</th></tr>")
    for i, v in enumerate(variants):
        vm = v.get("vm") or {}
        kinds = sorted({str(f.get("kind")) for f in v.get("findings") or []})
        out.append(f'<tr><td><a href="#v{i}">{esc(v.get("name"))}</a></td>'
                   f"<td>{esc(vm.get('profile', ''))}</td><td>{esc(vm.get('irqchip', ''))}</td>"
                   f"<td>{esc(vm.get('vcpus', ''))}</td><td>{_verdict(v.get('passed'))}</td>"
                   f'<td class="finding">{esc(", ".join(kinds))}</td></tr>')
    out.append("</table>")
    if len(variants) > 1:
        out.append("<h2>Side by side</h2>")
        for a, b in itertools.pairwise(variants):
            out.append(_side_by_side(a, b, doc_steps))
    for i, v in enumerate(variants):
        out.append(f'<h2 id="v{i}">{esc(v.get("name"))} {_verdict(v.get("passed"))}</h2>')
        out.append(_steps_table(v, doc_steps))
        for h in v.get("handler_expects") or []:
            out.append(f"<div>handler expect {esc(h.get('where'))} (step {esc(h.get('step'))})"
                       f": {_verdict(h.get('passed'))}{_checks(h)}</div>")
        out.append("<h3>Timeline</h3>")
        svg = render_svg(build(from_variant(v, name, doc)), f"v{i}-")  # ids unique per page
        out.append(f'<div class="tl">{svg}</div>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
