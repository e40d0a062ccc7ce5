"""The long-running process: API server plus scheduled jobs. Arrives with the daemon issue."""
