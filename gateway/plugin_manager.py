"""Loading plugins and calling their hooks.

Built-in connectors and third-party plugins load the same way: from the ``gateway`` entry-point
group. Plugins in the ``gateway.opt_in`` group (the example notifier and courier) load only when
enabled by name. A plugin that fails to import is recorded by name and the others still load. The
:class:`Plugins` wrapper is the only place the core touches ``pm.hook``, so the rest of the code
works with typed values and every call runs inside an error boundary per plugin.

Ops switches (environment, or ``[plugins]`` in gateway.toml):
``GATEWAY_LOAD_PLUGINS=a,b`` loads only those, ``GATEWAY_BLOCK_PLUGINS=c`` never loads c,
``GATEWAY_ENABLE_PLUGINS=d`` loads the opt-in plugin d too,
``GATEWAY_TRACE_PLUGINS=1`` logs every hook call.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy
import structlog

from gateway import hookspecs
from gateway.errors import PluginError

if TYPE_CHECKING:
    import typer

    from gateway.config.models import DepartmentConfig, Matter
    from gateway.connector import Applicant, Connector, Envelope
    from gateway.delivery import DeliveryMethod
    from gateway.events import StatusChange
    from gateway.notifications import Contact

log = structlog.get_logger("gateway.plugins")
GROUP = "gateway"
#: Entry points loaded only when enabled by name (``[gateway.plugins] enable``).
OPT_IN_GROUP = "gateway.opt_in"
#: Core behaviour registered through the same hooks as plugins: (name, module).
BUILTIN: tuple[tuple[str, str], ...] = (("manual_mail", "gateway.manual_mail"),)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    origin: str  # "entry point <dist>" or "registered in code"
    hooks: tuple[str, ...]


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    failures: dict[str, str] = field(default_factory=dict)
    trace: bool = False
    _origins: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    _connectors: dict[str, type[Connector]] | None = None
    _delivery: dict[str, DeliveryMethod] | None = None

    # -- loading -------------------------------------------------------------------------------

    def register(
        self,
        plugin: object,
        name: str,
        *,
        version: str | None = None,
        origin: str = "registered in code",
    ) -> None:
        """Register a plugin object (a module or an instance); the same call entry points use."""
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(name, str(exc)) from exc
        self._origins[name] = (version, origin)
        self._connectors = None
        self._delivery = None

    def info(self) -> list[PluginInfo]:
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin()):
            if plugin is None or name is None:
                continue
            version, origin = self._origins.get(name, (None, "registered in code"))
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            out.append(PluginInfo(name, version, origin, hooks))
        return out

    # -- typed hook calls ----------------------------------------------------------------------

    def connectors(self) -> dict[str, type[Connector]]:
        """Every registered connector class by kind; a kind registered twice is an error."""
        if self._connectors is not None:
            return self._connectors
        found: dict[str, type[Connector]] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.register_connectors.get_hookimpls():
            registered: list[type[Connector]] = []
            self._call(impl, register=registered.append)
            for cls in registered:
                kind = getattr(cls, "kind", None)
                if not isinstance(kind, str) or not hasattr(cls, "Options"):
                    raise PluginError(impl.plugin_name, f"{cls!r} lacks a `kind` or `Options`")
                if kind in found:
                    raise PluginError(
                        impl.plugin_name,
                        f'connector kind "{kind}" is already registered by "{owners[kind]}"',
                    )
                found[kind] = cls
                owners[kind] = impl.plugin_name
        self._connectors = found
        return found

    def map_payload(
        self, envelope: Envelope, department: DepartmentConfig
    ) -> dict[str, Any] | None:
        for impl in reversed(self.pm.hook.map_payload.get_hookimpls()):
            result = self._call(impl, envelope=envelope, department=department)
            if result is not None:
                return dict(result)
        return None

    def validate_application(
        self,
        form: dict[str, Any],
        matter: Matter,
        region: str,
        applicant: Applicant | None = None,
        department: DepartmentConfig | None = None,
    ) -> list[str]:
        problems: list[str] = []
        args = {"form": form, "matter": matter, "region": region}
        args |= {"applicant": applicant, "department": department}
        for impl in self.pm.hook.validate_application.get_hookimpls():
            problems.extend(self._call(impl, **args) or [])
        return problems

    def delivery_methods(self) -> dict[str, DeliveryMethod]:
        """Every registered delivery method by name; a name registered twice is an error."""
        if self._delivery is not None:
            return self._delivery
        found: dict[str, DeliveryMethod] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.register_delivery_methods.get_hookimpls():
            registered: list[DeliveryMethod] = []
            self._call(impl, register=registered.append)
            for method in registered:
                name = getattr(method, "name", None)
                if not isinstance(name, str) or not callable(getattr(method, "ship", None)):
                    raise PluginError(impl.plugin_name, f"{method!r} lacks a `name` or `ship`")
                if name in found:
                    raise PluginError(
                        impl.plugin_name,
                        f'delivery method "{name}" is already registered by "{owners[name]}"',
                    )
                found[name] = method
                owners[name] = impl.plugin_name
        self._delivery = found
        return found

    def status_changed(self, change: StatusChange, contact: Contact | None = None) -> None:
        for impl in self.pm.hook.status_changed.get_hookimpls():
            try:
                self._call(impl, change=change, contact=contact)
            except Exception:
                log.exception("status_changed hook failed", plugin=impl.plugin_name)

    def register_commands(self, cli: typer.Typer) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                self._call(impl, cli=cli)
            except Exception as exc:
                self.failures[impl.plugin_name] = f"register_commands: {exc}"

    def _call(self, impl: pluggy.HookImpl, **kwargs: Any) -> Any:
        # pluggy stops a whole hook call at the first raising impl; calling impls one by one
        # keeps each plugin in its own error boundary and lets us name the culprit. Arguments go
        # by name, as pluggy passes them: an impl may take any subset of the spec's arguments in
        # any order (registration already refused names the spec does not have).
        result = impl.function(*(kwargs[name] for name in impl.argnames))
        if self.trace:
            log.info("hook", plugin=impl.plugin_name, hook=impl.function.__name__, result=result)
        return result


def _wanted(name: str, load: Iterable[str], block: Iterable[str]) -> bool:
    load, block = set(load), set(block)
    return (not load or name in load) and name not in block


def _env_list(var: str) -> list[str]:
    return [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]


def load_plugins(
    *,
    load: Iterable[str] = (),
    block: Iterable[str] = (),
    enable: Iterable[str] = (),
    trace: bool = False,
    entry_points: bool = True,
    extra: Iterable[tuple[str, ModuleType | object]] = (),
) -> Plugins:
    """Build the plugin manager: every ``gateway`` entry point, the ``gateway.opt_in`` entry
    points named in ``enable``, then ``extra`` (name, plugin).

    Import errors are recorded in ``Plugins.failures`` by plugin name; the other plugins load.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm)
    load = [*load, *_env_list("GATEWAY_LOAD_PLUGINS")]
    block = [*block, *_env_list("GATEWAY_BLOCK_PLUGINS")]
    enabled = {*enable, *_env_list("GATEWAY_ENABLE_PLUGINS")}
    if entry_points:
        opt_in = [ep for ep in md.entry_points(group=OPT_IN_GROUP) if ep.name in enabled]
        for ep in [*md.entry_points(group=GROUP), *opt_in]:
            # an enabled opt-in plugin loads even when `load` narrows the others; block wins
            if not _wanted(ep.name, () if ep in opt_in else load, block):
                continue
            dist = ep.dist
            try:
                module = ep.load()
                plugins.register(
                    module,
                    ep.name,
                    version=dist.version if dist else None,
                    origin=f"entry point {dist.name if dist else '?'}:{ep.value}",
                )
            except Exception as exc:
                plugins.failures[ep.name] = f"{type(exc).__name__}: {exc}"
                log.error("plugin failed to load", plugin=ep.name, error=str(exc))
    for name, plugin in extra:
        plugins.register(plugin, name)
    # built-in behaviour registers like any plugin (trylast, so a plugin can override it)
    for name, module in BUILTIN:
        if _wanted(name, (), block):
            plugins.register(importlib.import_module(module), name, origin="built in")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(pm.get_name(exc.plugin)), str(exc)) from exc
    plugins.trace = trace or bool(os.environ.get("GATEWAY_TRACE_PLUGINS"))
    return plugins
