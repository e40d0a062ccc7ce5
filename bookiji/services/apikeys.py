"""Partners and their API keys: issued once, stored hashed, scoped, rotated with overlap.

A key reads `bk_live_<prefix>_<secret>`. The 12-hex-digit prefix is an identifier, not a
secret: it is stored in the clear (unique index) so authentication finds the row with one
lookup, and operators see it in listings and logs. The 32-character secret carries ~190 bits
of randomness; only an scrypt hash of the whole key (per-key salt, parameters stored with the
hash so they can be raised later) is kept.

Why scrypt and not a peppered HMAC: an HMAC needs a server secret that must live somewhere
other than the database to be worth anything, and we have no such place in the embedded
default. With keys this random a fast hash would already resist offline guessing; scrypt is
defence in depth, and its cost is paid once per key per `CACHE_TTL`, not per request.

Revocation, expiry and partner disabling take effect on the very next request, in every
daemon: `authenticate` reads the key row (joined with its partner) on every call. The
in-memory cache only remembers that a presented key matched the stored hash, so a hot key
skips the KDF; an entry is used only while the stored hash is unchanged and for at most
`CACHE_TTL`. (Revocation is therefore well within the cache TTL, as the API requires.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import bindparam, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import col, select

from bookiji.domain.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from bookiji.domain.timeutil import format_instant
from bookiji.services.clock import Clock
from bookiji.services.ids import new_id
from bookiji.store.database import Database
from bookiji.store.errors import is_transient, is_unique_violation
from bookiji.store.models import Partner, PartnerApiKey
from bookiji.store.uow import UnitOfWork

log = logging.getLogger(__name__)

SCOPES: frozenset[str] = frozenset(
    {
        "availability:read",
        "reservations:read",
        "reservations:write",
        "payments:write",
        "events:read",
    }
)

KEY_PREFIX = "bk_live_"
PREFIX_HEX_CHARS = 12
SECRET_CHARS = 32
_KEY_PATTERN = re.compile(
    re.escape(KEY_PREFIX)
    + rf"(?P<prefix>[0-9a-f]{{{PREFIX_HEX_CHARS}}})"
    + rf"_(?P<secret>[A-Za-z0-9_-]{{{SECRET_CHARS}}})"
)
_PARTNER_ID = re.compile(r"[a-z0-9-]{1,64}")
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret
WEBHOOK_SECRET_BYTES = 24

#: scrypt cost: 16 MiB and ~35 ms per verification; stored with each hash, so raising it
#: later only affects new keys.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_SALT_BYTES = 16
_HASH_BYTES = 32

#: How long a verified key skips the KDF. Never delays revocation (see the module doc).
CACHE_TTL = timedelta(seconds=10)
CACHE_MAX_ENTRIES = 10_000
#: Wrong secrets a key's prefix may be tried with per minute (per process) before further
#: tries are refused without running the KDF: prefixes are not secret (listings, logs), and
#: each wrong secret would otherwise cost ~40 ms of CPU, unlimited, as 401s are not rate
#: limited. The right key, once verified, is answered from the cache and never waits.
WRONG_SECRETS_PER_MINUTE = 10
#: `last_used_at` is written at most this often per key, not on every request.
TOUCH_INTERVAL = timedelta(minutes=1)

#: The one message every refusal carries, so a caller cannot tell which check failed and the
#: key is never echoed back.
UNAUTHORIZED_MESSAGE = "missing or invalid API key"


@dataclass(frozen=True)
class ApiPrincipal:
    """Who is calling: the partner, through which key, allowed to do what."""

    partner_id: str
    key_id: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(
                f"this API key lacks the scope {scope!r}",
                details={"requiredScope": scope, "keyId": self.key_id},
            )


@dataclass(frozen=True)
class _Verified:
    key_hash: str
    fingerprint: bytes
    verified_at: datetime


def key_status(key: PartnerApiKey, now: datetime) -> str:
    """`active`, `expired` or `revoked` at `now` (a rotated key is active until its overlap
    ends)."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and now >= key.expires_at:
        return "expired"
    return "active"


def validate_scopes(scopes: Iterable[str] | None) -> list[str]:
    """The sorted scope list to store; all scopes when none are given."""
    if scopes is None:
        return sorted(SCOPES)
    wanted = {s.strip() for s in scopes if s.strip()}
    if not wanted:
        raise ValidationFailed(
            "an API key needs at least one scope", details={"allowed": sorted(SCOPES)}
        )
    unknown = sorted(wanted - SCOPES)
    if unknown:
        raise ValidationFailed(
            f"unknown scope(s): {', '.join(unknown)}",
            details={"unknown": unknown, "allowed": sorted(SCOPES)},
        )
    return sorted(wanted)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 24 random bytes."""
    raw = secrets.token_bytes(WEBHOOK_SECRET_BYTES)
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(raw).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_key(plaintext: str) -> str:
    """`scrypt$n=..,r=..,p=..$<salt>$<hash>` (unpadded url-safe base64)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    derived = hashlib.scrypt(
        plaintext.encode("ascii"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=_SCRYPT_MAXMEM,
        dklen=_HASH_BYTES,
    )
    return f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(derived)}"


def verify_key(plaintext: str, stored: str) -> bool:
    """Recompute the stored hash and compare in constant time. A malformed stored value is a
    mismatch (and logged), never an exception the caller could distinguish."""
    try:
        algo, params_text, salt_text, hash_text = stored.split("$")
        params = dict(part.split("=", 1) for part in params_text.split(","))
        if algo != "scrypt":
            raise ValueError(f"unknown algorithm {algo!r}")
        expected = _unb64(hash_text)
        derived = hashlib.scrypt(
            plaintext.encode("ascii"),
            salt=_unb64(salt_text),
            n=int(params["n"]),
            r=int(params["r"]),
            p=int(params["p"]),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, KeyError):
        log.error("stored API key hash is malformed; refusing the key")
        return False
    return hmac.compare_digest(derived, expected)


def _fingerprint(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode("ascii")).digest()


def _validate_webhook_url(url: str | None) -> str | None:
    if url is None or not url.strip():
        return None
    url = url.strip()
    # What the sender will need (a scheme, a host name, a port that exists), checked when
    # it is set: otherwise every event goes dead on its first attempt.
    try:
        parts = urlsplit(url)
        usable = parts.scheme in {"https", "http"} and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        if usable:
            _check_host(parts.hostname or "")
    except ValueError:  # UnicodeError included: a host name DNS cannot carry
        usable = False
    if not usable:
        raise ValidationFailed(
            "webhook URL must be an absolute http(s) URL with a host name and a valid port",
            details={"field": "webhookUrl"},
        )
    return url


def _check_host(host: str) -> None:
    """Raises UnicodeError for a host no request can reach: an empty label (`a..b`), a label
    over 63 characters, an `xn--` label that is not punycode. The sender would only find out
    when connecting, and retry for a day."""
    if host.startswith("[") or ":" in host:  # an IPv6 literal
        return
    host.encode("idna")
    for label in host.split("."):
        if label.lower().startswith("xn--"):
            label.encode("ascii").decode("idna")


def shown_webhook_url(url: str | None) -> str | None:
    """The URL for listings: without user info, query or fragment, where tokens live."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


# Every request runs it: the key's own columns and whether its partner is disabled, built
# once, and never the partner's row (its sealed webhook secret would be decrypted each time).
_BY_PREFIX = (
    sa_select(
        col(PartnerApiKey.id),
        col(PartnerApiKey.partner_id),
        col(PartnerApiKey.key_hash),
        col(PartnerApiKey.scopes),
        col(PartnerApiKey.revoked_at),
        col(PartnerApiKey.expires_at),
        col(PartnerApiKey.last_used_at),
        col(Partner.disabled_at),
    )
    .join(Partner, col(Partner.id) == col(PartnerApiKey.partner_id))
    .where(col(PartnerApiKey.prefix) == bindparam("prefix"))
)


def _principal(key: Row[Any]) -> ApiPrincipal:
    return ApiPrincipal(
        partner_id=key.partner_id, key_id=key.id, scopes=frozenset(map(str, key.scopes))
    )


class ApiKeyService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        cache_ttl: timedelta = CACHE_TTL,
        touch_interval: timedelta = TOUCH_INTERVAL,
    ) -> None:
        self.db = db
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.touch_interval = touch_interval
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._lock = threading.Lock()
        # One KDF run per presented key at a time: a burst of requests with a key whose cache
        # entry has lapsed waits for the first verification instead of each paying ~35 ms.
        # Keyed by the presented key's fingerprint, so wrong guesses never delay the right key.
        self._inflight: dict[bytes, threading.Lock] = {}
        self._wrong: dict[str, tuple[datetime, int]] = {}  # prefix -> (window start, count)

    # -- partners ------------------------------------------------------------------------

    def add_partner(
        self, partner_id: str, name: str, webhook_url: str | None = None
    ) -> tuple[Partner, str]:
        """Create a partner and its webhook signing secret (returned once; the operator hands
        it to the partner, who verifies our signatures with it)."""
        if not _PARTNER_ID.fullmatch(partner_id):
            raise ValidationFailed(
                f"partner id must be 1-64 of a-z, 0-9 and '-', not {partner_id!r}",
                details={"field": "partnerId"},
            )
        name = name.strip()
        if not name or len(name) > 200:
            raise ValidationFailed("partner name must be 1-200 characters", details={})
        if not name.isprintable():  # shown in tables and terminals
            raise ValidationFailed(
                "partner name must not contain control characters (line breaks, escapes)",
                details={},
            )
        url = _validate_webhook_url(webhook_url)
        secret = new_webhook_secret()
        partner = Partner(
            id=partner_id,
            name=name,
            webhook_url=url,
            webhook_secret=secret,
            created_at=self.clock.now(),
        )
        duplicate = Conflict(
            f"partner {partner_id!r} already exists", details={"partnerId": partner_id}
        )
        with UnitOfWork(self.db) as uow:
            if uow.session.get(Partner, partner_id) is not None:
                raise duplicate
            uow.session.add(partner)
            try:
                uow.commit()
            except IntegrityError as exc:  # a concurrent add of the same id
                if is_unique_violation(exc):
                    raise duplicate from None
                raise
        return partner, secret

    def rotate_webhook_secret(self, partner_id: str, *, overlap: timedelta) -> str:
        """Replace the signing secret (the new one is returned once). For `overlap` longer,
        deliveries are signed with the replaced secret too, so the partner's receivers keep
        verifying them until they hold the new one; zero: the new one only, from now on.

        Only the secret just replaced overlaps: a rotation during an overlap drops the one
        before it."""
        if overlap < timedelta(0):
            raise ValidationFailed("overlap cannot be negative", details={"field": "overlap"})
        secret = new_webhook_secret()
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            partner = self._partner(uow, partner_id)
            replaced = partner.webhook_secret
            keep = overlap > timedelta(0) and replaced is not None
            partner.previous_webhook_secret = replaced if keep else None
            partner.previous_webhook_secret_until = now + overlap if keep else None
            partner.webhook_secret = secret
            uow.commit()
        return secret

    def forget_replaced_webhook_secrets(self) -> int:
        """Erase each replaced signing secret whose overlap is over: nothing signs with it
        any more, and a secret kept is one more to leak. The webhook job runs this every few
        seconds, so a read decides first and the write lock is taken only for work.
        Returns how many partners it erased one for."""
        now = self.clock.now()
        ended = (
            col(Partner.previous_webhook_secret_until).is_not(None),
            col(Partner.previous_webhook_secret_until) <= now,
        )
        with UnitOfWork(self.db, readonly=True) as uow:
            if uow.session.exec(select(Partner.id).where(*ended).limit(1)).first() is None:
                return 0
        with UnitOfWork(self.db) as uow:
            partners = uow.session.exec(select(Partner).where(*ended).with_for_update()).all()
            for partner in partners:
                partner.previous_webhook_secret = None
                partner.previous_webhook_secret_until = None
            uow.commit()
        return len(partners)

    def set_webhook_url(self, partner_id: str, url: str | None) -> Partner:
        """Point the partner's webhooks elsewhere (None: stop sending them). Deliveries not yet
        sent go to the new URL; dead letters can then be replayed there."""
        checked = _validate_webhook_url(url)
        with UnitOfWork(self.db) as uow:
            partner = self._partner(uow, partner_id)
            partner.webhook_url = checked
            uow.commit()
            return partner

    def set_partner_disabled(self, partner_id: str, disabled: bool) -> Partner:
        """A disabled partner's keys stop authenticating on the next request."""
        with UnitOfWork(self.db) as uow:
            partner = self._partner(uow, partner_id)
            if disabled and partner.disabled_at is None:
                partner.disabled_at = self.clock.now()
            elif not disabled:
                partner.disabled_at = None
            uow.commit()
            return partner

    def list_partners(self) -> list[Partner]:
        with UnitOfWork(self.db, readonly=True) as uow:
            return list(uow.session.exec(select(Partner).order_by(col(Partner.id))).all())

    def get_partner(self, partner_id: str) -> Partner:
        with UnitOfWork(self.db, readonly=True) as uow:
            return self._partner(uow, partner_id)

    # -- keys ----------------------------------------------------------------------------

    def create_key(
        self,
        partner_id: str,
        *,
        scopes: Iterable[str] | None = None,
        expires_in: timedelta | None = None,
    ) -> tuple[PartnerApiKey, str]:
        """A new key with the given scopes (default: all). The plaintext is returned once."""
        scope_list = validate_scopes(scopes)
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValidationFailed("expiry must be in the future", details={"field": "expiresIn"})
        with UnitOfWork(self.db) as uow:
            partner = self._partner(uow, partner_id)
            if partner.disabled_at is not None:
                raise Conflict(
                    f"partner {partner_id!r} is disabled", details={"partnerId": partner_id}
                )
        return self._insert_key(partner_id, scope_list, expires_in, rotated_from=None)

    def list_keys(self, partner_id: str | None = None) -> list[PartnerApiKey]:
        with UnitOfWork(self.db, readonly=True) as uow:
            stmt = select(PartnerApiKey)
            if partner_id is not None:
                self._partner(uow, partner_id)
                stmt = stmt.where(col(PartnerApiKey.partner_id) == partner_id)
            stmt = stmt.order_by(
                col(PartnerApiKey.partner_id), col(PartnerApiKey.created_at), col(PartnerApiKey.id)
            )
            return list(uow.session.exec(stmt).all())

    def get_key(self, key_id: str) -> PartnerApiKey:
        with UnitOfWork(self.db, readonly=True) as uow:
            return self._key(uow, key_id)

    def rotate(self, key_id: str, *, overlap: timedelta) -> tuple[PartnerApiKey, str]:
        """Issue a successor (same partner and scopes, `rotated_from` = the old id) and let the
        old key live `overlap` longer, so the partner can deploy the new one without downtime.

        A key created with a lifetime gets a successor with the same lifetime from now; the old
        key's expiry is only ever brought forward, never extended.
        """
        if overlap < timedelta(0):
            raise ValidationFailed("overlap cannot be negative", details={"field": "overlap"})
        now = self.clock.now()
        with UnitOfWork(self.db) as uow:
            old = self._key(uow, key_id)
            status = key_status(old, now)
            if status != "active":
                raise Conflict(
                    f"key {key_id} is {status}; create a new key instead",
                    details={"keyId": key_id, "status": status},
                )
            successor = uow.session.exec(
                select(PartnerApiKey).where(col(PartnerApiKey.rotated_from) == key_id).limit(1)
            ).first()
            if successor is not None:
                # Its expiry is now the overlap's end: a second successor would have inherited
                # that as its lifetime, and the partner would hold two new keys.
                until = format_instant(old.expires_at) if old.expires_at else "its overlap ends"
                raise Conflict(
                    f"key {key_id} was already rotated into {successor.id} (it keeps working "
                    f"until {until}); rotate {successor.id} instead",
                    details={"keyId": key_id, "successorId": successor.id},
                )
            lifetime = None if old.expires_at is None else old.expires_at - old.created_at
            partner_id, scope_list = old.partner_id, list(old.scopes)
        new_key, plaintext = self._insert_key(
            partner_id, scope_list, lifetime, rotated_from=key_id, retire_until=now + overlap
        )
        return new_key, plaintext

    def revoke(self, key_id: str) -> PartnerApiKey:
        """Stop a key now. Idempotent: revoking a revoked key keeps the first revocation time."""
        with UnitOfWork(self.db) as uow:
            key = self._key(uow, key_id)
            if key.revoked_at is None:
                key.revoked_at = self.clock.now()
                uow.commit()
        self._forget(key.prefix)
        return key

    # -- authentication ------------------------------------------------------------------

    def authenticate(self, raw: str | None) -> ApiPrincipal:
        """The principal behind a presented key, or `Unauthorized` with one generic message.

        One indexed lookup (prefix, joined with the partner) per call; the KDF runs only when
        this process has not verified the same key against the same stored hash within
        `cache_ttl`.
        """
        principal = self._authenticate(raw, quick=False)
        assert principal is not None
        return principal

    def authenticate_quickly(self, raw: str | None) -> ApiPrincipal | None:
        """The principal when one small read settles it: a key this process verified within
        `cache_ttl`, found live and not due a `last_used_at` touch. None otherwise (the KDF,
        a write or a refusal is due): ask `authenticate`, off the event loop."""
        return self._authenticate(raw, quick=True)

    def _authenticate(self, raw: str | None, *, quick: bool) -> ApiPrincipal | None:
        match = _KEY_PATTERN.fullmatch(raw.strip()) if raw else None
        if match is None:
            if quick:
                return None
            raise self._refuse(None, "missing or malformed")
        prefix, plaintext = match.group("prefix"), match.group(0)
        now = self.clock.now()
        key = self.db.read_first(_BY_PREFIX, {"prefix": prefix})
        touch_due = key is not None and (
            key.last_used_at is None or now - key.last_used_at >= self.touch_interval
        )
        if quick:
            if (
                key is None
                or touch_due
                or self._refusal(key, now) is not None
                or not self._cached(prefix, _fingerprint(plaintext), key.key_hash, now)
            ):
                return None
            return _principal(key)
        if key is None:
            raise self._refuse(prefix, "unknown prefix")
        if not self._verified(prefix, plaintext, key.key_hash, now):
            self._count_wrong(prefix, now)
            raise self._refuse(prefix, "wrong secret")
        refusal = self._refusal(key, now)
        if refusal is not None:
            raise self._refuse(prefix, refusal)
        if touch_due:
            self._touch(key.id, now)
        return _principal(key)

    @staticmethod
    def _refusal(key: Row[Any], now: datetime) -> str | None:
        if key.revoked_at is not None:
            return "revoked"
        if key.expires_at is not None and now >= key.expires_at:
            return "expired"
        if key.disabled_at is not None:
            return "partner disabled"
        return None

    # -- internals -----------------------------------------------------------------------

    def _insert_key(
        self,
        partner_id: str,
        scope_list: list[str],
        expires_in: timedelta | None,
        *,
        rotated_from: str | None,
        retire_until: datetime | None = None,
    ) -> tuple[PartnerApiKey, str]:
        now = self.clock.now()
        for _attempt in range(3):  # a prefix collision (48 random bits) is all but impossible
            prefix = secrets.token_hex(PREFIX_HEX_CHARS // 2)
            plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(SECRET_CHARS * 3 // 4)}"
            key = PartnerApiKey(
                id=new_id("key"),
                partner_id=partner_id,
                prefix=prefix,
                key_hash=hash_key(plaintext),
                scopes=scope_list,
                created_at=now,
                expires_at=None if expires_in is None else now + expires_in,
                rotated_from=rotated_from,
            )
            with UnitOfWork(self.db) as uow:
                if rotated_from is not None and retire_until is not None:
                    old = self._key(uow, rotated_from, for_update=True)
                    status = key_status(old, now)
                    if status != "active":  # revoked or expired since rotate() looked
                        raise Conflict(
                            f"key {rotated_from} is {status}; create a new key instead",
                            details={"keyId": rotated_from, "status": status},
                        )
                    if old.expires_at is None or old.expires_at > retire_until:
                        old.expires_at = retire_until
                uow.session.add(key)
                try:
                    uow.commit()
                except IntegrityError as exc:
                    if is_unique_violation(exc, "prefix"):
                        continue
                    raise
            return key, plaintext
        raise RuntimeError("could not find a free API key prefix")  # pragma: no cover

    def _count_wrong(self, prefix: str, now: datetime) -> None:
        with self._lock:
            start, count = self._wrong.get(prefix, (now, 0))
            if now - start >= timedelta(minutes=1):
                start, count = now, 0
            self._wrong[prefix] = (start, count + 1)
            if len(self._wrong) > CACHE_MAX_ENTRIES:
                self._wrong.pop(next(iter(self._wrong)))

    def _too_many_wrong(self, prefix: str, now: datetime) -> bool:
        with self._lock:
            start, count = self._wrong.get(prefix, (now, 0))
        return now - start < timedelta(minutes=1) and count >= WRONG_SECRETS_PER_MINUTE

    def _verified(self, prefix: str, plaintext: str, stored: str, now: datetime) -> bool:
        fingerprint = _fingerprint(plaintext)
        if self._cached(prefix, fingerprint, stored, now):
            return True
        if self._too_many_wrong(prefix, now):
            return False
        with self._lock:
            gate = self._inflight.setdefault(fingerprint, threading.Lock())
        try:
            with gate:
                if self._cached(prefix, fingerprint, stored, now):
                    return True
                if not verify_key(plaintext, stored):
                    return False
                with self._lock:
                    self._cache[prefix] = _Verified(stored, fingerprint, now)
                    self._cache.move_to_end(prefix)
                    while len(self._cache) > CACHE_MAX_ENTRIES:
                        self._cache.popitem(last=False)
                return True
        finally:
            with self._lock:
                if not gate.locked():
                    self._inflight.pop(fingerprint, None)

    def _cached(self, prefix: str, fingerprint: bytes, stored: str, now: datetime) -> bool:
        with self._lock:
            cached = self._cache.get(prefix)
        return (
            cached is not None
            and cached.key_hash == stored
            and now - cached.verified_at < self.cache_ttl
            and hmac.compare_digest(cached.fingerprint, fingerprint)
        )

    def _forget(self, prefix: str) -> None:
        with self._lock:
            self._cache.pop(prefix, None)

    def _touch(self, key_id: str, now: datetime) -> None:
        """Record use, at most once per `touch_interval` across all daemons (the WHERE makes
        the racing writers after the first a no-op). Failing to record it never fails the
        request."""
        try:
            with UnitOfWork(self.db) as uow:
                uow.session.execute(
                    update(PartnerApiKey)
                    .where(
                        col(PartnerApiKey.id) == key_id,
                        or_(
                            col(PartnerApiKey.last_used_at).is_(None),
                            col(PartnerApiKey.last_used_at) <= now - self.touch_interval,
                        ),
                    )
                    .values(last_used_at=now)
                    .execution_options(synchronize_session=False)
                )
                uow.commit()
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            log.warning("could not record use of API key %s (database busy)", key_id)

    @staticmethod
    def _refuse(prefix: str | None, reason: str) -> Unauthorized:
        log.info("API key refused (%s)%s", reason, f" prefix={prefix}" if prefix else "")
        return Unauthorized(UNAUTHORIZED_MESSAGE)

    @staticmethod
    def _partner(uow: UnitOfWork, partner_id: str) -> Partner:
        partner = uow.session.get(Partner, partner_id)
        if partner is None:
            raise NotFound(f"unknown partner {partner_id!r}", details={"partnerId": partner_id})
        return partner

    @staticmethod
    def _key(uow: UnitOfWork, key_id: str, *, for_update: bool = False) -> PartnerApiKey:
        stmt = select(PartnerApiKey).where(col(PartnerApiKey.id) == key_id)
        if for_update:
            stmt = stmt.with_for_update()
        key = uow.session.exec(stmt).first()
        if key is None:
            raise NotFound(f"unknown API key {key_id!r}", details={"keyId": key_id})
        return key
