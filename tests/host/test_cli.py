"""The `dosis schedule` commands, driven through Click's CliRunner and the installed script."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dosis import __version__
from dosis.cli import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "schedule.toml"


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version():
    r = run("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == f"dosis, version {__version__}"


def test_validate_example_one_line_summary():
    r = run("schedule", "validate", str(EXAMPLE))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert "valid: 4 dispensed doses, 1 reminder, 1 as-needed rule; Europe/Copenhagen" in lines[0]
    assert r.stderr == ""


def test_validate_prints_every_problem(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(
        'schema = 1\ncitizen = "010170-1234"\nstart = "2026-11-01"\n'
        '[[dose]]\nid = "morgen"\ntime = "08:00"\nitems = ["Metformin 500 mg"]\n'
        '[[dose]]\nid = "middag"\ntime = "12:00"\nitems = ["Metformin 500 mg"]\n'
        '[[dose]]\nid = "nat"\ntime = "25:00"\nitmes = ["Zopiclon"]\n'
    )
    r = run("schedule", "validate", str(f))
    assert r.exit_code == 1
    assert r.stdout == ""
    err = r.stderr.splitlines()
    assert f"{f}: citizen: looks like a CPR number; personal identifiers must not be stored" in err
    assert f'{f}: dose[2].time: "25:00" is not a time of day (HH:MM)' in err
    assert f'{f}: dose[2].itmes: unknown key; did you mean "items"?' in err
    assert err[-1] == f"error: {f}: 4 problems; nothing was changed"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "schema = 1\nstart = \ncitizen = 1\n",
            "not valid TOML: Invalid value (at line 2, column 9)",
        ),
        ('{"schema": 1,', "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "not valid TOML"),
    ],
)
def test_unparsable_files_one_line(tmp_path, content, message):
    f = tmp_path / "s.toml"
    f.write_text(content)
    r = run("schedule", "validate", str(f))
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1
    assert message in r.stderr


def test_bad_bytes_and_missing_file(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes('citizen = "b\xf8rger"\n'.encode("latin-1"))
    r = run("schedule", "validate", str(f))
    assert r.exit_code == 1
    assert r.stderr == f"error: {f}: not UTF-8 text (byte 12); save it as UTF-8\n"
    r = run("schedule", "show", str(tmp_path / "nope.toml"))
    assert r.exit_code == 1
    assert r.stderr == f"error: {tmp_path / 'nope.toml'}: no such file\n"


def test_toml_native_dates_and_times_accepted(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        'schema = 1\ncitizen = "b-1"\nstart = 2026-11-01\n'
        '[[dose]]\nid = "morgen"\ntime = 08:00:00\nitems = ["Furix 40 mg"]\n'
    )
    r = run("schedule", "show", str(f), "--from", "2026-11-01", "--days", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)[0]["local"] == "2026-11-01T08:00:00+01:00"


def test_show_json_contract_on_spring_day(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(
        json.dumps(
            {
                "schema": 1,
                "citizen": "borger-7",
                "start": "2026-03-01",
                "dose": [
                    {
                        "id": "nat",
                        "time": "02:30",
                        "items": ["Zopiclon 7,5 mg"],
                        "early_min": 0,
                        "late_lock_min": 30,
                    },
                    {"id": "morgen", "time": "08:00", "items": ["Furix 40 mg"]},
                ],
            }
        )
    )
    r = run("schedule", "show", str(f), "--from", "2026-03-29", "--days", "1", "--json")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["utc"], x["local"], x["dose"]) for x in rows] == [
        ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", "nat"),
        ("2026-03-29T06:00:00Z", "2026-03-29T08:00:00+02:00", "morgen"),
    ]
    r = run("schedule", "show", str(f), "--from", "2026-10-25", "--days", "1", "--json")
    rows = json.loads(r.stdout)
    assert [(x["utc"], x["local"]) for x in rows] == [
        ("2026-10-25T00:30:00Z", "2026-10-25T02:30:00+02:00"),
        ("2026-10-25T07:00:00Z", "2026-10-25T08:00:00+01:00"),
    ]


def test_show_table_seven_days():
    r = run("schedule", "show", str(EXAMPLE), "--from", "2026-11-23", "--days", "7")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 7 * 5
    assert lines[0].split() == [
        "2026-11-23",
        "man",
        "08:00",
        "morgen",
        "1",
        "×",
        "Metformin",
        "500",
        "mg,",
        "1",
        "×",
        "Hjertemagnyl",
        "75",
        "mg,",
        "1",
        "×",
        "Furix",
        "40",
        "mg",
    ]
    assert "(påmindelse)" in lines[3] and "ojendraaber" in lines[3]
    assert "½ × Zopiclon 7,5 mg" in lines[4]
    assert "borger-0042" in r.stderr  # the header is chatter, on stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "2026-3-29"], "Invalid value for '--from': \"2026-3-29\" is not a date"),
        (["--days", "0"], "Invalid value for '--days': 0 is not in the range 1<=x<=366"),
        (["--bogus"], "No such option '--bogus'"),
    ],
)
def test_bad_arguments_one_line_exit_1(args, message):
    r = run("schedule", "show", str(EXAMPLE), *args)
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and message in r.stderr


def test_show_before_start_says_so(tmp_path):
    r = run("schedule", "show", str(EXAMPLE), "--from", "2026-01-01", "--days", "3")
    assert r.exit_code == 0
    assert r.stdout == ""
    assert "no doses in this period" in r.stderr


def test_installed_console_script():
    exe = shutil.which("dosis", path=str(Path(sys.executable).parent))
    assert exe, "the dosis console script is not installed next to this Python"
    out = subprocess.run(
        [exe, "schedule", "validate", str(EXAMPLE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{EXAMPLE}: valid:")


def test_internal_errors_one_line_unless_verbose(monkeypatch):
    from dosis import schedules

    def boom(path):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(schedules, "load_schedule", boom)
    r = CliRunner().invoke(cli, ["schedule", "validate", str(EXAMPLE)])
    assert r.exit_code == 2
    assert r.stderr == (
        "internal error: RuntimeError: disk on fire (run with -v for details; please report it)\n"
    )
    r = CliRunner().invoke(cli, ["-v", "schedule", "validate", str(EXAMPLE)])
    assert "Traceback" in r.stderr and "disk on fire" in r.stderr


def test_host_runs_the_firmware_code():
    import dosiscore.schedule

    assert Path(dosiscore.schedule.__file__).resolve().parent == ROOT / "firmware" / "dosiscore"


def test_hardware_group_registered():
    assert "hardware" in cli.commands and "schedule" in cli.commands


def test_compile_is_canonical_and_validates_again(tmp_path):
    from dosiscore import schedule as core

    r = run("schedule", "compile", str(EXAMPLE))
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert core.canonical(core.validate(doc)).decode() == r.stdout.strip()
    out = tmp_path / "s.json"
    r = run("schedule", "compile", str(EXAMPLE), "-o", str(out))
    assert r.exit_code == 0 and out.read_bytes().decode() == json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert f"hash {core.content_hash(doc)[:12]}" in r.stderr
