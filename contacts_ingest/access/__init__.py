"""Who may write: API keys and signed webhook endpoints."""
