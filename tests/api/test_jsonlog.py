"""The daemon's log lines: one JSON object each, with the caller's extras and nothing else."""

from __future__ import annotations

import json
import logging

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
