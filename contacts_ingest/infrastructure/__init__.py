"""What the rest stands on: settings, PostgreSQL (tables, migrations, engines), the
Redis transport for Celery, logs and metrics."""
