"""The vendors file: what an operator writes in TOML and what they are told when it is wrong."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bookiji.domain.errors import ValidationFailed
from bookiji.domain.vendors import (
    WEEKDAYS,
    CalendarSpec,
    DateOverride,
    TimeRange,
    VendorFileInvalid,
    VendorSpec,
    parse_time_range,
    parse_vendor_document,
)

EXAMPLE = """
[[vendors]]
id = "salon-ana"
name = "Salon Ana"
timezone = "Europe/London"
slot_minutes = 30
slot_interval_minutes = 30
buffer_before_minutes = 10
buffer_after_minutes = 10
min_notice_minutes = 60
max_advance_days = 60
currency = "GBP"
price = 5000
deposit = 1000
[vendors.hours]
mon = ["13:00-17:00", "09:00-12:00"]
tue = ["09:00-17:00"]
[[vendors.overrides]]
date = "2026-12-24"
hours = ["09:00-12:00"]
[[vendors.overrides]]
date = 2026-12-20
closed = true
[[vendors.calendars]]
provider = "ics"
source = "path/or/url.ics"
"""


def R(text: str) -> TimeRange:
    return parse_time_range(text)


def vendor_toml(extra: str = "", **fields: str | None) -> str:
    """One [[vendors]] table: valid required fields unless replaced (None = omitted)."""
    values: dict[str, str | None] = {"id": '"v1"', "name": '"V"', "timezone": '"UTC"', **fields}
    lines = [f"{k} = {v}" for k, v in values.items() if v is not None]
    return "[[vendors]]\n" + "\n".join(lines) + "\n" + extra + "\n"


def problems_of(text: str) -> tuple[str, list[dict[str, object]]]:
    with pytest.raises(VendorFileInvalid) as info:
        parse_vendor_document(text, filename="vendors.toml")
    assert isinstance(info.value, ValidationFailed)
    assert info.value.code == "invalid_vendor_file"
    assert info.value.details["file"] == "vendors.toml"
    return str(info.value), info.value.details["problems"]


def test_full_example_parses_to_expected_values() -> None:
    [spec] = parse_vendor_document(EXAMPLE, filename="vendors.toml")
    assert spec == VendorSpec(
        id="salon-ana", name="Salon Ana", timezone="Europe/London", slot_minutes=30,
        slot_interval_minutes=30, buffer_before_minutes=10, buffer_after_minutes=10,
        min_notice_minutes=60, max_advance_days=60, currency="gbp", price=5000, deposit=1000,
        hours={"mon": (R("09:00-12:00"), R("13:00-17:00")), "tue": (R("09:00-17:00"),)},
        overrides=(
            DateOverride(datetime.date(2026, 12, 20), ()),
            DateOverride(datetime.date(2026, 12, 24), (TimeRange(540, 720),)),
        ),
        calendars=(CalendarSpec("ics", "path/or/url.ics"),),
    )  # fmt: skip
    assert spec.hours_document() == {"mon": ["09:00-12:00", "13:00-17:00"], "tue": ["09:00-17:00"]}
    assert spec.overrides_document() == [
        {"date": "2026-12-20", "hours": []},
        {"date": "2026-12-24", "hours": ["09:00-12:00"]},
    ]
    assert spec.calendars_document() == [{"provider": "ics", "source": "path/or/url.ics"}]


def test_defaults_for_omitted_fields() -> None:
    [spec] = parse_vendor_document(vendor_toml(slot_minutes="45"), filename="v.toml")
    assert (spec.slot_minutes, spec.slot_interval_minutes) == (45, 45)
    assert (spec.buffer_before_minutes, spec.buffer_after_minutes, spec.min_notice_minutes) == (
        0, 0, 0,
    )  # fmt: skip
    assert (spec.max_advance_days, spec.currency, spec.price, spec.deposit) == (60, "usd", 0, 0)
    assert dict(spec.hours) == {} and spec.overrides == () and spec.calendars == ()
    [spec] = parse_vendor_document(vendor_toml(), filename="v.toml")
    assert (spec.slot_minutes, spec.slot_interval_minutes) == (30, 30)


def test_time_ranges_24_00_only_as_an_end() -> None:
    assert parse_time_range("22:00-24:00") == TimeRange(1320, 1440)
    assert str(TimeRange(1320, 1440)) == "22:00-24:00"
    with pytest.raises(ValueError, match="24:00 can only end a range"):
        parse_time_range("24:00-24:00")
    for bad in ("9:00-10:00", "24:30-25:00", "10:60-11:00", "10:00-10:00", "x"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_time_range(bad)


H = "[vendors.hours]\n"
OVR = "[[vendors.overrides]]\n"
CAL = "[[vendors.calendars]]\n"
# fmt: off
REJECTIONS = [
    # (vendor_toml kwargs, expected vendor label, field, message fragment)
    ({"id": '"Bad_ID"'}, "#0", "id", "must be 1-64 characters"),
    ({"id": None}, "#0", "id", "required"),
    ({"name": '"  "'}, "v1", "name", "must not be empty"),
    ({"timezone": '"Mars/Olympus"'}, "v1", "timezone", "not an IANA time zone"),
    ({"slot_minutes": "4"}, "v1", "slot_minutes", "between 5 and 1440"),
    ({"slot_minutes": '"30"'}, "v1", "slot_minutes", "must be an integer, got a string ('30')"),
    ({"slot_interval_minutes": "0"}, "v1", "slot_interval_minutes", "between 1 and 1440"),
    ({"buffer_before_minutes": "-1"}, "v1", "buffer_before_minutes", "between 0 and 10080"),
    ({"min_notice_minutes": "10081"}, "v1", "min_notice_minutes", "between 0 and 10080"),
    ({"max_advance_days": "3651"}, "v1", "max_advance_days", "between 1 and 3650"),
    ({"currency": '"usdx"'}, "v1", "currency", "3-letter ISO code"),
    ({"price": "12.5"}, "v1", "price", "integer of minor units"),
    ({"deposit": "true"}, "v1", "deposit", "got a boolean"),
    ({"colour": '"red"'}, "v1", "colour", "unknown key"),
    ({"extra": H + 'xyz = ["09:00-10:00"]'}, "v1", "hours.xyz", "unknown key"),
    ({"extra": H + 'mon = "09:00-17:00"'}, "v1", "hours.mon", "must be an array"),
    ({"extra": H + 'mon = ["09:00-12:00", "17:00-09:00"]'}, "v1", "hours.mon[1]", "ends before"),
    ({"extra": H + 'sun = ["24:00-24:00"]'}, "v1", "hours.sun[0]", "24:00 can only end"),
    ({"extra": H + 'mon = ["11:00-13:00", "09:00-12:00"]'}, "v1", "hours.mon[0]", "overlaps"),
    ({"extra": OVR + 'date = "2026-12-24"\nhours = []\nclosed = true'}, "v1", "overrides[0]",
     "not both"),
    ({"extra": OVR + 'date = "2026-12-24"'}, "v1", "overrides[0]", "give either hours"),
    ({"extra": OVR + 'date = "2026-12-24"\nclosed = false'}, "v1", "overrides[0].closed", "true"),
    ({"extra": OVR + 'date = "24/12/2026"\nclosed = true'}, "v1", "overrides[0].date", "a date"),
    ({"extra": OVR + "date = 2026-12-24\nclosed = true\n" + OVR + 'date = "2026-12-24"\nhours=[]'},
     "v1", "overrides[1].date", "another override for 2026-12-24"),
    ({"extra": OVR + "date = 2026-12-24\nclosed = true\nnote = 1"}, "v1", "overrides[0].note",
     "unknown key"),
    ({"extra": CAL + 'provider = "caldav"\nsource = "x"'}, "v1", "calendars[0].provider", "one of"),
    ({"extra": CAL + 'provider = "ics"'}, "v1", "calendars[0].source", "required"),
    ({"extra": CAL + 'provider = "google"\nsource = "x"\ntoken = "t"'}, "v1",
     "calendars[0].token", "unknown key"),
]
# fmt: on


@pytest.mark.parametrize(("kwargs", "vendor", "field", "fragment"), REJECTIONS)
def test_each_rejection_names_vendor_and_field(
    kwargs: dict[str, str | None], vendor: str, field: str, fragment: str
) -> None:
    message, problems = problems_of(vendor_toml(**kwargs))
    assert len(problems) == 1, problems
    assert problems[0]["vendor"] == vendor and problems[0]["field"] == field
    assert fragment in str(problems[0]["message"])
    label = f"vendor {vendor}" if vendor.startswith("#") else f"vendor '{vendor}'"
    assert message.startswith(f"vendors.toml: {label}: {field}: ")
    assert fragment in message and "more problem" not in message


def test_touching_ranges_and_24_00_end_are_fine_overlaps_are_not() -> None:
    extra = H + 'fri = ["12:00-13:00", "09:00-12:00", "20:00-24:00"]'
    [spec] = parse_vendor_document(vendor_toml(extra=extra), filename="v.toml")
    assert spec.hours_document() == {"fri": ["09:00-12:00", "12:00-13:00", "20:00-24:00"]}
    _, problems = problems_of(
        vendor_toml(H + 'mon = ["09:00-17:00", "10:00-11:00", "12:00-13:00"]')
    )
    assert [p["message"] for p in problems] == [
        "'10:00-11:00' overlaps '09:00-17:00'",
        "'12:00-13:00' overlaps '09:00-17:00'",
    ]


def test_all_problems_are_reported_in_one_error() -> None:
    text = vendor_toml(H + 'mon = ["17:00-09:00"]', price="-5") + vendor_toml(
        id='"v2"', currency='"eu"'
    )
    message, problems = problems_of(text)
    assert [(p["vendor"], p["field"]) for p in problems] == [
        ("v1", "price"), ("v1", "hours.mon[0]"), ("v2", "currency"),
    ]  # fmt: skip
    assert message.startswith("vendors.toml: vendor 'v1': price: ")
    assert message.endswith("(and 2 more problems)")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no vendors"),
        ('title = "x"\n', "unknown top-level key"),
        (vendor_toml() + vendor_toml(), "duplicate vendor id"),
        ('[[vendors]]\nid = "a"\nname = \n', "invalid TOML"),
    ],
)
def test_file_level_problems(text: str, fragment: str) -> None:
    message, _ = problems_of(text)
    assert message.startswith("vendors.toml: ") and fragment in message


def test_invalid_toml_names_the_line() -> None:
    message, problems = problems_of('[[vendors]]\nid = "a"\nname = \n')
    assert "line 3" in message and problems[0]["line"] == 3


def test_round_trip_through_documents() -> None:
    [spec] = parse_vendor_document(EXAMPLE, filename="vendors.toml")
    rebuilt = VendorSpec.from_documents(
        **{k: getattr(spec, k) for k in ("id", "name", "timezone", "slot_minutes", "currency")},
        slot_interval_minutes=spec.slot_interval_minutes,
        buffer_before_minutes=spec.buffer_before_minutes,
        buffer_after_minutes=spec.buffer_after_minutes,
        min_notice_minutes=spec.min_notice_minutes,
        max_advance_days=spec.max_advance_days,
        price=spec.price,
        deposit=spec.deposit,
        hours=json.loads(json.dumps(spec.hours_document())),
        overrides=json.loads(json.dumps(spec.overrides_document())),
        calendars=json.loads(json.dumps(spec.calendars_document())),
    )
    assert rebuilt == spec
    with pytest.raises(VendorFileInvalid, match=r"hours\.mon\[0\]"):
        VendorSpec.from_documents(id="x", name="X", timezone="UTC", hours={"mon": ["bad"]})


# --- property: any valid vendor rendered to TOML parses back equal ------------------------------

# What a vendors file accepts as text: printable (no control, format, unassigned or private
# characters, no separators but the plain space), not blank, and no longer than a name's
# column (200).
text_values = st.text(
    st.characters(
        exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs"),
        include_characters=" ",
    ),
    min_size=1,
    max_size=200,
).filter(str.strip)


@st.composite
def day_ranges(draw: st.DrawFn) -> tuple[TimeRange, ...]:
    points = sorted(draw(st.sets(st.integers(0, 1440), max_size=6)))
    return tuple(TimeRange(a, b) for a, b in zip(points[::2], points[1::2], strict=False))


@st.composite
def vendors(draw: st.DrawFn) -> VendorSpec:
    dates = draw(st.lists(st.dates(), unique=True, max_size=3))
    return VendorSpec(
        id=draw(st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True)),
        name=draw(text_values),
        timezone=draw(st.sampled_from(["UTC", "Europe/London", "America/New_York"])),
        slot_minutes=draw(st.integers(5, 1440)),
        slot_interval_minutes=draw(st.integers(1, 1440)),
        buffer_before_minutes=draw(st.integers(0, 10080)),
        buffer_after_minutes=draw(st.integers(0, 10080)),
        min_notice_minutes=draw(st.integers(0, 10080)),
        max_advance_days=draw(st.integers(1, 3650)),
        currency=draw(st.from_regex(r"[a-z]{3}", fullmatch=True)),
        price=draw(st.integers(0, 10**12)),
        deposit=draw(st.integers(0, 10**12)),
        hours={d: draw(day_ranges()) for d in draw(st.sets(st.sampled_from(WEEKDAYS)))},
        overrides=tuple(DateOverride(d, draw(day_ranges())) for d in dates),
        calendars=tuple(
            draw(st.builds(
                CalendarSpec, st.sampled_from(["ics", "google", "outlook"]), text_values,
                st.none() | text_values, st.none() | text_values,
            ))
            for _ in range(draw(st.integers(0, 2)))
        ),
    )  # fmt: skip


def render(spec: VendorSpec) -> str:
    def q(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    scalars = {k: v for k, v in vars(spec).items() if isinstance(v, str | int)}
    lines = ["[[vendors]]", *(f"{k} = {q(v)}" for k, v in scalars.items()), "[vendors.hours]"]
    lines += [f"{day} = {q([str(r) for r in reversed(rs)])}" for day, rs in spec.hours.items()]
    for o in spec.overrides:
        when = o.date.isoformat() if o.date.year % 2 else q(o.date.isoformat())
        hours = "closed = true" if not o.hours else f"hours = {q([str(r) for r in o.hours])}"
        lines += ["[[vendors.overrides]]", f"date = {when}", hours]
    for doc in spec.calendars_document():
        lines += ["[[vendors.calendars]]", *(f"{k} = {q(v)}" for k, v in doc.items())]
    return "\n".join(lines) + "\n"


@given(vendors())
def test_any_valid_vendor_rendered_to_toml_parses_back_equal(spec: VendorSpec) -> None:
    assert parse_vendor_document(render(spec), filename="gen.toml") == [spec]


def test_payment_and_notify_tables_are_optional_and_checked() -> None:
    text = """
[[vendors]]
id = "salon-ana"
name = "Salon Ana"
timezone = "Europe/London"
[vendors.payment]
customer = "cus_123abc"
payment_method = "pm_card_visa"
account = "acct_1Abc"
[vendors.notify]
email = "ana@salon.example"
webhook = "https://salon.example/bookiji"
sms = "+447700900123"
"""
    [spec] = parse_vendor_document(text, filename="v.toml")
    assert spec.payment == {
        "customer": "cus_123abc",
        "payment_method": "pm_card_visa",
        "account": "acct_1Abc",
    }
    assert spec.notify["sms"] == "+447700900123"
    bad = text.replace('sms = "+447700900123"', 'sms = "07700 900123"').replace(
        'account = "acct_1Abc"', 'account = "acct_1Abc"\nbank = "x"'
    )
    with pytest.raises(VendorFileInvalid) as caught:
        parse_vendor_document(bad, filename="v.toml")
    fields = {p["field"] for p in caught.value.details["problems"]}
    assert fields == {"notify.sms", "payment.bank"}


def test_calendar_files_are_anchored_at_the_vendors_file() -> None:
    """Relative paths were stored as written, so they meant whatever directory a sync ran in."""
    calendars = (
        '[[vendors.calendars]]\nprovider = "ics"\nsource = "feeds/ana.ics"\n'
        '[[vendors.calendars]]\nprovider = "google"\nsource = "primary"\n'
        'credentials = "keys/sa.json"\n'
        '[[vendors.calendars]]\nprovider = "google"\nsource = "b@example.com"\n'
        'credentials = "file:///etc/bookiji/sa%20b.json"\n'
        '[[vendors.calendars]]\nprovider = "ics"\nsource = "webcal://cal.example/a.ics"\n'
    )
    [spec] = parse_vendor_document(
        vendor_toml(calendars), filename="vendors.toml", base_dir="/srv/bookiji"
    )
    assert [(c.source, c.credentials) for c in spec.calendars] == [
        ("/srv/bookiji/feeds/ana.ics", None),
        ("primary", "/srv/bookiji/keys/sa.json"),
        ("b@example.com", "/etc/bookiji/sa b.json"),
        ("webcal://cal.example/a.ics", None),
    ]
    message, problems = problems_of(
        vendor_toml(
            '[[vendors.calendars]]\nprovider = "ics"\nsource = "ftp://files.example/a.ics"\n'
        )
    )
    assert problems[0]["field"] == "calendars[0].source"
    assert "unsupported URL scheme 'ftp'" in message
