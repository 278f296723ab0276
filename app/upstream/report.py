"""Text tables of the rig's report (kernel x scenario, random counts, measured flags) and of a
probe result. Pure functions over the JSON the rig collects."""

from __future__ import annotations

from typing import Any

VERDICT_MARK = {"has": "yes", "lacks": "NO", "not-distinguished": "?", "neither": "!"}


def cell(c: dict[str, Any]) -> str:
    """One variant's table cell: agree, or where it first differed."""
    if c.get("skipped"):
        return "skipped"
    if c["agree"]:
        return "agree" + (f" (to step {c['stopped']['index']})" if c.get("stopped") else "")
    fd = c["first_difference"]
    paths = sorted({d["path"].split(".")[-1] for d in fd["differences"]})
    return f"differ@{fd['index']} {fd['op']}: {','.join(paths)}"


def library_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per scenario variant, one column per kernel."""
    kernels = report["kernels"]
    header = ["scenario / variant", "irqchip", *[k["version"] for k in kernels]]
    keys: list[tuple[str, str, str]] = []
    cells: dict[tuple[str, str, str, int], str] = {}
    for i, k in enumerate(kernels):
        for row in (k.get("result") or {}).get("library") or []:
            if row.get("error"):
                key = (row["scenario"], "", "")
                if key not in keys:
                    keys.append(key)
                cells[(*key, i)] = "error: " + row["error"][:40]
                continue
            for c in row["variants"]:
                key = (row["scenario"], c["variant"], c["irqchip"])
                if key not in keys:
                    keys.append(key)
                cells[(*key, i)] = cell(c)
    rows = [[f"{s} / {v}" if v else s, irq, *[cells.get((s, v, irq, i), "-")
                                            for i in range(len(kernels))]]
            for s, v, irq in keys]
    return header, rows


def counterexample_cell(r: dict[str, Any]) -> str:
    """One counterexample on one kernel: not runnable / agree / differ@STEP, and whether the
    violation (Remote IRR stuck) showed on the kernel."""
    status = r.get("status")
    if status == "not-runnable":
        return "not runnable here: needs APICv"
    if status == "error":
        return "error: " + str(r.get("reason"))[:40]
    mark = "*" if r.get("predicted_violation") else ""
    if status == "differ":
        fd = r["diff"]["first_difference"]
        paths = sorted({d["path"].split(".")[-1] for d in fd["differences"]})
        what = f"differ@{fd['index']} {fd['op']}: {','.join(paths)}"
    elif status == "stopped":
        what = f"agree to step {r['diff']['stopped']['index']} (then unsupported)"
    else:
        what = "agree"
    rep = r.get("reproduces")
    pins = ",".join(map(str, (r.get("kernel") or {}).get("stuck_pins") or []))
    if rep:
        return f"{mark}{what}; stuck {pins}"
    if rep is False:
        return f"{mark}{what}; not stuck"
    if status == "stopped":
        return f"{mark}{what}"
    # The property itself leaves nothing the VMM or KVM_GET_LAPIC shows (a stale handled-
    # vector bit, a second delivery): say so, and what Remote IRR did anyway.
    return (f"{mark}{what}; {r.get('property')} not observable"
            + (f", Remote IRR stuck {pins}" if pins else ""))


def counterexample_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per distinct counterexample, one column per kernel."""
    kernels = report["kernels"]
    profiles = [((k.get("result") or {}).get("counterexample_profile") or {}).get("profile", "-")
                for k in kernels]
    header = ["counterexample (found under)", "property",
              *[f"{k['version']} ({p})" for k, p in zip(kernels, profiles, strict=True)]]
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, int], str] = {}
    for i, k in enumerate(kernels):
        for r in (k.get("result") or {}).get("counterexamples") or []:
            key = (f"{r['exploration']} ({','.join(r.get('found_under') or [])})",
                   str(r.get("property", "")))
            if key not in keys:
                keys.append(key)
            cells[(key[0], i)] = counterexample_cell(r)
    return header, [[name, prop, *[cells.get((name, i), "-") for i in range(len(kernels))]]
                    for name, prop in keys]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths]),
                      *[fmt.format(*r) for r in rows]])


def render_report(report: dict[str, Any]) -> str:
    out = []
    kernels = report["kernels"]
    for k in kernels:
        res = k.get("result") or {}
        facts = res.get("facts") or {}
        boots = ", ".join(f"{a['seconds']:.0f} s {a['rig_failure'] or 'ok'}"
                          for a in k["attempts"])
        out.append(f"{k['version']} ({k['abi']}, {k['package_version']}): profile "
                   f"{res.get('profile', '-')}, kvm_amd {facts.get('kvm_amd_parameters', {})}, "
                   f"boots: {boots}, kit {k['kit_seconds']:.0f} s "
                   f"{k['kit_bytes'] / 2**20:.0f} MiB, guest parts {res.get('parts', {})}"
                   + (f"  RIG FAILURE: {k['failure']}" if k["failure"] else ""))
    header, rows = library_rows(report)
    if rows:
        out += ["", table(header, rows)]
        agree = [sum(1 for r in rows if r[2 + i].startswith("agree")) for i in range(len(kernels))]
        out.append("agree: " + ", ".join(f"{k['version']} {a}/{len(rows)}"
                                           for k, a in zip(kernels, agree, strict=True)))
        left = unexplained(report)
        out.append("differences not explained by a pinned flag or APICv: "
                   + ("none" if not left else "; ".join(" / ".join(x) for x in left)))
    rnd = []
    for k in kernels:
        for mode, r in ((k.get("result") or {}).get("random") or {}).items():
            rnd.append([k["version"], mode, f"{r['agree']}/{r['sequences']}",
                        f"{r['seconds']:.0f} s",
                        ", ".join(sorted({f"{f.get('op')}@{f.get('step')}"
                                          for f in r["failures"]})[:6])])
    if rnd:
        out += ["", table(["kernel", "irqchip", "random agree", "time", "first differences"],
                          rnd)]
    ce_header, ce_rows = counterexample_rows(report)
    if ce_rows:
        out += ["", "explorer counterexamples replayed (* found under the kernel's preset; "
                    "stuck: Remote IRR set with nothing in service at the end)",
                table(ce_header, ce_rows)]
    probes = [(k, (k.get("result") or {}).get("probe")) for k in kernels]
    if any(p for _, p in probes):
        out += ["", render_flag_matrix(probes)]
    out += ["", f"total {report['seconds']:.0f} s, cache {report['cache']} "
                f"{report['disk_bytes'] / 2**20:.0f} MiB, runs in {report['runs_dir']}"]
    return "\n".join(out)


def render_flag_matrix(probes: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> str:
    """flag x kernel: yes (has the fix) / NO / ? (not distinguished) / ! (neither agreed)."""
    flags: list[tuple[str, str]] = []
    for _, p in probes:
        for r in (p or {}).get("probes", ()):
            if (r["flag"], r["commit"] or "") not in flags:
                flags.append((r["flag"], r["commit"] or ""))
    rows = []
    for flag, commit in flags:
        row = [flag, commit[:12]]
        for _, p in probes:
            v = next((r["verdict"] for r in (p or {}).get("probes", ()) if r["flag"] == flag),
                     None)
            row.append(VERDICT_MARK.get(v or "", "-"))
        rows.append(row)
    rows.append(["matching presets", "", *[",".join((p or {}).get("matching_presets", []))
                                           or "-" for _, p in probes]])
    return table(["flag (measured)", "commit", *[k["version"] for k, _ in probes]], rows)


def render_probe(result: dict[str, Any]) -> str:
    rows = [[r["flag"], (r["commit"] or "")[:12], r["scenario"], r["irqchip"], r["verdict"],
             r["note"]] for r in result["probes"]]
    out = [f"kernel {result['release']}; other flags from {result['base_profile']}", "",
           table(["flag", "commit", "scenario", "irqchip", "verdict", "why"], rows), "",
           f"matching presets: {', '.join(result['matching_presets']) or 'none'}",
           f"release preset {result['release_preset']}: "
           + ("matches" if not result["release_preset_overrides"]
              else f"needs overrides {result['release_preset_overrides']}"),
           f"recommended: --profile {result['recommended']['profile']}"
           + (f" with overrides {result['recommended']['overrides']}"
              if result["recommended"]["overrides"] else "")]
    return "\n".join(out)


def explain(scenario: str, variant: str, profile: str) -> str | None:
    """Why a library variant can differ from a kernel for reasons known in advance, or None:
    its `overrides` pin a KVM flag to another value than the kernel's preset (the variant
    models another kernel), or it models APICv (TCG's SVM emulation has neither AVIC nor
    APICv, so kvm_amd runs a software LAPIC)."""
    from app import scenarios as library
    from app.engine import flags as F
    from app.engine.scenario import variants

    doc = library.get(scenario)
    if doc is None:
        return None
    cfg = next((c for n, c, _ in variants(doc) if n == variant), None)
    if cfg is None:
        return None
    if cfg.get("apicv"):
        return "models APICv, which the emulated CPU lacks"
    preset = F.PRESETS[profile].flags if profile in F.PRESETS else None
    pins = {k: v for k, v in (cfg.get("overrides") or {}).items()
            if k in F.FLAGS and F.FLAGS[k].component == "kvm" and preset is not None
            and getattr(preset, k) != v}
    if pins:
        return "pins another kernel's " + ", ".join(f"{k}={v}" for k, v in sorted(pins.items()))
    return None


def unexplained(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(kernel, scenario, variant, cell) of every library difference `explain` does not
    account for."""
    out = []
    for k in report["kernels"]:
        res = k.get("result") or {}
        for row in res.get("library") or []:
            if row.get("error"):
                out.append((k["version"], row["scenario"], "", row["error"]))
                continue
            for c in row["variants"]:
                if not c["agree"] and explain(row["scenario"], c["variant"],
                                              res.get("profile", "")) is None:
                    out.append((k["version"], row["scenario"], c["variant"], cell(c)))
    return out
