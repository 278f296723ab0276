"""Print the scenario library as a markdown table: what each scenario shows, the commits it
concerns, and the outcome of each variant (pass = the variant met its own expectations;
findings = the invariant violations the engine reported in it)."""

from __future__ import annotations

from app import scenarios
from app.engine.scenario import run_scenario


def main() -> None:
    print("| scenario | commits | variants: expectations (findings) |")
    print("|---|---|---|")
    for name in scenarios.names():
        doc = scenarios.get(name)
        assert doc is not None
        result = run_scenario(doc)
        cells = []
        for v in result["variants"]:
            kinds = sorted({f["kind"] for f in v["findings"]})
            found = f" ({', '.join(kinds)})" if kinds else ""
            cells.append(f"{v['name']}: {'pass' if v['passed'] else '**FAIL**'}{found}")
        print(f"| `{name}` | {', '.join(doc.get('commits', []))} | {'<br>'.join(cells)} |")


if __name__ == "__main__":
    main()
