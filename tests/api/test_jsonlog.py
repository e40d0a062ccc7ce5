"""The daemon's log lines: one JSON object each, with the caller's extras and nothing else."""

from __future__ import annotations

import json
import logging

import pytest

from bookiji.api.jsonlog import JsonFormatter


def test_a_line_keeps_extras_and_drops_terminal_colour_codes() -> None:
    record = logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelname": "INFO",
            "msg": "Finished server process [%d]",
            "args": (4242,),
            # What uvicorn attaches to its records: the message again, with ANSI colours.
            "color_message": "Finished server process [\x1b[36m%d\x1b[0m]",
            "reservation_id": "res_1",
        }
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "Finished server process [4242]"
    assert entry["reservation_id"] == "res_1" and entry["level"] == "info"
    assert "color_message" not in entry and "\\u001b" not in line


def test_the_urls_the_daemon_calls_stay_out_of_its_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """httpx logs every URL it calls at INFO; a partner's webhook URL (or a private calendar
    feed) may carry a token in its path or query."""
    from datetime import UTC, datetime

    from bookiji.api import jsonlog
    from bookiji.integrations.webhook_sender import HttpWebhookSender
    from tests.fakes.webhook_receiver import StandardWebhookReceiver

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        jsonlog.configure("INFO")
        with (
            StandardWebhookReceiver(secret, path="/hooks/tok_SEKRIT") as receiver,
            HttpWebhookSender(timeout=5) as sender,
        ):
            status = sender.send(
                receiver.url + "?token=SEKRIT2", secret, message_id="msg_1",
                timestamp=datetime.now(UTC), payload={"type": "ping"},
            )  # fmt: skip
        logging.getLogger("bookiji.test").info("after the send")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert 200 <= status < 300
    err = capsys.readouterr().err
    assert "after the send" in err  # the log was captured
    assert "SEKRIT" not in err
