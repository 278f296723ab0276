"""A fingerprint of the engine's behaviour: every library scenario's full result (event logs
included) and a long operation script under each irqchip mode, profile and APICv setting,
as canonical JSON. Run as a script it prints that JSON; test_native_equivalence runs it in a
pure-Python process and compares with the compiled engine in its own process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.engine.scenario import run_scenario
from app.engine.vm import Vm, VmConfig

LIBRARY = Path(__file__).resolve().parents[2] / "app" / "scenarios"


def fingerprint() -> str:
    import yaml

    from tests.engine.test_determinism import SCRIPT
    from tests.engine.test_properties import run

    out: dict[str, Any] = {}
    for path in sorted(LIBRARY.glob("*.yaml")):
        out[path.name] = run_scenario(yaml.safe_load(path.read_text()))
    for profile in ("linux-4.14", "linux-6.1", "linux-latest", "hardware"):
        for irqchip in ("kernel", "split"):
            for apicv in (False, True):
                vm = Vm(VmConfig(vcpus=2, irqchip=irqchip, apicv=apicv, profile=profile))
                run(vm, SCRIPT)
                out[f"script/{profile}/{irqchip}/apicv={apicv}"] = {
                    "events": vm.log.since(0),
                    "snapshot": vm.snapshot(),
                }
    return json.dumps(out, sort_keys=True, default=repr)


if __name__ == "__main__":
    print(fingerprint())
