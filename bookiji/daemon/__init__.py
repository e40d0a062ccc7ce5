"""The long-running process: the partner API (uvicorn) plus the scheduled jobs."""
