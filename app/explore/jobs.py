"""The exploration jobs' worker for the HTTP service: it runs in its own process under
app.work.jobs.JobManager (limits on concurrent jobs and seconds there; the state budget and
the memory limit here), one exploration per profile."""

from __future__ import annotations

import time
from typing import Any

from app.engine.errors import EngineError


def explore_worker(out: Any, doc: dict[str, Any], profiles: list[str], max_states: int,
                   max_seconds: float, memory_mb: int, ray: str | None = None,
                   ray_workers: int = 1) -> None:
    """Runs in the child process: one exploration per profile, progress and results sent
    back on `out`. With `ray`, the search runs on that cluster (this process only drives it,
    and Ray's own processes need more address space than a search's limit)."""
    import resource

    if memory_mb > 0 and ray is None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from .run import Options, explore

    options = Options(max_states=max_states, max_seconds=max_seconds, ray=ray,
                      workers=ray_workers if ray else 1)
    try:
        for prof in profiles:
            last = [0.0]

            def progress(stats: dict[str, Any], prof: str = prof,
                         last: list[float] = last) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.2:
                    last[0] = now
                    out.put(("progress", {"profile": prof, **stats}))

            out.put(("progress", {"profile": prof, "states": 0}))
            out.put(("result", explore(doc, prof, options, progress)))
        out.put(("done", None))
    except MemoryError:
        out.put(("error", f"the search exceeded IRQLAB_MAX_EXPLORATION_MEMORY_MB "
                          f"({memory_mb} MB)"))
    except EngineError as exc:
        out.put(("error", f"{exc.detail} (at {exc.field})" if exc.field else exc.detail))
    except (RuntimeError, ConnectionError) as exc:  # a Ray search that lost an actor
        out.put(("error", str(exc)))
    except Exception as exc:  # an irqlab bug: report it rather than dying silently
        out.put(("error", f"internal error: {type(exc).__name__}: {exc}"))
