"""The campaign jobs' worker for the HTTP service (POST /v1/campaigns): one campaign in its own
process under app.work.jobs.JobManager, here or on a Ray cluster, sending progress (sequences
done, divergences so far) and, at the end, what `irqlab campaign --json` prints plus the saved
divergences' scenario documents."""

from __future__ import annotations

import time
from typing import Any

from .driver import CampaignSpec, run_local
from .runner import SequenceOutcome

PROGRESS_EVERY = 0.2  # seconds between two progress messages (the last one always goes)


class OverBudget(Exception):
    """The campaign ran past its time budget (checked between chunks)."""


def progress_view(done: int, total: int, divergences: int, seconds: float) -> dict[str, Any]:
    return {"sequences": done, "total": total, "divergences": divergences,
            "seconds": round(seconds, 3),
            "sequences_per_s": round(done / seconds) if seconds > 0 else 0}


def diverged(outcomes: list[SequenceOutcome]) -> int:
    """Diverging (sequence, irqchip, pair) comparisons among `outcomes`: summed over a whole
    campaign, the sum of the census table's `diverged` column."""
    return sum(d is not None for o in outcomes for d in o.pairs.values())


def campaign_worker(out: Any, spec: CampaignSpec, max_seconds: float,
                    ray: str | None = None) -> None:
    """Runs in the job's process. With `ray`, this process is the Ray driver and the chunks
    run on that cluster; otherwise they run here, one after the other (in index order)."""
    started = time.monotonic()
    count = [0]
    last = [0.0]

    def seen(outcomes: list[SequenceOutcome]) -> None:
        count[0] += diverged(outcomes)

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            out.put(("progress", progress_view(done, total, count[0], now - started)))
        if done < total and now - started > max_seconds:
            raise OverBudget(f"the campaign ran past its time budget of {max_seconds:g} s "
                             f"(max_seconds) after {done} of {total} sequences")

    out.put(("progress", progress_view(0, spec.sequences, 0, 0.0)))
    try:
        if ray:
            try:
                from . import on_ray
            except ImportError:
                out.put(("error", "IRQLAB_CAMPAIGN_RAY needs the 'ray' extra on the server "
                                  "(pip install -e '.[ray]')"))
                return
            on_ray.connect(ray)
            result = on_ray.run_on_ray(spec, progress, seen)
        else:
            result = run_local(spec, 1, progress, seen)
        body = dict(result.as_dict(), seconds=round(time.monotonic() - started, 3),
                    documents=result.scenarios)
        out.put(("result", body))
        out.put(("done", None))
    except OverBudget as exc:
        out.put(("error", str(exc)))
    except (RuntimeError, ConnectionError, OSError) as exc:  # no KVM, a lost Ray cluster
        out.put(("error", str(exc)))
    except Exception as exc:  # an irqlab bug: report it rather than dying silently
        out.put(("error", f"internal error: {type(exc).__name__}: {exc}"))
