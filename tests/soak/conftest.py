"""The soak runs only when asked for (`make soak` sets `SAGA_SOAK=1`): it takes half an hour."""

import os

collect_ignore = [] if os.environ.get("SAGA_SOAK") == "1" else ["test_soak.py"]
