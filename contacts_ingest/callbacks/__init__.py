"""Completion callbacks, delivered: each final job of a key or webhook endpoint with a
callback URL is POSTed there, signed, retried with backoff for a day, never to an
address the allow-list does not name (``outbound``), by senders that a slow or dead
receiver holds back only in its own lane (``sender``)."""
