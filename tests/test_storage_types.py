"""storage.models.UTCDateTime: every timestamp column reads back as aware UTC, on both databases."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from storage.models import Customer

BERLIN_SUMMER = timezone(timedelta(hours=2))


async def test_a_time_in_another_zone_reads_back_as_the_same_instant_in_utc(db):
    written = datetime(2026, 7, 1, 14, 30, 15, 123456, tzinfo=BERLIN_SUMMER)
    await db.run(lambda s: s.add(Customer(email="alice@customer.example", created_at=written)), write=True)
    read = await db.run(lambda s: s.scalar(select(Customer.created_at)))
    assert read == written and read.utcoffset() == timedelta(0)
    assert read.isoformat() == "2026-07-01T12:30:15.123456+00:00"
    later = await db.run(lambda s: s.scalar(select(Customer.email).where(
        Customer.created_at > datetime(2026, 7, 1, 12, 30, tzinfo=timezone.utc))))
    assert later == "alice@customer.example"  # compared as UTC in SQL too


async def test_a_naive_time_is_refused(db):
    with pytest.raises(StatementError, match="naive datetime 2026-07-01T14:30:00"):
        await db.run(lambda s: s.add(Customer(email="bob@customer.example", created_at=datetime(2026, 7, 1, 14, 30))),
                     write=True)
