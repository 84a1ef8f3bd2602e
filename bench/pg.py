"""A throw-away PostgreSQL cluster for the gateway benchmark (Debian packages, loopback only).

    python bench/pg.py run -- COMMAND ...   start a cluster, run COMMAND with $DOSIS_PG_URL set
                                            to its database URL, stop the cluster afterwards
    python bench/pg.py start                start it and print the URL (stop it with `stop`)
    python bench/pg.py stop

`bench/bench_gateway.py` imports `Cluster` from here. What it does:

- finds `initdb` and `pg_ctl` in /usr/lib/postgresql/<newest>/bin or on PATH; if there are
  none, installs the Debian package `postgresql` (`apt-get update && apt-get install -y
  postgresql`, through sudo when not root: the same way `make sysdeps` installs mosquitto);
- creates a fresh cluster in build/pg/data (initdb, trust authentication, superuser `dosis`);
- starts it on a free TCP port on 127.0.0.1 only, with its unix socket in build/pg;
- creates the database `dosis` and prints postgresql://dosis@127.0.0.1:PORT/dosis.

PostgreSQL refuses to run as root: as root the cluster is created and run as the `postgres`
system user (created if missing; it comes with the Debian package) through `runuser`, and
build/pg is handed to that user. The server keeps PostgreSQL's default durability settings
(fsync on, synchronous_commit on): every gateway COMMIT waits for its WAL flush.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "build" / "pg"
RUN_AS = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_bindir() -> Path | None:
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
    )
    for d in reversed(dirs):
        if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK):
            return Path(d)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(initdb)).parent
    return None


def _install() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and shutil.which("sudo") is None:
        sys.exit("PostgreSQL is not installed: run 'sudo apt-get install postgresql'")
    print("installing PostgreSQL (Debian package postgresql)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env
        )
    except (subprocess.CalledProcessError, OSError) as e:
        sys.exit(f"cannot install PostgreSQL ({e}): run 'sudo apt-get install postgresql'")


def bindir() -> Path:
    d = _find_bindir()
    if d is None:
        _install()
        d = _find_bindir()
    if d is None:
        sys.exit("PostgreSQL was installed but initdb/pg_ctl were not found")
    return d


class Cluster:
    """`start()` -> the database URL; `stop()` stops the server (the files stay in build/pg)."""

    def __init__(
        self,
        base: Path = BASE,
        db: str = "dosis",
        user: str = "dosis",
        settings: list[str] | None = None,
    ) -> None:
        self.base = base
        self.settings = list(settings or [])
        self.data = base / "data"
        self.log = base / "server.log"
        self.db = db
        self.user = user
        self.port = 0
        self.bin = bindir()
        self.root = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", RUN_AS, "--", *args] if self.root else list(args)

    def _run(self, *args: str) -> None:
        subprocess.run(self._cmd(*args), check=True, stdout=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.db}"

    def _own(self) -> None:
        if not self.root:
            return
        try:
            subprocess.run(["id", RUN_AS], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            subprocess.run(
                ["useradd", "--system", "--home-dir", "/var/lib/postgresql", RUN_AS], check=True
            )
        shutil.chown(self.base, RUN_AS)
        for dirpath, dirnames, filenames in os.walk(self.base):
            for n in dirnames + filenames:
                shutil.chown(os.path.join(dirpath, n), RUN_AS)

    def start(self) -> str:
        self.stop_stale()
        shutil.rmtree(self.data, ignore_errors=True)
        self.base.mkdir(parents=True, exist_ok=True)
        self.log.unlink(missing_ok=True)
        self._own()
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
            "--auth=trust", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        self.port = _free_port()
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=50"
        for kv in self.settings:  # e.g. synchronous_commit=off (experiments only)
            opts += f" -c {kv}"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", opts, "-w", "-t", "60", "start",
        )  # fmt: skip
        (self.base / "port").write_text(str(self.port))
        self.recreate_db()
        return self.url

    def recreate_db(self) -> None:
        """Drop and create the database (a fresh, empty one for each run)."""
        import psycopg

        admin = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db}"')

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True
        )
        return out.stdout.strip()

    def stop_stale(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
            stdout=subprocess.DEVNULL,
            check=False,
        )


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("start", "stop", "run"):
        print(__doc__, file=sys.stderr)
        return 2
    c = Cluster()
    if argv[0] == "stop":
        c.stop()
        return 0
    url = c.start()
    if argv[0] == "start":
        print(url)
        return 0
    cmd = argv[1:]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        print(url, file=sys.stderr)
        return subprocess.run(cmd, env={**os.environ, "DOSIS_PG_URL": url}).returncode
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
