"""The HTTP edge: a small WSGI application that authenticates, limits, validates and enqueues."""
