"""Textual support dashboard. Arrives with the dashboard issue."""
