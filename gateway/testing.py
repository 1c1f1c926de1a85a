"""Helpers for testing gateway plugins, loaded as a pytest plugin (entry point ``pytest11``).

The fuller author kit (fixtures, fake connector, conformance suite) grows here; see docs/plugins.
"""

from __future__ import annotations
