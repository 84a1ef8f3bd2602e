"""`dosis hil run`: the hardware-in-the-loop suite (the pytest tests in `dosis.hil`) against a
board or the virtual dispenser, with a JUnit report and a per-step summary.

Register it in cli.py with `cli.add_command(hil)`; it also runs on its own as
`python -m dosis.cli_hil run --sim`. pytest is imported only when the suite runs, so
`dosis --help` needs none.
"""

from __future__ import annotations

import click

from .errors import DosisError

__all__ = ["hil"]

# pytest's exit codes
_OK, _FAILED, _INTERRUPTED, _INTERNAL, _USAGE, _NO_TESTS = 0, 1, 2, 3, 4, 5


@click.group("hil")
def hil() -> None:
    """Hardware-in-the-loop tests: a dispenser's acceptance steps, run on a board or on the
    virtual dispenser."""


@hil.command("run")
@click.option(
    "-p",
    "--port",
    metavar="PORT",
    help="The board's serial port. Use a test board: the suite replaces its schedule and "
    "key and records fills.",
)
@click.option(
    "--sim", is_flag=True, help="Run on the virtual dispenser (a fresh one for each step)."
)
@click.option(
    "--junit",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write a JUnit XML report here.",
)
@click.option(
    "--rig",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The rig's wiring file (see hardware/rig.example.json): with it the steps that need "
    "a rig run on the board.",
)
@click.option(
    "-k",
    "keyword",
    metavar="EXPR",
    help='Only the steps whose names match EXPR (pytest -k), e.g. "not deploy".',
)
@click.pass_context
def run(
    ctx: click.Context,
    port: str | None,
    sim: bool,
    junit: str | None,
    rig: str | None,
    keyword: str | None,
) -> None:
    """Run the acceptance steps, one line each in the summary: passed, failed or not run.

    \b
    Steps: boot and hello; pairing; schedule push and read-back; a dose from light to tone to
    press to a "taken" record; a missed dose (locked, care team told); a power cut during a
    carousel move; a jam; log pull and acknowledgement; deploy and rollback; a DST day.

    \b
    --sim: every step, on a fresh virtual dispenser each (the sim.* hooks are the hands).
    --port: a technician at the board is asked to press buttons and say what the dispenser
    shows; the power cut and the jam need a rig (--rig) and are otherwise not run, and
    the DST day runs only on the virtual dispenser. Exit 0 when every step that ran passed."""
    if bool(port) == sim:
        raise click.UsageError("give --port PORT (a board) or --sim (the virtual dispenser)")
    if rig and sim:
        raise click.UsageError("--rig is for a board (--port): the virtual dispenser needs none")
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "dosis hil needs pytest: install it with \"pip install 'dosis[test]'\""
        ) from None
    from .hil import runner

    if rig:
        try:
            runner.load_rig(rig)
        except DosisError as e:
            raise click.ClickException(str(e)) from None
    code = runner.run(port=port, sim=sim, junit=junit, rig=rig, keyword=keyword)
    if junit and code in (_OK, _FAILED):
        click.echo(f"JUnit report written to {junit}", err=True)
    if code == _OK:
        ctx.exit(0)
    if code == _FAILED:
        click.echo("error: steps failed (see the summary above)", err=True)
    elif code == _NO_TESTS:
        click.echo(f"error: no step matches -k {keyword!r}", err=True)
    elif code == _INTERRUPTED:
        click.echo("aborted", err=True)
    elif code == _USAGE:
        pass  # pytest said what was wrong
    else:
        click.echo(f"internal error: pytest ended with code {code}; please report it", err=True)
        ctx.exit(2)
    ctx.exit(1)


if __name__ == "__main__":
    hil(prog_name="dosis hil")
