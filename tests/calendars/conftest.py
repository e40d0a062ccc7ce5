"""Each adapter's support module contributes its `<provider>_source_factory` fixture."""

from tests.calendars.google_support import google_source_factory  # noqa: F401
from tests.calendars.ics_support import ics_source_factory  # noqa: F401
from tests.calendars.outlook_support import outlook_source_factory  # noqa: F401
