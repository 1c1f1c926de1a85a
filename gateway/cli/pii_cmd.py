"""``gateway pii reseal``: seal every stored ID and phone number with the current pii_key.

Setting ``[gateway.security] pii_key`` seals what is written from then on; rows written before
stay clear, and rows sealed with a key now in ``pii_previous_keys`` stay sealed with it. This
command re-writes both kinds with the current key, then forgets the other key ids, so the
previous keys can be dropped from the configuration. Run it once every node runs with the new
key (docs/security.md, "Personal data at rest").
"""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli import app
from gateway.cli.common import DEFAULT_CONFIG, ConfigOption, err, load, run

pii = typer.Typer(help="Applicants' ID and phone numbers at rest.", no_args_is_help=True)
app.add_typer(pii, name="pii")


@pii.command("reseal")
def reseal_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="rows per transaction")] = 500,
) -> None:
    """Seal every stored ID and phone number with the current pii_key (clear ones and those
    of previous keys), then forget the previous keys' ids."""
    from gateway.runtime import Runtime
    from gateway.store.pii_keys import reseal

    cfg = load(config)
    if cfg.gateway.security.pii_key is None:
        err.print(
            "[gateway.security] pii_key is not set: there is no key to seal with",
            markup=False,
        )
        raise typer.Exit(1)

    async def go() -> tuple[int, str]:
        runtime = Runtime(cfg)
        try:
            await runtime.prepare_database()
            assert runtime.pii_cipher is not None
            return await reseal(runtime.engine, runtime.pii_cipher, batch=batch), (
                runtime.pii_cipher.key_id
            )
        finally:
            await runtime.aclose()

    count, key_id = run(go())
    typer.echo(
        f"sealed {count} applicant(s) with key id {key_id}; previous keys are no longer "
        "needed (remove them from pii_previous_keys)"
    )
