"""`workflow`: the services wired to a gateway, for every gateway and every database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.clock import ManualClock
from bookiji.store.database import Database
from tests.payments.harness import NOW, Workflow, build_workflow, local_faults

GATEWAYS = ["local", "stripe"]


@pytest.fixture(params=GATEWAYS)
def gateway_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workflow(gateway_kind: str, db: Database, request: pytest.FixtureRequest) -> Iterator[Workflow]:
    if gateway_kind == "local":
        gateway = LocalGateway(db, ManualClock(NOW))
        yield build_workflow(db, gateway, local_faults(gateway))
        return
    from tests.payments.stripe_harness import stripe_gateway_and_faults

    with stripe_gateway_and_faults() as (gateway, faults, _server):
        yield build_workflow(db, gateway, faults)
