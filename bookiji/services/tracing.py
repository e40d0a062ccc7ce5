"""Spans around the steps worth seeing in a trace: API requests, each commit step, each call
to something outside (payment provider, calendars, partner webhooks, vendor notifications).

Only the OpenTelemetry API is used here; it does nothing until an edge installs an SDK
provider (`bookiji.telemetry.configure`, when `tracing.otlp_endpoint` is set), so tracing is
off by default and costs next to nothing then.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from opentelemetry import trace
from opentelemetry.trace import Span

_tracer = trace.get_tracer("bookiji")
T = TypeVar("T")


@contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[Span]:
    """A span named `name` (ids as attributes, never personal data or secrets)."""
    clean = {f"bookiji.{k}": v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, attributes=clean) as current:
        yield current


class _Traced:
    """Every public method call on the wrapped adapter becomes a span `component.method`."""

    def __init__(self, target: object, component: str) -> None:
        self._target = target
        self._component = component
        self._adapter = type(target).__name__

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with span(f"{self._component}.{name}", adapter=self._adapter):
                return value(*args, **kwargs)

        return call


def traced(target: T, component: str) -> T:
    """`target` with each call traced; it still satisfies the port it implements."""
    return cast(T, _Traced(target, component))


def traced_factory(factory: Callable[..., T], component: str) -> Callable[..., T]:
    """A factory whose products are traced (calendar sources are built per connection)."""

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> T:
        return traced(factory(*args, **kwargs), component)

    return build


def unwrap(target: T) -> T:
    """The adapter itself, for code that needs its own type (the demo's LocalGateway)."""
    return cast(T, getattr(target, "_target", target))
