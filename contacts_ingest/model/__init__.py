"""The contact itself: every field rule and error message, pure and free of I/O.

Imports nothing else of this project, so both edges, the ingestion and the tests can
rely on it alone.
"""
