"""Loading the configuration: the example city, every kind of problem (file, key, line), secrets,
connector options and ``gateway check-config``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import typer
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import check_connector_options, load_config
from gateway.errors import ConfigError, ConfigProblem
from gateway.plugin_manager import load_plugins
from gateway.states import State

EXAMPLE = Path(__file__).resolve().parents[1] / "config"
ENV = {"AMR_CALLBACK_SECRET": "s3cret", "AMR_API_TOKEN": "tok", "HRSS_API_KEY": "key"}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A writable copy of the example config folder."""
    target = tmp_path / "config"
    shutil.copytree(EXAMPLE, target)
    return target


def edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (which must occur once) by ``new``; returns the 1-based line of ``new``."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not unique in {path}"
    text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return text[: text.index(new)].count("\n") + 1


def disable(cfg: Path, *codes: str) -> None:
    """Disable departments in a config copy (for checks against a rest-only connector set)."""
    for code in codes:
        path = cfg / "departments" / f"{code}.toml"
        text = path.read_text(encoding="utf-8")
        line = next(x for x in text.splitlines() if x.startswith("connector = "))
        edit(path, line, f"{line}\nenabled = false")


def append(path: Path, text: str) -> int:
    """Append ``text``; returns the line number its first line lands on."""
    before = path.read_text(encoding="utf-8")
    path.write_text(before + text, encoding="utf-8")
    return before.count("\n") + 1


def problems(cfg: Path, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(cfg / "gateway.toml", env=ENV if env is None else env)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def checked(cfg: Path) -> list[ConfigProblem]:
    """What ``gateway check-config`` finds: the loader's problems, else the connectors'
    (literal secrets in ``[options]`` are checked beside the connector's model)."""
    try:
        config = load_config(cfg / "gateway.toml", env=ENV)
    except ConfigError as exc:
        return exc.problems
    return check_connector_options(config, load_plugins().connectors())


def only(found: list[ConfigProblem], file: str, key: str) -> ConfigProblem:
    hits = [p for p in found if p.file.endswith(file) and p.key == key]
    assert len(hits) == 1, f"expected one problem for {file} [{key}], got: {found}"
    return hits[0]


# -- the example ---------------------------------------------------------------------------------


def test_example_loads() -> None:
    config = load_config(EXAMPLE / "gateway.toml", env=ENV)
    assert config.path == EXAMPLE / "gateway.toml"
    assert config.gateway.city == "339900"
    assert sorted(config.departments) == ["amr", "civil", "hrss", "nrp"]
    assert len(config.catalog.all()) == 20
    assert [r.code for r in config.gateway.regions] == ["339900", "339901", "339902", "339901101"]
    assert [c.code for c in config.gateway.centres] == ["C01", "C02", "C03"]
    amr = config.departments["amr"]
    assert amr.connector == "rest" and amr.enabled
    assert [s.get_secret_value() for s in amr.callback_secrets] == ["s3cret"]
    assert amr.options["auth"] == {"type": "bearer", "token": "tok"}
    assert amr.map_status("9") is State.APPROVED
    assert amr.map_status("2") is State.NOT_ACCEPTED
    assert amr.poll_interval_seconds == 30
    hrss = config.departments["hrss"]
    assert hrss.callback_secrets == [] and hrss.poll_interval_seconds == 2
    assert hrss.options["auth"]["key"] == "key"
    assert config.departments["nrp"].connector == "soap"
    assert config.departments["civil"].connector == "filedrop"
    assert all(d.enabled for d in config.departments.values())
    assert config.department_files["amr"] == EXAMPLE / "departments" / "amr.toml"
    # every department handles some matter; every matter's department exists
    assert {m.department for m in config.catalog.all()} == set(config.departments)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config = load_config(EXAMPLE / "gateway.toml")
    assert config.departments["amr"].options["auth"]["token"] == "tok"


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/gateway.toml", env=ENV)
    assert any("file not found" in p.message for p in info.value.problems)


# -- secrets and the environment -----------------------------------------------------------------


def test_missing_env_var_names_file_key_and_line(cfg: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "AMR_CALLBACK_SECRET"}
    found = problems(cfg, env)
    assert len(found) == 1
    problem = found[0]
    assert problem.file.endswith("departments/amr.toml")
    assert problem.key == "callback_secrets.0"
    assert problem.message == (
        "environment variable AMR_CALLBACK_SECRET (or AMR_CALLBACK_SECRET_FILE) is not set"
    )
    text = (cfg / "departments" / "amr.toml").read_text(encoding="utf-8").splitlines()
    assert problem.line is not None
    assert text[problem.line - 1].startswith("callback_secrets")
    assert str(problem).endswith(
        f"amr.toml:{problem.line} [callback_secrets.0]: "
        "environment variable AMR_CALLBACK_SECRET (or AMR_CALLBACK_SECRET_FILE) is not set"
    )


def test_missing_env_var_everywhere_it_is_used(cfg: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "HRSS_API_KEY"}
    found = problems(cfg, env)
    assert {p.key for p in found} == {"options.auth.key", "simulator.auth_key"}
    assert all("HRSS_API_KEY (or HRSS_API_KEY_FILE) is not set" in p.message for p in found)


def test_env_reference_inside_a_longer_string(cfg: Path) -> None:
    edit(
        cfg / "gateway.toml",
        'database_url = "sqlite+aiosqlite:///var/gateway.db"',
        'database_url = "postgresql+asyncpg://gw:${PG_PASSWORD}@db/gateway"',
    )
    config = load_config(cfg / "gateway.toml", env={**ENV, "PG_PASSWORD": "pw"})
    assert config.gateway.database_url == "postgresql+asyncpg://gw:pw@db/gateway"
    found = problems(cfg)
    assert [p.key for p in found] == ["gateway.database_url"]


def test_literal_secrets_are_refused(cfg: Path) -> None:
    amr = cfg / "departments" / "amr.toml"
    secret_line = edit(
        amr,
        'callback_secrets = ["${AMR_CALLBACK_SECRET}"]',
        'callback_secrets = ["${AMR_CALLBACK_SECRET}", "plain-text"]',
    )
    secret = only(problems(cfg), "amr.toml", "callback_secrets.1")
    assert "secrets must be ${ENV} references" in secret.message
    assert secret.line == secret_line
    edit(amr, '"${AMR_CALLBACK_SECRET}", "plain-text"', '"${AMR_CALLBACK_SECRET}"')
    token_line = edit(
        amr, 'type = "bearer"\ntoken = "${AMR_API_TOKEN}"', 'type = "bearer"\ntoken = "abc123"'
    )
    found = checked(cfg)
    token = only(found, "amr.toml", "options.auth.token")
    assert str(token).endswith(
        f"amr.toml:{token_line + 1} [options.auth.token]: "
        "secrets must be ${ENV} references, not literal values"
    )
    assert "abc123" not in str(found)  # the secret itself is never echoed
    assert len(found) == 1


def test_field_names_are_declared_by_the_options_model(cfg: Path) -> None:
    """A table the connector's model declares as field names (FIELD_NAMES) may name columns
    called like secrets (``password``, ``token``, ``id_key``); a literal in a real secret key
    (a header, a password) beside them is still refused with file:line [key]."""
    amr = cfg / "departments" / "amr.toml"
    edit(
        amr,
        '[options.list]\npath = "/cases"',
        '[options.list]\npath = "/cases"\n[options.list.item]\nidempotency_key = "id_key"',
    )
    civil = cfg / "departments" / "civil.toml"
    edit(civil, '"case.ref" = "idempotency_key"', 'password = "idempotency_key"')
    append(civil, '\n[options.result.fields]\nstatus = "token"\nidempotency_key = "password"\n')
    assert checked(cfg) == []
    config = load_config(cfg / "gateway.toml", env=ENV)
    fields = config.departments["civil"].options["result"]["fields"]
    assert fields == {"status": "token", "idempotency_key": "password"}
    assert config.departments["amr"].options["list"]["item"]["idempotency_key"] == "id_key"
    header_line = append(amr, '\n[options.headers]\napp_key = "lit-7c2e"\n') + 2
    edit(
        civil,
        'type = "local"\nroot = "var/filedrop/civil"',
        'type = "sftp"\nhost = "sftp.civil.example"\nusername = "ow"\npassword = "Pw-9f3k"\n'
        'host_key = "ssh-ed25519 AAAA"\nprivate_key = "/etc/gateway/civil_ed25519"',
    )
    found = checked(cfg)
    assert {(p.file.rpartition("/")[2], p.key, p.message) for p in found} == {
        (
            "amr.toml",
            "options.headers.app_key",
            "secrets must be ${ENV} references, not literal values",
        ),
        (
            "civil.toml",
            "options.target.password",
            "secrets must be ${ENV} references, not literal values",
        ),
    }
    assert only(found, "amr.toml", "options.headers.app_key").line == header_line
    assert "Pw-9f3k" not in str(found) and "lit-7c2e" not in str(found)


async def test_the_simulator_table_is_checked_beside_its_model(cfg: Path) -> None:
    """``[simulator]`` is validated by the simulator's settings model: its declared field
    names (the file-drop simulator's ``columns``) may look like secrets, its secrets may not."""
    from gateway.simulators.city import simulated_city

    civil = cfg / "departments" / "civil.toml"
    append(civil, '\n[simulator.columns]\nidempotency_key = "申请编号"\n')
    config = load_config(cfg / "gateway.toml", env=ENV)
    async with simulated_city(config) as city:
        assert city.states["civil"].settings.columns == {"idempotency_key": "申请编号"}
    amr = cfg / "departments" / "amr.toml"
    line = edit(amr, 'auth_token = "${AMR_API_TOKEN}"', 'auth_token = "tok-5d1e"')
    config = load_config(cfg / "gateway.toml", env=ENV)
    with pytest.raises(ConfigError) as info:
        async with simulated_city(config):
            pass
    [problem] = info.value.problems
    assert (problem.key, problem.line) == ("simulator.auth_token", line)
    assert "tok-5d1e" not in str(info.value)


def test_literal_api_key_in_gateway_toml(cfg: Path) -> None:
    line = append(
        cfg / "gateway.toml",
        '\n[[gateway.api_keys]]\nname = "desk"\ncentre = "C01"\nkey = "literal"\n',
    )
    problem = only(problems(cfg), "gateway.toml", "gateway.api_keys.0.key")
    assert "${ENV}" in problem.message
    assert problem.line == line + 4


# -- TOML and model problems, with lines ---------------------------------------------------------


def test_unknown_key_typo_reported_with_line(cfg: Path) -> None:
    line = edit(
        cfg / "departments" / "amr.toml",
        "poll_interval_seconds = 30",
        "poll_intervall_seconds = 30",
    )
    problem = only(problems(cfg), "departments/amr.toml", "poll_intervall_seconds")
    assert problem.line == line
    assert "unknown key 'poll_intervall_seconds'" in problem.message
    assert "did you mean 'poll_interval_seconds'" in problem.message


def test_unknown_key_in_a_sub_table(cfg: Path) -> None:
    line = edit(cfg / "gateway.toml", "lease_seconds = 60.0", "lease_secs = 60.0")
    problem = only(problems(cfg), "gateway.toml", "gateway.dispatch.lease_secs")
    assert problem.line == line
    assert "did you mean 'lease_seconds'" in problem.message


def test_bad_value_in_a_sub_table(cfg: Path) -> None:
    line = edit(cfg / "gateway.toml", "port = 8080", "port = 99999")
    problem = only(problems(cfg), "gateway.toml", "gateway.api.port")
    assert problem.line == line
    assert "99999" in problem.message


def test_bad_value_in_an_array_of_tables(cfg: Path) -> None:
    # the third region (index 2) is 西城区
    line = edit(
        cfg / "gateway.toml",
        'name = "西城区"\nkind = "district"',
        'name = "西城区"\nkind = "county"',
    )
    problem = only(problems(cfg), "gateway.toml", "gateway.regions.2.kind")
    assert problem.line == line + 1
    assert "county" in problem.message


def test_missing_required_key_points_at_its_table(cfg: Path) -> None:
    edit(cfg / "departments" / "hrss.toml", 'name = "人力资源和社会保障局"\n', "")
    problem = only(problems(cfg), "hrss.toml", "name")
    assert problem.message == "required key is missing"


def test_status_map_to_unknown_state(cfg: Path) -> None:
    line = edit(cfg / "departments" / "hrss.toml", '"9" = "approved"', '"9" = "aproved"')
    problem = only(problems(cfg), "hrss.toml", "status_map.9")
    assert problem.line == line


def test_toml_syntax_error_with_line(cfg: Path) -> None:
    line = edit(cfg / "departments" / "hrss.toml", "concurrency = 4", "concurrency = ")
    problem = only(problems(cfg), "hrss.toml", "")
    assert problem.line == line
    assert problem.message.startswith("TOML syntax:")


def test_missing_gateway_table_and_unknown_top_level_key(cfg: Path) -> None:
    (cfg / "gateway.toml").write_text('[gatway]\ncity = "339900"\n', encoding="utf-8")
    found = problems(cfg)
    top = only(found, "gateway.toml", "gatway")
    assert top.line == 1
    only(found, "gateway.toml", "gateway")


def test_file_name_must_equal_code(cfg: Path) -> None:
    # a copy of amr under another name would define amr twice
    shutil.copy(cfg / "departments" / "amr.toml", cfg / "departments" / "market.toml")
    problem = only(problems(cfg), "departments/market.toml", "code")
    assert "must equal the file name" in problem.message
    assert problem.line == 3


# -- places ----------------------------------------------------------------------------------------


def test_centre_in_unknown_region(cfg: Path) -> None:
    line = edit(cfg / "gateway.toml", 'region = "339901101"', 'region = "339903101"')
    problem = only(problems(cfg), "gateway.toml", "gateway.centres.2.region")
    assert problem.line == line
    assert "unknown region 339903101" in problem.message


def test_region_parent_unknown_and_city_not_listed(cfg: Path) -> None:
    line = edit(cfg / "gateway.toml", 'parent = "339901"', 'parent = "339909"')
    edit(cfg / "gateway.toml", 'city = "339900"', 'city = "339800"')
    found = problems(cfg)
    parent = only(found, "gateway.toml", "gateway.regions.3.parent")
    assert parent.line == line
    assert "339909" in parent.message
    only(found, "gateway.toml", "gateway.city")


# -- the catalog -----------------------------------------------------------------------------------


def test_matter_problems_name_file_row_and_column(cfg: Path) -> None:
    matters = cfg / "matters.csv"
    unknown_dept = append(matters, "XK00999000,测试事项,tax,339900,5,申请书,true,\n")
    unknown_region = append(matters, "XK00998000,测试事项二,amr,339905,5,申请书,true,\n")
    bad_days = append(matters, "XK00997000,测试事项三,amr,339900,soon,申请书,true,\n")
    bad_code = append(matters, "X123,测试事项四,amr,339900,5,申请书,true,\n")
    short_row = append(matters, "XK00996000,测试事项五,amr\n")
    found = problems(cfg)
    assert only(found, "matters.csv", "department").line == unknown_dept
    assert "unknown department 'tax'" in only(found, "matters.csv", "department").message
    assert only(found, "matters.csv", "regions").line == unknown_region
    assert only(found, "matters.csv", "promised_days").line == bad_days
    assert only(found, "matters.csv", "code").line == bad_code
    short = only(found, "matters.csv", "")
    assert short.line == short_row
    assert "3 cells" in short.message


def test_unknown_and_missing_columns(cfg: Path) -> None:
    edit(cfg / "matters.csv", "code,name,department,regions,", "code,title,department,regions,")
    found = problems(cfg)
    assert only(found, "matters.csv", "title").line == 1
    assert only(found, "matters.csv", "name").message == "required column is missing"


def test_missing_form_schema_file(cfg: Path) -> None:
    (cfg / "schemas" / "XK00123000.json").unlink()
    problem = only(problems(cfg), "matters.csv", "form_schema")
    assert problem.line == 2
    assert "XK00123000.json" in problem.message


def test_overlapping_routes_are_refused(cfg: Path) -> None:
    # the city-wide food licence row, plus a district row for another department
    line = append(
        cfg / "matters.csv", "XK00123000,食品经营许可证核发,hrss,339902,10,申请书,true,\n"
    )
    problem = only(problems(cfg), "matters.csv", "regions")
    assert problem.line == line
    assert "overlaps" in problem.message and "339900" in problem.message


def test_rows_of_one_matter_must_share_its_name(cfg: Path) -> None:
    line = append(cfg / "matters.csv", "XK00304000,另一个名字,nrp,339902,15,申请书,true,\n")
    problem = only(problems(cfg), "matters.csv", "name")
    assert problem.line == line


def test_sibling_regions_may_route_to_different_departments(cfg: Path) -> None:
    append(cfg / "matters.csv", "XK00304000,乡村建设规划许可证核发,civil,339902,15,申请书,true,\n")
    catalog = load_config(cfg / "gateway.toml", env=ENV).catalog
    assert catalog.route("XK00304000", "339901101").department == "nrp"
    assert catalog.route("XK00304000", "339902").department == "civil"


# -- every problem at once -------------------------------------------------------------------------


def test_every_problem_in_every_file_is_reported(cfg: Path) -> None:
    edit(cfg / "gateway.toml", 'region = "339901101"', 'region = "339903101"')
    edit(
        cfg / "departments" / "amr.toml",
        "poll_interval_seconds = 30",
        "poll_intervall_seconds = 30",
    )
    edit(
        cfg / "departments" / "civil.toml",
        'connector = "filedrop"',
        'connector = "filedrop"\nenabled = maybe',
    )
    append(cfg / "matters.csv", "XK00999000,测试事项,tax,339900,5,申请书,true,\n")
    env = {k: v for k, v in ENV.items() if k != "HRSS_API_KEY"}
    found = problems(cfg, env)
    files = {Path(p.file).name for p in found}
    assert files == {"gateway.toml", "amr.toml", "civil.toml", "hrss.toml", "matters.csv"}
    assert len(found) == 6  # hrss uses its key twice
    message = str(ConfigError(found))
    assert message.count("\n") == 5


# -- connector options -----------------------------------------------------------------------------


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str
    timeout_seconds: float = 10


class FakeRest:
    kind: ClassVar[str] = "rest"
    Options: ClassVar[type[BaseModel]] = FakeOptions


def test_connector_options_checked_against_the_connector(cfg: Path) -> None:
    disable(cfg, "nrp", "civil")
    config = load_config(cfg / "gateway.toml", env=ENV)
    found = check_connector_options(config, {"rest": FakeRest})
    # the fake knows only base_url and timeout_seconds
    keys = {(Path(p.file).name, p.key) for p in found}
    assert ("amr.toml", "options.auth") in keys
    assert ("hrss.toml", "options.submit") in keys
    assert all(p.key.startswith("options.") for p in found)
    auth = next(p for p in found if p.key == "options.auth" and p.file.endswith("amr.toml"))
    text = (cfg / "departments" / "amr.toml").read_text(encoding="utf-8").splitlines()
    assert auth.line is not None and text[auth.line - 1] == "[options.auth]"
    assert "unknown key 'auth'" in auth.message


def test_connector_option_bad_value(cfg: Path) -> None:
    line = edit(
        cfg / "departments" / "hrss.toml",
        "timeout_seconds = 10\nreject_statuses",
        'timeout_seconds = "slow"\nreject_statuses',
    )
    disable(cfg, "nrp", "civil")
    config = load_config(cfg / "gateway.toml", env=ENV)

    class Strict(BaseModel):
        model_config = ConfigDict(extra="allow")
        timeout_seconds: float

    class Rest:
        kind = "rest"
        Options = Strict

    found = check_connector_options(config, {"rest": Rest})
    assert [(Path(p.file).name, p.key, p.line) for p in found] == [
        ("hrss.toml", "options.timeout_seconds", line)
    ]


def test_connector_kind_not_installed(cfg: Path) -> None:
    disable(cfg, "civil")
    config = load_config(cfg / "gateway.toml", env=ENV)

    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")

    class Rest:
        kind = "rest"
        Options = Loose

    found = check_connector_options(config, {"rest": Rest})
    # civil (filedrop) is disabled: no problem; nrp (soap) is now enabled
    assert len(found) == 1
    assert found[0].file.endswith("nrp.toml")
    assert found[0].key == "connector"
    assert found[0].message == "connector kind 'soap' is not installed (installed: rest)"
    lines = (cfg / "departments" / "nrp.toml").read_text(encoding="utf-8").splitlines()
    assert found[0].line is not None
    assert lines[found[0].line - 1] == 'connector = "soap"'


def test_example_options_fit_the_installed_connectors() -> None:
    config = load_config(EXAMPLE / "gateway.toml", env=ENV)
    assert check_connector_options(config, load_plugins().connectors()) == []


# -- gateway check-config --------------------------------------------------------------------------


def invoke(args: list[str]) -> tuple[int, str]:
    # with a single registered command typer runs it without a sub-command name
    command = typer.main.get_command(app)
    if isinstance(command, typer.core.TyperGroup):
        args = ["check-config", *args]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_check_config_ok_on_the_example(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    code, output = invoke(["--config", str(EXAMPLE / "gateway.toml")])
    assert code == 0, output
    assert "configuration OK" in output
    assert "市场监督管理局" in output and "soap" in output and "filedrop" in output
    assert "matters: 20" in output
    assert "C03 青石镇便民服务中心" in output


def test_check_config_json_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_CONFIG", str(EXAMPLE / "gateway.toml"))
    code, output = invoke(["--json"])
    assert code == 0, output
    data = json.loads(output)
    assert data["ok"] is True and data["problems"] == []
    assert data["summary"]["matters"] == 20
    assert {d["code"]: d["enabled"] for d in data["summary"]["departments"]} == {
        "amr": True,
        "civil": True,
        "hrss": True,
        "nrp": True,
    }


def test_check_config_lists_every_problem_and_exits_1(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    line = edit(
        cfg / "departments" / "amr.toml",
        "poll_interval_seconds = 30",
        "poll_intervall_seconds = 30",
    )
    append(cfg / "matters.csv", "XK00999000,测试事项,tax,339900,5,申请书,true,\n")
    code, output = invoke(["--config", str(cfg / "gateway.toml")])
    assert code == 1
    assert f"amr.toml:{line} [poll_intervall_seconds]: unknown key" in output
    assert "matters.csv:22 [department]: unknown department 'tax'" in output
    assert "2 problem(s) found" in output


def test_check_config_json_problems(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HRSS_API_KEY")
    code, output = invoke(["--config", str(cfg / "gateway.toml"), "--json"])
    assert code == 1
    data = json.loads(output)
    assert data["ok"] is False
    assert {p["key"] for p in data["problems"]} == {"options.auth.key", "simulator.auth_key"}
    assert all(p["line"] for p in data["problems"])


def test_rest_options_problem_keys_match_the_file(cfg: Path) -> None:
    options = pytest.importorskip("gateway_rest.options")
    amr = cfg / "departments" / "amr.toml"
    token_line = 1 + edit(
        amr,
        'type = "bearer"\ntoken = "${AMR_API_TOKEN}"',
        'type = "bearer"\ntokn = "${AMR_API_TOKEN}"',
    )
    list_line = edit(amr, '[options.list]\npath = "/cases"', '[options.list]\npathh = "/cases"')
    disable(cfg, "nrp", "civil")
    config = load_config(cfg / "gateway.toml", env=ENV)

    class Rest:
        kind = "rest"
        Options = options.RestOptions

    found = {p.key: p for p in check_connector_options(config, {"rest": Rest})}
    # pydantic's union tag ("bearer") is not part of the key the operator wrote
    assert set(found) == {"options.auth.token", "options.auth.tokn", "options.list.pathh"}
    assert found["options.auth.tokn"].line == token_line
    assert "did you mean 'token'" in found["options.auth.tokn"].message
    assert found["options.list.pathh"].line == list_line + 1
    assert "tok" not in found["options.auth.token"].message


def test_region_parent_cycle(cfg: Path) -> None:
    text = (cfg / "gateway.toml").read_text(encoding="utf-8")
    text = text.replace(
        'name = "示范市"\nkind = "city"', 'name = "示范市"\nkind = "city"\nparent = "339901"'
    )
    (cfg / "gateway.toml").write_text(text, encoding="utf-8")
    found = problems(cfg)
    assert any(p.key.endswith(".parent") and "cycle" in p.message for p in found)
