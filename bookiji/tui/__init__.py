"""The support dashboard, `bookiji tui` (Textual).

app.py       the app and its main screen (overview, live feed, reservations)
widgets.py   the main screen's panels          detail.py   one reservation and its actions
dialogs.py   confirmation and help             queries.py  every read, on indexes
actions.py   what support can do, through the services the CLI calls
work.py      database I/O in thread workers    format.py   times, countdowns, slots
dashboard.tcss  the styles
"""
