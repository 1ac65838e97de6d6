"""Every plugin load failure or duplicate name raises in this plugin's tests (``EKN_STRICT_PLUGINS=1``),
so a broken entry point fails a test instead of only being listed as failed by ``ekn plugins``."""

import os

os.environ["EKN_STRICT_PLUGINS"] = "1"
