"""The timeline as an SVG sequence diagram: a lane per actor, a row per event (time runs down),
scenario steps as bands, cause arrows, spans for signals held between events, and findings as
red bands across the picture where they arise.

Plain string building; every text goes through xml.esc. Readable at 16 vCPUs because
timeline.build_lanes groups quiet vCPUs into one lane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .timeline import Row, Span, Timeline
from .xml import clip, esc

LEFT = 64  # seq column
LANE_W = 232
BAR_W = 12  # a span's bar
BAR_AREA = 56  # left part of a lane, for the bars; the lifeline sits after it
HEADER_H = 86
ROW_H = 18
STEP_H = 22
FINDING_H = 20
END_H = 30
LEGEND_H = 22
TITLES_H = 20
REPEAT_TITLES_EVERY = 60  # rows
Out = Callable[[str], None]
FONT = "font-family:DejaVu Sans,Verdana,sans-serif"
LABEL_CHARS = 26

COLOURS = {
    "line": "#2ca02c",
    "remote-irr": "#ef8a17",
    "irr": "#9467bd",
    "isr": "#1f77b4",
    "request": "#8c8c8c",
    "stuck": "#d62728",
}
SPAN_NAMES = {"line": "line", "remote-irr": "Remote IRR", "irr": "IRR", "isr": "ISR",
              "request": "req"}
LANE_FILL = {"device": "#f3faf1", "ioapic": "#fff6ec", "vmm": "#f4f4f4", "vcpu": "#f1f6fc",
             "group": "#f7f7fb", "other": "#fafafa"}


@dataclass
class _Slot:
    kind: str  # row, step, finding, titles
    y: float  # centre
    index: int  # row index / step position / mark index


def _layout(tl: Timeline) -> tuple[list[_Slot], list[float], float]:
    """Slots top to bottom; the y of every row; the body's bottom."""
    slots: list[_Slot] = []
    row_y: list[float] = [0.0] * len(tl.rows)
    y = float(HEADER_H + LEGEND_H)
    marks_after: dict[int | None, list[int]] = {}
    for m_i, m in enumerate(tl.marks):
        marks_after.setdefault(m.row, []).append(m_i)

    def put(kind: str, h: float, index: int) -> None:
        nonlocal y
        slots.append(_Slot(kind, y + h / 2, index))
        y += h

    def row(i: int) -> None:
        if i and i % REPEAT_TITLES_EVERY == 0:
            put("titles", TITLES_H, i)  # a long picture names its lanes again
        put("row", ROW_H, i)
        row_y[i] = slots[-1].y
        for m_i in marks_after.get(i, ()):
            put("finding", FINDING_H, m_i)

    for m_i in marks_after.get(None, ()):
        put("finding", FINDING_H, m_i)
    steps = tl.rec.steps
    i = 0
    for s_pos, s in enumerate(steps):
        while i < len(tl.rows) and tl.rows[i].seq < s.first_seq:
            row(i)
            i += 1
        put("step", STEP_H, s_pos)
        while i < len(tl.rows) and tl.rows[i].seq <= s.last_seq:
            row(i)
            i += 1
    while i < len(tl.rows):
        row(i)
        i += 1
    return slots, row_y, y


def _lane_x(li: int) -> float:
    return LEFT + li * LANE_W


def _life_x(li: int) -> float:
    return _lane_x(li) + BAR_AREA + 6


def render_svg(tl: Timeline, ids: str = "") -> str:
    """One timeline; `ids` prefixes the element ids (unique when several share a page)."""
    return _render(tl, ids)[0]


def _render(tl: Timeline, ids: str) -> tuple[str, float, float]:
    slots, row_y, bottom = _layout(tl)
    n_lanes = len(tl.lanes)
    width = LEFT + n_lanes * LANE_W + 12
    height = bottom + END_H
    out: list[str] = []
    w = out.append
    w(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
      f'viewBox="0 0 {width:.0f} {height:.0f}" style="{FONT}" font-size="10">')
    w(f"<title>{esc(tl.rec.title)}</title>")
    w(f"<defs><marker id='{ids}ah' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
      "markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
      "fill='#555'/></marker>"
      f"<marker id='{ids}ahr' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='8' "
      "markerHeight='8' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
      "fill='#d62728'/></marker></defs>")
    w("<style>.t{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}"
      ".s{fill:#fff;font-size:9px;font-weight:bold}.h{font-weight:bold;font-size:12px}"
      "</style>")
    w(f'<rect width="{width:.0f}" height="{height:.0f}" fill="#fff"/>')
    # Lanes: background, title, lifeline.
    body_top = HEADER_H + LEGEND_H
    for li, lane in enumerate(tl.lanes):
        x = _lane_x(li)
        w(f'<g class="lane" data-lane="{esc(lane.key)}">')
        w(f'<rect x="{x + 2:.0f}" y="{HEADER_H - 40}" width="{LANE_W - 4}" '
          f'height="{height - HEADER_H + 40 - 6:.0f}" rx="6" fill="{LANE_FILL[lane.kind]}"/>')
        w(f'<text class="h" x="{x + LANE_W / 2:.0f}" y="{HEADER_H - 22}" '
          f'text-anchor="middle">{esc(clip(lane.title, 30))}</text>')
        if lane.subtitle:
            w(f'<text x="{x + LANE_W / 2:.0f}" y="{HEADER_H - 8}" text-anchor="middle" '
              f'fill="#666">{esc(lane.subtitle)}</text>')
        w(f'<line x1="{_life_x(li):.0f}" y1="{body_top - 6}" x2="{_life_x(li):.0f}" '
          f'y2="{bottom:.0f}" stroke="#bbb" stroke-dasharray="3,3"/>')
        w("</g>")
    _title_and_legend(w, tl, width)
    # Step and finding bands under everything else; their text over the spans.
    texts: list[str] = []
    for slot in slots:
        if slot.kind == "step":
            _step_band(w, texts.append, tl, slot, width)
        elif slot.kind == "finding":
            _finding_band(w, texts.append, tl, slot, width)
        elif slot.kind == "titles":
            for li, lane in enumerate(tl.lanes):
                texts.append(f'<text class="t" x="{_lane_x(li) + LANE_W / 2:.0f}" '
                             f'y="{slot.y + 4:.1f}" text-anchor="middle" fill="#888" '
                             f'font-weight="bold">{esc(clip(lane.title, 30))}</text>')
    _spans(w, tl, row_y, body_top, bottom)
    _arrows(w, tl, row_y, ids)
    for i in range(len(tl.rows)):
        _event(w, tl, i, row_y[i])
    out.extend(texts)
    _end(w, tl, bottom, width)
    w("</svg>")
    return "\n".join(out) + "\n", width, height


def _title_and_legend(w: Out, tl: Timeline, width: float) -> None:
    put = w
    rec = tl.rec
    window = (f"events #{rec.first_seq}–#{rec.last_seq}" if rec.events else "no events")
    put(f'<text class="h" x="10" y="18" font-size="14">{esc(rec.title)}</text>')
    steps = f" · {len(rec.steps)} steps" if rec.steps else ""
    put(f'<text x="10" y="34" fill="#555">{esc(window)}{steps} · {rec.vcpus} vCPUs · '
        f"{len(rec.findings)} findings · time runs down, arrows are causes</text>")
    x = 10.0
    y = HEADER_H + 4
    for kind in ("line", "remote-irr", "irr", "isr", "request", "stuck"):
        name = {"line": "line asserted", "remote-irr": "Remote IRR set",
                "irr": "IRR/PIR pending", "isr": "ISR in service",
                "request": "request pending", "stuck": "never cleared / lost"}[kind]
        put(f'<rect x="{x:.0f}" y="{y}" width="{BAR_W}" height="12" fill="{COLOURS[kind]}"/>')
        put(f'<text x="{x + 14:.0f}" y="{y + 10}">{esc(name)}</text>')
        x += 24 + len(name) * 6.2
    del width


def _step_band(w: Out, text_out: Out, tl: Timeline, slot: _Slot, width: float) -> None:
    s = tl.rec.steps[slot.index]
    top = slot.y - STEP_H / 2
    fill = "#eef0f3"
    verdict = ""
    if s.passed is True:
        verdict = "  ✓ expect passed"
        fill = "#e8f5e9"
    elif s.passed is False:
        failed = [c for c in s.checks if not c.get("ok")]
        verdict = f"  ✗ expect FAILED ({len(failed)} check{'s' if len(failed) != 1 else ''})"
        fill = "#fde2e1"
    if not s.ok:
        fill = "#fff3cd"
    label = f" [{s.label}]" if s.label else ""
    text = f"step {s.index}: {s.text or s.op}{label}{verdict}"
    w(f'<g class="step" data-step="{s.index}"><rect x="4" y="{top + 2:.1f}" '
      f'width="{width - 8:.0f}" height="{STEP_H - 3}" rx="3" fill="{fill}" opacity="0.92"/>')
    if s.passed is False:
        failed = [c for c in s.checks if not c.get("ok")][:2]
        detail = "; ".join(f"{c.get('path')}: want {c.get('expected')} got {c.get('actual')}"
                           for c in failed)
        w(f"<title>{esc(detail)}</title>")
    w("</g>")
    text_out(f'<text class="t" x="10" y="{slot.y + 4:.1f}" font-weight="bold">'
             f"{esc(clip(text, 160))}</text>")


def _finding_band(w: Out, text_out: Out, tl: Timeline, slot: _Slot, width: float) -> None:
    m = tl.marks[slot.index]
    top = slot.y - FINDING_H / 2
    x = _life_x(m.lane)
    w(f'<g class="finding" data-kind="{esc(m.kind)}"><title>{esc(m.text)}</title>')
    w(f'<rect x="4" y="{top + 2:.1f}" width="{width - 8:.0f}" height="{FINDING_H - 4}" '
      'rx="3" fill="#fdecea" stroke="#d62728" stroke-width="0.8"/>')
    w(f'<path d="M{x:.1f},{slot.y - 7:.1f} l7,7 l-7,7 l-7,-7 z" fill="#d62728"/>')
    w("</g>")
    text_out(f'<text class="t" x="10" y="{slot.y + 4:.1f}" fill="#b71c1c" '
             f'font-weight="bold">⚠ {esc(m.kind)}</text>')
    text_out(f'<text class="t" x="{x + 12:.1f}" y="{slot.y + 4:.1f}" fill="#b71c1c">'
             f"{esc(clip(m.text, int((width - x - 20) / 6)))}</text>")


def _span_columns(tl: Timeline) -> dict[tuple[object, ...], int]:
    """A column per signal within its lane, in order of first appearance."""
    cols: dict[tuple[object, ...], int] = {}
    per_lane: dict[int, int] = {}
    for sp in tl.spans:
        if sp.key not in cols:
            cols[sp.key] = per_lane.get(sp.lane, 0)
            per_lane[sp.lane] = cols[sp.key] + 1
    return cols


def _spans(w: Out, tl: Timeline, row_y: list[float], top: float, bottom: float) -> None:
    cols = _span_columns(tl)
    per_col = BAR_AREA // (BAR_W + 2)
    for sp in tl.spans:
        col = cols[sp.key] % per_col
        x = _lane_x(sp.lane) + 6 + col * (BAR_W + 2)
        y0 = row_y[sp.start] if sp.start is not None else top
        y1 = row_y[sp.end] if sp.end is not None else bottom + 8
        colour = COLOURS["stuck"] if sp.stuck else COLOURS[sp.kind]
        name = _span_name(sp)
        state = ("never cleared" if sp.stuck else "still set at the end") if sp.end is None \
            else ""
        w(f'<g class="span" data-kind="{sp.kind}" data-name="{esc(name)}"'
          f' data-open="{"true" if sp.end is None else "false"}"'
          f' data-stuck="{"true" if sp.stuck else "false"}">')
        w(f"<title>{esc(name)}{esc(': ' + state if state else '')}</title>")
        h = max(3.0, y1 - y0)
        dash = ' stroke-dasharray="4,2"' if sp.start is None else ""
        w(f'<rect x="{x:.1f}" y="{y0:.1f}" width="{BAR_W}" height="{h:.1f}" rx="2" '
          f'fill="{colour}" fill-opacity="{0.95 if sp.stuck else 0.8}" stroke="{colour}"'
          f"{dash}/>")
        if h > len(name) * 5.8 + 8:
            w(f'<text class="s" transform="translate({x + 3.2:.1f},{y0 + 5:.1f}) rotate(90)">'
              f"{esc(name)}</text>")
        if sp.end is None:
            w(f'<path d="M{x - 2:.1f},{bottom + 8:.1f} l{BAR_W / 2 + 2:.1f},6 '
              f'l{BAR_W / 2 + 2:.1f},-6 z" fill="{colour}"/>')
        w("</g>")


def _span_name(sp: Span) -> str:
    who = f"{sp.actor} " if sp.kind in ("irr", "isr", "request") else ""
    return f"{who}{SPAN_NAMES[sp.kind]} {sp.name}"


def _arrows(w: Out, tl: Timeline, row_y: list[float], ids: str) -> None:
    w('<g class="arrows" fill="none">')
    for a in tl.arrows:
        src, dst = tl.rows[a.src], tl.rows[a.dst]
        x0, y0 = _life_x(src.lane), row_y[a.src]
        x1, y1 = _life_x(dst.lane), row_y[a.dst]
        lost = dst.lost and src.lost
        colour = "#d62728" if lost else "#555"
        marker = f"{ids}ahr" if lost else f"{ids}ah"
        if src.lane == dst.lane:
            if a.dst == a.src + 1 and not lost:
                continue  # the next row on the same lifeline: the order says it
            bulge = 10 + min(20.0, (y1 - y0) / 12)
            w(f'<path d="M{x0 + 3:.1f},{y0:.1f} C{x0 + bulge:.1f},{y0:.1f} '
              f'{x0 + bulge:.1f},{y1:.1f} {x1 + 4:.1f},{y1:.1f}" stroke="{colour}" '
              f'stroke-width="0.8" stroke-opacity="0.6" marker-end="url(#{marker})"/>')
            continue
        if x1 > x0:
            d = f"M{x0:.1f},{y0:.1f} V{y1:.1f} H{x1 - 4:.1f}"
        else:  # above the row, clear of the label to the right of the target
            d = f"M{x0:.1f},{y0:.1f} V{y1 - 7:.1f} H{x1 + 9:.1f} L{x1 + 3:.1f},{y1 - 2:.1f}"
        w(f'<path d="{d}" '
          f'stroke="{colour}" stroke-width="{1.4 if lost else 0.9}" '
          f'marker-end="url(#{marker})"/>')
    w("</g>")


def _event(w: Out, tl: Timeline, i: int, y: float) -> None:
    row = tl.rows[i]
    x = _life_x(row.lane)
    lane = tl.lanes[row.lane]
    label = row.label
    if lane.kind in ("group", "vmm", "other") and not row.merged:
        label = f"{row.actor}: {label}"
    w(f'<g class="event" data-seq="{row.seq}" data-kind="{esc(row.kind)}">'
      f"<title>{esc(_tooltip(row))}</title>")
    w(f'<text x="{LEFT - 8}" y="{y + 3.5:.1f}" text-anchor="end" fill="#888">#{row.seq}</text>')
    if row.lost:
        w(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="#d62728"/>'
          f'<path d="M{x - 3:.1f},{y - 3:.1f} l6,6 m0,-6 l-6,6" stroke="#fff" '
          'stroke-width="1.6"/>')
        colour = ' fill="#b71c1c" font-weight="bold"'
    else:
        fill = "#333" if row.cause is None else "#777"
        w(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}"/>')
        colour = ' font-weight="bold"' if row.cause is None else ""
    w(f'<text class="t" x="{x + 9:.1f}" y="{y + 3.5:.1f}"{colour}>'
      f"{esc(clip(label, LABEL_CHARS))}</text></g>")


def _tooltip(row: Row) -> str:
    if row.merged:
        return "\n".join(f"#{q} {a} {k}" for q, a, k in row.merged[:40]) + (
            f"\n… {len(row.merged) - 40} more" if len(row.merged) > 40 else "")
    cause = f" (cause #{row.cause})" if row.cause is not None else ""
    return f"#{row.seq} {row.actor} {row.kind} {row.fields}{cause}"


def _end(w: Out, tl: Timeline, bottom: float, width: float) -> None:
    still = [sp for sp in tl.spans if sp.end is None and sp.kind != "request"]
    stuck = [sp for sp in still if sp.stuck]
    text = "end of log"
    if stuck:
        text += " — never cleared: " + ", ".join(_span_name(sp) for sp in stuck)
    elif still:
        text += " — still set: " + ", ".join(_span_name(sp) for sp in still[:6])
    colour = "#b71c1c" if stuck else "#555"
    w(f'<text x="10" y="{bottom + END_H - 6:.0f}" fill="{colour}" font-weight="bold">'
      f"{esc(clip(text, int(width / 6)))}</text>")


def render_svgs(timelines: list[Timeline]) -> str:
    """Several timelines (a run's variants) stacked in one SVG, 24 px apart."""
    width = height = 0.0
    placed: list[str] = []
    for i, tl in enumerate(timelines):
        part, w, h = _render(tl, f"t{i}-")
        placed.append(part.replace("<svg ", f'<svg x="0" y="{height:.0f}" ', 1))
        width = max(width, w)
        height += h + 24
    height = max(0.0, height - 24)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">\n'
            + "".join(placed) + "</svg>\n")
