"""The long-running controller: reconcile passes, the loop, systemd notify, metrics.

The daemon's defaults live here, once, so the CLI can show them without importing the loop.
"""

DEFAULT_INTERVAL = 5.0  # seconds between reconcile passes
DEFAULT_VERIFY_INTERVAL = 300.0  # seconds between full reads of every element
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9625"
