"""The `dosis firmware` commands (technicians): thin Click commands over `dosis.bundle`.

Data goes to stdout (the manifest with --json), the summary and errors to stderr.
"""

from __future__ import annotations

import json

import click

from . import bundle
from .flash import flash_command

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


def _port_and_keys(port: str | None) -> tuple[str, object]:
    from .keystore import Keystore
    from .ports import resolve_port

    return resolve_port(port), Keystore()


_bundle_option = click.option(
    "--bundle",
    "bundle_dir",
    default="build/bundle",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The bundle 'dosis firmware build' wrote.",
)
_port_option = click.option(
    "--port", envvar="DOSIS_PORT", help="Serial port (env DOSIS_PORT; default: the one found)."
)


@firmware.command("deploy")
@_bundle_option
@_port_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def firmware_deploy(bundle_dir: str, port: str | None, as_json: bool) -> None:
    """Update the app on a paired dispenser: only changed files are copied, every one is
    checked, and the previous app is kept on the device and comes back by itself if the new
    one does not start. The dose loop stops for the copy (the device says so on its screen)."""
    from . import deploy

    name, keys = _port_and_keys(port)

    def step(text: str) -> None:
        click.echo(text, err=True)

    def file(rel: str, size: int) -> None:
        click.echo(f"  {rel} ({size} bytes)", err=True)

    res = deploy.deploy_bundle(name, bundle_dir, keystore=keys, on_step=step, on_file=file)  # type: ignore[arg-type]
    if as_json:
        click.echo(deploy.as_json(res))
        return
    click.echo(
        f"{res.version_before} -> {res.version_after}: {len(res.written)} files written "
        f"({res.bytes_written} bytes), {res.unchanged} unchanged, in {res.seconds:.1f} s"
    )


@firmware.command("verify")
@_bundle_option
@_port_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def firmware_verify(bundle_dir: str, port: str | None, as_json: bool) -> None:
    """Compare the app on a paired dispenser with a bundle, file by file (SHA-256); exit 1 if
    they differ. The dose loop stops for the check and the app restarts after it."""
    from . import deploy
    from .errors import DosisError

    name, keys = _port_and_keys(port)
    res = deploy.verify_device(name, bundle_dir, keystore=keys)  # type: ignore[arg-type]
    if as_json:
        click.echo(deploy.as_json(res))
    else:
        for label, paths in (
            ("differs", res.changed),
            ("missing", res.missing),
            ("extra", res.extra),
        ):
            for p in paths:
                click.echo(f"{label:<8} {p}")
    if not res.ok:
        raise DosisError(
            f"the device's app differs from the bundle ({len(res.changed)} changed, "
            f"{len(res.missing)} missing): run 'dosis firmware deploy'"
        )
    click.echo(f"the device runs the bundle ({res.version})", err=True)


firmware.add_command(flash_command)
