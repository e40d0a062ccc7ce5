"""Partners and API keys on SQLite and Postgres: shown once, stored hashed, scoped,
rotated with overlap, revoked, and refused with one generic 401 for every failure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from sqlalchemy import inspect, text
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from bookiji.cli import apikeys as apikeys_cli
from bookiji.cli import partners as partners_cli
from bookiji.cli.context import CliState
from bookiji.domain.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from bookiji.services.apikeys import (
    CACHE_TTL,
    SCOPES,
    UNAUTHORIZED_MESSAGE,
    ApiKeyService,
    ApiPrincipal,
)
from bookiji.services.clock import ManualClock
from bookiji.store.database import Database
from bookiji.store.models import PartnerApiKey
from bookiji.store.uow import UnitOfWork
from tests.conftest import T0

KEY_FORMAT = re.compile(r"bk_live_([0-9a-f]{12})_([A-Za-z0-9_-]{32})")


@pytest.fixture
def service(db: Database, clock: ManualClock) -> ApiKeyService:
    svc = ApiKeyService(db, clock)
    svc.add_partner("acme", "Acme Travel", "https://acme.example/hooks")
    return svc


def refused(service: ApiKeyService, raw: str | None) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        service.authenticate(raw)
    exc = caught.value
    assert exc.message == UNAUTHORIZED_MESSAGE
    assert exc.details == {}
    if raw:
        assert raw not in str(exc) and raw not in json.dumps(exc.to_envelope())
    return exc


def dump_database(db: Database) -> list[str]:
    """Every value of every column of every table, as text."""
    values: list[str] = []
    with db.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                values.extend(json.dumps(v) if isinstance(v, dict | list) else str(v) for v in row)
    return values


# -- issuing keys ------------------------------------------------------------------------------


def test_key_is_shown_once_and_only_its_hash_is_stored(
    service: ApiKeyService, db: Database
) -> None:
    key, plaintext = service.create_key("acme")
    match = KEY_FORMAT.fullmatch(plaintext)
    assert match is not None
    prefix, secret = match.groups()
    assert key.prefix == prefix
    assert key.key_hash.startswith("scrypt$n=16384,r=8,p=1$")
    assert set(key.scopes) == SCOPES
    assert key.expires_at is None and key.revoked_at is None and key.last_used_at is None

    values = dump_database(db)
    assert any(prefix in v for v in values), "the prefix is stored for lookup"
    assert not [v for v in values if plaintext in v or secret in v]
    # Listing gives back rows, never the plaintext.
    listed = service.list_keys("acme")
    assert [k.id for k in listed] == [key.id]
    assert plaintext not in repr(listed[0].model_dump())


def test_each_key_has_its_own_salt(service: ApiKeyService) -> None:
    first, _ = service.create_key("acme")
    second, _ = service.create_key("acme")
    assert first.prefix != second.prefix
    assert first.key_hash.split("$")[2] != second.key_hash.split("$")[2]


def test_scopes_are_validated(service: ApiKeyService) -> None:
    key, _ = service.create_key("acme", scopes=["events:read", "availability:read"])
    assert key.scopes == ["availability:read", "events:read"]
    with pytest.raises(ValidationFailed) as caught:
        service.create_key("acme", scopes=["reservations:read", "admin:all"])
    assert caught.value.details["unknown"] == ["admin:all"]
    with pytest.raises(ValidationFailed):
        service.create_key("acme", scopes=[])
    with pytest.raises(ValidationFailed):
        service.create_key("acme", expires_in=timedelta(0))
    with pytest.raises(NotFound):
        service.create_key("nobody")


# -- partners ----------------------------------------------------------------------------------


def test_partner_gets_a_standard_webhooks_secret(service: ApiKeyService) -> None:
    partner, secret = service.add_partner("globex", "Globex", None)
    assert partner.id == "globex" and partner.webhook_url is None
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    # The secret works with the Standard Webhooks reference implementation.
    hook = Webhook(secret)
    body = '{"type":"reservation.held"}'
    sent_at = datetime.now(UTC)  # verify() checks the timestamp against the real clock
    signature = hook.sign("msg_1", sent_at, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(sent_at.timestamp()))}
    assert hook.verify(body, {**headers, "webhook-signature": signature}) is not None

    rotated = service.rotate_webhook_secret("globex", overlap=timedelta(0))
    assert rotated != secret and rotated.startswith("whsec_")
    assert service.get_partner("globex").webhook_secret == rotated
    assert [p.id for p in service.list_partners()] == ["acme", "globex"]


@pytest.mark.parametrize("bad", ["Acme", "a_b", "", "a" * 65, "acme!", "ac me"])
def test_partner_ids_are_checked(service: ApiKeyService, bad: str) -> None:
    with pytest.raises(ValidationFailed):
        service.add_partner(bad, "Bad")


def test_duplicate_partner_is_refused(service: ApiKeyService) -> None:
    with pytest.raises(Conflict, match="already exists"):
        service.add_partner("acme", "Acme again")
    with pytest.raises(ValidationFailed):
        service.add_partner("other", "Other", "ftp://nope")
    with pytest.raises(NotFound):
        service.rotate_webhook_secret("nobody", overlap=timedelta(0))


# -- authentication ------------------------------------------------------------------------------


def test_authenticate_returns_the_principal_and_records_use(
    service: ApiKeyService, clock: ManualClock
) -> None:
    key, plaintext = service.create_key("acme", scopes=["availability:read"])
    principal = service.authenticate(plaintext)
    assert principal == ApiPrincipal("acme", key.id, frozenset({"availability:read"}))
    assert service.authenticate(f"  {plaintext}\n") == principal
    assert service.get_key(key.id).last_used_at == T0


def test_last_used_is_written_at_most_once_a_minute(
    service: ApiKeyService, clock: ManualClock
) -> None:
    key, plaintext = service.create_key("acme")
    service.authenticate(plaintext)
    clock.advance(timedelta(seconds=30))
    service.authenticate(plaintext)
    assert service.get_key(key.id).last_used_at == T0
    clock.advance(timedelta(seconds=31))
    service.authenticate(plaintext)
    assert service.get_key(key.id).last_used_at == T0 + timedelta(seconds=61)


def test_wrong_secret_is_refused(service: ApiKeyService) -> None:
    _, plaintext = service.create_key("acme")
    service.authenticate(plaintext)  # warm the cache: a wrong secret must still fail
    prefix, secret = KEY_FORMAT.fullmatch(plaintext).groups()  # type: ignore[union-attr]
    wrong = "A" * 32 if secret != "A" * 32 else "B" * 32
    refused(service, f"bk_live_{prefix}_{wrong}")
    refused(service, f"bk_live_{prefix}_{secret[:-1]}{'x' if secret[-1] != 'x' else 'y'}")


def test_unknown_prefix_is_refused(service: ApiKeyService) -> None:
    _, plaintext = service.create_key("acme")
    prefix, secret = KEY_FORMAT.fullmatch(plaintext).groups()  # type: ignore[union-attr]
    other = "0" * 12 if prefix != "0" * 12 else "1" * 12
    refused(service, f"bk_live_{other}_{secret}")


@pytest.mark.parametrize(
    "make",
    [
        lambda k: None,
        lambda k: "",
        lambda k: "   ",
        lambda k: f"Bearer {k}",
        lambda k: k.replace("bk_live_", "bk_test_"),
        lambda k: k[:-1],
        lambda k: k + "x",
        lambda k: k.upper(),
        lambda k: "bk_live_",
        lambda k: k.replace("_", "-"),
    ],
    ids=[
        "none",
        "empty",
        "blank",
        "bearer",
        "test-prefix",
        "short",
        "long",
        "upper",
        "stub",
        "dashes",
    ],
)
def test_malformed_keys_are_refused(
    service: ApiKeyService, make: Callable[[str], str | None]
) -> None:
    _, plaintext = service.create_key("acme")
    refused(service, make(plaintext))


def test_expired_key_is_refused(service: ApiKeyService, clock: ManualClock) -> None:
    key, plaintext = service.create_key("acme", expires_in=timedelta(hours=1))
    assert key.expires_at == T0 + timedelta(hours=1)
    clock.advance(timedelta(minutes=59))
    service.authenticate(plaintext)
    clock.advance(timedelta(minutes=1))
    refused(service, plaintext)


def test_revoked_key_is_refused(service: ApiKeyService, clock: ManualClock) -> None:
    key, plaintext = service.create_key("acme")
    service.authenticate(plaintext)
    revoked = service.revoke(key.id)
    assert revoked.revoked_at == T0
    refused(service, plaintext)
    clock.advance(timedelta(minutes=5))
    assert service.revoke(key.id).revoked_at == T0  # idempotent
    with pytest.raises(NotFound):
        service.revoke("key_missing")


def test_disabled_partner_is_refused(service: ApiKeyService) -> None:
    _, plaintext = service.create_key("acme")
    service.authenticate(plaintext)
    service.set_partner_disabled("acme", True)
    refused(service, plaintext)
    with pytest.raises(Conflict):
        service.create_key("acme")
    service.set_partner_disabled("acme", False)
    assert service.authenticate(plaintext).partner_id == "acme"


def test_missing_scope_is_forbidden_and_named(service: ApiKeyService) -> None:
    _, plaintext = service.create_key("acme", scopes=["availability:read", "reservations:read"])
    principal = service.authenticate(plaintext)
    principal.require("availability:read")
    with pytest.raises(Forbidden) as caught:
        principal.require("reservations:write")
    assert "reservations:write" in caught.value.message
    assert caught.value.details["requiredScope"] == "reservations:write"
    assert caught.value.http_status == 403


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_keeps_the_old_key_for_the_overlap(
    service: ApiKeyService, clock: ManualClock
) -> None:
    old, old_plain = service.create_key("acme", scopes=["events:read"])
    clock.advance(timedelta(minutes=10))
    new, new_plain = service.rotate(old.id, overlap=timedelta(hours=24))
    assert new.rotated_from == old.id and new.partner_id == "acme"
    assert new.scopes == ["events:read"] and new.expires_at is None
    assert new_plain != old_plain
    assert service.get_key(old.id).expires_at == T0 + timedelta(minutes=10, hours=24)

    clock.advance(timedelta(hours=23, minutes=59))
    assert service.authenticate(old_plain).key_id == old.id
    assert service.authenticate(new_plain).key_id == new.id
    clock.advance(timedelta(minutes=1))
    refused(service, old_plain)
    assert service.authenticate(new_plain).key_id == new.id


def test_rotation_never_extends_the_old_key_and_keeps_the_lifetime(
    service: ApiKeyService, clock: ManualClock
) -> None:
    old, _ = service.create_key("acme", expires_in=timedelta(hours=2))
    clock.advance(timedelta(hours=1))
    new, _ = service.rotate(old.id, overlap=timedelta(hours=24))
    assert service.get_key(old.id).expires_at == T0 + timedelta(hours=2)
    assert new.expires_at == T0 + timedelta(hours=3)  # same 2 h lifetime, from now


def test_rotation_with_zero_overlap_cuts_over_now(service: ApiKeyService) -> None:
    old, old_plain = service.create_key("acme")
    _, new_plain = service.rotate(old.id, overlap=timedelta(0))
    refused(service, old_plain)
    service.authenticate(new_plain)


def test_a_key_rotates_once_then_its_successor_does(
    service: ApiKeyService, clock: ManualClock
) -> None:
    """Rotating a key in its overlap again made a second successor, whose lifetime was
    taken from the overlap: a never-expiring key's heir died with the old key."""
    old, _ = service.create_key("acme")
    first, _ = service.rotate(old.id, overlap=timedelta(hours=1))
    clock.advance(timedelta(minutes=10))
    with pytest.raises(Conflict, match=f"already rotated into {first.id}") as caught:
        service.rotate(old.id, overlap=timedelta(hours=1))
    assert f"rotate {first.id} instead" in caught.value.message
    assert [k.id for k in service.list_keys("acme")].count(first.id) == 1
    assert len(service.list_keys("acme")) == 2  # no second successor
    second, _ = service.rotate(first.id, overlap=timedelta(hours=1))
    assert second.rotated_from == first.id and second.expires_at is None


def test_revoked_or_expired_keys_are_not_rotated(
    service: ApiKeyService, clock: ManualClock
) -> None:
    revoked, _ = service.create_key("acme")
    service.revoke(revoked.id)
    with pytest.raises(Conflict, match="revoked"):
        service.rotate(revoked.id, overlap=timedelta(hours=1))
    expiring, _ = service.create_key("acme", expires_in=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5))
    with pytest.raises(Conflict, match="expired"):
        service.rotate(expiring.id, overlap=timedelta(hours=1))
    with pytest.raises(ValidationFailed):
        service.rotate(revoked.id, overlap=timedelta(hours=-1))
    with pytest.raises(NotFound):
        service.rotate("key_missing", overlap=timedelta(hours=1))


# -- the verification cache and constant-time comparison ----------------------------------------


@pytest.fixture
def kdf_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


def test_hot_key_pays_the_kdf_once_per_ttl(
    service: ApiKeyService, clock: ManualClock, kdf_calls: list[int]
) -> None:
    _, plaintext = service.create_key("acme")
    kdf_calls.clear()
    for _ in range(5):
        service.authenticate(plaintext)
    assert len(kdf_calls) == 1
    clock.advance(CACHE_TTL)
    service.authenticate(plaintext)
    assert len(kdf_calls) == 2
    # A wrong secret for a cached prefix is never answered from the cache.
    prefix = KEY_FORMAT.fullmatch(plaintext).group(1)  # type: ignore[union-attr]
    refused(service, f"bk_live_{prefix}_{'Z' * 32}")
    assert len(kdf_calls) == 3


def test_revocation_by_another_daemon_applies_within_the_cache_ttl(
    db: Database, service: ApiKeyService, clock: ManualClock, kdf_calls: list[int]
) -> None:
    """Another process revokes (so this one's cache is not told); the key must stop working
    within CACHE_TTL. It stops on the very next request: the row is read on every call."""
    key, plaintext = service.create_key("acme")
    service.authenticate(plaintext)  # cached here
    other_daemon = ApiKeyService(db, clock)
    other_daemon.revoke(key.id)
    refused(service, plaintext)  # no clock advance at all: well within the TTL
    # The same holds for a partner disabled elsewhere.
    _, second_plain = service.create_key("acme")
    service.authenticate(second_plain)
    other_daemon.set_partner_disabled("acme", True)
    refused(service, second_plain)


def test_the_quick_path_answers_only_what_one_read_settles(
    db: Database, service: ApiKeyService, clock: ManualClock, kdf_calls: list[int]
) -> None:
    """The API's event loop asks `authenticate_quickly` first: it must never run the KDF or
    write, and never let through a key the full check would refuse."""
    key, plaintext = service.create_key("acme", scopes=["availability:read"])
    kdf_calls.clear()
    assert service.authenticate_quickly(plaintext) is None  # not verified here yet: KDF due
    assert kdf_calls == []
    principal = service.authenticate(plaintext)  # verifies (KDF) and records use
    assert service.authenticate_quickly(f" {plaintext} ") == principal
    assert len(kdf_calls) == 1
    prefix = KEY_FORMAT.fullmatch(plaintext).group(1)  # type: ignore[union-attr]
    for wrong in (None, "", "Bearer x", f"bk_live_{prefix}_{'Z' * 32}", f"bk_live_{'0' * 12}_x"):
        assert service.authenticate_quickly(wrong) is None
    assert len(kdf_calls) == 1
    clock.advance(timedelta(seconds=61))  # last_used_at is due a write: the full path's job
    assert service.authenticate_quickly(plaintext) is None
    assert service.get_key(key.id).last_used_at == T0
    service.authenticate(plaintext)
    assert service.authenticate_quickly(plaintext) == principal
    ApiKeyService(db, clock).revoke(key.id)  # by another daemon: this cache is not told
    assert service.authenticate_quickly(plaintext) is None
    refused(service, plaintext)


def test_comparisons_are_constant_time(
    service: ApiKeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    _, plaintext = service.create_key("acme")
    prefix = KEY_FORMAT.fullmatch(plaintext).group(1)  # type: ignore[union-attr]
    refused(service, f"bk_live_{prefix}_{'Q' * 32}")
    assert len(compared) == 1  # the KDF output against the stored hash
    service.authenticate(plaintext)
    assert len(compared) == 2
    service.authenticate(plaintext)  # from the cache: the fingerprint comparison
    assert len(compared) == 3
    assert all(len(a) == len(b) == 32 for a, b in compared)


def test_a_tampered_hash_refuses_rather_than_crashes(service: ApiKeyService, db: Database) -> None:
    key, plaintext = service.create_key("acme")
    with UnitOfWork(db) as uow:
        row = uow.session.get(PartnerApiKey, key.id)
        assert row is not None
        row.key_hash = "md5$$nope$nope"
        uow.commit()
    refused(service, plaintext)


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(database_url: str, db: Database) -> Callable[..., Any]:
    """`bookiji partners ...` / `bookiji apikeys ...` on the test database."""
    root = typer.Typer()

    @root.callback()
    def _root(ctx: typer.Context) -> None:
        ctx.obj = CliState(database_url=database_url)
        ctx.call_on_close(ctx.obj.close)

    root.add_typer(partners_cli.app, name="partners")
    root.add_typer(apikeys_cli.app, name="apikeys")
    runner = CliRunner()

    def run(*args: str, expect: int = 0) -> Any:
        result = runner.invoke(root, list(args), env={"COLUMNS": "400"})
        assert result.exit_code == expect, (result.output, result.exception)
        return result

    return run


def test_cli_partners_and_keys(cli: Callable[..., Any], db: Database) -> None:
    added = cli("partners", "add", "acme", "--name", "Acme", "--json")
    document = json.loads(added.stdout)
    assert document["webhookSecret"].startswith("whsec_")
    assert "shown only now" in added.stderr
    listed = json.loads(cli("partners", "list", "--json").stdout)
    assert listed[0]["id"] == "acme" and "webhookSecret" not in listed[0]
    assert document["webhookSecret"] not in cli("partners", "list").stdout

    created = cli(
        "apikeys", "create", "--partner", "acme", "--scopes", "events:read", "--expires-in", "90d",
        "--json",
    )  # fmt: skip
    key = json.loads(created.stdout)
    assert KEY_FORMAT.fullmatch(key["key"]) and key["scopes"] == ["events:read"]
    assert "only time" in created.stderr
    keys = cli("apikeys", "list", "--partner", "acme", "--json")
    assert key["key"] not in keys.stdout
    [row] = json.loads(keys.stdout)
    assert row["prefix"] == key["prefix"] and row["status"] == "active"
    assert set(row) >= {"createdAt", "expiresAt", "revokedAt", "lastUsedAt", "scopes"}

    rotated = json.loads(cli("apikeys", "rotate", key["id"], "--overlap", "30m", "--json").stdout)
    assert rotated["rotatedFrom"] == key["id"] and rotated["key"] != key["key"]
    revoked = json.loads(cli("apikeys", "revoke", rotated["id"], "--json").stdout)
    assert revoked["status"] == "revoked" and "key" not in revoked
    table = cli("apikeys", "list").stdout
    assert key["prefix"] in table and key["key"] not in table and rotated["key"] not in table


@pytest.mark.parametrize("bad", ["90", "1y", "-1d", "d", "0d", "1.5h"])
def test_cli_rejects_bad_durations(cli: Callable[..., Any], bad: str) -> None:
    cli("partners", "add", "acme", "--name", "Acme")
    result = cli("apikeys", "create", "--partner", "acme", "--expires-in", bad, expect=2)
    assert "--expires-in" in result.output


def test_cli_overlap_may_be_zero(cli: Callable[..., Any]) -> None:
    cli("partners", "add", "acme", "--name", "Acme")
    key = json.loads(cli("apikeys", "create", "--partner", "acme", "--json").stdout)
    cli("apikeys", "rotate", key["id"], "--overlap", "0m")


def test_a_prefix_tried_with_many_wrong_secrets_stops_costing_the_kdf(
    db: Database, clock: ManualClock, service: ApiKeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefixes are not secret and 401s are not rate limited: past a few wrong secrets a
    minute, a prefix's guesses are refused without the ~40 ms key derivation. The right key,
    verified before, is still answered from the cache."""
    import bookiji.services.apikeys as apikeys_module

    _, raw = service.create_key("acme")
    assert service.authenticate(raw).partner_id == "acme"  # verified: now in the cache
    derivations = []
    real = apikeys_module.verify_key
    monkeypatch.setattr(apikeys_module, "verify_key", lambda *a: derivations.append(1) or real(*a))
    guess = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    for _ in range(apikeys_module.WRONG_SECRETS_PER_MINUTE + 20):
        refused(service, guess)
    assert len(derivations) == apikeys_module.WRONG_SECRETS_PER_MINUTE
    assert service.authenticate(raw).partner_id == "acme"

    fresh = ApiKeyService(db, clock)  # another daemon: its cache and its count are its own
    assert fresh.authenticate(raw).partner_id == "acme"
    clock.advance(timedelta(minutes=1))
    derivations.clear()
    refused(service, guess)
    assert derivations == [1]  # a new minute: guesses are checked again
