"""Configuration: models (``models``), loading with file/key/line errors (``loader``), the
matter catalog and routing (``catalog``)."""

from __future__ import annotations

from gateway.config.catalog import Catalog, RouteError
from gateway.config.loader import Config, check_connector_options, load_config
from gateway.config.models import (
    Centre,
    DepartmentConfig,
    GatewaySettings,
    Matter,
    Region,
    RetryPolicy,
)

__all__ = [
    "Catalog",
    "Centre",
    "Config",
    "DepartmentConfig",
    "GatewaySettings",
    "Matter",
    "Region",
    "RetryPolicy",
    "RouteError",
    "check_connector_options",
    "load_config",
]
