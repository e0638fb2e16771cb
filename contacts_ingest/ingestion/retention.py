"""Keeping final jobs for a while, then removing them cheaply.

The status table (``contact_jobs``) and the dead-letter table (``dead_jobs``) are
partitioned by acceptance day, in UTC: a day's rows are removed by dropping its
partition (a catalogue change), never by deleting millions of rows. Partitions are
made a week ahead of need; rows of a day without one (a job accepted on a day whose
partition was dropped already) land in the table's default partition, which is small
and trimmed with a DELETE. Contacts are never touched.

Pruning records how far it went (``job_retention.pruned_before``): a redelivery that
arrives after its job was pruned finds neither a status row nor a Redis record, and
the service then drops it instead of applying the job a second time.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

PARTITIONED_TABLES = ("contact_jobs", "dead_jobs")
# Day partitions kept ahead of today, so no worker ever waits for one.
DAYS_AHEAD = 7
# A DROP waits for every transaction on the table; it gives up after this, and tries again.
LOCK_TIMEOUT = "5s"
PRUNE_TRIES = 3
# Serialises maintenance across workers (any constant key; this one reads "retain").
_MAINTENANCE_LOCK = 0x72657461696E

_DURATION = re.compile(r"^(\d+)([dhms])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_LOWER_BOUND = re.compile(r"FROM \('([^']+)'\)")
_UPPER_BOUND = re.compile(r"TO \('([^']+)'\)")


def parse_duration(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``0s`` as a timedelta; ValueError otherwise."""
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError("a duration is a whole number and d, h, m or s: 30d, 12h, 0s")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class Pruned:
    """What one prune removed."""

    cutoff: datetime
    partitions: list[str] = field(default_factory=list)
    # Rows removed from the default partitions.
    stragglers: int = 0


@dataclass(frozen=True)
class _Partition:
    name: str
    # The range it holds; None below for MINVALUE; both None for the default partition.
    lower: datetime | None
    upper: datetime | None

    def holds(self, moment: datetime) -> bool:
        return (
            self.upper is not None
            and moment < self.upper
            and (self.lower is None or self.lower <= moment)
        )


def _partitions(conn: Connection, table: str) -> list[_Partition]:
    """The partitions of ``table`` and their ranges (the session's time zone at UTC)."""
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass)"
        ),
        {"t": table},
    )
    found: list[_Partition] = []
    for name, bound in rows:
        lower, upper = _LOWER_BOUND.search(bound), _UPPER_BOUND.search(bound)
        found.append(
            _Partition(
                name,
                datetime.fromisoformat(lower.group(1)) if lower else None,
                datetime.fromisoformat(upper.group(1)) if upper else None,
            )
        )
    return found


def ensure_partitions(conn: Connection, today: date) -> list[str]:
    """Create the day partitions of ``today`` and the week after it that are missing
    (a day some partition holds already is left alone), for both tables; return their
    names. Needs the session's time zone at UTC."""
    created: list[str] = []
    for table in PARTITIONED_TABLES:
        existing = _partitions(conn, table)
        for n in range(DAYS_AHEAD + 1):
            day = today + timedelta(days=n)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if any(partition.holds(start) for partition in existing):
                continue
            name = f"{table}_p{day:%Y%m%d}"
            conn.execute(
                text(
                    f"CREATE TABLE {name} PARTITION OF {table}"  # names are ours: constants, dates
                    f" FOR VALUES FROM ('{start.isoformat()}')"
                    f" TO ('{(start + timedelta(days=1)).isoformat()}')"
                )
            )
            created.append(name)
    return created


def prune(engine: Engine, older_than: timedelta) -> Pruned:
    """Remove every final job accepted more than ``older_than`` ago (from both tables),
    and make sure the partitions of the coming week exist.

    Whole day partitions go: those whose day ended before the cutoff, so a job is kept
    between ``older_than`` and a day more; with a cutoff of now (``older_than`` of 0)
    every one, since every final job was accepted before now. (Today's and the coming
    days' partitions are made again, empty.) Rows in the default partitions older than
    the cutoff are deleted. One transaction; a DROP that cannot have its lock within
    ``LOCK_TIMEOUT`` rolls it back, and it is tried again.
    """
    for attempt in range(PRUNE_TRIES):
        try:
            with engine.begin() as conn:
                return _prune(conn, older_than)
        except OperationalError as exc:  # lock_timeout: a long transaction held the table
            if attempt + 1 == PRUNE_TRIES:
                raise
            log.warning("prune could not take its locks (%s); trying again", type(exc).__name__)
            time.sleep(1)
    raise AssertionError("unreachable")


def _prune(conn: Connection, older_than: timedelta) -> Pruned:
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MAINTENANCE_LOCK})
    now: datetime = conn.execute(text("SELECT now()")).scalar_one()
    everything = older_than <= timedelta(0)
    pruned = Pruned(cutoff=now - older_than)
    for table in PARTITIONED_TABLES:
        for partition in _partitions(conn, table):
            if partition.upper is None:  # the default partition
                removed = conn.execute(
                    text(f"DELETE FROM {partition.name} WHERE accepted_at < :cutoff"),  # noqa: S608
                    {"cutoff": pruned.cutoff},
                )
                pruned.stragglers += removed.rowcount
            elif everything or partition.upper <= pruned.cutoff:
                conn.execute(text(f"DROP TABLE {partition.name}"))
                pruned.partitions.append(partition.name)
    conn.execute(
        text("UPDATE job_retention SET pruned_before = greatest(pruned_before, :cutoff)"),
        {"cutoff": pruned.cutoff},
    )
    ensure_partitions(conn, now.date())
    return pruned


def keep_partitions_ahead(engine: Engine) -> list[str]:
    """``ensure_partitions`` for today (PostgreSQL's clock), in a transaction of its own."""
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MAINTENANCE_LOCK})
        today: datetime = conn.execute(text("SELECT now()")).scalar_one()
        return ensure_partitions(conn, today.date())


def pruned_before(conn: Connection) -> datetime | None:
    """Every final job accepted before this was pruned (None if nothing was yet)."""
    moment = conn.execute(text("SELECT pruned_before FROM job_retention")).scalar()
    return moment if isinstance(moment, datetime) else None
