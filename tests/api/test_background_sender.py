"""The daemon's notification sender: sends what it is given in order, in batches of what
queued up meanwhile, survives a failing batch, and on stop sends what is still queued."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from bookiji.daemon.dispatch import BackgroundSender


def test_sends_in_order_in_batches_survives_failures_and_drains_on_stop() -> None:
    batches: list[list[str]] = []
    gate = threading.Event()
    first = threading.Event()

    def send(ids: Sequence[str]) -> None:
        first.set()
        gate.wait(5)  # hold the first batch so the rest are still queued at stop
        if "ntf_bad" in ids:
            raise RuntimeError("mail server down")
        batches.append(list(ids))

    sender = BackgroundSender(send)
    sender.start()
    sender.submit(["ntf_0"])
    assert first.wait(5)  # the sender is busy with ntf_0; what follows queues up
    sender.submit(["ntf_1", "ntf_2"])
    sender.submit(["ntf_3"])
    gate.set()
    sender.stop(timeout=5)
    assert batches == [["ntf_0"], ["ntf_1", "ntf_2", "ntf_3"]]  # one batch for the backlog


def test_a_failing_batch_does_not_stop_the_next() -> None:
    sent: list[str] = []
    calls = threading.Semaphore(0)

    def send(ids: Sequence[str]) -> None:
        calls.release()
        if "ntf_bad" in ids:
            raise RuntimeError("mail server down")
        sent.extend(ids)

    sender = BackgroundSender(send)
    sender.start()
    sender.submit(["ntf_bad"])
    assert calls.acquire(timeout=5)
    sender.submit(["ntf_1"])
    sender.stop(timeout=5)
    assert sent == ["ntf_1"]  # ntf_bad stays pending in the database for reconcile


def test_a_full_queue_drops_to_the_outbox_instead_of_blocking() -> None:
    gate = threading.Event()
    sent: list[str] = []
    sender = BackgroundSender(lambda ids: (gate.wait(5), sent.extend(ids)), max_pending=2)
    sender.start()
    sender.submit([f"ntf_{i}" for i in range(10)])  # returns at once: the request never waits
    gate.set()
    sender.stop(timeout=5)
    assert 2 <= len(sent) < 10  # the rest stay pending in the database for reconcile
    assert sent == sorted(sent, key=lambda i: int(i.split("_")[1]))
