"""The `dosis` commands that talk to a dispenser: thin Click commands over `dosis.ops`.

Data goes to stdout; questions, progress and chatter to stderr. Every command that reads
something has `--json`, and every one takes `--port` (or DOSIS_PORT).
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from dosiscore import civil, tz
from dosiscore.schedule import ScheduleError, canonical

from . import ops, schedules
from . import screen as screens
from .errors import DosisError, InputError

__all__ = [
    "info",
    "load_or_report",
    "log",
    "monitor",
    "pair",
    "schedule_loading_map",
    "schedule_pull",
    "schedule_push",
    "screen",
    "settings",
    "time_group",
]

port_option = click.option(
    "-p",
    "--port",
    envvar="DOSIS_PORT",
    show_envvar=True,
    metavar="PORT",
    help="The dispenser's serial port, e.g. /dev/ttyUSB0 [default: the one dispenser found].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")


def _open(port: str | None) -> ops.DeviceLike:
    """Open the dispenser (imported here: `dosis --help` needs no serial port library)."""
    from .device import open_device

    return open_device(port)


@contextlib.contextmanager
def _device(port: str | None) -> Iterator[ops.DeviceLike]:
    dev = _open(port)
    try:
        yield dev
    finally:
        dev.close()


def _say(text: str) -> None:
    click.echo(text, err=True)


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise InputError(f"{path}: cannot be written ({e.strerror or e})") from None


def load_or_report(file: str, outcome: str = "nothing was changed") -> dict[str, Any]:
    """The normalised schedule in `file`; every problem on stderr, then one error line."""
    try:
        return schedules.load_schedule(file)
    except ScheduleError as e:
        for line in e.lines():
            click.echo(f"{file}: {line}", err=True)
        n = len(e.problems)
        raise DosisError(f"{file}: {n} problem{'s' if n != 1 else ''}; {outcome}") from None


# -- pairing, info, clock, settings ----------------------------------------------------------


@click.command()
@port_option
def pair(port: str | None) -> None:
    """Pair this computer with a dispenser (press its service button first).

    \b
    Prints the device id; the key is kept in the keystore (~/.config/dosis/keys.json or
    $DOSIS_KEYSTORE)."""
    with _device(port) as dev:
        device_id = ops.pair(dev)
    click.echo(device_id)
    _say(f"paired with dispenser {device_id}; its key is in the keystore")


@click.command()
@port_option
@json_option
def info(port: str | None, as_json: bool) -> None:
    """Show the dispenser's state (firmware, schedule, clock, power, log, faults)."""
    with _device(port) as dev:
        data = ops.device_info(dev)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=1))
    else:
        click.echo(ops.format_info(data))


@click.group("time")
def time_group() -> None:
    """The dispenser's clock."""


@time_group.command("sync")
@port_option
@json_option
def time_sync(port: str | None, as_json: bool) -> None:
    """Set the dispenser's clock to this computer's UTC time; prints the step."""
    with _device(port) as dev:
        r = ops.sync_time(dev)
    if as_json:
        click.echo(json.dumps(r))
        return
    step = r.get("step")
    utc = r.get("utc")
    when = civil.format_iso(utc) if isinstance(utc, int) else "?"
    if isinstance(step, int):
        click.echo(f"clock set to {when}; step {step:+d} s")
    else:
        click.echo(f"clock set to {when}; it had no time before")


@click.command()
@click.option("--language", type=click.Choice(["da", "en"]), help="Display language.")
@click.option("--volume", type=click.IntRange(1, 4), help="Alert volume, 1 to 4.")
@click.option("--tone", type=click.Choice(["normal", "low"]), help="Alert tone.")
@click.option(
    "--mode",
    type=click.Choice(["normal", "assisted", "paused", "travel"]),
    help="Dispensing mode (assisted: staff hand out doses; paused, travel: doses skipped).",
)
@port_option
@json_option
def settings(
    language: str | None,
    volume: int | None,
    tone: str | None,
    mode: str | None,
    port: str | None,
    as_json: bool,
) -> None:
    """Change the dispenser's settings; with no option, show them."""
    changes = {"language": language, "volume": volume, "tone": tone, "mode": mode}
    with _device(port) as dev:
        current = ops.settings(dev, **changes)
    if any(v is not None for v in changes.values()):
        _say("settings changed")
    if as_json:
        click.echo(json.dumps(current, ensure_ascii=False))
        return
    w = max((len(k) for k in current), default=0)
    for k, v in current.items():
        click.echo(f"{k:<{w}}  {v}")


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@port_option
def fill(yes: bool, port: str | None) -> None:
    """Tell the dispenser its carousel was just filled, following the loading map.

    \b
    Fill every compartment as 'dosis schedule loading-map' says, close the carousel, then run
    this: the device counts compartments from now, so run it right after filling."""
    if not yes:
        click.confirm(
            "Is every compartment filled as the loading map says, and the carousel closed?",
            abort=True,
            err=True,
        )
    with _device(port) as dev:
        left = ops.record_fill(dev)
    click.echo(f"fill recorded: {left} doses in the carousel")


@click.command()
@port_option
@json_option
def selftest(port: str | None, as_json: bool) -> None:
    """Run the dispenser's self-test: home the carousel, chirp, test pattern on the display,
    check the clock chip and the flash (exit 1 if any part fails)."""
    with _device(port) as dev:
        report = ops.selftest(dev)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        for k, v in report.items():
            click.echo(f"{k:<10}  {v}")
    faults = ops.selftest_faults(report)
    if faults:
        raise DosisError("self-test found faults: " + "; ".join(faults))


# -- schedules -------------------------------------------------------------------------------


@click.command("push")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-y", "--yes", is_flag=True, help="Send without asking.")
@port_option
def schedule_push(file: str, yes: bool, port: str | None) -> None:
    """Send the schedule in FILE to the dispenser, after showing what changes.

    The dispenser restarts into the new schedule; dosis waits for it and checks that it
    holds exactly what was sent (the same hash)."""
    doc = load_or_report(file)
    dev = _open(port)
    handed_over = False
    try:
        plan = ops.plan_push(dev, doc)
        name = dev.device_id or "the dispenser"
        if plan.same:
            _say(f"{name} already has this schedule (hash {plan.hash[:12]}): nothing sent")
            return
        old = plan.old_hash[:12] if plan.old_hash else "none"
        _say(f"changes on {name} (schedule {old} → {plan.hash[:12]}):")
        for c in plan.changes:
            click.echo(c.text)
        if not yes:
            click.confirm(
                f"Send it? {name} restarts to load it", default=False, abort=True, err=True
            )
        handed_over = True
        h = ops.push_schedule(dev, plan, lambda: _open(port))
    finally:
        if not handed_over:
            dev.close()
    _say(f"{name} now runs schedule {h[:12]} (verified after its restart)")


@click.command("pull")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout."
)
@port_option
@json_option
def schedule_pull(output: str | None, port: str | None, as_json: bool) -> None:
    """The dispenser's schedule: its canonical JSON (or, with --json, {"hash", "doc"})."""
    with _device(port) as dev:
        h, doc = ops.device_schedule(dev)
    if h is None or doc is None:
        raise InputError("the dispenser has no schedule; send one with 'dosis schedule push'")
    if as_json:
        data = (json.dumps({"hash": h, "doc": doc}, ensure_ascii=False, indent=1) + "\n").encode()
    else:
        data = canonical(doc) + b"\n"
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        _write_file(output, data)
    _say(f"schedule {h[:12]}: {schedules.summary(doc)}")


class FillParam(click.ParamType):
    """A local date, or a date and time: when the carousel is filled."""

    name = "YYYY-MM-DD[ HH:MM]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, str | None]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip().replace("T", " ")
        date, _, hhmm = text.partition(" ")
        hhmm = hhmm.strip()
        if civil.parse_date(date) is None or (hhmm and civil.parse_hhmm(hhmm) is None):
            self.fail(
                f'"{value}" is not a date (and time); write YYYY-MM-DD or "YYYY-MM-DD HH:MM"'
            )
        return date, hhmm or None


@click.command("loading-map")
@click.option(
    "--from",
    "start",
    type=FillParam(),
    help="When the carousel is filled, local time: a date means its midnight [default: now].",
)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False),
    help="Use this schedule file [default: the dispenser's schedule].",
)
@port_option
@json_option
def schedule_loading_map(
    start: tuple[str, str | None] | None, file: str | None, port: str | None, as_json: bool
) -> None:
    """Which medicines go in which compartment at the next fill, in dispensing order.

    Compartment 1 holds the first dispensed dose after the fill; reminder-only doses and
    as-needed medicines take no compartment."""
    now: int | None = None
    if file is not None:
        doc = load_or_report(file)
    else:
        with _device(port) as dev:
            _, got = ops.device_schedule(dev)
            if got is not None and start is None:
                now = ops.device_now(dev)  # the fill happens on the device's clock
        if got is None:
            raise InputError("the dispenser has no schedule; give one with --file")
        doc = got
    if start is not None:
        fill = ops.fill_instant(doc, start[0], start[1])
    else:
        fill = now if now is not None else int(time.time())
    m = ops.loading_map(doc, fill)
    if as_json:
        click.echo(json.dumps(m.as_json(), ensure_ascii=False, indent=1))
    else:
        click.echo(ops.format_loading_map(m), nl=False)


# -- the dose log ----------------------------------------------------------------------------


@click.group()
def log() -> None:
    """The dispenser's dose log."""


class _Progress:
    """A bar on stderr when it is a terminal; the caller reports the count in any case."""

    def __init__(self) -> None:
        self.count = 0
        self.bar: Any = None

    def total(self, n: int) -> None:
        stderr = sys.stderr
        if n and stderr.isatty():
            self.bar = click.progressbar(length=n, label="reading the log", file=stderr)
            self.bar.__enter__()

    def step(self, k: int) -> None:
        self.count += k
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@log.command("pull")
@click.option(
    "--since",
    type=click.IntRange(min=1),
    help="First sequence number [default: the first one not yet acknowledged].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json", "jsonl"]),
    default="csv",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout."
)
@click.option(
    "--no-ack",
    is_flag=True,
    help="Do not acknowledge: the dispenser keeps counting the records as unread.",
)
@port_option
def log_pull(
    since: int | None, fmt: str, output: str | None, no_ack: bool, port: str | None
) -> None:
    """Read the dose log, write it, and acknowledge what was written.

    The records are written (and synced to disk) before the dispenser is told it may
    forget them."""
    progress = _Progress()
    with _device(port) as dev:
        try:
            got, acked = ops.export_log(
                dev,
                fmt,
                output,
                sys.stdout,
                since=since,
                ack=not no_ack,
                on_total=progress.total,
                on_progress=progress.step,
            )
        finally:
            progress.close()
    rows = got.rows
    where = f" to {output}" if output else ""
    span = f" (seq {rows[0].seq}..{rows[-1].seq})" if rows else ""
    _say(f"{len(rows)} record{'s' if len(rows) != 1 else ''}{span} written{where}")
    if acked is not None and got.ack_to is not None and acked < got.ack_to:
        _say(
            "not acknowledged here: the dispenser sends its log to the care team's gateway, "
            f"which has acknowledged up to seq {acked}"
        )
    elif acked is not None:
        _say(f"acknowledged up to seq {acked}")
    elif no_ack:
        _say("not acknowledged (--no-ack)")
    elif got.start > got.acked + 1:
        _say(
            f"not acknowledged: --since {got.start} skips unacknowledged records from seq "
            f"{got.acked + 1}"
        )


# -- live ------------------------------------------------------------------------------------


@click.command()
@port_option
@json_option
def monitor(port: str | None, as_json: bool) -> None:
    """Print the dispenser's events as they happen, until Ctrl-C."""
    with _device(port) as dev:
        try:
            _, doc = ops.device_schedule(dev)
        except DosisError:
            doc = None
        zone = tz.Tz(doc["tz_rule"]) if doc else None
        _say(f"watching {dev.device_id or 'the dispenser'}; Ctrl-C to stop")
        try:
            with ops.monitoring(dev) as events:
                for ev in events:
                    e = ops.format_event(ev, zone)
                    click.echo(json.dumps(e, ensure_ascii=False) if as_json else ops.event_line(e))
        except KeyboardInterrupt:
            _say("stopped")


@click.command()
@click.option(
    "--png",
    type=click.Path(dir_okay=False),
    help="Write the screen as a PNG (4 times its size) instead of drawing it here.",
)
@port_option
@json_option
def screen(png: str | None, port: str | None, as_json: bool) -> None:
    """Show what the dispenser's display shows now."""
    with _device(port) as dev:
        snap = ops.snapshot(dev)
    fb, w, h = snap["fb"], snap["w"], snap["h"]
    if png is not None:
        _write_file(png, screens.to_png(fb, w, h, scale=4))
        _say(f"{png}: the {snap['screen'] or 'current'} screen, {w * 4}x{h * 4}")
    if as_json:
        out = {
            "screen": snap["screen"],
            "w": w,
            "h": h,
            "fb": base64.b64encode(fb).decode(),
            "text": screens.to_text(fb, w, h).splitlines(),
        }
        click.echo(json.dumps(out, ensure_ascii=False))
    elif png is None:
        _say(f"screen: {snap['screen'] or '?'}")
        click.echo(screens.to_text(fb, w, h, border=True), nl=False)
