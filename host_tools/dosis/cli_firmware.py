"""The `dosis firmware` commands (technicians): thin Click commands over `dosis.bundle`.

Data goes to stdout (the manifest with --json), the summary and errors to stderr.
"""

from __future__ import annotations

import json

import click

from . import bundle

__all__ = ["firmware"]


@click.group()
def firmware() -> None:
    """The dispenser's firmware: build the bundle of files a device runs."""


@firmware.command("build")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False),
    default="build/bundle",
    show_default=True,
    help="The bundle directory; an earlier bundle there is replaced.",
)
@click.option(
    "--micropython",
    metavar="VERSION",
    default=bundle.TARGET_MICROPYTHON,
    show_default=True,
    help="The MicroPython release on the boards: the .mpy format must be one it loads.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (JSON) on stdout.")
def firmware_build(out_dir: str, micropython: str, as_json: bool) -> None:
    """Compile the app in firmware/ into a bundle for ESP32 dispensers.

    \b
    dosiscore/ and dispenser/ become .mpy (mpy-cross -march=xtensawin); boot.py and main.py
    stay .py; the simulator is left out. The bundle also holds manifest.json (every device
    file's SHA-256, and the bundle's hash), and manifest.py with src/ for freezing the app
    into a custom MicroPython image (docs/freezing.md; the image is not built here).
    Building the same sources twice gives identical bytes."""
    manifest = bundle.build_bundle(out_dir, micropython=micropython)
    if as_json:
        click.echo(json.dumps(manifest.as_json(), ensure_ascii=False, indent=1))
    click.echo(f"{out_dir}: {bundle.summary(manifest)}", err=True)
