"""A wrong but well-formed PII key is caught before it reads or seals anything: key-check
records and a bounded sample of stored values, through a rotation and back. A key listed
first that the database has no record of is refused too (not taken for a rotation): a
rotation begins only with `begin_rotation`. SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlmodel import select

from bookiji.domain.errors import EncryptionKeyProblem
from bookiji.integrations.local_gateway import LocalGateway
from bookiji.services.clock import ManualClock
from bookiji.services.pii import SEALED, PiiService
from bookiji.services.reservations import HoldRequest
from bookiji.store import crypto
from bookiji.store.database import Database
from bookiji.store.models import PiiKeyCheck
from bookiji.store.uow import UnitOfWork
from tests.payments.harness import DAY, NOW, Workflow, build_workflow, local_faults
from tests.sealed import opened_by

CONTACT = {"name": "Zelda Quixote", "email": "zelda.q@example.org"}


@pytest.fixture
def flow(db: Database) -> Workflow:
    gateway = LocalGateway(db, ManualClock(NOW))
    return build_workflow(db, gateway, local_faults(gateway))


def key() -> str:
    return Fernet.generate_key().decode()


def hold(flow: Workflow, hour: int, requester: str = "req-zq", **extra: Any) -> str:
    start = DAY + timedelta(hours=hour)
    return flow.reservations.create_hold(
        HoldRequest("shop", start, start + timedelta(hours=1), requester, **extra), actor="test"
    ).reservation_id


def records(db: Database) -> int:
    with UnitOfWork(db, readonly=True) as uow:
        return len(uow.session.exec(select(PiiKeyCheck)).all())


def test_a_fresh_database_passes_with_or_without_keys(db: Database) -> None:
    service = PiiService(db)
    crypto.configure([])
    assert service.check_keys(register=True).registered == 0  # nothing to seal a record with
    assert service.key_problem() is None
    first, second = key(), key()
    crypto.configure([first, second])
    check = service.check_keys(register=True)
    assert (check.records, check.sampled, check.registered) == (0, 0, 2)  # one per listed key
    assert service.check_keys(register=True).registered == 0  # written once
    assert opened_by(db, first) == 1 and opened_by(db, second) == 1


def test_a_wrong_key_is_refused_and_writes_nothing(flow: Workflow, db: Database) -> None:
    right, wrong = key(), key()
    crypto.configure([right])
    hold(flow, 10, contact=CONTACT, metadata={"a": 1}, idempotency_key="k1")
    service = PiiService(db)
    # No key-check record yet (data from before them): the sampled values decide.
    crypto.configure([wrong])
    with pytest.raises(EncryptionKeyProblem, match="do not open 3 of 3 stored values") as caught:
        service.check_keys(register=True)
    assert wrong not in str(caught.value) and right not in str(caught.value)
    assert records(db) == 0 and opened_by(db, wrong) == 0
    crypto.configure([right])
    assert service.check_keys(register=True).registered == 1
    # From now on the records decide, even with the sample left out (the CLI's check).
    crypto.configure([wrong])
    with pytest.raises(EncryptionKeyProblem, match="1 of the 1 keys it holds data under"):
        service.check_keys(register=True, sample=False)
    problem = service.key_problem()
    assert problem is not None and "do not open data stored in this database" in problem
    assert opened_by(db, wrong) == 0  # nothing was sealed, nor recorded, with it
    crypto.configure([right])
    assert service.key_problem() is None


def test_no_key_while_sealed_data_exists_is_refused(flow: Workflow, db: Database) -> None:
    crypto.configure([key()])
    hold(flow, 10, contact=CONTACT)
    service = PiiService(db)
    crypto.configure([])
    with pytest.raises(EncryptionKeyProblem, match="no PII key is configured"):
        service.check_keys()  # by the sample
    assert hold(flow, 11)  # (a hold without personal data needs no key, as before)


def test_a_new_key_listed_first_is_refused_until_a_rotation_begins(
    flow: Workflow, db: Database
) -> None:
    """A mistyped or foreign key put first, ahead of the right one, opens nothing wrong (the
    right key is listed) but would seal every new value: refused, with nothing written,
    whether the records or (before them) the sampled values decide."""
    right, typo = key(), key()
    crypto.configure([right])
    hold(flow, 10, contact=CONTACT)
    service = PiiService(db)
    crypto.configure([typo, right])  # a database sealed before the records: the sample
    with pytest.raises(EncryptionKeyProblem, match="new to this database") as caught:
        service.check_keys(register=True, sample=False)  # (sampled anyway: no records)
    message = str(caught.value)
    assert "bookiji pii begin-rotation" in message
    assert typo not in message and right not in message
    assert records(db) == 0
    crypto.configure([right])
    assert service.check_keys(register=True).registered == 1
    crypto.configure([typo, right])  # now the records decide, with or without the sample
    for sample in (False, True):
        with pytest.raises(EncryptionKeyProblem, match="begin-rotation"):
            service.check_keys(register=True, sample=sample)
    with pytest.raises(EncryptionKeyProblem, match="begin-rotation"):
        service.rotate()  # `rotate` never begins a rotation either
    assert records(db) == 1 and opened_by(db, typo) == 0  # nothing recorded or sealed with it


def test_rotation_begins_explicitly_and_the_old_key_goes_once_rotated(
    flow: Workflow, db: Database
) -> None:
    old, new = key(), key()
    crypto.configure([old])
    service = PiiService(db)
    service.check_keys(register=True)
    rid = hold(flow, 10, contact=CONTACT, idempotency_key="k1")
    # Staged: the new key listed second opens what it will seal; nothing to record yet.
    crypto.configure([old, new])
    assert service.check_keys(register=True).registered == 0
    crypto.configure([new, old])
    check = service.begin_rotation()
    assert (check.records, check.registered) == (1, 1)
    assert service.begin_rotation().registered == 0  # once
    assert service.check_keys(register=True, sample=False).registered == 0
    crypto.configure([old, new])  # a staged daemon stays ready: it opens both records
    assert service.key_problem() is None
    crypto.configure([new, old])
    hold(flow, 12, contact=CONTACT)  # sealed with the new key
    crypto.configure([new])  # the old key dropped too early: refused
    with pytest.raises(EncryptionKeyProblem, match="1 of the 2 keys"):
        service.check_keys(register=True)
    crypto.configure([old])  # back to the old key alone: refused (data sealed with the new)
    with pytest.raises(EncryptionKeyProblem, match="1 of the 2 keys"):
        service.check_keys(register=True)
    crypto.configure([new, old])
    service.rotate()
    assert records(db) == 1  # only the newest key's record stays
    crypto.configure([old, new])  # a daemon still staged, sealing with the old key: not ready
    problem = service.key_problem()
    assert problem is not None and "has no key-check record" in problem
    assert old not in problem and new not in problem
    with pytest.raises(EncryptionKeyProblem, match="new to this database"):
        service.check_keys(register=True)  # nor does one start so
    crypto.configure([new])
    check = service.check_keys(register=True)
    assert (check.records, check.registered) == (1, 0)
    assert check.sampled == 3  # two holds' contact, one stored answer
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.reservations.get(rid) is not None
    crypto.configure([old])
    with pytest.raises(EncryptionKeyProblem):
        service.check_keys()
    assert opened_by(db, old) == 0


def test_two_first_starts_with_different_keys_record_only_the_first(db: Database) -> None:
    """Both saw no records; the second to take the write lock finds the first's record."""
    from bookiji.services import pii_keys

    first, second = key(), key()
    crypto.configure([first])
    assert pii_keys._register(db, begin_rotation=False) == 1
    crypto.configure([second])
    with pytest.raises(EncryptionKeyProblem, match="1 of the 1 keys"):
        pii_keys._register(db, begin_rotation=False)
    crypto.configure([second, first])
    with pytest.raises(EncryptionKeyProblem, match="new to this database"):
        pii_keys._register(db, begin_rotation=False)
    assert records(db) == 1 and opened_by(db, second) == 0


def test_the_sample_is_bounded_and_reads_the_last_rows(flow: Workflow, db: Database) -> None:
    """A value sealed under a key nobody recorded (say, by a process of an older version) is
    found among the last rows; the check reads at most SAMPLE_ROWS per sealed column."""
    from bookiji.services import pii_keys

    right, stray = key(), key()
    crypto.configure([right])
    for hour in range(9, 13):
        hold(flow, hour, requester=f"r{hour}", contact=CONTACT)
    service = PiiService(db)
    service.check_keys(register=True)
    crypto.configure([stray, right])
    hold(flow, 14, requester="r14", contact=CONTACT)  # never went through a check
    crypto.configure([right])
    with pytest.raises(EncryptionKeyProblem, match="do not open 1 of 5 stored values"):
        service.check_keys()
    previous = pii_keys.SAMPLE_ROWS
    try:
        pii_keys.SAMPLE_ROWS = 2
        assert pii_keys._sample(db, SEALED[1:2]) and len(pii_keys._sample(db, SEALED[1:2])) <= 2
    finally:
        pii_keys.SAMPLE_ROWS = previous
