"""The `dosis hardware` commands: check the pin map, draw the wiring, keep the README in step."""

from __future__ import annotations

from pathlib import Path

import click

from . import pinmap as api
from .errors import InputError

DEFAULT_PINMAP = "hardware/pinmap.json"
DEFAULT_README = "hardware/README.md"

_PINMAP_ARG = click.argument("pinmap", required=False, type=click.Path(dir_okay=False))


def _resolve(pinmap: str | None) -> str:
    if pinmap is not None:
        return pinmap
    if Path(DEFAULT_PINMAP).is_file():
        return DEFAULT_PINMAP
    raise InputError(
        f"no PINMAP given and there is no {DEFAULT_PINMAP} here: pass the file, or run from "
        "the repository root"
    )


def _load_checked(path: str) -> api.PinMap:
    """The map in `path`, refusing one with errors (`check` lists them)."""
    pm = api.load_pinmap(path)
    errors = [p for p in api.check_pinmap(pm) if p.level == "error"]
    if errors:
        n = len(errors)
        raise InputError(
            f"{path}: {n} error{'s' if n != 1 else ''} in the pin map; "
            f"run 'dosis hardware check {path}' to see them"
        )
    return pm


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8", newline="\n")
    except OSError as e:
        raise InputError(f"{path}: cannot be written ({e.strerror})") from None


@click.group()
def hardware() -> None:
    """Check the ESP32 pin map and draw the wiring from it (default: hardware/pinmap.json)."""


@hardware.command("check")
@_PINMAP_ARG
def hardware_check(pinmap: str | None) -> None:
    """Check PINMAP against the ESP32 pin rules.

    Also checks what the firmware expects of each signal. Every problem goes to stderr as one
    line (LEVEL signal: what to do); exit 1 if any is an error, else a summary on stdout.
    """
    path = _resolve(pinmap)
    pm = api.load_pinmap(path)
    problems = api.check_pinmap(pm)
    for p in problems:
        click.echo(str(p), err=True)
    errors = sum(1 for p in problems if p.level == "error")
    if errors:
        warnings = len(problems) - errors
        raise InputError(
            f"{path}: {errors} error{'s' if errors != 1 else ''}, "
            f"{warnings} warning{'s' if warnings != 1 else ''}; fix the errors before wiring"
        )
    click.echo(f"{path}: {api.summary(pm, problems)}")


@hardware.command("svg")
@_PINMAP_ARG
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the SVG to this file [default: stdout].",
)
def hardware_svg(pinmap: str | None, output: str | None) -> None:
    """Draw the wiring diagram of PINMAP as SVG.

    hardware/wiring.svg is made this way: dosis hardware svg -o hardware/wiring.svg
    """
    path = _resolve(pinmap)
    svg = api.render_svg(_load_checked(path))
    if output is None:
        click.echo(svg, nl=False)
    else:
        _write(output, svg)
        click.echo(f"wrote {output}", err=True)


@hardware.command("table")
@_PINMAP_ARG
@click.option(
    "--update",
    "readme",
    type=click.Path(dir_okay=False),
    is_flag=False,
    flag_value=DEFAULT_README,
    help=f"Replace the generated section of this README instead of printing "
    f"[--update alone: {DEFAULT_README}].",
)
def hardware_table(pinmap: str | None, readme: str | None) -> None:
    """Print PINMAP as the README's Markdown tables."""
    path = _resolve(pinmap)
    table = api.render_table(_load_checked(path))
    if readme is None:
        click.echo(table)
        return
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{readme}: cannot be read ({e.strerror})") from None
    try:
        new = api.replace_table(text, table)
    except InputError as e:
        raise InputError(f"{readme}: {e}") from None
    if new == text:
        click.echo(f"{readme}: already up to date", err=True)
        return
    _write(readme, new)
    click.echo(f"updated the pin table in {readme}", err=True)
