# One image for the gateway, the workers and the one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md celeryconfig.py ./
COPY contacts_ingest ./contacts_ingest
COPY api_gateway ./api_gateway
COPY worker ./worker
# The ops extra adds Flower (the `flower` service in docker-compose.yml).
RUN pip install ".[ops]" && useradd --system --uid 10001 contacts

USER contacts
EXPOSE 8000 9808 5555
CMD ["contacts-ingest", "serve", "--host", "0.0.0.0", "--port", "8000"]
