"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a data directory in
a temporary folder, 127.0.0.1 on a free port, trust authentication, no fsync; stopped and deleted
afterwards. `initdb` refuses to run as root, so as root the server runs as `nobody`."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "codec"  # the database superuser initdb creates


def server_binaries() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: from PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (which Debian leaves off PATH), newest version first."""
    found = shutil.which("initdb")
    folders = [Path(found).resolve().parent] if found else []
    folders += sorted((Path(f) for f in glob.glob("/usr/lib/postgresql/*/bin")),
                      key=lambda f: [int(n) for n in re.findall(r"\d+", f.parent.name)], reverse=True)
    for folder in folders:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, binaries: Path):
        self.binaries = binaries
        root = os.geteuid() == 0
        self.owner = pwd.getpwnam("nobody") if root else None
        # /tmp rather than a private TMPDIR: the unprivileged owner must be able to reach the folder.
        self.folder = Path(tempfile.mkdtemp(prefix="codec-postgres-", dir="/tmp" if root else None))
        self.data = self.folder / "data"
        self.port = 0

    def _run(self, *args: str) -> None:
        as_owner = ({"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
                    if self.owner else {})
        done = subprocess.run([str(self.binaries / args[0]), *args[1:]], capture_output=True, text=True,
                              cwd=self.folder, **as_owner)
        if done.returncode != 0:
            log = (self.folder / "server.log").read_text() if (self.folder / "server.log").is_file() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}{log[-2000:]}")

    def start(self) -> PostgresServer:
        if self.owner:
            os.chown(self.folder, self.owner.pw_uid, self.owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C",
                  "--no-sync")
        for attempt in range(3):  # another process may take the free port before the server binds it
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c max_connections=100"
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
                          "-o", options, "start")
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
