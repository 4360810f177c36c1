"""Files that hold mail or secrets (the SQLite database, the bridge's key): the service user's alone.

They are created private (folder 0700, file 0600) rather than chmod-ed afterwards, so there is no
moment in which another local user could open them. A folder or file that already exists is left as
the admin made it; `serve` only warns when others can read it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


def private_folder(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700; an existing folder is not touched."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another process was faster
            pass


def private_file(path: Path) -> None:
    """Create an empty `path` with mode 0600 unless it exists (its folder private too)."""
    private_folder(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_sqlite_file(url: str) -> None:
    """Before SQLite opens a new database: create it 0600, which its -wal and -shm files then copy."""
    path = sqlite_path(url)
    if path is not None:
        private_file(path)


def readable_by_others(path: Path) -> int | None:
    """The mode of `path` if its group or others may read it; None if they cannot or it does not exist."""
    try:
        bits = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    return bits if bits & (stat.S_IRGRP | stat.S_IROTH) else None


def warn_if_readable(database_url: str, key_file: str) -> None:
    """One warning line naming every file with mail or the IMAP key in it that others may read."""
    path = sqlite_path(database_url)
    files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")] if path else []
    exposed = {f: bits for f in files + [Path(key_file)] if (bits := readable_by_others(f)) is not None}
    if exposed:
        log.warning("readable by other users, who can read all mail or the IMAP passwords: %s (chmod 600 %s)",
                    ", ".join(f"{f} ({bits:04o})" for f, bits in exposed.items()), " ".join(map(str, exposed)))
