"""Adapters for the outside world (payments, calendars, notifications), behind service ports."""
