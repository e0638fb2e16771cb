"""The ``contacts-ingest`` command line: serve, worker, dev, migrate, keys, webhooks, import."""
