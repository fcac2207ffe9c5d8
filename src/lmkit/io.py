"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash or Ctrl-C mid-write leaves the old file in place, never a half-written one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import LmkitError

UMASK = os.umask(0)  # the process's umask, read once (os.umask can only be read by setting it) ...
os.umask(UMASK)  # ... and put back at once


def user_mode(path: str | Path, folder: bool = False) -> None:
    """Give a temp file (0600) or folder (0700) the mode a plain open()/mkdir() would: 0666 / 0777 less
    the umask, so a run can be read by other users and servers as the user's umask allows."""
    os.chmod(path, (0o777 if folder else 0o666) & ~UMASK)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False):
    """Yield a temporary path in the target's folder; on success rename it to `path`. `fsync`: flush the
    file to disk before the rename and the folder after it (checkpoints: durable across a power loss too)."""
    path = check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        user_mode(tmp)
        if fsync:
            sync(tmp)
        os.replace(tmp, path)
        if fsync:
            sync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_file_target(path: str | Path) -> Path:
    """`path` as a file lmkit may write, else LmkitError (one line naming it): refused when it is a folder,
    when a folder above it is a file, or when the nearest existing folder is not writable. Checks only;
    every single-file writer goes through atomic_path, which calls it, and commands call it before slow work."""
    path = Path(path)
    if path.is_dir():
        raise LmkitError(f"{path}: is a folder; name a file to write")
    parent = next(p for p in path.absolute().parents if p.exists())  # the root always exists
    if not parent.is_dir():
        raise LmkitError(f"{path}: cannot write it, {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LmkitError(f"{path}: cannot write in {parent} (permission denied)")
    return path


def sync(path: str | Path) -> None:
    """fsync a file or (where the system allows it) a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success it replaces `path` whole, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    user_mode(tmp, folder=True)
    try:
        yield tmp
        for inside in tmp.rglob("*"):  # some writers (safetensors) create their files 0600
            user_mode(inside, folder=inside.is_dir())
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_target(path: str | Path, overwrite: bool = False, source: str | Path | None = None) -> Path:
    """`path` as a folder lmkit may write: refused when it is a file, the `source` being read, or a folder
    with anything in it unless `overwrite`. Checks only (call it before the work); writers clear."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LmkitError(f"{path}: is a file, not a folder")
    if source is not None and not str(source).startswith("hf:") and path.resolve() == Path(source).resolve():
        raise LmkitError(f"{path}: is the directory being read; write to another folder")
    if holds_files(path) and not overwrite:
        raise LmkitError(f"{path}: folder is not empty (use --overwrite to replace it)")
    return path


def read_json(f: Path) -> dict:
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmkitError(f"{f}: corrupt, not valid JSON ({str(e).splitlines()[0][:120]})")
    if not isinstance(data, dict):
        raise LmkitError(f"{f}: corrupt, not a JSON object")
    return data
