"""What support can do from a reservation, through the very service calls the CLI makes:

* cancel             -> `ReservationService.cancel`           (`bookiji reservations cancel`)
* force compensation -> `PaymentService.compensation_preview` + `force_compensate`
                                                               (`bookiji compensate`)
* retry a webhook    -> `WebhookService.replay`               (`bookiji webhooks replay`)
* reconcile now      -> every job of `job_runner`, each claimed by lease
                                                               (`bookiji reconcile --once`)

Each action has a `*_plan` that says, before anything happens, exactly what will happen;
the dashboard shows it in the confirmation dialog. Plans and actions do database I/O: the
dashboard calls them from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from bookiji.bootstrap import Container
from bookiji.daemon.jobs import job_runner
from bookiji.domain.compensation import Action, Failure, Money, plan
from bookiji.domain.errors import InvalidTransition, ValidationFailed
from bookiji.domain.states import TRANSITIONS, ReservationState
from bookiji.domain.timeutil import format_instant
from bookiji.services.webhooks import DeliveryView
from bookiji.tui.queries import ReservationDetail

S = ReservationState
ACTOR = "operator:tui"
CANCEL_REASON: Final = "cancelled by support (dashboard)"
Severity = Literal["information", "warning", "error"]

#: What each job of `bookiji reconcile --once` does, in words for the dialog.
JOB_WORDS = {
    "expiry": "expire reservations past their deadline, releasing their money",
    "vendor_notifications": "ask vendors not asked yet; resend due notifications",
    "vendor_authorizations": "authorize confirmed vendors' deposits",
    "pending_authentications": "poll authorizations waiting on 3-D Secure",
    "stuck_commits": "finish or unwind commits with no live worker",
    "stale_authorizations": "release money still held by failed reservations",
    "compensations": "retry compensation actions that are due",
    "money_sweep": "flag money the provider holds that the database does not explain",
    "calendar_sync": "sync vendor calendars",
    "webhooks": "send partner webhooks that are due",
}

#: Currencies without minor units (amounts are stored in minor units).
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)


def money(amount: int, currency: str) -> str:
    code = currency.upper()
    if currency.lower() in ZERO_DECIMAL:
        return f"{amount} {code}"
    return f"{amount / 100:.2f} {code}"


PARTY_MONEY = {"vendor": "vendor deposit", "requester": "requester payment"}


@dataclass(frozen=True)
class Plan:
    """A confirmation dialog: what will happen, and the button that does it."""

    title: str
    lines: list[str]
    confirm: str
    refund: bool = False


@dataclass(frozen=True)
class Outcome:
    message: str
    severity: Severity = "information"
    details: list[str] = field(default_factory=list)


def _party_key(party: str) -> str:
    return "vendorDeposit" if party == "vendor" else "requesterPayment"


def _step_words(party: str, action: str, detail: ReservationDetail) -> str:
    payment = detail.document["payment"]
    held = payment[_party_key(party)]
    amount = money(int(held["amount"]), str(payment["currency"]))
    ref = held["paymentIntentId"] or "no provider payment"
    verb = "release the authorization of" if action == Action.CANCEL_AUTHORIZATION else "refund"
    return f"{verb} the {PARTY_MONEY[party]}: {amount} ({ref})"


class SupportActions:
    def __init__(self, container: Container, *, actor: str = ACTOR) -> None:
        self.container = container
        self.actor = actor

    # -- cancel ----------------------------------------------------------------------------

    def cancel_plan(self, detail: ReservationDetail) -> Plan:
        state = S(detail.state)
        if S.CANCELLED not in TRANSITIONS[state]:
            why = (
                "a commit in flight finishes or is compensated, never cancelled; "
                "use force compensation"
                if state is S.COMMIT_IN_PROGRESS
                else "it is final"
            )
            raise InvalidTransition(
                f"{detail.id} is {state}: it cannot be cancelled ({why})",
                details={"state": state.value},
            )
        payment = detail.document["payment"]
        steps = plan(
            Failure.CANCELLED,
            Money(payment["vendorDeposit"]["state"]),
            Money(payment["requesterPayment"]["state"]),
        )
        lines = [
            f"{detail.id} moves from {state} to CANCELLED "
            f"(reason “{CANCEL_REASON}”, actor {self.actor}).",
            f"The slot is freed: {detail.vendor_name} can be booked at that time again.",
        ]
        lines += [f"Then: {_step_words(s.party, s.action, detail)}." for s in steps]
        if not steps:
            lines.append("No money is held, so nothing is released or refunded.")
        lines.append("Partners hear of it as a reservation.cancelled event.")
        return Plan(f"Cancel {detail.id}?", lines, "Cancel reservation")

    def cancel(self, reservation_id: str) -> Outcome:
        changed = self.container.reservations.cancel(
            reservation_id, actor=self.actor, reason=CANCEL_REASON
        )
        if not changed:
            return Outcome(f"{reservation_id} was already cancelled", "warning")
        return Outcome(f"cancelled {reservation_id}")

    # -- force compensation ----------------------------------------------------------------

    def compensation_plan(self, detail: ReservationDetail) -> Plan:
        state = S(detail.state)
        refund = state is S.COMMITTED
        steps = self.container.payments.compensation_preview(detail.id, refund=refund)
        if state is S.COMMIT_IN_PROGRESS:
            move = f"{detail.id} moves from COMMIT_IN_PROGRESS to FAILED_COMMIT."
        elif S.CANCELLED in TRANSITIONS[state]:
            move = f"{detail.id} moves from {state} to CANCELLED."
        else:
            move = f"{detail.id} stays {state} (a final state)."
        lines = [move]
        lines += [f"Then: {_step_words(s['party'], s['action'], detail)}." for s in steps]
        if not steps:
            lines.append("No money to release or refund.")
        lines.append(
            "Each step is recorded and retried until done; doing this twice moves no money twice."
        )
        if refund:
            lines.insert(0, "This reservation is COMMITTED: both parties are refunded.")
        title = (
            f"Refund committed {detail.id}?" if refund else f"Force compensation of {detail.id}?"
        )
        return Plan(title, lines, "Refund both" if refund else "Compensate", refund=refund)

    def force_compensate(self, reservation_id: str, *, refund: bool) -> Outcome:
        created = self.container.payments.force_compensate(
            reservation_id, refund=refund, actor=self.actor
        )
        return Outcome(f"compensation forced for {reservation_id}: {len(created)} new action(s)")

    # -- webhooks ----------------------------------------------------------------------------

    def webhook_plan(self, detail: ReservationDetail, delivery: DeliveryView) -> Plan:
        if delivery.status == "pending":
            when = format_instant(delivery.next_attempt_at) or "now"
            raise ValidationFailed(
                f"the delivery of {delivery.event_id} to {delivery.partner_id} is still "
                f"pending: it is retried automatically (next attempt {when})",
                details={"eventId": delivery.event_id},
            )
        last = delivery.last_error or (
            f"HTTP {delivery.last_status}" if delivery.last_status is not None else "none"
        )
        if delivery.status == "dead":
            was = f"is dead after {delivery.attempts} attempt(s) (last error: {last})"
        else:
            was = f"was delivered after {delivery.attempts} attempt(s)"
        lines = [
            f"Event {delivery.event_id} ({delivery.event_type or 'event'}) of {detail.id} "
            f"to partner {delivery.partner_id} {was}.",
            "It goes back to pending with its attempts reset, due now, and is sent on the "
            "next delivery run (the daemon, or reconcile now).",
            "It keeps its webhook-id, so the partner can tell it is the same event.",
        ]
        return Plan("Retry webhook delivery?", lines, "Send again")

    def retry_webhook(self, delivery: DeliveryView) -> Outcome:
        rows = self.container.webhooks.replay(delivery.event_id, partner_id=delivery.partner_id)
        states = ", ".join(f"{r.partner_id}: {r.status}" for r in rows)
        return Outcome(f"{delivery.event_id} queued again ({states}), due now")

    # -- reconcile ---------------------------------------------------------------------------

    def reconcile_plan(self) -> Plan:
        names = list(job_runner(self.container).jobs)
        lines = ["Run every job once now, as `bookiji reconcile --once` does:"]
        lines += [f"• {name}: {JOB_WORDS.get(name, name)}" for name in names]
        lines.append("A job another worker is running right now is skipped.")
        return Plan("Run reconciliation now?", lines, "Reconcile")

    def reconcile(self) -> Outcome:
        runner = job_runner(self.container)
        reports = {name: runner.run(name) for name in runner.jobs}
        done = [r for r in reports.values() if r is not None]
        skipped = [name for name, r in reports.items() if r is None]
        errors = [f"{r.name}: {e}" for r in done for e in r.errors]
        processed = sum(r.processed for r in done)
        busy = [f"{r.name} {r.processed}" for r in done if r.processed]
        message = f"reconciliation: {processed} item(s) processed" + (
            f" ({', '.join(busy)})" if busy else ""
        )
        if skipped:
            message += f"; skipped (running elsewhere): {', '.join(skipped)}"
        if errors:
            return Outcome(f"{message}; {len(errors)} error(s)", "error", errors)
        return Outcome(message)
