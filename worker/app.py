"""The Celery application the workers run (``celery -A worker.app``)."""

from celery import Celery

app = Celery("contacts-ingest", include=["worker.tasks"])
app.config_from_object("celeryconfig")
