"""The one exception type that the command line turns into a one-line message, and the rules that say which
other failures are the user's to fix.

Raise `UserError` for anything the user can fix (bad path, bad config key, wrong checkpoint, corrupt image):
the CLI prints `error: <message>` without a traceback. Bugs stay ordinary exceptions so that they keep theirs.
`user_message` is the CLI's single decision of what counts as a user error; it lives here, beside `UserError`,
so that the library and the CLI share one rule instead of each command catching its own exceptions.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from typing import Iterator

# torch's DataLoader re-raises a worker's exception as `type(msg)` with the worker's traceback folded into `msg`
_WORKER_WRAPPED = re.compile(r"Caught \w+ in (?:DataLoader worker process \d+|pin memory thread[^.]*)\.\n"
                             r"Original (?P<tb>Traceback.*)", re.S)
_TRACEBACK_TAIL = re.compile(r"\n(?:mfmseg\.errors\.)?UserError: (?P<msg>.*)$", re.S)
# torch.use_deterministic_algorithms(True) refusing a kernel: "<op> does not have a deterministic implementation"
_NONDETERMINISTIC = re.compile(r"(?P<op>\S+) does not have a deterministic implementation")


class UserError(Exception):
    """A problem with the user's input: message says what, where, and how to fix it.

    A UserError raised in a DataLoader worker comes back as itself: torch rebuilds it from the worker's whole
    traceback, which we peel off again (kept in `remote_traceback` for `MFMSEG_DEBUG=1`), so the user reads
    the worker's one line and not "Caught UserError in DataLoader worker process 0" plus a traceback.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        self.remote_traceback: str | None = None
        if isinstance(message, str) and (wrapped := _WORKER_WRAPPED.match(message)):
            tail = _TRACEBACK_TAIL.search(wrapped["tb"].rstrip())
            if tail:
                self.remote_traceback, message = wrapped["tb"], tail["msg"]
        super().__init__(message, *args)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `kill`, `docker stop`, a sweep stopping its children), raised where the
    process is. Python's default for SIGTERM ends the process on the spot: no `finally`, so a temp file stays
    half-written and a sweep's trainings run on as orphans. Raised instead, it unwinds like Ctrl-C (whose handlers
    it reuses by being a KeyboardInterrupt: DataLoader workers, the sweep terminating its children)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block (main thread only: Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), MemoryError (numpy/Python) or the CPU allocator's RuntimeError."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in ("can't allocate memory", "out of memory",
                                                                     "not enough memory"))


def _os_message(e: OSError) -> str:
    """`<reason>: <path>` (the path is what the user can act on); disk full says so."""
    reason = e.strerror or first_line(e)
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason


def user_message(e: BaseException) -> str | None:
    """The one line to show for an expected failure, or None for a bug (which keeps its traceback).

    Expected: a UserError from any process, an OSError (a path the user gave cannot be read or written, a full
    disk), running out of memory on user-sized inputs, and a kernel that strict determinism refuses.
    """
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError):
        return _os_message(e)
    if isinstance(e, RuntimeError) and (op := _NONDETERMINISTIC.match(str(e))):
        return (f"train.deterministic=true, but {op['op']} has no deterministic implementation on this device: "
                f"set train.deterministic=false (a resumed run then continues only approximately)")
    if _is_out_of_memory(e):
        return (f"out of memory ({first_line(e)[:160]}): use smaller inputs (data.*.resize, data.batch_size) "
                f"or sliding-window inference (eval.mode=slide, eval.batch_size=1)")
    return None


NOT_TORCH = "not a PyTorch file (neither a zip archive nor a pickle)"
ONNX_MODEL = "an ONNX model: use the .onnx suffix"
_ONNX_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}  # ModelProto tags that follow ir_version


def what_file_is(path: str | os.PathLike) -> str | None:
    """What a file that torch could not load is, when its first bytes say so: an ONNX model, a safetensors file,
    an image, JSON, YAML or other text. None for torch's own formats (a zip archive, a binary pickle), an empty
    file, or anything not recognised: those are described by the loader's error."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        size = os.path.getsize(path)
    except OSError:
        return None
    if not head or head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return f"a {'PNG' if head[1:4] == b'PNG' else 'JPEG'} image, {NOT_TORCH}"
    if len(head) > 2 and head[0] == 0x08 and head[1] < 0x80 and head[2] in _ONNX_FIELDS:
        return ONNX_MODEL
    if len(head) > 9 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < size:
        return "a safetensors file: use the .safetensors suffix"
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8") if size <= len(head) else head[:-4].decode("utf-8", errors="ignore")
    except UnicodeDecodeError:
        return None
    return f"{_text_kind(path, text, size)}, {NOT_TORCH}"


def _text_kind(path: str | os.PathLike, head: str, size: int) -> str:
    """'a JSON file', 'a YAML file (a config?)' (a mapping) or 'a text file'."""
    import json

    import yaml

    if size > 2**20:
        return "a text file"
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
        if head.lstrip().startswith(("{", "[")):
            json.loads(text)
            return "a JSON file"
        return "a YAML file (a config?)" if isinstance(yaml.safe_load(text), dict) else "a text file"
    except (ValueError, yaml.YAMLError, OSError):
        return "a text file"


def describe_load_failure(e: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why `torch.load(weights_only=True)` refused a file (`path`, when given, is looked at too), in words the user
    can act on. Only a real pickle is "pickled code": a binary pickle (torch's own format) the weights-only loader
    refused, or any pickle that names a global; a text, YAML or ONNX file is named for what it is."""
    text = str(e)
    kind = what_file_is(path) if path is not None else None
    if "Weights only load failed" in text:
        what = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.I)
        if what or (kind is None and (path is None or _starts_like_pickle(path))):
            return "this file contains pickled code, refusing to load it" + (f" ({what[1]})" if what else "")
    if kind is not None:
        return kind
    if isinstance(e, EOFError) or "failed finding central directory" in text:
        return "the file is empty, truncated or corrupt"
    if isinstance(e, (KeyError, IndexError)) or "invalid load key" in text or "Weights only load failed" in text:
        return NOT_TORCH
    return first_line(e)[:200]


def _starts_like_pickle(path: str | os.PathLike) -> bool:
    """A zip archive (torch.save) or a binary pickle (protocol 2+: its first byte is PROTO, 0x80)."""
    try:
        with open(path, "rb") as f:
            return f.read(4).startswith((b"PK\x03\x04", b"\x80"))
    except OSError:
        return False


def yaml_error_line(e: Exception) -> str:
    """A PyYAML error as `line L, column C: problem`: the line number is what the user needs to find it."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or first_line(e)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
