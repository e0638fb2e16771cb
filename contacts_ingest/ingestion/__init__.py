"""Applying jobs to PostgreSQL exactly once, with their final status rows."""
