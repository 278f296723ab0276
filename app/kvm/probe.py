"""`irqlab probe`: which behaviour flags does this machine's KVM have?

A kernel's release number does not decide its behaviour: distribution kernels carry stable
backports. So each flag that a guest or a VMM can observe is measured: one library scenario
variant in which the flag changes what KVM reports is run through the differential harness
(app.kvm.scenario_diff) twice, on the engine with the flag on and with it off (every other
flag as in the base preset), each time against the real kernel. Exactly one agreeing says
which way the kernel behaves; both agreeing means the scenario does not tell the two apart on
this machine (e.g. an APICv-only flag without APICv); neither agreeing means something else
differs, and the first differences are reported.

The measured flags are then compared with every preset: the presets that agree on every
measured flag, and for the release's own preset the overrides that would make it match.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from app import scenarios as library
from app.engine import flags as F
from app.engine.scenario import variants

from .differential import host_profile, preset_for_release
from .scenario_diff import diff_scenario


@dataclass(frozen=True)
class Probe:
    flag: str
    scenario: str
    variant: int  # index of the library variant whose steps show the flag
    note: str = ""


# One discriminating scenario per flag that can be observed from the guest or the VMM. Flags
# left out have no library scenario that shows them through what KVM reports (handled-vector
# bitmaps and scan requests are internal: eoi_exit_bitmap, scan_keeps_pending_edge,
# targeted_scan_requests, scan_old_dest_with_new_mode, notifiers_with_directed_eoi) or are
# QEMU's (qemu_routes_before_service: irqlab's VMM plays it on both sides).
PROBES: tuple[Probe, ...] = (
    Probe("scan_keeps_pending_level", "race1-kernel", 0,
          "0fc5a36dd6b3: in-kernel IOAPIC, the vector retargeted while in service"),
    Probe("split_scan_keeps_pending_level", "seed-race-split", 0,
          "fceb3a36c29a: split irqchip, the seed race"),
    Probe("rescan_after_stale_eoi", "stale-handled-vector", 0,
          "87e4951e250b: the stale handled-vector bit after the EOI"),
    Probe("split_scan_syncs_pir", "race2b-posted", 0,
          "f3ced000a2df: needs posted interrupts (APICv); without them it cannot show"),
    Probe("rte_edge_clears_remote_irr", "edge-switch-clears-remote-irr", 1,
          "a8bfec293052: switching an RTE to edge clears Remote IRR"),
    Probe("rte_preserves_readonly_bits", "readonly-bits-preserved", 0,
          "b200dded0a69: RTE writes keep Remote IRR and delivery status"),
    Probe("service_refuses_remote_irr", "no-redelivery-while-remote-irr", 0,
          "da3fe7bdfada: no re-delivery while Remote IRR is set"),
    Probe("unmask_resamples", "unmask-resamples", 0,
          "fef8f2b90edb: unmasking a level pin with the line high re-delivers"),
    Probe("hide_directed_eoi_with_kernel_ioapic", "directed-eoi-kernel-ioapic", 0,
          "0bcc3fb95b97: no directed EOI (SVR bit 12) with the in-kernel IOAPIC"),
    Probe("lapic_auto_eoi", "seed-race-split", 0,
          "kvm_pvm's implicit EOI on acknowledge (not upstream)"),
)


def probe_document(p: Probe, base: str, value: bool) -> dict[str, Any]:
    """Variant `p.variant` of the scenario alone, under preset `base` with `p.flag` = value
    (the variant's own profile and overrides are replaced)."""
    doc = library.get(p.scenario)
    if doc is None:
        raise KeyError(p.scenario)
    name, cfg, _extra = list(variants(doc))[p.variant]
    one = {k: v for k, v in doc.items() if k != "matrix"}
    vm = {k: v for k, v in cfg.items() if k not in ("profile", "overrides")}
    one["matrix"] = [{"name": f"{name} [{p.flag}={value}]",
                      "vm": {**vm, "profile": base, "overrides": {p.flag: value}}}]
    return one


def _agrees(variant: dict[str, Any]) -> bool:
    return variant["first_difference"] is None and variant["skipped"] is None


def _first(variant: dict[str, Any]) -> dict[str, Any] | None:
    fd = variant["first_difference"]
    if fd is None:
        return None
    step = next(s for s in variant["steps"] if s["index"] == fd["index"])
    return {"index": fd["index"], "op": fd["op"], "differences": step["differences"][:6]}


def run_probe(p: Probe, base: str, device: str = "/dev/kvm") -> dict[str, Any]:
    t0 = time.monotonic()
    runs = {}
    for value in (True, False):
        (v,) = diff_scenario(probe_document(p, base, value), device)["variants"]
        runs[value] = v
    on, off = _agrees(runs[True]), _agrees(runs[False])
    verdict = ("has" if on and not off else "lacks" if off and not on
               else "not-distinguished" if on and off else "neither")
    info = F.FLAGS[p.flag]
    out: dict[str, Any] = {
        "flag": p.flag, "commit": info.commit, "scenario": p.scenario,
        "variant": list(variants(library.get(p.scenario) or {}))[p.variant][0],
        "irqchip": runs[True]["irqchip"], "verdict": verdict,
        "value": True if verdict == "has" else False if verdict == "lacks" else None,
        "note": p.note, "seconds": round(time.monotonic() - t0, 2)}
    if verdict == "neither":
        out["first_difference"] = {"on": _first(runs[True]), "off": _first(runs[False])}
    stopped = runs[True]["stopped"] or runs[False]["stopped"]
    if stopped:
        out["stopped"] = stopped
    return out


def matching_presets(measured: dict[str, bool]) -> list[str]:
    """Presets whose flags agree with every measured flag."""
    return [name for name, preset in F.PRESETS.items()
            if all(getattr(preset.flags, k) == v for k, v in measured.items())]


def overrides_for(preset: str, measured: dict[str, bool]) -> dict[str, bool]:
    """The overrides that make `preset` agree with the measured flags."""
    flags = F.PRESETS[preset].flags
    return {k: v for k, v in measured.items() if getattr(flags, k) != v}


def probe(base_profile: str | None = None, device: str = "/dev/kvm",
          release: str | None = None, probes: tuple[Probe, ...] = PROBES) -> dict[str, Any]:
    """Measure every probe's flag on `device`; `base_profile` (default: the release's preset,
    as host_profile picks it) gives the other flags' values."""
    release = release or os.uname().release
    base = base_profile or host_profile(release=release)
    results = [run_probe(p, base, device) for p in probes]
    measured = {r["flag"]: r["value"] for r in results if r["value"] is not None}
    by_release = preset_for_release(release)
    matches = matching_presets(measured)
    return {
        "release": release, "base_profile": base, "release_preset": by_release,
        "probes": results, "measured": measured, "matching_presets": matches,
        "release_preset_overrides": overrides_for(by_release, measured),
        "recommended": {"profile": by_release if by_release in matches
                        else (matches[-1] if matches else by_release),
                        "overrides": {} if by_release in matches or matches
                        else overrides_for(by_release, measured)},
    }


def measured_host_profile(device: str = "/dev/kvm") -> tuple[str, dict[str, bool]]:
    """host_profile, measured instead of read off the release number: the preset (and
    overrides) `irqlab probe` recommends for this machine's KVM. On a distribution kernel with
    stable backports this is the one to diff against; host_profile() stays the cheap default."""
    rec = probe(device=device)["recommended"]
    return str(rec["profile"]), dict(rec["overrides"])
