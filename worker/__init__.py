"""The Celery edge: the app and its tasks. Processing logic lives in contacts_ingest.ingestion."""
