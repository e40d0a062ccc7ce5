"""`bookiji demo`: a throw-away SQLite database and a walk through the workflow so far."""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.rule import Rule

from bookiji.bootstrap import build
from bookiji.cli.output import console, emit_json, state_style
from bookiji.config import Settings
from bookiji.domain.errors import BookijiError
from bookiji.domain.states import ReservationState, replay
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document, reservation_summary
from bookiji.services.reservations import HoldRequest
from bookiji.store import migrate
from bookiji.store.uow import UnitOfWork

ACTOR = "operator:demo"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        json_output: bool = typer.Option(
            False, "--json", help="Print only the final ledger, as JSON."
        ),
    ) -> None:
        """Walk sample reservations through every state that exists so far."""
        out = Console(file=io.StringIO()) if json_output else console
        with tempfile.TemporaryDirectory(prefix="bookiji-demo-") as tmp:
            summary = run_demo(Path(tmp), out)
        if json_output:
            emit_json(summary)


def _state(container_db: object, reservation_id: str) -> str:
    document = load_reservation_document(container_db, reservation_id)  # type: ignore[arg-type]
    state = document["state"]
    style = state_style(state)
    return f"[{style}]{state}[/{style}]"


def run_demo(workdir: Path, out: Console = console) -> dict[str, Any]:
    """Run the walk-through, narrating to `out`; return the final ledger."""

    def _say(text: str) -> None:
        out.print(f"  {text}")

    # Start the clock on the next Tuesday 08:00 UTC so the sample hours are open.
    today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    start = today + timedelta(days=(1 - today.weekday()) % 7 or 7)
    clock = ManualClock(start)
    settings = Settings(database_url=f"sqlite:///{workdir / 'demo.db'}")
    container = build(settings, clock=clock)
    try:
        db = container.db
        service = container.reservations
        out.print(Rule("Bookiji demo (throw-away SQLite database)"))
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

        out.print(Rule("1. Holds, and the database refusing overlaps"))
        first = hold("alice", 10, 0, key="alice-1")
        hold("alice", 10, 0, key="alice-1")
        hold("bob", 10, 0)
        hold("bob", 10, 30)
        second = hold("bob", 11, 0)
        third = hold("carol", 14, 0)
        fourth = hold("dave", 15, 0)
        assert first and second and third and fourth

        out.print(Rule("2. Vendor confirmation"))
        service.confirm(first, actor="vendor:salon-ana")
        _say(f"vendor confirms {first}: {_state(db, first)}")
        service.decline(second, actor="vendor:salon-ana")
        _say(f"vendor declines {second}: {_state(db, second)}")
        service.cancel(third, actor=ACTOR, reason="requester changed plans")
        _say(f"operator cancels {third}: {_state(db, third)}")
        again = hold("erin", 11, 0)
        _say(f"the declined slot is free again: {again}")

        out.print(Rule("3. Deadlines and reconciliation"))
        clock.advance(timedelta(minutes=11))
        _say("11 minutes pass; reconcile runs the expiry job")
        for item in service.expire_due():
            _say(f"{item.reservation_id}: {item.from_state} -> {item.to_state}")
        clock.advance(timedelta(minutes=30))
        _say("30 more minutes pass with no payment authorization; reconcile again")
        for item in service.expire_due():
            _say(f"{item.reservation_id}: {item.from_state} -> {item.to_state}")

        out.print(Rule("4. The ledger"))
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
            ledger = [reservation_summary(r) for r in rows]
        _say(f"overlapping active pairs: {len(pairs)}")
        document = load_reservation_document(db, first)
        out.print(Rule(f"state history of {first}"))
        for step in document["stateHistory"]:
            move = f"{step['from'] or '-':>28} -> {step['to']:<28}"
            _say(f"{step['at']}  {move} {step['actor']}: {step['reason']}")
        out.print(Rule("done"))
        return {"reservations": ledger, "overlappingActivePairs": len(pairs)}
    finally:
        container.close()
