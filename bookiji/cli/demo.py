"""`bookiji demo`: a throw-away SQLite database and a walk through the workflow so far."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import typer
from rich.rule import Rule

from bookiji.bootstrap import build
from bookiji.cli.output import console, state_style
from bookiji.config import Settings
from bookiji.domain.errors import BookijiError
from bookiji.domain.states import ReservationState, replay
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document
from bookiji.services.reservations import HoldRequest
from bookiji.store import migrate
from bookiji.store.uow import UnitOfWork

ACTOR = "operator:demo"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo() -> None:
        """Walk sample reservations through every state that exists so far."""
        with tempfile.TemporaryDirectory(prefix="bookiji-demo-") as tmp:
            run_demo(Path(tmp))


def _say(text: str) -> None:
    console.print(f"  {text}")


def _state(container_db: object, reservation_id: str) -> str:
    document = load_reservation_document(container_db, reservation_id)  # type: ignore[arg-type]
    state = document["state"]
    style = state_style(state)
    return f"[{style}]{state}[/{style}]"


def run_demo(workdir: Path) -> None:
    # Start the clock on the next Tuesday 08:00 UTC so the sample hours are open.
    today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    start = today + timedelta(days=(1 - today.weekday()) % 7 or 7)
    clock = ManualClock(start)
    settings = Settings(database_url=f"sqlite:///{workdir / 'demo.db'}")
    container = build(settings, clock=clock)
    try:
        db = container.db
        service = container.reservations
        console.print(Rule("Bookiji demo (throw-away SQLite database)"))
        migrate.upgrade(db)
        _say(f"database at migration {migrate.current_revision(db)}: {workdir / 'demo.db'}")
        sample = resources.files("bookiji.samples").joinpath("vendors.toml")
        with resources.as_file(sample) as path:
            report = container.vendors.import_file(path)
        _say(f"imported vendors: {', '.join(report.created)}")
        _say(f"clock set to {clock.now().isoformat()} (a Tuesday)")

        def slot(hour: int, minute: int = 0, minutes: int = 30) -> tuple[datetime, datetime]:
            begin = clock.now().replace(hour=hour, minute=minute) + timedelta(days=1)
            return begin, begin + timedelta(minutes=minutes)

        def hold(requester: str, hour: int, minute: int = 0, key: str | None = None) -> str | None:
            begin, end = slot(hour, minute)
            request = HoldRequest(
                vendor_id="salon-ana",
                slot_start=begin,
                slot_end=end,
                requester_id=requester,
                idempotency_key=key,
            )
            try:
                outcome = service.create_hold(request, actor=ACTOR)
            except BookijiError as exc:
                ask = f"{requester} asks for {begin:%H:%M}-{end:%H:%M} UTC"
                _say(f"{ask}: refused, {exc.code}: {exc.message}")
                return None
            how = "replayed" if outcome.replayed else "held"
            ask = f"{requester} asks for {begin:%H:%M}-{end:%H:%M} UTC"
            rid = outcome.reservation_id
            _say(f"{ask}: {how} {rid} -> {_state(db, rid)}")
            return outcome.reservation_id

        console.print(Rule("1. Holds, and the database refusing overlaps"))
        first = hold("alice", 10, 0, key="alice-1")
        hold("alice", 10, 0, key="alice-1")
        hold("bob", 10, 15)
        hold("bob", 10, 40)
        second = hold("bob", 11, 0)
        third = hold("carol", 14, 0)
        fourth = hold("dave", 15, 0)
        assert first and second and third and fourth

        console.print(Rule("2. Vendor confirmation"))
        service.confirm(first, actor="vendor:salon-ana")
        _say(f"vendor confirms {first}: {_state(db, first)}")
        service.decline(second, actor="vendor:salon-ana")
        _say(f"vendor declines {second}: {_state(db, second)}")
        service.cancel(third, actor=ACTOR, reason="requester changed plans")
        _say(f"operator cancels {third}: {_state(db, third)}")
        again = hold("erin", 11, 0)
        _say(f"the declined slot is free again: {again}")

        console.print(Rule("3. Deadlines and reconciliation"))
        clock.advance(timedelta(minutes=11))
        _say("11 minutes pass; reconcile runs the expiry job")
        for item in service.expire_due():
            _say(f"{item.reservation_id}: {item.from_state} -> {item.to_state}")
        clock.advance(timedelta(minutes=30))
        _say("30 more minutes pass with no payment authorization; reconcile again")
        for item in service.expire_due():
            _say(f"{item.reservation_id}: {item.from_state} -> {item.to_state}")

        console.print(Rule("4. The ledger"))
        with UnitOfWork(db, readonly=True) as uow:
            rows = uow.reservations.list(limit=100)
            for row in sorted(rows, key=lambda r: r.slot_start):
                log = uow.transitions.for_reservation(row.id)
                replayed = replay(
                    (
                        ReservationState(t.from_state) if t.from_state else None,
                        ReservationState(t.to_state),
                    )
                    for t in log
                )
                style = state_style(row.state)
                _say(
                    f"{row.id} {row.requester_id:<6} {row.slot_start:%H:%M} "
                    f"[{style}]{row.state:<22}[/{style}] {len(log)} log rows, replays to {replayed}"
                )
            pairs = uow.reservations.overlapping_active_pairs()
        _say(f"overlapping active pairs: {len(pairs)}")
        document = load_reservation_document(db, first)
        console.print(Rule(f"state history of {first}"))
        for step in document["stateHistory"]:
            move = f"{step['from'] or '-':>28} -> {step['to']:<28}"
            _say(f"{step['at']}  {move} {step['actor']}: {step['reason']}")
        console.print(Rule("done"))
    finally:
        container.close()
