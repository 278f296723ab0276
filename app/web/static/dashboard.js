// irqlab live dashboard: draws what /ui/stream sends (see app/web/dashboard.py).
"use strict";

const body = document.body;
const vmId = body.dataset.vm;
const maxEvents = Number(body.dataset.events) || 200;
const REGS = ["irr", "isr", "tmr", "handled"];
const events = new Map(); // seq -> event, the last maxEvents

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function hex(n) {
  return "0x" + Number(n).toString(16);
}

function bits(hexString) {
  // A 256-bit bitmap "0x…" -> Set of vectors.
  const out = new Set();
  if (!hexString) return out;
  let v = BigInt(hexString);
  for (let i = 0; v > 0n; i++, v >>= 1n) if (v & 1n) out.add(i);
  return out;
}

function renderVms(vms) {
  const ul = document.getElementById("vms");
  ul.replaceChildren();
  if (!vms.length) ul.append(el("li", {}, "No VM yet: POST /v1/vms"));
  for (const v of vms) {
    const li = el("li");
    const a = el("a", { href: "/ui?vm=" + encodeURIComponent(v.id) }, v.id);
    if (v.id === vmId) a.setAttribute("aria-current", "page");
    li.append(a, " ", el("small", {}, `${v.irqchip} ${v.profile} ${v.vcpus} vCPU`));
    ul.append(li);
  }
  if (!vmId && vms.length) location.search = "?vm=" + encodeURIComponent(vms[0].id);
}

function renderIoapic(ioapic) {
  const tbody = document.querySelector("#ioapic tbody");
  const rows = [];
  for (const p of ioapic.pins) {
    const tr = el("tr", { "data-pin": p.pin });
    if (p.remote_irr) tr.classList.add("remote-irr");
    if (p.masked) tr.classList.add("masked");
    const cells = [p.pin, p.vector ? hex(p.vector) : "0", p.delivery_mode, p.dest_mode,
      p.dest, p.trigger, p.polarity, p.masked ? "yes" : "", p.line,
      p.remote_irr ? "SET" : "", p.irr ? "1" : "", p.delivery_status ? "pending" : "",
      p.eoi_count || ""];
    cells.forEach((c, i) => {
      const td = el("td", {}, String(c));
      if (i === 9) td.className = "rirr";
      if (i === 8 && p.line) td.className = "line-high";
      tr.append(td);
    });
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

function grid(vcpu, reg) {
  const g = el("div", { class: "grid " + reg, id: `v${vcpu}-${reg}`, role: "img",
    "aria-label": `vCPU ${vcpu} ${reg}` });
  for (let vec = 0; vec < 256; vec++) {
    g.append(el("i", { "data-vec": vec, title: `${reg} vector ${hex(vec)} (${vec})` }));
  }
  return g;
}

function vcpuCard(n) {
  let card = document.getElementById("vcpu" + n);
  if (card) return card;
  card = el("article", { class: "vcpu", id: "vcpu" + n });
  card.append(el("h3", {}, "vCPU " + n), el("p", { class: "regs" }));
  const grids = el("div", { class: "grids" });
  for (const reg of REGS) {
    const box = el("figure");
    box.append(el("figcaption", {}, reg === "handled" ? "handled vectors" : reg.toUpperCase()),
      grid(n, reg));
    grids.append(box);
  }
  card.append(grids, el("p", { class: "pending" }));
  document.getElementById("vcpus").append(card);
  return card;
}

function renderVcpus(vcpus, total) {
  const keep = new Set();
  for (const v of vcpus) {
    const card = vcpuCard(v.vcpu);
    keep.add(card.id);
    card.querySelector(".regs").textContent =
      `APIC ID ${v.apic_id}  PPR ${hex(v.ppr)}  TPR ${hex(v.tpr)}  ` +
      (v.in_guest ? "in guest" : "outside the guest");
    for (const reg of REGS) {
      const on = bits(v[reg]);
      for (const cell of card.querySelectorAll(`#v${v.vcpu}-${reg} i`)) {
        cell.classList.toggle("on", on.has(Number(cell.dataset.vec)));
      }
    }
    const pending = v.pending.map((r) => (typeof r === "string" ? r : JSON.stringify(r)));
    card.querySelector(".pending").textContent =
      "pending requests: " + (pending.length ? pending.join(", ") : "none");
  }
  for (const card of document.querySelectorAll("article.vcpu")) {
    if (!keep.has(card.id)) card.remove();
  }
  const more = total > vcpus.length ? ` (first ${vcpus.length} of ${total} shown)` : "";
  document.getElementById("vcpus").dataset.more = more;
}

function fieldsText(fields) {
  return Object.entries(fields || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
}

function eventRow(e) {
  const tr = el("tr", { "data-seq": e.seq, tabindex: "0" });
  tr.append(el("td", {}, e.seq), el("td", {}, e.actor), el("td", {}, e.kind),
    el("td", {}, fieldsText(e.fields)), el("td", {}, e.cause ?? ""));
  tr.addEventListener("click", () => showChain(e.seq));
  tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") showChain(e.seq); });
  return tr;
}

function addEvents(list, reset) {
  const tbody = document.querySelector("#events tbody");
  if (reset) { events.clear(); tbody.replaceChildren(); }
  for (const e of list) {
    if (events.has(e.seq)) continue;
    events.set(e.seq, e);
    tbody.prepend(eventRow(e)); // newest first
  }
  while (events.size > maxEvents) {
    const oldest = Math.min(...events.keys());
    events.delete(oldest);
    const row = tbody.querySelector(`tr[data-seq="${oldest}"]`);
    if (row) row.remove();
  }
}

async function fetchEvent(seq) {
  const r = await fetch(`/v1/vms/${encodeURIComponent(vmId)}/events?after=${seq - 1}&limit=1`);
  if (!r.ok) return null;
  const page = await r.json();
  return page.events.length && page.events[0].seq === seq ? page.events[0] : null;
}

async function showChain(seq) {
  // The event, then its cause, its cause's cause… back to the first event of the chain.
  const chain = [];
  for (let s = seq; s !== null && s !== undefined && chain.length < 1000;) {
    const e = events.get(s) || (await fetchEvent(s));
    if (!e) break;
    chain.push(e);
    s = e.cause;
  }
  const box = document.getElementById("chain");
  const ol = box.querySelector("ol");
  ol.replaceChildren(...chain.reverse().map((e) =>
    el("li", { "data-seq": e.seq }, `${e.seq} ${e.actor} ${e.kind} ${fieldsText(e.fields)}`)));
  box.hidden = false;
  for (const row of document.querySelectorAll("#events tr.selected")) {
    row.classList.remove("selected");
  }
  const ids = new Set(chain.map((e) => e.seq));
  for (const row of document.querySelectorAll("#events tbody tr")) {
    row.classList.toggle("selected", ids.has(Number(row.dataset.seq)));
  }
}

function renderVm(v) {
  const title = document.getElementById("vm-title");
  if (v.gone) {
    title.textContent = `${v.id} (deleted)`;
    document.getElementById("vm-summary").textContent = "";
    return;
  }
  const s = v.summary;
  title.textContent = v.id;
  document.getElementById("vm-summary").textContent =
    `${s.backend} backend, ${s.irqchip} irqchip, profile ${s.profile}, ${v.vcpus_total} vCPUs, ` +
    `time ${s.time}, last event ${v.last_seq}`;
  renderIoapic(v.ioapic);
  renderVcpus(v.vcpus, v.vcpus_total);
  addEvents(v.events, v.reset);
  const img = document.querySelector("#timeline-svg img");
  if (img) {
    // The same window as the event list; `v` changes the URL whenever the log grows.
    const after = Math.max(0, v.last_seq - maxEvents);
    img.src = img.dataset.src.replace("{vm}", encodeURIComponent(v.id)) +
      `?after=${after}&v=${v.last_seq}`;
  }
  body.dataset.lastSeq = v.last_seq;
}

function connect() {
  const status = document.getElementById("status");
  const url = "/ui/stream" + (vmId ? "?vm=" + encodeURIComponent(vmId) : "");
  const source = new EventSource(url);
  source.addEventListener("open", () => { status.textContent = "live"; status.className = "live"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = ""; });
  source.addEventListener("vms", (m) => renderVms(JSON.parse(m.data).vms));
  source.addEventListener("vm", (m) => renderVm(JSON.parse(m.data)));
}

connect();
