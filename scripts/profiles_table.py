"""Print the preset x flag table (markdown) that README.md and docs/kernel-history.md show."""

from __future__ import annotations

from app.engine.flags import FLAG_NAMES, FLAGS, PRESETS


def main() -> None:
    names = list(PRESETS)
    print("| flag | commit | first release | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for flag in FLAG_NAMES:
        info = FLAGS[flag]
        cells = ["✓" if getattr(PRESETS[p].flags, flag) else "·" for p in names]
        print(f"| `{flag}` | {info.commit or '—'} | {info.release or '—'} | " + " | ".join(cells)
              + " |")


if __name__ == "__main__":
    main()
