"""The daemon's notification sender: sends what it is given in order, survives a failing
send, and on stop sends what is still queued."""

from __future__ import annotations

import threading

from bookiji.daemon.dispatch import BackgroundSender


def test_sends_in_order_survives_failures_and_drains_on_stop() -> None:
    sent: list[str] = []
    gate = threading.Event()

    def send(notification_id: str) -> None:
        gate.wait(5)  # hold the first send so the rest are still queued at stop
        if notification_id == "ntf_bad":
            raise RuntimeError("mail server down")
        sent.append(notification_id)

    sender = BackgroundSender(send)
    sender.start()
    sender.submit(["ntf_1", "ntf_bad", "ntf_2"])
    sender.submit(["ntf_3"])
    gate.set()
    sender.stop(timeout=5)
    assert sent == ["ntf_1", "ntf_2", "ntf_3"]


def test_a_full_queue_drops_to_the_outbox_instead_of_blocking() -> None:
    gate = threading.Event()
    sent: list[str] = []
    sender = BackgroundSender(lambda i: (gate.wait(5), sent.append(i)), max_pending=2)
    sender.start()
    sender.submit([f"ntf_{i}" for i in range(10)])  # returns at once: the request never waits
    gate.set()
    sender.stop(timeout=5)
    assert 2 <= len(sent) < 10  # the rest stay pending in the database for reconcile
    assert sent == sorted(sent, key=lambda i: int(i.split("_")[1]))
