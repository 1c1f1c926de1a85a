"""Imports every command module so each registers itself on ``app``."""

from gateway.cli import (
    audit_cmd,  # noqa: F401
    backup_cmd,  # noqa: F401
    config_cmd,  # noqa: F401
    demo_cmd,  # noqa: F401
    keys_cmd,  # noqa: F401
    new_plugin_cmd,  # noqa: F401
    ops_cmd,  # noqa: F401
    pii_cmd,  # noqa: F401
    reconcile_cmd,  # noqa: F401
    refetch_cmd,  # noqa: F401
    service_cmd,  # noqa: F401
    simulate_cmd,  # noqa: F401
)
