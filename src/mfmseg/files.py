"""Atomic file writes and output-path checks: the one place where mfmseg writes a file.

Every output (checkpoints, exported models, JSON, YAML, PNGs) is written to a temporary name beside its target
and renamed over it only when complete, so that a killed run never leaves a half-written `latest.pth`; on any
failure the temporary file is removed (on a full disk it would otherwise keep the disk full) and the error names
the path. `check_output_file` / `check_output_dir` let a command refuse an output it cannot write before its
long work (an evaluation, a training run) rather than after it. `exclusive_lock` keeps two processes from writing
one folder at once. `read_jsonl` reads the logs back, passing over a last line cut short by a kill.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mfmseg.errors import UserError


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs)


def temp_path(path: Path) -> Path:
    """`x.png` -> `x.tmp.png`: the suffix stays (PIL and matplotlib pick the format from it) and dataset scans
    skip names containing `.tmp.`. A legal name near NAME_MAX would overflow with `.tmp`: its stem is cut and a
    hash of the whole name keeps two long names with the same start apart."""
    name = f"{path.stem}.tmp{path.suffix}"
    if len(name.encode()) <= NAME_MAX:
        return path.with_name(name)
    tail = f"~{hashlib.sha1(path.name.encode()).hexdigest()[:8]}.tmp{path.suffix}"
    stem = path.stem.encode()[: NAME_MAX - len(tail.encode())].decode(errors="ignore")
    return path.with_name(stem + tail)


# torch.save reports a short write (full disk, quota) as a RuntimeError of its zip writer, not as an OSError
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed")


def _write_failure(path: Path, e: BaseException) -> UserError | None:
    """A failed write the user can fix (permissions, full disk), or None for a bug."""
    if isinstance(e, OSError):
        return UserError(f"cannot write {path}: {e.strerror or e}")
    if isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_ERRORS):
        return UserError(f"cannot write {path}: torch.save failed (is the disk full?): {str(e).splitlines()[0][:100]}")
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` on success and is removed on any failure."""
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        error = _write_failure(path, e)
        if error is not None:
            raise error from e
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` then rename: for writers that take a path (torch.save, PIL, matplotlib)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(folder: Path, what: str, target: Path) -> None:
    """`folder` exists as a writable folder or can be created under one."""
    anchor = _nearest_existing(folder)
    if not anchor.is_dir():
        raise UserError(f"cannot write {what} {target}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {target}: {anchor} is not writable")


def check_output_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuse an output file that is a folder or sits where no file can be created, naming the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder (give a file name)")
    _check_creatable(path.parent, what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse an output folder that is a file or cannot be created, naming the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot use {what} {path}: it is a file, not a folder")
    _check_creatable(path, what, path)
    return path


def _lock_holder(fd: int) -> str:
    """The PID the holder wrote into the lock file ('?' while it has not yet)."""
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds (exclusive_lock)


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker, a pool process): close the lock descriptors it inherited. A flock
    belongs to the open file, which fork shares (close-on-exec does not apply: workers never exec), so a worker
    that outlives its killed parent by the seconds it takes to notice would hold the run's lock until it exits.
    Closing the child's copy does not unlock the parent's."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, advice: str) -> Iterator[None]:
    """Hold `path` (a lock file holding this PID) with `flock` for the duration, or refuse at once naming the
    holder's PID. The kernel drops the lock when its process dies, kill -9 included, so a killed run never leaves
    it stuck: a stale file is simply locked again. The lock belongs to this process alone: forked children (the
    DataLoader's workers) close their copy at once (`_drop_inherited_locks`), so a worker orphaned by kill -9 does
    not hold it. The file is removed on release; a process that opened it just before (and so locked a file no
    longer in the folder) notices and locks the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UserError(f"{what} is in use by process {holder} (lock {path}): {advice}") from None
        if _same_file(fd, path):
            break
        os.close(fd)
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if _same_file(fd, path):
            path.unlink()
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a log; a line that is not JSON (cut short by a kill mid-write) is skipped, never fatal."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict)]
