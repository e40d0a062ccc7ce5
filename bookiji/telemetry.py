"""Install the OpenTelemetry SDK for this process when tracing is configured (an edge
concern: the daemon and the CLI call it once at start; services only use the API)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from bookiji.config import Settings

_provider: TracerProvider | None = None


def configure(settings: Settings) -> TracerProvider | None:
    """Export spans over OTLP/HTTP to `tracing.otlp_endpoint`; without one, do nothing."""
    global _provider
    tracing = settings.tracing
    if not tracing.otlp_endpoint or _provider is not None:
        return _provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = tracing.otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider = TracerProvider(
        resource=Resource.create({"service.name": tracing.service_name}),
        sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=5), schedule_delay_millis=500
        )
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown() -> None:
    """Send what is buffered (bounded by the exporter's timeout)."""
    if _provider is not None:
        _provider.shutdown()
