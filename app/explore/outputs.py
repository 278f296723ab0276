"""What `irqlab explore` writes besides its tables: a JUnit file (--junit) and a timeline SVG
of each counterexample (--svg).

JUnit: one test suite per exploration, one test case per profile. `verified` passes; a
`violation` is a failure whose body is the counterexample (its steps, then the scenario that
`irqlab run` replays); a `bounded` run is an *error*, not a skip: the search ran and stopped
at a budget without a verdict, so the property is unchecked for that profile, and a CI that
shows skips as green would read it as fine (the exit status, 3, says the same).

SVG: the counterexample's scenario replayed step by step on a fresh VM with its event log on,
each step a band of the timeline (app.pictures.from_vm_steps), setup steps included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.reporting.junit import Outcome, TestCase, TestSuite, write_junit


def junit_suites(results: list[dict[str, Any]]) -> list[TestSuite]:
    suites: dict[str, TestSuite] = {}
    for r in results:
        name = r["exploration"]
        suite = suites.setdefault(name, TestSuite(name=f"explore {name}"))
        stats = r.get("stats") or {}
        case = TestCase(name=f"{name} under {r['profile']}", classname=f"explore.{name}",
                        time=float(stats.get("seconds", 0.0)))
        summary = (f"verdict {r['verdict']}; {stats.get('states', 0)} states, "
                   f"{stats.get('transitions', 0)} transitions, max depth "
                   f"{stats.get('max_depth', 0)}")
        if r.get("expected"):
            summary += f"; the document expects {r['expected']}"
        case.system_out = summary + "\n"
        if r["verdict"] == "violation":
            cx = r["counterexample"] or {}
            case.failure = Outcome(
                message=f"{r['property']} violated after {cx.get('length', '?')} steps",
                body=counterexample_text(r), type=str(r["property"]))
        elif r["verdict"] == "bounded":
            case.error = Outcome(
                message=f"bounded: a budget stopped the search after {stats.get('states', 0)} "
                        "states; no verdict", body=json.dumps(stats, indent=1), type="bounded")
        suite.cases.append(case)
    return list(suites.values())


def counterexample_text(r: dict[str, Any]) -> str:
    import yaml

    cx = r["counterexample"] or {}
    lines = [f"{r['exploration']} under {r['profile']}: {r['property']}"
             + (f" ({r['property_description']})" if r.get("property_description") else ""),
             ""]
    lines += [f"{row['index'] + 1:>3}  {row['actor']:<12} {row['action']}"
              for row in cx.get("steps", [])]
    lines += ["", "# the scenario (irqlab run replays it):",
              yaml.safe_dump(cx.get("scenario"), sort_keys=False)]
    return "\n".join(lines)


def write_explore_junit(path: str, results: list[dict[str, Any]]) -> None:
    write_junit(path, junit_suites(results), name="irqlab explore")


def counterexample_svg(r: dict[str, Any]) -> str:
    """The counterexample's timeline: its scenario replayed step by step."""
    from app.engine.scenario import Runner
    from app.pictures import from_vm_steps, timeline_svg

    scenario = r["counterexample"]["scenario"]
    runner = Runner({"handlers": scenario.get("handlers") or {}},
                    {**scenario["vm"], "event_log": True}, {})
    marks: list[tuple[str, int]] = []
    for i, step in enumerate(scenario["steps"]):
        if step.get("op") == "expect":
            continue
        runner.step_index = i
        runner.run_step(step, f"steps[{i}]")
        text = step.get("label") or "setup: " + ", ".join(
            f"{k}={v}" for k, v in step.items() if k != "label")
        marks.append((str(text), runner.vm.log.next_seq - 1))
    title = f"{r['exploration']} under {r['profile']}: {r['property']}"
    return timeline_svg(from_vm_steps(runner.vm, title, marks))


def write_counterexample_svg(directory: str, r: dict[str, Any]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{r['exploration']}-{r['profile']}.svg"
    path.write_text(counterexample_svg(r), encoding="utf-8")
    return path
