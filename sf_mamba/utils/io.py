"""Atomic writes: a reader never sees a half-written file.

Every writer here writes to a temporary file *in the same directory* as the target, flushes and
fsyncs it, then ``os.replace``-s it over the target (atomic on POSIX within one filesystem). If the
process dies mid-write, the target is either the old version or absent, never truncated; the stray
``.<name>.tmp-*`` file is harmless and is overwritten by the next write.

- ``atomic_write_bytes/text/json/yaml(path, obj)``: files.
- ``atomic_torch_save(obj, path)``: checkpoints.
- ``atomic_directory(path)``: a context manager that yields a temp directory and renames it to
  ``path`` on success (for whole datasets); on error the temp directory is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_yaml",
           "atomic_torch_save", "atomic_directory", "read_json"]


def _tmp_sibling(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temp file next to ``path``, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    fd, tmp = _tmp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + fsync + os.replace)."""
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """JSON with sorted keys and a trailing newline; non-JSON values are str()-ed."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    import yaml

    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file next to ``path``, then ``os.replace`` it into place."""
    import torch

    with _signals_deferred():  # a requeue handler then finds the new checkpoint in place
        return _atomic_write(path, lambda fh: torch.save(obj, fh))


# Slurm's pre-timeout/preemption signals (submitit: USR2 by default) and SIGTERM.
_DEFERRED_SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold requeue signals' Python handlers until the block ends (main thread only).

    submitit's handler requeues the job and exits the process wherever it is; inside torch.save the
    zip writer's cleanup turns that exit into a RuntimeError, so a job Slurm has requeued would
    record an error. Here the handlers are swapped for a recorder and the recorded signals are
    handed to the real handlers after the write, which then see a complete checkpoint. (Blocking
    with pthread_sigmask would not do: torch's worker threads would still take the signal.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list = []
    previous = {}
    for sig in _DEFERRED_SIGNALS:
        handler = signal.getsignal(sig)
        if callable(handler):  # default/ignore dispositions are left alone
            previous[sig] = handler
            signal.signal(sig, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in pending:
            previous[signum](signum, frame)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory; on normal exit rename it to ``path`` (which must not exist).

    If ``path`` appeared meanwhile (a concurrent writer won the race), the temp copy is discarded
    and ``FileExistsError`` is raised; on any exception the temp directory is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)  # fails if path exists and is non-empty: never clobbers
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
