"""The ingestion service against the real PostgreSQL and Redis: effects, idempotency, merges."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.schema import contact_jobs, contacts
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.service import ContactIngestor, Outcome
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import ContactJob, Operation, Refusal, new_job_id
from contacts_ingest.jobs.status import job_status, read_final_job
from tests.conftest import CONTACT_FIELDS, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def board(redis_client: redis.Redis, settings: Settings) -> JobBoard:
    # A queue no worker consumes: these tests apply the jobs themselves.
    return JobBoard.for_settings(
        redis_client, settings.model_copy(update={"celery_queue": unique("ingest-q")})
    )


@pytest.fixture
def ingestor(engine: Engine, board: JobBoard) -> ContactIngestor:
    return ContactIngestor(engine, board)


@pytest.fixture
def user() -> str:
    return unique("user")


def admitted(
    board: JobBoard, user: str, body: Any, *, upsert: bool = False, batch: bool = False
) -> dict[str, Any]:
    """A job message as a producer would publish it, with its queued record in Redis."""
    operation: Operation = "upsert" if upsert else "create"
    job = ContactJob(new_job_id(), user, operation, body, 0, batch=batch)
    admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    return replace(job, accepted_at_us=admission.accepted_at_us).to_message()


def upserts_in_acceptance_order(
    board: JobBoard, user: str, *bodies: dict[str, Any]
) -> list[dict[str, Any]]:
    """Upsert messages accepted one after another, in the order given."""
    return [admitted(board, user, body, upsert=True) for body in bodies]


def run(ingestor: ContactIngestor, message: dict[str, Any]) -> Outcome:
    outcome = ingestor.process(message)
    assert outcome is not None
    return outcome


def stored(engine: Engine, user: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(contacts).where(contacts.c.user_id == user)).mappings()
        return [dict(r) for r in rows]


def test_create_stores_the_contact_and_records_201(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    body = {
        "email": "Bob@Example.com",
        "firstName": "Bob",
        "lastName": "Smith",
        "phone": "+1 555 000 1234",
        "company": "Acme Corp",
        "jobTitle": "Product Manager",
        "socialProfiles": {"linkedin": "https://linkedin.com/in/bobsmith", "twitter": "@bob"},
        "source": "signup",
        "customFields": {"plan": "pro"},
        "workspaceId": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
    }
    outcome = run(ingestor, admitted(board, user, body))
    assert (outcome.status, outcome.code) == ("succeeded", 201)
    assert outcome.result is not None
    contact = outcome.result["data"]
    assert list(contact) == CONTACT_FIELDS
    assert contact["id"].startswith("cnt_")
    assert contact["email"] == "Bob@example.com"
    assert contact["status"] == "subscribed"
    assert contact["lead_score"] == 0
    assert contact["social_profiles"] == body["socialProfiles"]
    assert contact["workspace_id"] == body["workspaceId"]
    [row] = stored(engine, user)
    assert row["email_key"] == "bob@example.com"


def test_the_job_row_and_redis_record_after_success(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "a@example.com"})
    assert board.pending(message["job_id"]) is not None
    run(ingestor, message)
    assert board.pending(message["job_id"]) is None
    with engine.connect() as conn:
        row = (
            conn.execute(select(contact_jobs).where(contact_jobs.c.job_id == message["job_id"]))
            .mappings()
            .one()
        )
    assert (row["user_id"], row["operation"], row["status"], row["code"]) == (
        user,
        "create",
        "succeeded",
        201,
    )
    assert row["attempts"] == 1
    assert row["accepted_at"] <= row["started_at"] <= row["finished_at"]


@pytest.mark.parametrize("second", ["bob@example.com", "BOB@EXAMPLE.COM", "Bob@example.com"])
def test_plain_create_of_an_existing_email_fails_409_whatever_its_case(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str, second: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "bob@example.com", "firstName": "Bob"}))
    outcome = run(ingestor, admitted(board, user, {"email": second, "firstName": "Other"}))
    assert (outcome.status, outcome.code) == ("failed", 409)
    assert outcome.error == {"code": 409, "message": "A contact with this email already exists"}
    [row] = stored(engine, user)
    assert row["first_name"] == "Bob"


def test_the_same_email_for_two_users_is_two_contacts(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    other = unique("user")
    assert run(ingestor, admitted(board, user, {"email": "x@example.com"})).code == 201
    assert run(ingestor, admitted(board, other, {"email": "x@example.com"})).code == 201


def test_upsert_creates_201_then_updates_200_keeping_the_id(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    first = run(ingestor, admitted(board, user, {"email": "u@example.com"}, upsert=True))
    second = run(
        ingestor, admitted(board, user, {"email": "U@example.com", "company": "Acme"}, upsert=True)
    )
    assert (first.code, second.code) == (201, 200)
    assert first.result
    assert second.result
    assert first.result["data"]["id"] == second.result["data"]["id"]
    assert second.result["data"]["company"] == "Acme"
    [row] = stored(engine, user)
    assert row["version"] == 2


def test_upsert_changes_only_the_fields_present(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    run(
        ingestor,
        admitted(
            board,
            user,
            {
                "email": "m@example.com",
                "firstName": "Ann",
                "lastName": "Lee",
                "status": "unsubscribed",
                "source": "import",
            },
        ),
    )
    outcome = run(
        ingestor,
        admitted(
            board, user, {"email": "m@example.com", "lastName": None, "phone": "1"}, upsert=True
        ),
    )
    assert outcome.result is not None
    data = outcome.result["data"]
    assert data["first_name"] == "Ann"
    assert data["last_name"] is None  # null clears
    assert data["phone"] == "1"
    assert data["status"] == "unsubscribed"  # the create-time default does not apply
    assert data["source"] == "import"


def test_upsert_merges_social_profiles_and_custom_fields_key_by_key(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    run(
        ingestor,
        admitted(
            board,
            user,
            {
                "email": "s@example.com",
                "socialProfiles": {"linkedin": "L", "twitter": "T"},
                "customFields": {"a": 1, "b": 2},
            },
        ),
    )
    outcome = run(
        ingestor,
        admitted(
            board,
            user,
            {
                "email": "s@example.com",
                "socialProfiles": {"twitter": None, "reddit": "R", "unknown": "x"},
                "customFields": {"a": None, "c": 3},
            },
            upsert=True,
        ),
    )
    assert outcome.result is not None
    data = outcome.result["data"]
    assert data["social_profiles"] == {"linkedin": "L", "reddit": "R"}
    assert data["custom_fields"] == {"b": 2, "c": 3}


def test_custom_field_limits_hold_on_the_merged_result(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(
        ingestor,
        admitted(
            board, user, {"email": "c@example.com", "customFields": {f"a{i}": i for i in range(15)}}
        ),
    )
    outcome = run(
        ingestor,
        admitted(
            board,
            user,
            {"email": "c@example.com", "customFields": {f"b{i}": i for i in range(6)}},
            upsert=True,
        ),
    )
    assert (outcome.status, outcome.code) == ("failed", 400)
    assert outcome.error is not None
    assert outcome.error["message"] == "customFields must have 20 keys or fewer"
    [row] = stored(engine, user)
    assert len(row["custom_fields"]) == 15
    assert row["version"] == 1


def test_create_does_not_store_null_social_or_custom_values(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    outcome = run(
        ingestor,
        admitted(
            board,
            user,
            {
                "email": "n@example.com",
                "socialProfiles": {"twitter": None},
                "customFields": {"x": None},
            },
        ),
    )
    assert outcome.result is not None
    assert outcome.result["data"]["social_profiles"] == {}
    assert outcome.result["data"]["custom_fields"] == {}


def test_invalid_body_fails_400_once_and_writes_no_contact(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "nope", "status": "gone"})
    outcome = run(ingestor, message)
    assert (outcome.status, outcome.code) == ("failed", 400)
    assert outcome.error == {
        "code": 400,
        "message": "A valid email is required",
        "errors": [
            {"field": "email", "message": "A valid email is required"},
            {
                "field": "status",
                "message": "status must be subscribed, unsubscribed, bounced, or complained",
            },
        ],
    }
    assert stored(engine, user) == []
    assert run(ingestor, message).replayed


def test_a_redelivered_job_changes_nothing_and_keeps_its_outcome(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "r@example.com"})
    first = run(ingestor, message)
    again = run(ingestor, message)
    assert (first.code, again.code) == (201, 201)  # never 409 on redelivery
    assert again.replayed
    assert again.result == first.result
    [row] = stored(engine, user)
    assert row["version"] == 1


def test_a_redelivered_upsert_is_not_applied_twice(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "v@example.com"}))
    message = admitted(board, user, {"email": "v@example.com", "company": "X"}, upsert=True)
    run(ingestor, message)
    run(ingestor, message)
    [row] = stored(engine, user)
    assert row["version"] == 2


def test_concurrent_deliveries_of_one_job_apply_it_once(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "cc@example.com"}))
    message = admitted(board, user, {"email": "cc@example.com", "phone": "2"}, upsert=True)
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(run(ingestor, message))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {o.code for o in outcomes} == {200}
    assert sum(not o.replayed for o in outcomes) == 1
    [row] = stored(engine, user)
    assert row["version"] == 2


def test_racing_creates_of_one_email_make_one_contact(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    messages = [admitted(board, user, {"email": "RACE@example.com"}) for _ in range(10)]
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda m=m: outcomes.append(run(ingestor, m))) for m in messages
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.code for o in outcomes) == [201] + [409] * 9
    assert len(stored(engine, user)) == 1


def test_attempts_count_deliveries(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "att@example.com"})
    board.start(message["job_id"])  # a delivery whose worker died before committing
    run(ingestor, message)
    with engine.connect() as conn:
        attempts = conn.execute(
            select(contact_jobs.c.attempts).where(contact_jobs.c.job_id == message["job_id"])
        ).scalar_one()
    assert attempts == 2


def test_a_taken_job_reads_processing_until_final(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "p@example.com"})
    reader = partial(read_final_job, engine)
    document = job_status(board, reader, message["job_id"], user)
    assert document is not None
    assert document["status"] == "queued"
    board.start(message["job_id"])
    document = job_status(board, reader, message["job_id"], user)
    assert document is not None
    assert document["status"] == "processing"
    run(ingestor, message)
    document = job_status(board, reader, message["job_id"], user)
    assert document is not None
    assert document["status"] == "succeeded"
    assert job_status(board, reader, message["job_id"], unique("user")) is None


@pytest.mark.parametrize(
    "message",
    [
        None,
        "text",
        {"job_id": "job_x"},
        {"job_id": "job_x", "user_id": "u", "operation": "delete", "accepted_at_us": 1},
        {"job_id": "job_x", "user_id": "u" * 201, "operation": "create", "accepted_at_us": 1},
        {"job_id": "j" * 65, "user_id": "u", "operation": "create", "accepted_at_us": 1},
        {"job_id": "job_x", "user_id": "u", "operation": "create", "accepted_at_us": "soon"},
    ],
)
def test_a_message_naming_no_job_is_dropped_without_a_row(
    ingestor: ContactIngestor, engine: Engine, message: Any
) -> None:
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(contact_jobs)).scalar_one()
    assert ingestor.process(message) is None
    with engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(contact_jobs)).scalar_one()
    assert after == before


def test_an_older_upsert_delivered_late_does_not_undo_newer_fields(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "o@example.com", "firstName": "Ann"}))
    older, newer = upserts_in_acceptance_order(
        board,
        user,
        {"email": "o@example.com", "company": "Old", "phone": "123", "firstName": "Old Ann"},
        {"email": "O@example.com", "company": "New"},
    )
    run(ingestor, newer)
    late = run(ingestor, older)  # redelivered after the newer job committed
    assert (late.status, late.code) == ("succeeded", 200)
    assert late.result is not None
    data = late.result["data"]
    assert data["company"] == "New"  # the newer value stays
    assert data["phone"] == "123"  # what no newer job touched still applies
    assert data["first_name"] == "Old Ann"  # accepted after the creating job
    assert data["email"] == "O@example.com"


def test_late_keyed_changes_yield_to_newer_ones_key_by_key(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    older, newer = upserts_in_acceptance_order(
        board,
        user,
        {
            "email": "k@example.com",
            "customFields": {"plan": "free", "seats": 1},
            "socialProfiles": {"twitter": None, "reddit": "old"},
        },
        {
            "email": "k@example.com",
            "customFields": {"plan": "pro"},
            "socialProfiles": {"twitter": "@new"},
        },
    )
    run(ingestor, newer)
    late = run(ingestor, older)
    assert late.result is not None
    data = late.result["data"]
    assert data["custom_fields"] == {"plan": "pro", "seats": 1}
    assert data["social_profiles"] == {"twitter": "@new", "reddit": "old"}


def test_an_entirely_superseded_upsert_writes_nothing(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    older, newer = upserts_in_acceptance_order(
        board,
        user,
        {"email": "s2@example.com", "company": "Old"},
        {"email": "s2@example.com", "company": "New"},
    )
    run(ingestor, newer)
    late = run(ingestor, older)
    assert late.result is not None
    assert late.result["data"]["company"] == "New"
    [row] = stored(engine, user)
    assert row["version"] == 1


def test_fields_a_creating_job_left_unset_take_a_late_older_value(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    older, newer = upserts_in_acceptance_order(
        board,
        user,
        {"email": "c2@example.com", "status": "unsubscribed", "source": "import"},
        {"email": "c2@example.com", "source": "signup"},
    )
    assert run(ingestor, newer).code == 201
    late = run(ingestor, older)
    assert late.result is not None
    assert late.result["data"]["status"] == "unsubscribed"
    assert late.result["data"]["source"] == "signup"


@pytest.mark.parametrize("suppressed", ["bounced", "complained"])
@pytest.mark.parametrize("requested", ["subscribed", "unsubscribed", "bounced", "complained"])
def test_an_upsert_never_lifts_a_bounce_or_a_complaint(
    ingestor: ContactIngestor,
    board: JobBoard,
    engine: Engine,
    user: str,
    suppressed: str,
    requested: str,
) -> None:
    run(ingestor, admitted(board, user, {"email": "s@example.com", "status": suppressed}))
    outcome = run(
        ingestor,
        admitted(
            board,
            user,
            {"email": "s@example.com", "status": requested, "firstName": "Still"},
            upsert=True,
        ),
    )
    assert outcome.code == 200
    assert outcome.result is not None
    assert outcome.result["data"]["status"] == suppressed
    assert outcome.result["data"]["first_name"] == "Still"  # the rest of the upsert applies
    [row] = stored(engine, user)
    assert row["status"] == suppressed


def test_an_unsubscribed_contact_is_resubscribed_only_when_asked_by_name(
    ingestor: ContactIngestor, board: JobBoard, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "u@example.com", "status": "unsubscribed"}))
    silent = run(
        ingestor, admitted(board, user, {"email": "u@example.com", "company": "X"}, upsert=True)
    )
    assert silent.result is not None
    assert silent.result["data"]["status"] == "unsubscribed"
    named = run(
        ingestor,
        admitted(board, user, {"email": "u@example.com", "status": "subscribed"}, upsert=True),
    )
    assert named.result is not None
    assert named.result["data"]["status"] == "subscribed"


def batch(board: JobBoard, user: str, contacts: Any, *, upsert: bool = False) -> dict[str, Any]:
    return admitted(board, user, {"contacts": contacts}, upsert=upsert, batch=True)


def test_a_batch_reports_counts_and_each_item_with_its_errors_inline(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "old@example.com"}))
    outcome = run(
        ingestor,
        batch(
            board,
            user,
            [
                {"email": "new@example.com", "firstName": "New"},
                {"email": "not-an-email", "status": "gone"},
                {"email": "OLD@example.com"},
                "not an object",
            ],
        ),
    )
    assert (outcome.status, outcome.code) == ("succeeded", 200)
    assert outcome.result is not None
    assert outcome.result["counts"] == {"created": 1, "updated": 0, "failed": 3}
    items = outcome.result["items"]
    assert [item["code"] for item in items] == [201, 400, 409, 400]
    assert items[0]["email"] == "new@example.com"
    assert items[0]["id"].startswith("cnt_")
    assert [e["field"] for e in items[1]["errors"]] == ["email", "status"]
    assert items[2]["error"] == "A contact with this email already exists"
    assert items[3]["error"] == "Request body must be a JSON object"
    assert sorted(c["email"] for c in stored(engine, user)) == [
        "new@example.com",
        "old@example.com",
    ]


def test_a_batch_upsert_applies_items_in_order_and_replays_unchanged(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = batch(
        board,
        user,
        [
            {"email": "same@example.com", "firstName": "First"},
            {"email": "same@example.com", "firstName": "Second", "company": "Co"},
        ],
        upsert=True,
    )
    outcome = run(ingestor, message)
    assert outcome.result is not None
    assert outcome.result["counts"] == {"created": 1, "updated": 1, "failed": 0}
    [contact] = stored(engine, user)
    assert (contact["first_name"], contact["company"], contact["version"]) == ("Second", "Co", 2)
    again = run(ingestor, message)
    assert again.replayed
    assert again.result == outcome.result
    [contact] = stored(engine, user)
    assert contact["version"] == 2


@pytest.mark.parametrize("contacts", [[], "x", [{}] * 1001, None])
def test_a_malformed_batch_fails_whole_with_400(
    ingestor: ContactIngestor, board: JobBoard, contacts: Any, user: str
) -> None:
    outcome = run(ingestor, batch(board, user, contacts))
    assert (outcome.status, outcome.code) == ("failed", 400)
    assert outcome.error is not None
    assert outcome.error["message"] == "contacts must be an array of 1 to 1000 contacts"


def test_a_create_batch_with_repeated_and_existing_emails_reports_each_item(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "taken@example.com"}))
    outcome = run(
        ingestor,
        batch(
            board,
            user,
            [
                {"email": "a@example.com", "firstName": "First", "socialProfiles": {"x": 1}},
                {"email": "A@example.com", "firstName": "Second"},
                {"email": "Taken@example.com"},
                {"email": "b@example.com", "status": "unsubscribed", "customFields": {"k": None}},
                {"email": 7},
            ],
        ),
    )
    assert outcome.result is not None
    assert [i["code"] for i in outcome.result["items"]] == [201, 409, 409, 201, 400]
    assert outcome.result["counts"] == {"created": 2, "updated": 0, "failed": 3}
    contacts_by_email = {c["email"]: c for c in stored(engine, user)}
    assert contacts_by_email["a@example.com"]["first_name"] == "First"  # the first one wins
    assert contacts_by_email["b@example.com"]["status"] == "unsubscribed"
    assert contacts_by_email["b@example.com"]["custom_fields"] == {}
    assert contacts_by_email["a@example.com"]["version"] == 1


# Many jobs in one transaction (what a worker process does with a batch of messages).


def test_many_jobs_apply_in_one_call_each_with_its_own_outcome(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    messages = [
        admitted(board, user, {"email": "one@example.com"}),
        admitted(board, user, {"email": "not-an-email"}),
        admitted(board, user, {"email": "two@example.com", "firstName": "Two"}, upsert=True),
        {"job_id": 42},
    ]
    outcomes = ingestor.process_many(messages)
    assert [o.code if o else None for o in outcomes] == [201, 400, 201, None]
    for message, outcome in zip(messages[:3], outcomes, strict=False):
        assert outcome is not None
        row = read_final_job(engine, message["job_id"])
        assert row is not None
        assert (row["code"], row["attempts"]) == (outcome.code, 1)
        assert board.pending(message["job_id"]) is None
    assert sorted(c["email"] for c in stored(engine, user)) == [
        "one@example.com",
        "two@example.com",
    ]


def test_the_same_email_created_twice_in_one_call_goes_to_the_first_accepted(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    first = admitted(board, user, {"email": "dup@example.com", "firstName": "First"})
    second = admitted(board, user, {"email": "DUP@example.com", "firstName": "Second"})
    # Delivered in the opposite order: acceptance decides, not delivery.
    outcomes = ingestor.process_many([second, first])
    assert [o.code if o else None for o in outcomes] == [409, 201]
    assert [c["first_name"] for c in stored(engine, user)] == ["First"]


def test_upserts_of_one_contact_in_one_call_end_with_the_latest_values(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    older, newer = upserts_in_acceptance_order(
        board,
        user,
        {"email": "u@example.com", "firstName": "Old", "company": "Acme"},
        {"email": "u@example.com", "firstName": "New"},
    )
    outcomes = ingestor.process_many([newer, older])
    assert [o.code if o else None for o in outcomes] == [200, 201]
    [contact] = stored(engine, user)
    assert (contact["first_name"], contact["company"]) == ("New", "Acme")


def test_a_job_twice_in_one_call_is_applied_once_and_answered_twice(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "twice@example.com", "firstName": "T"}, upsert=True)
    done_before = admitted(board, user, {"email": "before@example.com"})
    run(ingestor, done_before)
    outcomes = ingestor.process_many([message, done_before, message])
    assert [(o.code, o.replayed) if o else None for o in outcomes] == [
        (201, False),
        (201, True),
        (201, True),
    ]
    assert [c["version"] for c in stored(engine, user) if c["email"] == "twice@example.com"] == [1]


def test_a_failed_transaction_leaves_none_of_its_jobs_applied(
    ingestor: ContactIngestor,
    board: JobBoard,
    engine: Engine,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    messages = [admitted(board, user, {"email": f"r{i}@example.com"}) for i in range(3)]
    original = ingestor._insert_new

    def insert_then_fail(*args: Any) -> Any:
        original(*args)  # the contacts are written...
        raise OperationalError("INSERT", {}, Exception("connection lost"))  # ...then lost

    monkeypatch.setattr(ingestor, "_insert_new", insert_then_fail)
    with pytest.raises(OperationalError):
        ingestor.process_many(messages)
    assert stored(engine, user) == []
    assert all(read_final_job(engine, m["job_id"]) is None for m in messages)
    assert all(board.pending(m["job_id"]) for m in messages)  # still pending: redelivered later
    monkeypatch.undo()
    assert [o.code if o else None for o in ingestor.process_many(messages)] == [201] * 3


def test_creates_and_upserts_of_one_email_in_one_call_answer_as_one_after_another(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    upsert_first = admitted(board, user, {"email": "m@example.com", "company": "U"}, upsert=True)
    create = admitted(board, user, {"email": "m@example.com", "firstName": "C"})
    upsert = admitted(board, user, {"email": "m@example.com", "firstName": "U2"}, upsert=True)
    other = admitted(board, user, {"email": "other@example.com"})
    outcomes = ingestor.process_many([other, upsert, create, upsert_first])
    assert [o.code if o else None for o in outcomes] == [201, 200, 409, 201]
    contact = next(c for c in stored(engine, user) if c["email"] == "m@example.com")
    assert (contact["company"], contact["first_name"]) == ("U", "U2")


def test_a_refused_job_fails_with_its_refusal_and_touches_nothing_beside_it(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    # What the worker does with a message it could not read: the job, rebuilt from its
    # Redis record, fails with 400; its neighbours in the transaction are applied.
    before = admitted(board, user, {"email": "before@example.com"})
    unreadable = admitted(board, user, {"email": "never@example.com"}, upsert=True)
    after = admitted(board, user, {"email": "after@example.com"})
    message = "Request body must not nest more than 64 levels deep"
    refused = board.refused(unreadable["job_id"], Refusal(400, message))
    assert refused is not None
    assert (refused.user_id, refused.operation) == (user, "upsert")
    assert refused.accepted_at_us == unreadable["accepted_at_us"]

    outcomes = ingestor.process_many([before, refused, after])
    assert [(o.status, o.code) for o in outcomes if o] == [
        ("succeeded", 201), ("failed", 400), ("succeeded", 201),
    ]  # fmt: skip
    assert sorted(c["email"] for c in stored(engine, user)) == [
        "after@example.com", "before@example.com",
    ]  # fmt: skip
    status = job_status(board, partial(read_final_job, engine), refused.job_id, user)
    assert status is not None
    assert status["error"] == {
        "code": 400, "message": message, "errors": [{"field": "body", "message": message}]
    }  # fmt: skip
    assert board.refused(refused.job_id, Refusal(400, message)) is None  # final: no record
    # A redelivery finds the outcome recorded.
    [again] = ingestor.process_many([refused])
    assert again is not None
    assert (again.replayed, again.code) == (True, 400)


def test_a_job_failing_unexpectedly_is_recorded_failed_with_500_and_no_errors_list(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    message = admitted(board, user, {"email": "bug@example.com"})
    job = replace(
        ContactJob.from_message(message), refusal=Refusal(500, "The job could not be processed")
    )
    [outcome] = ingestor.process_many([job])
    assert outcome is not None
    assert (outcome.status, outcome.code) == ("failed", 500)
    assert outcome.error == {"code": 500, "message": "The job could not be processed"}
    assert stored(engine, user) == []


@pytest.mark.parametrize(
    ("field", "body_field", "before"),
    [
        ("social_profiles", "socialProfiles", {"twitter": "@a", "reddit": "r"}),
        ("custom_fields", "customFields", {"plan": "pro", "seats": 3}),
    ],
)
def test_an_upsert_with_a_null_object_clears_it(
    ingestor: ContactIngestor,
    board: JobBoard,
    engine: Engine,
    user: str,
    field: str,
    body_field: str,
    before: dict[str, Any],
) -> None:
    run(ingestor, admitted(board, user, {"email": "z@example.com", body_field: before}))
    outcome = run(
        ingestor, admitted(board, user, {"email": "z@example.com", body_field: None}, upsert=True)
    )
    assert outcome.code == 200
    assert outcome.result is not None
    assert outcome.result["data"][field] == {}
    [row] = stored(engine, user)
    assert row[field] == {}
    assert row["version"] == 2
    # Keys set after the clear are kept as usual.
    again = {"email": "z@example.com", body_field: {"reddit": "new"}}
    run(ingestor, admitted(board, user, again, upsert=True))
    [row] = stored(engine, user)
    assert row[field] == {"reddit": "new"}


def test_a_null_object_delivered_late_keeps_what_newer_jobs_set(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "l@example.com", "customFields": {"a": 1}}))
    clear, newer = upserts_in_acceptance_order(
        board,
        user,
        {"email": "l@example.com", "customFields": None},
        {"email": "l@example.com", "customFields": {"b": 2}},
    )
    run(ingestor, newer)
    run(ingestor, clear)  # redelivered after the newer job committed
    [row] = stored(engine, user)
    assert row["custom_fields"] == {"b": 2}


def test_a_batch_applies_an_email_repeated_in_it_occurrence_after_occurrence(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    run(ingestor, admitted(board, user, {"email": "rep@example.com", "customFields": {"k0": 0}}))
    outcome = run(
        ingestor,
        batch(
            board,
            user,
            [
                {"email": "rep@example.com", "firstName": "One", "customFields": {"k1": 1}},
                {"email": "other@example.com", "company": "Other"},
                # Over the limit on the merged result: this occurrence alone fails.
                {"email": "REP@example.com", "customFields": {f"x{i}": i for i in range(19)}},
                {"email": "Rep@example.com", "firstName": "Three", "customFields": {"k0": None}},
                {"email": "rep@example.com", "socialProfiles": {"reddit": "r"}},
                {"email": "rep@example.com", "firstName": "Three"},  # changes nothing new
            ],
            upsert=True,
        ),
    )
    assert outcome.result is not None
    items = outcome.result["items"]
    assert [item["code"] for item in items] == [200, 201, 400, 200, 200, 200]
    assert items[2]["error"] == "customFields must have 20 keys or fewer"
    assert items[2]["errors"] == [
        {"field": "customFields", "message": "customFields must have 20 keys or fewer"}
    ]
    # Each item reports the contact as it left it.
    assert [item.get("email") for item in items] == [
        "rep@example.com",
        "other@example.com",
        None,
        "Rep@example.com",
        "rep@example.com",
        "rep@example.com",
    ]
    assert outcome.result["counts"] == {"created": 1, "updated": 4, "failed": 1}
    contacts_by_email = {c["email_key"]: c for c in stored(engine, user)}
    rep = contacts_by_email["rep@example.com"]
    assert rep["first_name"] == "Three"
    assert rep["custom_fields"] == {"k1": 1}
    assert rep["social_profiles"] == {"reddit": "r"}
    # The create, then one write per item that changed something (the last one still
    # stamps firstName with its own, later, acceptance time).
    assert rep["version"] == 1 + 4
    assert contacts_by_email["other@example.com"]["company"] == "Other"


def test_single_upserts_of_one_email_in_one_call_each_report_the_contact_as_they_left_it(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    five = {f"c{i}": i for i in range(5)}
    run(ingestor, admitted(board, user, {"email": "s@example.com", "customFields": five}))
    first, over, second = upserts_in_acceptance_order(
        board,
        user,
        {"email": "s@example.com", "firstName": "One"},
        {"email": "s@example.com", "customFields": {f"d{i}": i for i in range(16)}},
        {"email": "s@example.com", "lastName": "Two"},
    )
    outcomes = ingestor.process_many([second, over, first])
    assert [o.code if o else None for o in outcomes] == [200, 400, 200]
    reported = [o.result["data"] for o in outcomes if o and o.result]
    assert [(c["first_name"], c["last_name"]) for c in reported] == [("One", "Two"), ("One", None)]
    assert outcomes[1] is not None
    assert outcomes[1].error is not None
    assert outcomes[1].error["message"] == "customFields must have 20 keys or fewer"
    [row] = stored(engine, user)
    assert (row["first_name"], row["last_name"], row["version"]) == ("One", "Two", 3)
    with engine.connect() as conn:
        ids = conn.execute(
            select(contact_jobs.c.contact_id).where(
                contact_jobs.c.job_id.in_([first["job_id"], second["job_id"]])
            )
        ).scalars()
        assert set(ids) == {row["id"]}


def test_creates_between_upserts_of_one_email_in_batches_answer_as_one_after_another(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    upserts = batch(
        board,
        user,
        [{"email": "b1@example.com", "firstName": "U"}, {"email": "b2@example.com"}],
        upsert=True,
    )
    creates = batch(
        board,
        user,
        [{"email": "B1@example.com", "firstName": "C"}, {"email": "b3@example.com"}],
    )
    later = admitted(board, user, {"email": "b3@example.com", "lastName": "L"}, upsert=True)
    outcomes = ingestor.process_many([later, creates, upserts])
    assert [o.code if o else None for o in outcomes] == [200, 200, 200]
    codes = [[i["code"] for i in o.result["items"]] for o in outcomes[1:] if o and o.result]
    assert codes == [[409, 201], [201, 201]]
    contacts_by_email = {c["email"]: c for c in stored(engine, user)}
    assert contacts_by_email["b1@example.com"]["first_name"] == "U"
    assert contacts_by_email["b3@example.com"]["last_name"] == "L"
    assert contacts_by_email["b3@example.com"]["version"] == 2


# Other transactions at the worst moments.


def waiting_on_a_lock(engine: Engine, count: int) -> None:
    """Wait until ``count`` sessions of this database wait on a lock."""
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:  # a new transaction: a fresh view of the sessions
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting >= count:
            return
        assert time.monotonic() < deadline, f"{waiting} of {count} sessions waiting"
        time.sleep(0.02)


def in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    """Start ``work`` in a thread; the list gets its result, or the exception it raised."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(work())
        except Exception as exc:  # reported to the test through ``out``
            out.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def test_contacts_another_transaction_creates_meanwhile_get_the_codes_of_one_after_another(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    # Another worker's transaction has created both emails but not committed yet: this
    # one's look finds neither, and its insert waits for that transaction.
    other = engine.connect()
    other.begin()
    for email in ("m1@example.com", "m2@example.com"):
        other.execute(
            contacts.insert().values(
                id=unique("cnt"), user_id=user, email=email, email_key=email,
                first_name="Other", created_at=func.now(), updated_at=func.now(),
            )
        )  # fmt: skip
    messages = [
        batch(board, user, [{"email": "m1@example.com", "firstName": "Mine"}], upsert=True),
        admitted(board, user, {"email": "m1@example.com", "lastName": "Too"}),
        admitted(board, user, {"email": "m2@example.com"}),  # a create only
    ]
    thread, out = in_thread(lambda: ingestor.process_many(messages))
    waiting_on_a_lock(engine, 1)
    other.commit()
    other.close()
    thread.join()
    [outcomes] = out
    assert outcomes[0].result["items"][0]["code"] == 200  # updated what the other created
    assert [o.code for o in outcomes[1:]] == [409, 409]
    contacts_by_email = {c["email"]: c for c in stored(engine, user)}
    m1 = contacts_by_email["m1@example.com"]
    assert (m1["first_name"], m1["last_name"], m1["version"]) == ("Mine", None, 2)
    assert contacts_by_email["m2@example.com"]["version"] == 1


def test_upserts_of_the_same_contacts_in_opposite_orders_never_deadlock(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    emails = ["a-first@example.com", "z-last@example.com"]
    for email in emails:
        run(ingestor, admitted(board, user, {"email": email}))
    forward = batch(board, user, [{"email": e, "company": "F"} for e in emails], upsert=True)
    backward = [
        admitted(board, user, {"email": e, "company": "B"}, upsert=True) for e in reversed(emails)
    ]
    # Hold the first contact, so both transactions line up behind it before it is freed.
    holder = engine.connect()
    holder.begin()
    holder.execute(
        select(contacts.c.id).where(contacts.c.email == emails[0]).with_for_update()
    ).all()
    first, first_out = in_thread(lambda: ingestor.process_many([forward]))
    second, second_out = in_thread(lambda: ingestor.process_many(backward))
    waiting_on_a_lock(engine, 2)
    holder.rollback()
    holder.close()
    first.join()
    second.join()
    # A deadlock would fail one of them; in a fixed lock order both go through.
    assert not [o for o in first_out + second_out if isinstance(o, Exception)]
    assert all(isinstance(o, list) for o in first_out + second_out)
    # The later-accepted upserts win whichever went first (the other then writes nothing).
    after = stored(engine, user)
    assert [c["company"] for c in after] == ["B", "B"]
    assert {c["version"] for c in after} in ({2}, {3})


def test_new_contacts_inserted_in_opposite_orders_never_deadlock(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    emails = [f"n{i}@example.com" for i in range(10)]
    ones = batch(board, user, [{"email": e, "company": "One"} for e in emails], upsert=True)
    others = [admitted(board, user, {"email": e}, upsert=True) for e in reversed(emails)]
    # Another transaction is creating an email in the middle: with inserts in the jobs'
    # orders, each transaction would have made half of the others when it is freed.
    holder = engine.connect()
    holder.begin()
    holder.execute(
        contacts.insert().values(
            id=unique("cnt"), user_id=user, email=emails[5], email_key=emails[5],
            created_at=func.now(), updated_at=func.now(),
        )
    )  # fmt: skip
    first, first_out = in_thread(lambda: ingestor.process_many([ones]))
    second, second_out = in_thread(lambda: ingestor.process_many(others))
    waiting_on_a_lock(engine, 2)
    holder.rollback()
    holder.close()
    first.join()
    second.join()
    assert not [o for o in first_out + second_out if isinstance(o, Exception)]
    [[one]], twos = first_out, second_out[0]
    assert one is not None
    assert one.result is not None
    codes = sorted([i["code"] for i in one.result["items"]] + [o.code for o in twos if o])
    assert codes == [200] * 10 + [201] * 10  # whichever went first created them all
    assert sorted(c["version"] for c in stored(engine, user)) == [2] * 10


def test_each_statement_is_prepared_once_whatever_the_number_of_jobs(
    settings: Settings, board: JobBoard, user: str
) -> None:
    engine = make_engine(settings.database_url, pool_size=1)  # one connection: one session
    ingestor = ContactIngestor(engine, board)
    try:
        for size in (1, 3, 2, 5, 4, 7, 6, 8):  # more rounds than psycopg's prepare threshold
            emails = [f"p{size}-{i}@example.com" for i in range(size)]
            ingestor.process_many([admitted(board, user, {"email": e}) for e in emails])
            ingestor.process_many(
                [admitted(board, user, {"email": e, "company": "C"}, upsert=True) for e in emails]
                + [admitted(board, user, {"email": f"q{size}@example.com"}, upsert=True)]
            )
        with engine.connect() as conn:
            prepared = conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars()
            statements = list(prepared)
    finally:
        engine.dispose()
    for fragment in (
        "pg_advisory_xact_lock",
        "FROM contact_jobs",
        "FOR UPDATE OF contacts",
        "INSERT INTO contacts ",
        "UPDATE contacts SET",
        "INSERT INTO contact_jobs",
    ):
        assert sum(fragment in statement for statement in statements) == 1, fragment


def test_an_upsert_keeps_stored_values_beyond_64_bit_integers(
    ingestor: ContactIngestor, board: JobBoard, engine: Engine, user: str
) -> None:
    big = 12345678901234567890123456789
    run(ingestor, admitted(board, user, {"email": "big@example.com", "customFields": {"n": big}}))
    outcome = run(
        ingestor,
        admitted(
            board, user, {"email": "big@example.com", "customFields": {"m": 1.5}}, upsert=True
        ),
    )
    assert outcome.result is not None
    assert outcome.result["data"]["custom_fields"] == {"n": big, "m": 1.5}
    [row] = stored(engine, user)
    assert row["custom_fields"] == {"n": big, "m": 1.5}
