"""docs/plugins/rest.md cannot drift: every snippet is quoted verbatim from a config/examples file
(each proven end to end in tests/test_rest_styles.py), every example is quoted, and the reference
lists every option of every table with its real default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from gateway_rest import options as o
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "plugins" / "rest.md").read_text(encoding="utf-8")
EXAMPLES = ROOT / "config" / "examples"

SECTIONS: dict[str, type[BaseModel]] = {
    "[options]": o.RestOptions,
    '[options.auth] type = "bearer"': o.BearerAuth,
    '[options.auth] type = "api_key"': o.ApiKeyAuth,
    '[options.auth] type = "basic"': o.BasicAuth,
    '[options.auth] type = "token"': o.TokenAuth,
    "[options.envelope]": o.EnvelopeOptions,
    "[options.signing]": o.SigningOptions,
    "[options.submit]": o.SubmitOptions,
    "[options.submit.response]": o.SubmitResponse,
    "[options.poll]": o.PollOptions,
    "[options.poll.response]": o.PollResponse,
    "[options.poll.response.document_fields]": o.DocumentFields,
    "[options.poll.response.document]": o.InlineDocument,
    "[options.list]": o.ListOptions,
    "[options.list.item]": o.ListItemFields,
    "[options.changes]": o.ChangesOptions,
    "[options.changes.item]": o.ChangeItemFields,
    "[options.callback]": o.CallbackFields,
    "[options.withdraw]": o.WithdrawOptions,
}


def render(value: Any) -> str:
    """A default as the reference writes it (TOML-like)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        return "(table)"
    return "{}" if value == {} else json.dumps(value)


def default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    factory: Any = field.default_factory
    return render(factory() if factory is not None else field.default)


def reference(title: str) -> dict[str, str]:
    """key -> default, from the reference table under ``#### `title` ``."""
    start = DOC.index(f"#### `{title}`\n")
    table = DOC[start:].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {
        m.group(1): m.group(2)
        for line in rows
        if (m := re.match(r"\| `([^`]+)` \| `([^`]*)` \|", line))
    }


@pytest.mark.parametrize("title", list(SECTIONS))
def test_reference_lists_every_option_with_its_default(title: str) -> None:
    model = SECTIONS[title]
    expected = {(f.alias or name): default(f) for name, f in model.model_fields.items()}
    assert reference(title) == expected


def snippets() -> list[tuple[str, str]]:
    """(example file name, snippet text) for every toml block of the guide."""
    out = []
    for block in re.findall(r"```toml\n(.*?)```", DOC, re.S):
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# config/examples/(\w+\.toml)", first)
        assert match, f"a toml block must name the example it quotes, not {first!r}"
        out.append((match.group(1), rest))
    return out


def test_every_snippet_is_quoted_from_a_tested_example() -> None:
    for name, text in snippets():
        source = (EXAMPLES / name).read_text(encoding="utf-8")
        assert text in source, f"docs/plugins/rest.md quotes {name}, which no longer has:\n{text}"


def test_every_example_is_quoted_and_listed() -> None:
    quoted = {name for name, _ in snippets()}
    for path in EXAMPLES.glob("*.toml"):
        assert path.name in quoted, f"{path.name} is not quoted in docs/plugins/rest.md"
        assert f"`config/examples/{path.name}`" in DOC
