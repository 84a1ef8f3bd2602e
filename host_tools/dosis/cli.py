"""The `dosis` command line: thin Click commands over the importable API.

Data goes to stdout, chatter and errors to stderr. Every error is one line (exit code 1);
a traceback appears only with -v.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

import click

from dosiscore import civil
from dosiscore.schedule import ScheduleError, canonical, content_hash

from . import __version__, cli_device, schedules
from .cli_device import load_or_report as _load_or_report
from .cli_firmware import firmware
from .cli_fleet import fleet, gateway
from .cli_hardware import hardware
from .cli_hil import hil
from .cli_provision import provision
from .cli_sim import devices, sim
from .errors import DosisError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 99}

EXIT_CODES = """\b
Exit codes:
  0  done
  1  bad input (a file, an argument, a value), or the dispenser refused the request
  2  internal error: a bug in dosis (run with -v and please report it)
  3  link: the port is missing or busy, or the dispenser does not answer
  4  key: the dispenser is not paired with this computer, or the key is wrong or missing
  5  incompatible protocol: update dosis or the dispenser's firmware

\b
Device commands take --port PORT (or the DOSIS_PORT environment variable)."""


class DosisGroup(click.Group):
    """Runs the commands and turns every failure into one line on stderr, in one place."""

    def main(self, args=None, prog_name=None, complete_var=None, **extra):  # type: ignore[override]  # noqa: ARG002
        argv = list(sys.argv[1:] if args is None else args)
        verbose = any(a in ("-v", "--verbose") for a in argv)
        try:
            rv = super().main(argv, "dosis", complete_var, standalone_mode=False)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(1)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except ScheduleError as e:
            for line in e.lines():
                click.echo(line, err=True)
            sys.exit(1)
        except DosisError as e:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except Exception as e:
            if verbose:
                traceback.print_exc()
            click.echo(
                f"internal error: {type(e).__name__}: {e} (run with -v for details; "
                "please report it)",
                err=True,
            )
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=DosisGroup, context_settings=CONTEXT, epilog=EXIT_CODES)
@click.version_option(__version__, "--version", prog_name="dosis")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors.")
def cli(verbose: bool) -> None:
    """Dosis: provision, read and test home medication dispensers."""


@cli.group()
def schedule() -> None:
    """Check, preview and send dose schedules (TOML or JSON files)."""


@schedule.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def schedule_validate(file: str) -> None:
    """Check FILE and print every problem (exit 1), or a one-line summary (exit 0)."""
    doc = _load_or_report(file)
    click.echo(f"{file}: {schedules.summary(doc)}")


@schedule.command("compile")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout."
)
def schedule_compile(file: str, output: str | None) -> None:
    """Print FILE in the compact canonical JSON form a device stores (its hash is its id)."""
    doc = _load_or_report(file)
    data = canonical(doc)
    if output is None:
        click.echo(data.decode())
    else:
        with open(output, "wb") as f:
            f.write(data)
        click.echo(f"{output}: hash {content_hash(doc)[:12]}", err=True)


class DateParam(click.ParamType):
    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if civil.parse_date(value) is None:
            self.fail(f'"{value}" is not a date; write it as YYYY-MM-DD, e.g. 2026-03-29')
        return value


@schedule.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--from",
    "first_day",
    type=DateParam(),
    help="First local day to show [default: today in the schedule's time zone].",
)
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=7,
    show_default=True,
    help="Number of days to show.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array for scripts.")
def schedule_show(file: str, first_day: str | None, days: int, as_json: bool) -> None:
    """Show the doses FILE gives over the coming days, in local time."""
    doc = _load_or_report(file)
    if first_day is None:
        first_day = schedules.today_in(doc, int(time.time()))
    rows = schedules.plan_rows(doc, first_day, days)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    click.echo(
        f"{doc['citizen']} · {doc['timezone']} · {first_day} + {days} days · "
        f"hash {schedules.content_hash(doc)[:12]}",
        err=True,
    )
    for r in rows:
        what = ", ".join(f"{_count(i['count'])} × {i['name']}" for i in r["items"])
        kind = " (påmindelse)" if r["reminder_only"] and doc["language"] == "da" else ""
        if r["reminder_only"] and doc["language"] == "en":
            kind = " (reminder)"
        click.echo(f"{r['date']}  {r['weekday']:<3}  {r['time']}  {r['dose']:<16}  {what}{kind}")
    if not rows:
        click.echo("no doses in this period", err=True)


def _count(c: float) -> str:
    return str(int(c)) if c == int(c) else ("½" if c == 0.5 else f"{int(c)}½")


cli.add_command(hardware)
schedule.add_command(cli_device.schedule_push)
schedule.add_command(cli_device.schedule_pull)
schedule.add_command(cli_device.schedule_loading_map)
cli.add_command(cli_device.pair)
cli.add_command(cli_device.info)
cli.add_command(cli_device.time_group)
cli.add_command(cli_device.log)
cli.add_command(cli_device.monitor)
cli.add_command(cli_device.screen)
cli.add_command(cli_device.settings)
cli.add_command(cli_device.fill)
cli.add_command(cli_device.selftest)
cli.add_command(sim)
cli.add_command(firmware)
cli.add_command(hil)
cli.add_command(devices)
cli.add_command(gateway)
cli.add_command(fleet)
cli.add_command(provision)


def main() -> None:
    cli.main()


if __name__ == "__main__":
    main()
