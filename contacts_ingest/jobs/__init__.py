"""A job's way in and its status: the job and its id, the Celery message built by hand,
the one atomic admission step in Redis, and the status a client reads."""
