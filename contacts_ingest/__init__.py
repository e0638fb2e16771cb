"""Contacts ingestion: the core shared by the gateway and the workers."""
