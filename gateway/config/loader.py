"""Loading the configuration: ``gateway.toml``, ``departments/*.toml`` and ``matters.csv``.

Every problem in every file is collected and raised together as one :class:`ConfigError`, each
naming the file, the key (or CSV column) and, where it can be found, the line. Secrets are
``${ENV_NAME}`` references resolved from the environment; a literal secret is a problem.

Layout (all next to ``gateway.toml``)::

    gateway.toml            [gateway] with [gateway.api], [gateway.dispatch], [gateway.plugins],
                            [[gateway.regions]], [[gateway.centres]], [[gateway.api_keys]]
    departments/<code>.toml one department per file; the file stem is its ``code``
    matters.csv             the catalog (see :data:`MATTER_COLUMNS`)
    schemas/*.json          JSON Schemas of forms, named from the catalog's form_schema column
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.config.catalog import Catalog, overlapping_routes
from gateway.config.models import DepartmentConfig, GatewaySettings, Matter, Region
from gateway.config.secrets import ENV_REF, field_of, is_secret_name, literal_secrets, models_in
from gateway.errors import ConfigError, ConfigProblem

MATTER_COLUMNS = (
    "code",
    "name",
    "department",
    "regions",
    "promised_days",
    "materials",
    "pickup_anywhere",
    "form_schema",
)
_REQUIRED_COLUMNS = frozenset(MATTER_COLUMNS) - {"form_schema", "materials", "pickup_anywhere"}

_URL_PASSWORD = re.compile(r"://[^/@:]*:([^@/]*)@")
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|sign|pass|cookie|credential", re.I)
_CREDENTIAL_VALUE = re.compile(r"(?i)(bearer|basic|token|digest)\s+\S")
_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")
_KEY_PART = r"(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_SEGMENT = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Config:
    """The validated configuration."""

    path: Path  # the gateway.toml
    gateway: GatewaySettings
    departments: dict[str, DepartmentConfig]  # by code
    catalog: Catalog
    department_files: dict[str, Path] = field(default_factory=dict)  # by code
    #: what is allowed but probably wrong (a literal credential): check-config shows these
    warnings: tuple[ConfigProblem, ...] = ()

    @property
    def config_dir(self) -> Path:
        return self.path.parent


def load_config(
    path: str | Path = "config/gateway.toml", *, env: Mapping[str, str] | None = None
) -> Config:
    """Load and validate the configuration rooted at ``path``; ``${NAME}`` references are
    resolved from ``env`` (default ``os.environ``). Raises :class:`ConfigError` listing every
    problem found in every file."""
    path = Path(path)
    loader = _Loader(path, os.environ if env is None else env)
    config = loader.load()
    if loader.problems or config is None:
        raise ConfigError(loader.problems)
    return config


def check_connector_options(config: Config, connectors: Mapping[str, type]) -> list[ConfigProblem]:
    """Problems with departments' connectors: a kind that is not installed, ``[options]``
    that the connector's ``Options`` model rejects, and literal secrets in ``[options]``
    (checked beside the model, which declares what holds field names: see
    :mod:`gateway.config.secrets`). Disabled departments are only checked for literal
    secrets, and only when their connector is installed (they may name one that is not
    installed yet)."""
    problems: list[ConfigProblem] = []
    installed = ", ".join(sorted(connectors)) or "none"
    for code, department in sorted(config.departments.items()):
        source = _department_source(config, code)
        cls = connectors.get(department.connector)
        options = getattr(cls, "Options", None)
        model = options if isinstance(options, type) and issubclass(options, BaseModel) else None
        if model is not None:
            problems += _literal_secret_problems(source, "options", model)
        if not department.enabled:
            continue
        if cls is None:
            problems.append(
                source.problem(
                    ("connector",),
                    f"connector kind {department.connector!r} is not installed "
                    f"(installed: {installed})",
                )
            )
        elif model is None:
            problems.append(
                source.problem(
                    ("connector",), f"connector kind {department.connector!r} has no Options model"
                )
            )
        else:
            try:
                model.model_validate(department.options)
            except ValidationError as exc:
                # values here are resolved: never echo them, they may hold secrets
                problems.extend(
                    source.validation_problems(exc, model, prefix=("options",), show_input=False)
                )
    return problems


# -- internals -----------------------------------------------------------------------------------


def check_literal_secrets(
    config: Config, code: str, table: str, model: type[BaseModel]
) -> list[ConfigProblem]:
    """Literal secrets in department ``code``'s ``[table]`` as written (``${ENV}`` references
    unresolved), checked beside the ``model`` that validates it (what it declares
    :class:`~gateway.connector.NotSecret` is skipped). For tables whose model lives above the
    config layer: ``[options]`` (here) and ``[simulator]`` (the simulated city)."""
    return _literal_secret_problems(_department_source(config, code), table, model)


def _department_source(config: Config, code: str) -> _Source:
    default = config.config_dir / "departments" / f"{code}.toml"
    return _Source.read(config.department_files.get(code, default))


def _literal_secret_problems(
    source: _Source, table: str, model: type[BaseModel] | None
) -> list[ConfigProblem]:
    try:
        raw = tomllib.loads(source.text).get(table)
    except tomllib.TOMLDecodeError:
        return []  # load_config reported it
    return [
        source.problem(where, "secrets must be ${ENV} references, not literal values")
        for where in literal_secrets(raw, (table,), [model] if model else [])
    ]


@dataclass
class _Source:
    """One config file: its label for messages and its text for finding lines."""

    file: str
    text: str = ""

    @classmethod
    def read(cls, path: Path) -> _Source:
        try:
            return cls(str(path), path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return cls(str(path))

    def problem(self, loc: Loc, message: str, line: int | None = None) -> ConfigProblem:
        if line is None and loc:
            line = _find_line(self.text, loc)
        return ConfigProblem(self.file, _dotted(loc), message, line)

    def validation_problems(
        self,
        exc: ValidationError,
        model: type[BaseModel],
        *,
        prefix: Loc = (),
        line: int | None = None,
        show_input: bool = True,
    ) -> list[ConfigProblem]:
        out = []
        for error in exc.errors():
            loc, _ = _walk(model, tuple(error["loc"]))
            message = _error_message(error, model, loc, show_input=show_input)
            out.append(self.problem((*prefix, *loc), message, line))
        return out


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _error_message(
    error: Mapping[str, Any], model: type[BaseModel], loc: Loc, *, show_input: bool
) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        known = _keys_of(_walk(model, tuple(error["loc"]))[1])
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f" (known keys: {', '.join(sorted(known))})"
        return message
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    secret = any(isinstance(part, str) and is_secret_name(part) for part in loc)
    if show_input and not secret and isinstance(value, str | int | float | bool):
        message += f" (got {value!r})"
    return message


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Loc, list[type[BaseModel]]]:
    """``loc`` as the user wrote it (union tags that pydantic inserts dropped) and the models
    that may hold its last key (several for a union, none for plain values); best effort."""
    out: list[str | int] = []
    candidates: list[type[BaseModel]] = [model]
    parents = candidates
    for i, part in enumerate(loc):
        parents = candidates
        if isinstance(part, int):
            out.append(part)
            continue
        info = next((f for m in candidates if (f := field_of(m, part)) is not None), None)
        if info is not None:
            out.append(part)
            candidates = models_in(info.annotation)
        elif len(candidates) > 1 and i < len(loc) - 1:
            # a union tag ("bearer" or "BearerAuth"): not in the file, but names the member
            candidates = [m for m in candidates if _is_tag(m, part)] or candidates
        else:
            out.append(part)
            candidates = []
    return tuple(out), parents


def _is_tag(model: type[BaseModel], tag: str) -> bool:
    if model.__name__ == tag:
        return True
    return any(tag in typing.get_args(f.annotation) for f in model.model_fields.values())


def _keys_of(models: list[type[BaseModel]]) -> list[str]:
    keys: list[str] = []
    for model in models:
        for name, info in model.model_fields.items():
            key = info.alias or name
            if key not in keys:
                keys.append(key)
    return keys


def _segments(key: str) -> list[str]:
    return [a or b or c for a, b, c in _SEGMENT.findall(key)]


def _find_line(text: str, target: Loc) -> int | None:
    """Best-effort line of the TOML key at ``target`` (a pydantic-style location): the line of
    the longest table header or ``key =`` whose path is a prefix of ``target``."""
    wanted = tuple(str(part) for part in target)
    arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> last index
    table: tuple[str, ...] = ()
    best_length, best_line = 0, None
    for lineno, raw in enumerate(text.splitlines(), 1):
        header = _HEADER.match(raw)
        if header:
            *parents, last = _segments(header.group(2)) or [""]
            path: tuple[str, ...] = ()
            for part in parents:
                path += (part,)
                if path in arrays:
                    path += (str(arrays[path]),)
            path += (last,)
            if header.group(1) == "[[":
                arrays[path] = arrays.get(path, -1) + 1
                path += (str(arrays[path]),)
            table = candidate = path
        else:
            key = _KEY_LINE.match(raw)
            if not key:
                continue
            candidate = table + tuple(_segments(key.group(1)))
        length = len(candidate)
        if length > best_length and wanted[:length] == candidate:
            best_length, best_line = length, lineno
    return best_line


class _Loader:
    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.dir = path.parent
        self.env = env
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        # departments whose file exists but is invalid: matters naming them are not reported
        # again as naming an unknown department
        self.broken: set[str] = set()

    def load(self) -> Config | None:
        gateway, gateway_source = self._gateway()
        departments, files = self._departments()
        matters, matters_source, lines = self._matters()
        if gateway is not None:
            self._check_places(gateway, gateway_source)
            self._check_matters(gateway, departments, matters, matters_source, lines)
        if self.problems or gateway is None:
            return None
        return Config(
            path=self.path,
            gateway=gateway,
            departments=departments,
            catalog=Catalog(matters, gateway.regions),
            department_files=files,
            warnings=tuple(self.warnings),
        )

    # -- TOML files --------------------------------------------------------------------------

    def _toml(self, source: _Source) -> dict[str, Any] | None:
        try:
            data = tomllib.loads(source.text)
        except tomllib.TOMLDecodeError as exc:
            position = _TOML_POSITION.search(str(exc))
            message = _TOML_POSITION.sub("", str(exc)).strip()
            line = int(position.group(1)) if position else None
            self.problems.append(ConfigProblem(source.file, "", f"TOML syntax: {message}", line))
            return None
        return data

    def _read(self, path: Path) -> _Source | None:
        try:
            return _Source(str(path), path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.problems.append(ConfigProblem(str(path), "", "file not found"))
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(ConfigProblem(str(path), "", f"cannot read: {exc}"))
        return None

    def _resolve(self, value: Any, loc: Loc, source: _Source) -> Any:
        """``value`` with every ``${NAME}`` in its strings replaced from the environment."""
        if isinstance(value, dict):
            return {k: self._resolve(v, (*loc, k), source) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, (*loc, i), source) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.env:
                return self.env[name]
            # NAME_FILE names a file holding the secret (systemd credentials, Docker/K8s
            # secrets): the value never sits in the environment of every child process
            file_name = self.env.get(f"{name}_FILE")
            if file_name:
                try:
                    return Path(file_name).read_text(encoding="utf-8").rstrip("\r\n")
                except (OSError, UnicodeDecodeError) as exc:
                    self.problems.append(
                        source.problem(
                            loc, f"{name}_FILE={file_name} cannot be read: {type(exc).__name__}"
                        )
                    )
                    return match.group(0)
            self.problems.append(
                source.problem(loc, f"environment variable {name} (or {name}_FILE) is not set")
            )
            return match.group(0)

        return ENV_REF.sub(replace, value)

    def _check_secret(self, value: Any, loc: Loc, source: _Source) -> None:
        """A secret value must be given as a ``${ENV}`` reference, never literally."""
        if isinstance(value, list):
            for i, item in enumerate(value):
                self._check_secret(item, (*loc, i), source)
        elif value is not None and not (isinstance(value, str) and ENV_REF.search(value)):
            self.problems.append(
                source.problem(loc, "secrets must be ${ENV} references, not literal values")
            )

    def _warn_literal_headers(self, options: Any, source: _Source) -> None:
        """A literal credential in ``[options.headers]`` (``Authorization = "Bearer ..."``): its
        name is no secret's, so it is allowed, but it belongs in the environment."""
        headers = options.get("headers") if isinstance(options, dict) else None
        if not isinstance(headers, dict):
            return
        for name, value in headers.items():
            if not isinstance(value, str) or ENV_REF.search(value) or is_secret_name(name):
                continue  # a reference, or already refused as a literal secret
            if _CREDENTIAL_HEADER.search(name) or _CREDENTIAL_VALUE.match(value):
                self.warnings.append(
                    source.problem(
                        ("options", "headers", name),
                        f"header {name!r} has a literal value that looks like a credential: "
                        "give it as ${ENV}",
                    )
                )

    def _gateway(self) -> tuple[GatewaySettings | None, _Source]:
        source = self._read(self.path)
        if source is None:
            return None, _Source(str(self.path))
        data = self._toml(source)
        if data is None:
            return None, source
        for key in data:
            if key != "gateway":
                self.problems.append(
                    source.problem((key,), f"unknown top-level key {key!r}: use [gateway]")
                )
        raw = data.get("gateway")
        if not isinstance(raw, dict):
            self.problems.append(source.problem(("gateway",), "the [gateway] table is missing"))
            return None, source
        url = raw.get("database_url")
        password = _URL_PASSWORD.search(url) if isinstance(url, str) else None
        if password and not ENV_REF.fullmatch(password.group(1)):
            self.warnings.append(
                source.problem(
                    ("gateway", "database_url"),
                    "the URL holds a literal password: give it as ${ENV} "
                    "(e.g. postgresql+asyncpg://gateway:${PG_PASSWORD}@host/db)",
                )
            )
        keys = raw.get("api_keys")
        if isinstance(keys, list):
            for i, item in enumerate(keys):
                if isinstance(item, dict) and "key" in item:
                    self._check_secret(item["key"], ("gateway", "api_keys", i, "key"), source)
        security = raw.get("security")
        if isinstance(security, dict):
            for name in ("pii_key", "pii_previous_keys"):
                if name in security:
                    self._check_secret(security[name], ("gateway", "security", name), source)
        raw = self._resolve(raw, ("gateway",), source)
        try:
            return GatewaySettings.model_validate(raw), source
        except ValidationError as exc:
            self.problems.extend(
                source.validation_problems(exc, GatewaySettings, prefix=("gateway",))
            )
            return None, source

    def _departments(self) -> tuple[dict[str, DepartmentConfig], dict[str, Path]]:
        folder = self.dir / "departments"
        departments: dict[str, DepartmentConfig] = {}
        files: dict[str, Path] = {}
        if not folder.is_dir():
            self.problems.append(
                ConfigProblem(str(folder), "", "the departments folder is missing")
            )
            return departments, files
        for path in sorted(folder.glob("*.toml")):
            source = self._read(path)
            data = self._toml(source) if source else None
            if source is None or data is None:
                self.broken.add(path.stem)
                continue
            self._check_secret(data.get("callback_secrets"), ("callback_secrets",), source)
            # [options] and [simulator] are checked beside the models that validate them
            # (check_connector_options, the simulated city): they declare what is no secret
            self._warn_literal_headers(data.get("options"), source)
            data = self._resolve(data, (), source)
            try:
                department = DepartmentConfig.model_validate(data)
            except ValidationError as exc:
                self.problems.extend(source.validation_problems(exc, DepartmentConfig))
                self.broken.add(path.stem)
                continue
            if department.code != path.stem:
                self.problems.append(
                    source.problem(
                        ("code",),
                        f"code {department.code!r} must equal the file name "
                        f"(rename the file to {department.code}.toml or fix the code)",
                    )
                )
            elif department.code in departments:
                self.problems.append(
                    source.problem(
                        ("code",),
                        f"department {department.code!r} is already defined in "
                        f"{files[department.code]}",
                    )
                )
            else:
                departments[department.code] = department
                files[department.code] = path
        return departments, files

    # -- matters.csv -------------------------------------------------------------------------

    def _matters(self) -> tuple[list[Matter], _Source, list[int]]:
        path = self.dir / "matters.csv"
        source = self._read(path)
        if source is None:
            return [], _Source(str(path)), []
        # spreadsheet programs save UTF-8 with a byte-order mark
        reader = csv.reader(io.StringIO(source.text.removeprefix("\ufeff"), newline=""))
        try:
            header = [column.strip() for column in next(reader)]
        except StopIteration:
            self.problems.append(ConfigProblem(source.file, "", "the catalog is empty", 1))
            return [], source, []
        except csv.Error as exc:
            self.problems.append(ConfigProblem(source.file, "", f"CSV: {exc}", 1))
            return [], source, []
        bad = False
        for column in header:
            if column not in MATTER_COLUMNS:
                bad = True
                self.problems.append(
                    ConfigProblem(
                        source.file,
                        column,
                        f"unknown column (columns: {', '.join(MATTER_COLUMNS)})",
                        1,
                    )
                )
        for column in sorted(_REQUIRED_COLUMNS - set(header)):
            bad = True
            self.problems.append(
                ConfigProblem(source.file, column, "required column is missing", 1)
            )
        if bad:
            return [], source, []
        matters: list[Matter] = []
        lines: list[int] = []
        line = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self.problems.append(ConfigProblem(source.file, "", f"CSV: {exc}", line))
                break
            row_line, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                self.problems.append(
                    ConfigProblem(
                        source.file,
                        "",
                        f"row has {len(cells)} cells, the header has {len(header)}",
                        row_line,
                    )
                )
                continue
            matter = self._matter(dict(zip(header, cells, strict=True)), source, row_line)
            if matter is not None:
                matters.append(matter)
                lines.append(row_line)
        return matters, source, lines

    def _matter(self, row: dict[str, str], source: _Source, line: int) -> Matter | None:
        row = {k: v.strip() for k, v in row.items()}
        data: dict[str, Any] = {
            "code": row["code"],
            "name": row["name"],
            "department": row["department"],
            "regions": [r.strip() for r in row["regions"].split(";") if r.strip()],
            "promised_days": row["promised_days"],
            "materials": [m.strip() for m in row.get("materials", "").split(";") if m.strip()],
        }
        if row.get("pickup_anywhere"):
            data["pickup_anywhere"] = row["pickup_anywhere"].lower()
        schema_path = row.get("form_schema", "")
        problems_before = len(self.problems)
        if schema_path:
            data["form_schema"] = self._schema(schema_path, source, line)
        try:
            matter = Matter.model_validate(data)
        except ValidationError as exc:
            self.problems.extend(source.validation_problems(exc, Matter, line=line))
            return None
        return matter if len(self.problems) == problems_before else None

    def _schema(self, name: str, source: _Source, line: int) -> dict[str, Any] | None:
        path = self.dir / name
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            message = f"cannot read form schema {path}: {exc.strerror or exc}"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            message = f"form schema {path} is not valid JSON: {exc}"
        else:
            if isinstance(schema, dict) and schema.get("type", "object") == "object":
                return schema
            message = f'form schema {path} must be a JSON object schema ("type": "object")'
        self.problems.append(ConfigProblem(source.file, "form_schema", message, line))
        return None

    # -- cross-file checks -------------------------------------------------------------------

    def _check_places(self, gateway: GatewaySettings, source: _Source) -> None:
        regions: dict[str, Region] = {}
        for i, region in enumerate(gateway.regions):
            if region.code in regions:
                self.problems.append(
                    source.problem(
                        ("gateway", "regions", i, "code"), f"duplicate region {region.code}"
                    )
                )
            regions.setdefault(region.code, region)
        for i, region in enumerate(gateway.regions):
            loc: Loc = ("gateway", "regions", i, "parent")
            if region.parent is not None and region.parent not in regions:
                self.problems.append(source.problem(loc, f"unknown parent region {region.parent}"))
            elif region.parent is None and region.kind != "city":
                self.problems.append(source.problem(loc, f"a {region.kind} needs a parent region"))
            elif _has_cycle(region.code, regions):
                self.problems.append(source.problem(loc, "region parents form a cycle"))
        if gateway.city not in regions:
            self.problems.append(
                source.problem(("gateway", "city"), f"city {gateway.city} is not a listed region")
            )
        centres: set[str] = set()
        for i, centre in enumerate(gateway.centres):
            if centre.code in centres:
                self.problems.append(
                    source.problem(
                        ("gateway", "centres", i, "code"), f"duplicate centre {centre.code}"
                    )
                )
            centres.add(centre.code)
            if centre.region not in regions:
                self.problems.append(
                    source.problem(
                        ("gateway", "centres", i, "region"), f"unknown region {centre.region}"
                    )
                )
        for i, key in enumerate(gateway.api_keys):
            if (key.centre is None) != key.ops:
                # neither: a key scoped to nothing read every centre's cases; both: ambiguous
                self.problems.append(
                    source.problem(
                        ("gateway", "api_keys", i),
                        f'key {key.name!r} must give exactly one of centre = "<code>" or '
                        "ops = true",
                    )
                )
            if key.centre is not None and key.centre not in centres:
                self.problems.append(
                    source.problem(
                        ("gateway", "api_keys", i, "centre"), f"unknown centre {key.centre}"
                    )
                )
            if (key.key is None) == (key.key_sha256 is None):
                self.problems.append(
                    source.problem(
                        ("gateway", "api_keys", i), "give exactly one of key_sha256 or key"
                    )
                )

    def _check_matters(
        self,
        gateway: GatewaySettings,
        departments: Mapping[str, DepartmentConfig],
        matters: Sequence[Matter],
        source: _Source,
        lines: Sequence[int],
    ) -> None:
        regions = {r.code for r in gateway.regions}
        names: dict[str, str] = {}
        for matter, line in zip(matters, lines, strict=True):
            if matter.department not in departments and matter.department not in self.broken:
                known = ", ".join(sorted(departments)) or "none"
                self.problems.append(
                    ConfigProblem(
                        source.file,
                        "department",
                        f"unknown department {matter.department!r} (departments: {known})",
                        line,
                    )
                )
            unknown = [r for r in matter.regions if r not in regions]
            if unknown:
                self.problems.append(
                    ConfigProblem(
                        source.file, "regions", f"unknown regions: {', '.join(unknown)}", line
                    )
                )
            name = names.setdefault(matter.code, matter.name)
            if name != matter.name:
                self.problems.append(
                    ConfigProblem(
                        source.file,
                        "name",
                        f"matter {matter.code} is named {name!r} in an earlier row; "
                        "rows of one matter must share its name",
                        line,
                    )
                )
        for index, message in overlapping_routes(matters, gateway.regions):
            self.problems.append(ConfigProblem(source.file, "regions", message, lines[index]))


def _has_cycle(code: str, regions: Mapping[str, Region]) -> bool:
    seen = {code}
    parent = regions[code].parent
    while parent is not None and parent in regions:
        if parent in seen:
            return True
        seen.add(parent)
        parent = regions[parent].parent
    return False


__all__ = [
    "MATTER_COLUMNS",
    "Config",
    "check_connector_options",
    "check_literal_secrets",
    "load_config",
]
