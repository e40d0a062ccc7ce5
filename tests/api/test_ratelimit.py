"""Per-key rate limits (memory and a Redis shared by several limiters) and the caps on holds
in flight (SQLite and Postgres)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from bookiji.domain.errors import HoldLimitReached, RateLimited, Unavailable
from bookiji.domain.states import StageTTLs
from bookiji.services.apikeys import ApiKeyService
from bookiji.services.clock import ManualClock
from bookiji.services.holdcaps import HoldCaps, count_active_holds, ensure_hold_allowed
from bookiji.services.ratelimit import RateLimiter
from bookiji.services.reservations import HoldRequest, ReservationService
from bookiji.store.database import Database
from bookiji.store.uow import UnitOfWork
from tests.conftest import REDIS_ENV, T0
from tests.factories import add_vendor

# -- memory ------------------------------------------------------------------------------------


def limiter(**kwargs: object) -> RateLimiter:
    return RateLimiter(namespace=f"t-{uuid.uuid4().hex}", **kwargs)  # type: ignore[arg-type]


def test_the_hit_after_the_budget_is_refused_with_retry_after() -> None:
    rl = limiter(reads_per_minute=3, writes_per_minute=1)
    decisions = [rl.hit("key_a", "read") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    assert all(d.limit == 3 and d.retry_after == 0 for d in decisions)
    assert all(0 < d.reset_after <= 60 for d in decisions)
    assert "Retry-After" not in decisions[0].headers()
    decisions[0].raise_if_refused()

    refused = rl.hit("key_a", "read")
    assert not refused.allowed
    assert refused.remaining == 0 and refused.limit == 3
    assert 0 < refused.retry_after <= 60
    assert refused.headers()["Retry-After"] == str(refused.retry_after)
    assert refused.headers()["RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimited) as caught:
        refused.raise_if_refused()
    assert caught.value.http_status == 429 and caught.value.retryable
    assert caught.value.details["retryAfter"] == refused.retry_after
    # A refused hit costs nothing, and refusals keep coming while the window is full.
    assert not rl.hit("key_a", "read").allowed


def test_reads_and_writes_have_separate_budgets() -> None:
    rl = limiter(reads_per_minute=2, writes_per_minute=1)
    assert rl.hit("key_a", "write").allowed
    assert not rl.hit("key_a", "write").allowed
    assert rl.hit("key_a", "read").remaining == 1
    assert rl.hit("key_a", "read").allowed
    assert not rl.hit("key_a", "read").allowed
    assert rl.hit("key_a", "write").limit == 1


def test_keys_are_isolated() -> None:
    rl = limiter(reads_per_minute=1)
    assert rl.hit("key_a", "read").allowed
    assert not rl.hit("key_a", "read").allowed
    assert rl.hit("key_b", "read").allowed
    rl.reset("key_a")
    assert rl.hit("key_a", "read").allowed


def test_defaults_and_bad_arguments() -> None:
    rl = limiter()
    assert rl.hit("k", "read").limit == 300
    assert rl.hit("k", "write").limit == 60
    with pytest.raises(ValueError, match="route class"):
        rl.hit("k", "delete")
    with pytest.raises(ValueError):
        RateLimiter(reads_per_minute=0)


def test_storage_failure_fails_open_unless_told_otherwise() -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    decision = limiter(storage_uri=dead, reads_per_minute=5).hit("k", "read")
    assert decision.allowed and decision.limit == 5
    with pytest.raises(Unavailable):
        limiter(storage_uri=dead, fail_open=False).hit("k", "read")


# -- Redis: several daemons, one budget ----------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set: Redis rate-limit tests are skipped")
    return url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards, so runs never collide."""
    name = f"bookiji-test-{uuid.uuid4().hex}"
    yield name
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{name}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_two_daemons_sharing_redis_share_one_budget(redis_url: str, namespace: str) -> None:
    first = RateLimiter(redis_url, reads_per_minute=4, writes_per_minute=2, namespace=namespace)
    second = RateLimiter(redis_url, reads_per_minute=4, writes_per_minute=2, namespace=namespace)
    remaining = [
        first.hit("key_a", "read").remaining,
        second.hit("key_a", "read").remaining,
        first.hit("key_a", "read").remaining,
        second.hit("key_a", "read").remaining,
    ]
    assert remaining == [3, 2, 1, 0]
    for daemon in (first, second):
        refused = daemon.hit("key_a", "read")
        assert not refused.allowed and 0 < refused.retry_after <= 60
    # Writes and other keys keep their own budgets, across daemons too.
    assert first.hit("key_a", "write").allowed and second.hit("key_a", "write").allowed
    assert not first.hit("key_a", "write").allowed
    assert second.hit("key_b", "read").remaining == 3


def test_separate_namespaces_do_not_share(redis_url: str, namespace: str) -> None:
    mine = RateLimiter(redis_url, reads_per_minute=1, namespace=namespace)
    other = RateLimiter(redis_url, reads_per_minute=1, namespace=f"{namespace}-other")
    assert mine.hit("key_a", "read").allowed
    assert not mine.hit("key_a", "read").allowed
    assert other.hit("key_a", "read").allowed


# -- hold caps (SQLite and Postgres) -------------------------------------------------------------

DAY = (T0 + timedelta(days=1)).replace(hour=0)


@pytest.fixture
def holds(db: Database, clock: ManualClock) -> ReservationService:
    add_vendor(db)
    partners = ApiKeyService(db, clock)
    partners.add_partner("acme", "Acme")
    partners.add_partner("globex", "Globex")
    return ReservationService(db, clock, StageTTLs())


def hold(service: ReservationService, slot: int, requester: str, partner: str | None) -> str:
    start = DAY + timedelta(hours=slot)
    request = HoldRequest("v1", start, start + timedelta(hours=1), requester, partner)
    return service.create_hold(request, actor="test").reservation_id


def test_requester_cap_counts_holds_in_flight_per_partner(
    db: Database, holds: ReservationService
) -> None:
    caps = HoldCaps(max_active_per_requester=2, max_active_per_partner=100)
    hold(holds, 0, "alice", "acme")
    caps.ensure(db, partner_id="acme", requester_id="alice")
    hold(holds, 1, "alice", "acme")
    with pytest.raises(HoldLimitReached) as caught:
        caps.ensure(db, partner_id="acme", requester_id="alice")
    assert caught.value.http_status == 409 and caught.value.code == "hold_limit_reached"
    assert caught.value.details == {
        "scope": "requester",
        "requesterId": "alice",
        "active": 2,
        "limit": 2,
    }
    caps.ensure(db, partner_id="acme", requester_id="bob")
    caps.ensure(db, partner_id="globex", requester_id="alice")  # another partner's alice


def test_partner_cap(db: Database, holds: ReservationService) -> None:
    for slot, requester in enumerate(["a", "b", "c"]):
        hold(holds, slot, requester, "acme")
    with pytest.raises(HoldLimitReached) as caught:
        ensure_hold_allowed(
            db,
            partner_id="acme",
            requester_id="d",
            max_active_per_requester=5,
            max_active_per_partner=3,
        )
    assert caught.value.details["scope"] == "partner"
    assert caught.value.details["active"] == 3
    ensure_hold_allowed(
        db,
        partner_id="globex",
        requester_id="d",
        max_active_per_requester=5,
        max_active_per_partner=3,
    )


def test_finished_reservations_free_the_cap(db: Database, holds: ReservationService) -> None:
    caps = HoldCaps(max_active_per_requester=2, max_active_per_partner=2)
    cancelled = hold(holds, 0, "alice", "acme")
    committed = hold(holds, 1, "alice", "acme")
    with pytest.raises(HoldLimitReached):
        caps.ensure(db, partner_id="acme", requester_id="alice")
    holds.cancel(cancelled, actor="test")
    # A committed booking is finished business, not a hold in flight (set directly: the
    # payment workflow is not what this test is about).
    with UnitOfWork(db) as uow:
        uow.session.execute(
            text("UPDATE reservations SET state = 'COMMITTED' WHERE id = :id"), {"id": committed}
        )
        uow.commit()
    assert count_active_holds(db, partner_id="acme", requester_id="alice").requester == 0
    caps.ensure(db, partner_id="acme", requester_id="alice")


def test_caps_inside_a_unit_of_work_and_for_the_operator(
    db: Database, holds: ReservationService
) -> None:
    hold(holds, 0, "walk-in", None)
    hold(holds, 1, "alice", "acme")
    caps = HoldCaps(max_active_per_requester=1, max_active_per_partner=1)
    with UnitOfWork(db) as uow:
        counts = count_active_holds(uow, partner_id=None, requester_id="walk-in")
        assert (counts.requester, counts.partner) == (1, 1)
        with pytest.raises(HoldLimitReached):
            caps.ensure(uow, partner_id=None, requester_id="walk-in")
        # The operator scope has no partner cap; only the requester cap applies.
        caps.ensure(uow, partner_id=None, requester_id="someone-else")
        with pytest.raises(HoldLimitReached) as caught:
            caps.ensure(uow, partner_id="acme", requester_id="bob")
        assert caught.value.details["scope"] == "partner"
