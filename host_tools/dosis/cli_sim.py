"""The `dosis sim` and `dosis devices` commands: thin Click wrappers over `simhost` and `ports`.

`dosis sim` prints the port to open as the first line on stdout, then chats on stderr until
Ctrl-C or SIGTERM ("stopped", exit 0).
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from . import ports
from .errors import DosisError


def _checked_schedule(file: str) -> dict[str, Any]:
    from .cli_device import load_or_report

    return load_or_report(file, "the virtual dispenser was not started")


@click.command("sim")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False),
    help="State directory: the virtual flash [default: ~/.cache/dosis/sim/default].",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True, max=1_000_000),
    default=1.0,
    show_default=True,
    help="How fast the virtual clock runs (1: real time).",
)
@click.option(
    "--schedule",
    type=click.Path(dir_okay=False),
    help="Schedule (TOML or JSON) for a state directory that has none yet.",
)
@click.option(
    "--baud",
    type=click.IntRange(300, 4_000_000),
    help="Limit the link to this baud rate, as a real UART (the device uses 115200) "
    "[default: no limit].",
)
@click.option(
    "--start",
    "start",
    metavar='"YYYY-MM-DD HH:MM"',
    help="Virtual time of the first boot: local time in the --schedule's zone (UTC "
    "without one) [default: now].",
)
def sim(
    state_dir: str | None,
    speed: float,
    schedule: str | None,
    baud: int | None,
    start: str | None,
) -> None:
    """Run a virtual dispenser: the real firmware on the MicroPython unix port.

    Prints the serial port to use (e.g. /dev/pts/5) on the first line, then runs until
    Ctrl-C. Other dosis commands find it by themselves when it is the only dispenser.
    """
    from .simhost import VirtualDispenser, parse_start  # POSIX only: imported when used

    doc = _checked_schedule(schedule) if schedule is not None else None
    start_utc = parse_start(start, doc) if start is not None else None
    vd = VirtualDispenser(
        state_dir,
        speed=speed,
        schedule=schedule,
        start_utc=start_utc,
        baud=baud,
        on_message=lambda m: click.echo(m, err=True),
    )
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        port = vd.start()
        try:
            click.echo(port)
        except BrokenPipeError:
            pass
        while not stop.is_set() and vd.running:
            stop.wait(0.2)
    finally:
        vd.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if vd.failure:
        raise DosisError(vd.failure)
    click.echo("stopped", err=True)


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="A JSON array for scripts.")
def devices(as_json: bool) -> None:
    """List the dispensers found: ESP32 boards on USB and running virtual dispensers."""
    found = ports.find_ports()
    if as_json:
        click.echo(json.dumps([p.to_json() for p in found], indent=1))
        return
    if not found:
        click.echo("no dispensers found: plug one in, or start one with 'dosis sim'", err=True)
        return
    width = max(len(p.port) for p in found)
    for p in found:
        click.echo(f"{p.port:<{width}}  {p.kind:<5}  {p.description}")
