"""Imports every command module so each registers itself on ``app``."""
from gateway.cli import config_cmd  # noqa: F401
from gateway.cli import service_cmd  # noqa: F401
from gateway.cli import ops_cmd  # noqa: F401
from gateway.cli import simulate_cmd  # noqa: F401
from gateway.cli import demo_cmd  # noqa: F401
