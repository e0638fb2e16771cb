"""The Celery application the workers run (``celery -A worker.app``)."""

from celery import Celery

app = Celery("contacts-ingest", include=["worker.tasks", "worker.upkeep"])
app.config_from_object("celeryconfig")
