"""Vendors file: TOML text -> validated, immutable vendor specs.

The format is one ``[[vendors]]`` table per vendor (see ``parse_vendor_document``). Parsing is
pure: it takes the TOML *text* and a filename used only in messages. Every problem in the file
is collected and reported at once in a single ``VendorFileInvalid``.

Defaults for omitted optional fields: ``slot_minutes`` 30, ``slot_interval_minutes`` equal to
``slot_minutes``, ``buffer_before_minutes``/``buffer_after_minutes``/``min_notice_minutes`` 0,
``max_advance_days`` 60, ``currency`` "usd", ``price``/``deposit`` 0, ``hours`` empty (closed
every day), no overrides and no calendars. Required: ``id``, ``name``, ``timezone``.
"""

from __future__ import annotations

import datetime
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import unquote, urlsplit

from bookiji.domain.errors import ValidationFailed

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PROVIDERS: frozenset[str] = frozenset({"ics", "google", "outlook"})
MINUTES_PER_DAY = 1440
MAX_BUFFER_MINUTES = 10080  # one week

_ID_RE = re.compile(r"[a-z0-9-]{1,64}")
_RANGE_RE = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY_RE = re.compile(r"[A-Za-z]{3}")
_VENDOR_KEYS = frozenset(
    {
        "id", "name", "timezone", "slot_minutes", "slot_interval_minutes",
        "buffer_before_minutes", "buffer_after_minutes", "min_notice_minutes",
        "max_advance_days", "currency", "price", "deposit", "hours", "overrides", "calendars",
        "payment", "notify",
    }
)  # fmt: skip
#: Optional `[vendors.payment]`: the vendor's payment-provider references.
PAYMENT_KEYS = {
    "customer": re.compile(r"[A-Za-z0-9_]{3,255}"),  # e.g. cus_... (deposit payer)
    "payment_method": re.compile(r"[A-Za-z0-9_]{3,255}"),  # saved card for the deposit
    "account": re.compile(r"[A-Za-z0-9_]{3,255}"),  # connected account paid by requesters
}
#: Optional `[vendors.notify]`: where the vendor is asked to confirm holds.
NOTIFY_KEYS = {
    "email": re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+"),
    "webhook": re.compile(r"https?://\S+"),
    "sms": re.compile(r"\+[1-9][0-9]{6,14}"),
}
_MISSING: Any = object()
#: Column lengths (bookiji/store/models.py) a text must fit; longer is refused here rather
#: than by the database (a Postgres DataError, reported as an outage).
MAX_NAME_LENGTH = 200  # vendors.name, calendar_connections.name
MAX_LENGTHS = {"email": 320, "sms": 32, "customer": 255, "payment_method": 255, "account": 255}


@dataclass(frozen=True)
class TimeRange:
    """Minutes since local midnight, half-open ``[start, end)``, ``0 <= start < end <= 1440``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= MINUTES_PER_DAY:
            raise ValueError(f"invalid time range [{self.start}, {self.end})")

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True)
class DateOverride:
    """Hours replacing the weekly hours on one local date; empty ``hours`` = closed."""

    date: datetime.date
    hours: tuple[TimeRange, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "hours", tuple(sorted(self.hours, key=_range_key)))


@dataclass(frozen=True)
class CalendarSpec:
    """A busy-time source: ``source`` is a path/URL (ics), calendar id (google) or mailbox
    (outlook); ``credentials`` is an optional path to a credentials file."""

    provider: str
    source: str
    name: str | None = None
    credentials: str | None = None


@dataclass(frozen=True)
class VendorSpec:
    """One validated vendor. ``__post_init__`` normalises ``hours`` to a dict (typed read-only)
    in weekday order holding only open days, each with ranges sorted by start, and sorts
    ``overrides`` by date, so equal vendors compare equal however they were built."""

    id: str
    name: str
    timezone: str
    slot_minutes: int
    slot_interval_minutes: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    min_notice_minutes: int
    max_advance_days: int
    currency: str
    price: int
    deposit: int
    hours: Mapping[str, tuple[TimeRange, ...]] = field(hash=False)
    overrides: tuple[DateOverride, ...]
    calendars: tuple[CalendarSpec, ...]
    payment: Mapping[str, str] = field(default_factory=dict, hash=False)
    notify: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        unknown = set(self.hours) - set(WEEKDAYS)
        if unknown:
            raise ValueError(f"unknown weekday keys: {sorted(unknown)}")
        hours = {
            day: tuple(sorted(self.hours[day], key=_range_key))
            for day in WEEKDAYS
            if self.hours.get(day)
        }
        object.__setattr__(self, "hours", hours)
        object.__setattr__(self, "overrides", tuple(sorted(self.overrides, key=lambda o: o.date)))
        object.__setattr__(self, "calendars", tuple(self.calendars))

    def hours_document(self) -> dict[str, list[str]]:
        """``{"mon": ["09:00-12:00", ...]}``; closed days are omitted."""
        return {day: [str(r) for r in ranges] for day, ranges in self.hours.items()}

    def overrides_document(self) -> list[dict[str, object]]:
        """``[{"date": "2026-12-24", "hours": ["09:00-12:00"]}]``; ``"hours": []`` = closed."""
        return [
            {"date": o.date.isoformat(), "hours": [str(r) for r in o.hours]} for o in self.overrides
        ]

    def calendars_document(self) -> list[dict[str, object]]:
        """``[{"provider", "source", "name"?, "credentials"?}]``; ``None`` values are omitted."""
        docs: list[dict[str, object]] = []
        for c in self.calendars:
            doc: dict[str, object] = {"provider": c.provider, "source": c.source}
            if c.name is not None:
                doc["name"] = c.name
            if c.credentials is not None:
                doc["credentials"] = c.credentials
            docs.append(doc)
        return docs

    @classmethod
    def from_documents(
        cls,
        *,
        hours: Mapping[str, Sequence[str]] | None = None,
        overrides: Sequence[Mapping[str, object]] = (),
        calendars: Sequence[Mapping[str, object]] = (),
        **scalars: object,
    ) -> VendorSpec:
        """Rebuild a vendor from its scalar fields plus the ``*_document()`` outputs.

        The input goes through the same validation (and defaults) as the vendors file, so a
        corrupted stored row raises ``VendorFileInvalid`` with ``file == "<stored vendor>"``.
        ``None`` values in calendar documents are treated as absent.
        """
        table: dict[str, object] = dict(scalars)
        table["hours"] = {k: list(v) for k, v in (hours or {}).items()}
        table["overrides"] = [dict(o) for o in overrides]
        table["calendars"] = [{k: v for k, v in c.items() if v is not None} for c in calendars]
        problems: list[dict[str, Any]] = []
        spec = _parse_vendor(table, 0, problems, None)
        if spec is None:
            raise VendorFileInvalid.from_problems("<stored vendor>", problems)
        return spec


class VendorFileInvalid(ValidationFailed):
    """The vendors file (or stored vendor) is invalid.

    ``details == {"file": filename, "problems": [{"vendor", "field", "message"}, ...]}`` where
    ``vendor`` is the vendor id, or ``"#<0-based index>"`` when the id itself is unusable, or
    ``None`` for file-level problems (``field`` is then the top-level key or ``None``). TOML
    syntax errors carry an extra ``"line"`` key.
    """

    code = "invalid_vendor_file"

    @classmethod
    def from_problems(cls, filename: str, problems: list[dict[str, Any]]) -> VendorFileInvalid:
        """One-line message: file, first problem's vendor and field, and the problem count."""
        first = problems[0]
        parts = [filename]
        if (vendor := first["vendor"]) is not None:
            parts.append(f"vendor {vendor}" if vendor.startswith("#") else f"vendor {vendor!r}")
        if first["field"] is not None:
            parts.append(str(first["field"]))
        message = ": ".join([*parts, first["message"]])
        if more := len(problems) - 1:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        return cls(message, details={"file": filename, "problems": problems})


def parse_time_range(text: str) -> TimeRange:
    """Parse ``"HH:MM-HH:MM"``: HH 00-23 (``24:00`` allowed only as the end), MM 00-59, end
    strictly after start. Raises ``ValueError`` with a message quoting ``text``."""
    match = _RANGE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time range like '09:00-17:00'")
    sh, sm, eh, em = (int(g) for g in match.groups())
    if sh == 24 and sm == 0:
        raise ValueError(f"{text!r} starts at 24:00; 24:00 can only end a range")
    for hour, minute in ((sh, sm), (eh, em)):
        if minute > 59 or hour > 24 or (hour == 24 and minute != 0):
            raise ValueError(f"{text!r} has an invalid time {hour:02d}:{minute:02d}")
    start, end = sh * 60 + sm, eh * 60 + em
    if end < start:
        raise ValueError(f"{text!r} ends before it starts")
    if end == start:
        raise ValueError(f"{text!r} is empty: the end must be after the start")
    return TimeRange(start, end)


def parse_vendor_document(
    text: str, *, filename: str, base_dir: str | None = None
) -> list[VendorSpec]:
    """Parse and validate a whole vendors file; raise one ``VendorFileInvalid`` listing every
    problem (invalid TOML, no vendors, unknown keys, bad fields, duplicate ids).

    ``base_dir`` (the file's directory, absolute) anchors relative calendar paths (an ICS
    ``source``, a ``credentials`` file) and ``file:`` URLs become paths, so what is stored
    means the same from any working directory."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        problem = _problem(None, None, f"invalid TOML: {exc}")
        problem["line"] = int(line.group(1)) if line else text.count("\n") + 1
        raise VendorFileInvalid.from_problems(filename, [problem]) from None
    problems: list[dict[str, Any]] = [
        _problem(None, key, "unknown top-level key (only [[vendors]] tables are allowed)")
        for key in data
        if key != "vendors"
    ]
    raw = data.get("vendors", [])
    specs: list[VendorSpec] = []
    if not isinstance(raw, list):
        problems.append(_problem(None, "vendors", "must be an array of tables ([[vendors]])"))
    elif not raw:
        problems.append(_problem(None, None, "no vendors: add at least one [[vendors]] table"))
    else:
        first_index: dict[str, int] = {}
        for index, entry in enumerate(raw):
            if not isinstance(entry, dict):
                problems.append(_problem(f"#{index}", None, "must be a [[vendors]] table"))
                continue
            spec = _parse_vendor(entry, index, problems, base_dir)
            vid = entry.get("id")
            if isinstance(vid, str) and _ID_RE.fullmatch(vid):
                if vid in first_index:
                    msg = f"duplicate vendor id (also used by vendor #{first_index[vid]})"
                    problems.append(_problem(vid, "id", msg))
                else:
                    first_index[vid] = index
            if spec is not None:
                specs.append(spec)
    if problems:
        raise VendorFileInvalid.from_problems(filename, problems)
    return specs


# --- internals -------------------------------------------------------------------------------


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _range_key(r: TimeRange) -> tuple[int, int]:
    return (r.start, r.end)


def _problem(vendor: str | None, fld: str | None, message: str) -> dict[str, Any]:
    return {"vendor": vendor, "field": fld, "message": message}


def _describe(value: object) -> str:
    kinds = [
        (bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a float"),
        (list, "an array"), (dict, "a table"), (datetime.datetime, "a date-time"),
        (datetime.date, "a date"), (datetime.time, "a time"),
    ]  # fmt: skip
    kind = next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)
    return f"{kind} ({value!r})" if isinstance(value, str | int | float) else kind


class _Checker:
    """Per-vendor validation; records problems under the vendor's label."""

    def __init__(self, label: str, problems: list[dict[str, Any]]) -> None:
        self.label = label
        self.problems = problems
        self.ok = True

    def fail(self, fld: str, message: str) -> None:
        self.ok = False
        self.problems.append(_problem(self.label, fld, message))

    def unknown_keys(self, table: Mapping[str, object], allowed: frozenset[str], at: str) -> None:
        for key in table:
            if key not in allowed:
                self.fail(f"{at}{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def string(
        self, table: Mapping[str, object], key: str, at: str = "", max_length: int | None = None
    ) -> str | None:
        value = table.get(key, _MISSING)
        if value is _MISSING:
            self.fail(at + key, "required")
            return None
        if not isinstance(value, str):
            self.fail(at + key, f"must be a string, got {_describe(value)}")
            return None
        if not value.strip():
            self.fail(at + key, "must not be empty")
            return None
        if not value.isprintable():  # shown in tables and terminals: no line breaks, escapes
            self.fail(at + key, "must not contain control characters (line breaks, escapes)")
            return None
        if max_length is not None and len(value) > max_length:
            self.fail(at + key, f"must be at most {max_length} characters, got {len(value)}")
            return None
        return value

    def integer(self, table: Mapping[str, object], key: str, default: int, lo: int, hi: int) -> int:
        value = table.get(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " of minor units (e.g. 1250 for 12.50)" if key in ("price", "deposit") else ""
            self.fail(key, f"must be an integer{hint}, got {_describe(value)}")
            return default
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def ranges(self, value: object, at: str) -> tuple[TimeRange, ...]:
        if not isinstance(value, list):
            self.fail(at, f'must be an array of "HH:MM-HH:MM" strings, got {_describe(value)}')
            return ()
        parsed: list[tuple[TimeRange, str]] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{at}[{i}]", f'must be a "HH:MM-HH:MM" string, got {_describe(item)}')
                continue
            try:
                parsed.append((parse_time_range(item), f"{at}[{i}]"))
            except ValueError as exc:
                self.fail(f"{at}[{i}]", str(exc))
        parsed.sort(key=lambda p: _range_key(p[0]))
        reach: TimeRange | None = None  # the range reaching furthest so far
        for cur, where in parsed:
            if reach is not None and cur.start < reach.end:
                self.fail(where, f"'{cur}' overlaps '{reach}'")
            if reach is None or cur.end > reach.end:
                reach = cur
        return tuple(r for r, _ in parsed)


def _parse_vendor(
    table: Mapping[str, object], index: int, problems: list[dict[str, Any]], base_dir: str | None
) -> VendorSpec | None:
    raw_id = table.get("id")
    valid_id = isinstance(raw_id, str) and _ID_RE.fullmatch(raw_id) is not None
    ck = _Checker(raw_id if isinstance(raw_id, str) and valid_id else f"#{index}", problems)
    ck.unknown_keys(table, _VENDOR_KEYS, "")
    vid = ck.string(table, "id")
    if vid is not None and not valid_id:
        ck.fail("id", f"{vid!r} must be 1-64 characters of a-z, 0-9 and '-'")
    name = ck.string(table, "name", max_length=MAX_NAME_LENGTH)
    tz = ck.string(table, "timezone")
    if tz is not None:
        try:
            if tz == "localtime":
                raise ValueError(tz)
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            ck.fail("timezone", f"{tz!r} is not an IANA time zone name like 'Europe/London'")
    slot = ck.integer(table, "slot_minutes", 30, 5, MINUTES_PER_DAY)
    interval = ck.integer(table, "slot_interval_minutes", slot, 1, MINUTES_PER_DAY)
    before = ck.integer(table, "buffer_before_minutes", 0, 0, MAX_BUFFER_MINUTES)
    after = ck.integer(table, "buffer_after_minutes", 0, 0, MAX_BUFFER_MINUTES)
    notice = ck.integer(table, "min_notice_minutes", 0, 0, MAX_BUFFER_MINUTES)
    advance = ck.integer(table, "max_advance_days", 60, 1, 3650)
    price = ck.integer(table, "price", 0, 0, 2**63 - 1)
    deposit = ck.integer(table, "deposit", 0, 0, 2**63 - 1)
    currency = "usd"
    if "currency" in table:
        raw_cur = table["currency"]
        if isinstance(raw_cur, str) and _CURRENCY_RE.fullmatch(raw_cur):
            currency = raw_cur.lower()
        else:
            ck.fail("currency", f"must be a 3-letter ISO code like 'usd', got {_describe(raw_cur)}")

    hours: dict[str, tuple[TimeRange, ...]] = {}
    raw_hours = table.get("hours", {})
    if not isinstance(raw_hours, dict):
        ck.fail("hours", f"must be a table of weekday = [ranges], got {_describe(raw_hours)}")
    else:
        ck.unknown_keys(raw_hours, frozenset(WEEKDAYS), "hours.")
        for day in WEEKDAYS:
            if day in raw_hours:
                hours[day] = ck.ranges(raw_hours[day], f"hours.{day}")

    overrides = _parse_overrides(ck, table.get("overrides", []))
    calendars = _parse_calendars(ck, table.get("calendars", []), base_dir)
    payment = _parse_refs(ck, table.get("payment", {}), "payment", PAYMENT_KEYS)
    notify = _parse_refs(ck, table.get("notify", {}), "notify", NOTIFY_KEYS)
    if not ck.ok or vid is None or name is None or tz is None:
        return None
    return VendorSpec(
        vid, name, tz, slot, interval, before, after, notice, advance, currency, price, deposit,
        hours, overrides, calendars, payment, notify,
    )  # fmt: skip


def _parse_refs(
    ck: _Checker, raw: object, at: str, allowed: Mapping[str, re.Pattern[str]]
) -> dict[str, str]:
    """A small table of string references, each checked against its pattern."""
    if not isinstance(raw, dict):
        ck.fail(at, f"must be a table ([vendors.{at}]), got {_describe(raw)}")
        return {}
    ck.unknown_keys(raw, frozenset(allowed), f"{at}.")
    found: dict[str, str] = {}
    for key, pattern in allowed.items():
        if key not in raw:
            continue
        value = raw[key]
        limit = MAX_LENGTHS.get(key)  # none for the webhook URL: it is stored sealed, as text
        if isinstance(value, str) and limit is not None and len(value) > limit:
            ck.fail(f"{at}.{key}", f"must be at most {limit} characters, got {len(value)}")
        elif isinstance(value, str) and pattern.fullmatch(value):
            found[key] = value
        else:
            ck.fail(f"{at}.{key}", f"{_describe(value)} is not a valid {key.replace('_', ' ')}")
    return found


def _parse_overrides(ck: _Checker, raw: object) -> tuple[DateOverride, ...]:
    if not isinstance(raw, list):
        ck.fail(
            "overrides", f"must be an array of tables ([[vendors.overrides]]), got {_describe(raw)}"
        )
        return ()
    out: list[DateOverride] = []
    seen: dict[datetime.date, int] = {}
    for i, entry in enumerate(raw):
        at = f"overrides[{i}]"
        if not isinstance(entry, dict):
            ck.fail(at, f"must be a table, got {_describe(entry)}")
            continue
        ck.unknown_keys(entry, frozenset({"date", "hours", "closed"}), at + ".")
        day = _override_date(ck, entry.get("date", _MISSING), at + ".date")
        if day is not None:
            if day in seen:
                ck.fail(at + ".date", f"another override for {day} (overrides[{seen[day]}])")
            seen.setdefault(day, i)
        has_hours, closed = "hours" in entry, entry.get("closed", _MISSING)
        ranges: tuple[TimeRange, ...] = ()
        if closed is not _MISSING and closed is not True:
            ck.fail(
                at + ".closed", f"must be true (or give hours instead), got {_describe(closed)}"
            )
        elif has_hours and closed is True:
            ck.fail(at, "give either hours or closed = true, not both")
        elif not has_hours and closed is _MISSING:
            ck.fail(at, "give either hours (a list, may be empty) or closed = true")
        elif has_hours:
            ranges = ck.ranges(entry["hours"], at + ".hours")
        if day is not None:
            out.append(DateOverride(day, ranges))
    return tuple(out)


def _override_date(ck: _Checker, value: object, at: str) -> datetime.date | None:
    if value is _MISSING:
        ck.fail(at, "required")
        return None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str) and _DATE_RE.fullmatch(value):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    ck.fail(at, f"must be a date like 2026-12-24, got {_describe(value)}")
    return None


_FEED_SCHEMES = frozenset({"http", "https", "webcal", "webcals"})


def _local_path(
    ck: _Checker, value: str, at: str, base_dir: str | None, *, urls: bool
) -> str | None:
    """A file named by a path or a ``file:`` URL, absolute against ``base_dir``; a feed URL
    (``urls``) as it is. Anything else fails ``at``."""
    scheme = urlsplit(value).scheme.lower() if ":" in value else ""
    if urls and scheme in _FEED_SCHEMES:
        return value
    path = value
    if scheme == "file":
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            ck.fail(at, f"{value!r}: a file: URL must name a file on this machine (file:///path)")
            return None
        path = unquote(parts.path)
        if not path:
            ck.fail(at, f"{value!r} names no file")
            return None
    elif len(scheme) > 1 and "://" in value:
        allowed = "http(s) or webcal URL, a file path" if urls else "file path"
        ck.fail(at, f"{value!r}: unsupported URL scheme {scheme!r} (give a {allowed})")
        return None
    if base_dir is not None and not PurePath(path).is_absolute():
        path = str(PurePath(base_dir) / path)
    return path


def _parse_calendars(
    ck: _Checker, raw: object, base_dir: str | None = None
) -> tuple[CalendarSpec, ...]:
    if not isinstance(raw, list):
        ck.fail(
            "calendars", f"must be an array of tables ([[vendors.calendars]]), got {_describe(raw)}"
        )
        return ()
    out: list[CalendarSpec] = []
    for i, entry in enumerate(raw):
        at = f"calendars[{i}]."
        if not isinstance(entry, dict):
            ck.fail(at[:-1], f"must be a table, got {_describe(entry)}")
            continue
        ck.unknown_keys(entry, frozenset({"provider", "source", "name", "credentials"}), at)
        provider = entry.get("provider")
        if provider not in PROVIDERS:
            ck.fail(
                at + "provider", f"must be one of ics, google, outlook, got {_describe(provider)}"
            )
        source = ck.string(entry, "source", at)
        name = ck.string(entry, "name", at, MAX_NAME_LENGTH) if "name" in entry else None
        creds = ck.string(entry, "credentials", at) if "credentials" in entry else None
        if creds is not None and not creds.startswith("json:"):
            creds = _local_path(ck, creds, at + "credentials", base_dir, urls=False)
        if provider == "ics" and source is not None:
            source = _local_path(ck, source, at + "source", base_dir, urls=True)
        if isinstance(provider, str) and provider in PROVIDERS and source is not None:
            out.append(CalendarSpec(provider, source, name, creds))
    return tuple(out)
