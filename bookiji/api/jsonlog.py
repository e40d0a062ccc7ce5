"""One JSON object per log line, with whatever `extra=` a caller attached."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# Record attributes that are not a caller's `extra=`; uvicorn's `color_message` is its
# message again with terminal colour codes, noise in a log meant for machines.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[1] is not None:
            # The error's own first line (a driver error's kind: "deadlock detected") and
            # where it was raised; statement parameters are never in it (hide_parameters).
            error = record.exc_info[1]
            first = (str(error).strip().splitlines() or [""])[0][:300]
            trace = self.formatException(record.exc_info).splitlines()
            entry["exception"] = f"{type(error).__name__}: {first} | {trace[-1][:200]}"
            frames = [line.strip() for line in trace if line.strip().startswith("File ")]
            if frames:
                entry["raised_at"] = frames[-1][:300]
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True  # we log each request ourselves
    for chatty in ("httpx", "httpcore"):
        # Their INFO line names every URL called: a partner's webhook URL or a private
        # calendar feed may carry a token in its path or query.
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))
