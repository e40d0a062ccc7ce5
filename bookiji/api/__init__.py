"""Partner HTTP API (FastAPI). Arrives with the daemon issue."""
