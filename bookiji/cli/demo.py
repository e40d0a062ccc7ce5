"""`bookiji demo`: a throw-away SQLite database and a walk through the whole workflow.

Holds and the database refusing overlaps, the vendor answering with the token from its
notification, dual authorization and the atomic commit on the embedded LocalGateway, two
failures with their compensation (a declined card, a failed capture), expiry, and a clean
audit at the end.
"""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from bookiji.bootstrap import build
from bookiji.cli.output import console, counted, emit_json, json_option, state_style
from bookiji.config import Settings
from bookiji.domain.errors import BookijiError, PaymentDeclined
from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.audit import audit
from bookiji.services.clock import ManualClock
from bookiji.services.documents import load_reservation_document, reservation_summary
from bookiji.services.ports import VendorNotification
from bookiji.services.reservations import HoldRequest
from bookiji.services.tracing import unwrap
from bookiji.store import migrate
from bookiji.store.crypto import new_key
from bookiji.store.uow import UnitOfWork

ACTOR = "operator:demo"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        json_output: bool = json_option("Print only the final ledger, as JSON."),
    ) -> None:
        """Walk sample reservations through the whole workflow on a throw-away database."""
        out = Console(file=io.StringIO()) if json_output else console
        with tempfile.TemporaryDirectory(prefix="bookiji-demo-") as tmp:
            summary = run_demo(Path(tmp), out)
        if json_output:
            emit_json(summary)


class DemoInbox:
    """The vendor's side of the console channel: shows the request, keeps the token."""

    channel = "console"

    def __init__(self, out: Console) -> None:
        self.out = out
        self.tokens: dict[str, str] = {}

    def send(self, destination: str, notification: VendorNotification) -> None:
        self.tokens[notification.reservation_id] = notification.token
        self.out.print(
            f"    [dim]vendor {destination} notified: confirm or decline "
            f"{notification.reservation_id} by {notification.expires_at:%H:%M}Z[/dim]"
        )


def run_demo(workdir: Path, out: Console = console) -> dict[str, Any]:
    """Run the walk-through, narrating to `out`; return the final ledger."""

    def say(text: str) -> None:
        out.print(f"  {text}")

    today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    clock = ManualClock(today + timedelta(days=(1 - today.weekday()) % 7 or 7))  # a Tuesday
    # A throw-away database gets a throw-away key for the personal data it seals.
    settings = Settings(database_url=f"sqlite:///{workdir / 'demo.db'}", pii_keys=new_key())
    container = build(settings, clock=clock)
    inbox = DemoInbox(out)
    container.confirmation.notifiers = {"console": inbox}
    gateway = unwrap(container.gateway)
    assert isinstance(gateway, LocalGateway)
    db, holds, payments = container.db, container.reservations, container.payments
    try:
        out.print(Rule("Bookiji demo (throw-away SQLite database, LocalGateway)"))
        migrate.upgrade(db)
        sample = resources.files("bookiji.samples").joinpath("vendors.toml")
        with resources.as_file(sample) as path:
            report = container.vendors.import_file(path)
        say(f"migrated to {migrate.current_revision(db)}; vendors: {', '.join(report.created)}")
        say(f"clock set to {clock.now():%Y-%m-%d %H:%M}Z (a Tuesday)")

        def state(rid: str) -> str:
            value = load_reservation_document(db, rid)["state"]
            return f"[{state_style(value)}]{value}[/{state_style(value)}]"

        def hold(who: str, hour: int, minute: int = 0, key: str | None = None) -> str | None:
            begin = clock.now().replace(hour=hour, minute=minute) + timedelta(days=1)
            ask = f"{who} asks for {begin:%H:%M}-{begin + timedelta(minutes=30):%H:%M}Z"
            try:
                outcome = holds.create_hold(
                    HoldRequest("salon-ana", begin, begin + timedelta(minutes=30), who,
                                idempotency_key=key),
                    actor=ACTOR,
                )  # fmt: skip
            except BookijiError as exc:
                say(f"{ask}: refused, {exc.code}: {escape(exc.message)}")
                return None
            how = "replayed" if outcome.replayed else "held"
            say(f"{ask}: {how} {outcome.reservation_id} -> {state(outcome.reservation_id)}")
            return outcome.reservation_id

        out.print(Rule("1. Holds; the database refuses overlaps"))
        alice = hold("alice", 10, 0, key="alice-1")
        hold("alice", 10, 0, key="alice-1")
        hold("bob", 10, 30)
        bob = hold("bob", 11, 0)
        carol = hold("carol", 13, 0)
        dave = hold("dave", 14, 0)
        erin = hold("erin", 15, 0)
        frank = hold("frank", 16, 0)
        assert alice and bob and carol and dave and erin and frank

        out.print(Rule("2. The vendor answers with the token from its notification"))
        for rid in (alice, carol, dave):
            container.confirmation.answer(rid, inbox.tokens[rid], "confirm")
            say(f"vendor confirms {rid}: {state(rid)} (deposit authorized on its saved card)")
        container.confirmation.answer(bob, inbox.tokens[bob], "decline")
        say(f"vendor declines {bob}: {state(bob)}")
        try:
            container.confirmation.answer(bob, inbox.tokens[bob], "confirm")
        except BookijiError as exc:
            say(f"the same token again: refused, {exc.code}: {exc.message}")
        holds.cancel(erin, actor=ACTOR, note="requester changed plans")
        say(f"operator cancels {erin}: {state(erin)}")

        out.print(Rule("3. Dual authorization and the atomic commit"))
        payments.authorize(alice, "requester", payment_method="pm_card_visa", actor="partner:demo")
        say(f"alice's card pm_card_visa authorized -> both authorized -> {state(alice)}")
        payments.authorize(carol, "requester", payment_method="pm_card_chargeDeclined",
                           actor="partner:demo")  # fmt: skip
        say(f"carol's card pm_card_chargeDeclined -> {state(carol)}; the vendor deposit is "
            "released")  # fmt: skip
        gateway.faults.fail_next(
            "capture", PaymentDeclined("the card was declined (card_declined)",
                                       details={"declineCode": "card_declined"}),
        )  # fmt: skip
        payments.authorize(dave, "requester", payment_method="pm_card_visa", actor="partner:demo")
        say(f"dave authorized, but the vendor capture fails -> {state(dave)}; both released")

        out.print(Rule("4. Deadlines and reconciliation"))
        clock.advance(timedelta(minutes=11))
        say("11 minutes pass; reconcile runs every job once")
        for job in container.reconciler.run_once():
            for item in job.items:
                if "from" in item:
                    say(f"{job.name}: {item['reservationId']} {item['from']} -> {item['to']}")

        out.print(Rule("5. The ledger"))
        with UnitOfWork(db, readonly=True) as uow:
            rows = sorted(uow.reservations.list(limit=100), key=lambda r: r.slot_start)
            ledger = [reservation_summary(r) for r in rows]
        for row in rows:
            style = state_style(row.state)
            say(f"{row.id} {row.requester_id:<6} {row.slot_start:%H:%M} "
                f"[{style}]{row.state:<28}[/{style}] vendor {row.vendor_payment_state:<9} "
                f"requester {row.requester_payment_state}")  # fmt: skip
        breaches = audit(db, gateway)
        say(
            "audit: "
            + (
                "[green]clean[/green]"
                if not breaches
                else counted(len(breaches), "breach", "breaches")
            )
        )
        for breach in breaches:
            say(f"[red]{breach.invariant}[/red] {breach.reservation_id}: {breach.message}")
        document = load_reservation_document(db, alice)
        out.print(Rule(f"state history of {alice}"))
        for step in document["stateHistory"]:
            move = f"{step['from'] or '-':>28} -> {step['to']:<28}"
            say(f"{step['at']}  {move} {escape(step['actor'])}: {escape(step['reason'])}")
        out.print(Rule("done"))
        return {"reservations": ledger, "auditClean": not breaches,
                "breaches": [b.message for b in breaches]}  # fmt: skip
    finally:
        container.close()
