"""/metrics in Prometheus's text format (prometheus-client), one registry per app.

- `irqlab_http_requests_total{method,route,status}` and
  `irqlab_http_request_duration_seconds{method,route}` (a histogram of the time until the
  response starts), by route *template* (`/v1/vms/{vm}/ioapic/pins/{pin}/line`), so the label
  set stays bounded; requests no route matched count under `route="<unmatched>"`.
- `irqlab_vms{backend}` and `irqlab_vm_events{vm}` (the seq of each VM's last event: how many
  events it has emitted), read from the VM registry when scraped, so they cost nothing between
  scrapes.
- `irqlab_running{kind}`: scenario runs (`scenario-run`), diffs, explorations, campaigns… in
  progress;
  `with metrics.running("exploration"):` around any such work.
- `irqlab_budget_refusals_total{limit}`: requests refused because a service limit or budget
  (`IRQLAB_*`) would be exceeded; every `limit-reached` / limit 422 problem counts here, and
  other code may call `refused(limit)`.

The request middleware is plain ASGI (no BaseHTTPMiddleware, whose task per request costs
more than the line route itself): two clock reads and two cached-child increments per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .registry import Registry

# Seconds; the hot routes answer in 0.1-1 ms, scenario runs take up to seconds.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

UNMATCHED = "<unmatched>"

# Kinds of long operation shown at 0 before the first one runs (others appear when used).
RUNNING_KINDS = ("scenario-run", "scenario-diff", "exploration", "campaign")

# No `*_created` series: a timestamp per label set that Prometheus does not need here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _RegistryCollector(Collector):
    """VM counts and event seqs, read when scraped (no lock on the hot path)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        vms = GaugeMetricFamily("irqlab_vms", "VMs that exist, by backend.", labels=["backend"])
        events = GaugeMetricFamily(
            "irqlab_vm_events", "Events each VM has emitted (the seq of its last event).",
            labels=["vm"])
        counts = {"model": 0, "kvm": 0}
        for entry in self.registry.entries():
            counts[entry.backend] = counts.get(entry.backend, 0) + 1
            if entry.model is not None:
                events.add_metric([entry.id], entry.model.log.next_seq - 1)
            elif entry.kvm is not None:
                events.add_metric([entry.id], entry.kvm.log.next_seq - 1)
        for backend, n in sorted(counts.items()):
            vms.add_metric([backend], n)
        yield vms
        yield events


class Metrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("irqlab_http_requests", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("irqlab_http_request_duration_seconds",
                                 "Time from request to the start of its response.",
                                 ["method", "route"], buckets=BUCKETS,
                                 registry=self.registry)
        self.running_now = Gauge("irqlab_running", "Long operations in progress, by kind.",
                                 ["kind"], registry=self.registry)
        self.refusals = Counter("irqlab_budget_refusals",
                                "Requests refused by a service limit or budget (IRQLAB_*).",
                                ["limit"], registry=self.registry)
        self.registry.register(_RegistryCollector(registry))
        for kind in RUNNING_KINDS:
            self.running_now.labels(kind)
        # prometheus-client's labels() builds and hashes a tuple under a lock on each call;
        # the children are cached here by their label tuple instead.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(method, route, str(status))
        counter.inc()
        hkey = (method, route)
        histogram = self._histograms.get(hkey)
        if histogram is None:
            histogram = self._histograms[hkey] = self.latency.labels(method, route)
        histogram.observe(seconds)

    @contextmanager
    def running(self, kind: str) -> Iterator[None]:
        gauge = self.running_now.labels(kind)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def count_running(self, kind: str, count: Callable[[], int]) -> None:
        """irqlab_running{kind} read from `count` when scraped: for work that outlives its
        request (exploration and campaign jobs in their worker processes)."""
        self.running_now.labels(kind).set_function(count)

    def refused(self, limit: str) -> None:
        self.refusals.labels(limit).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def of(request: Request) -> Metrics:
    """The app's metrics (for code that counts refusals or long runs)."""
    metrics: Metrics = request.app.state.metrics
    return metrics


async def metrics_endpoint(request: Request) -> Response:
    return Response(of(request).render(), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP response by method, route template and status, and its latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observe = self.metrics.observe

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                status = message["status"]
                observe(scope["method"], getattr(route, "path", UNMATCHED), status,
                        time.perf_counter() - start)
                if status == 413:  # only BodyLimitMiddleware answers 413
                    self.metrics.refused("IRQLAB_MAX_BODY_BYTES")
            await send(message)

        await self.app(scope, receive, send_counted)
