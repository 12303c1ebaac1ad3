"""Atomic folder writes: every checkpoint (pruned, recovered, recovery state) is written beside its destination and
moved into place at the end, so an interrupted save never leaves a folder that looks complete.

Staging folders are named `.<name>.tmp-<pid>-*` (and `.<name>.old-<pid>` for a replaced folder where the filesystem
cannot swap atomically); the next save to the same destination removes those whose process is gone.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)


def check_destination(target: str | os.PathLike, overwrite: bool, what: str = "the model") -> Path:
    """The resolved destination folder; refuses a file, or a non-empty folder unless `overwrite`."""
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file; pass a directory to save {what} into.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    return target


@contextmanager
def atomic_directory(target: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; when the block ends without error it replaces `target`.

    `durable`: flush every file to disk and give the folder the permissions a plain `mkdir` would, before the move
    (checkpoints users keep); frequent internal state (recovery checkpoints) can skip it. On error the staging folder
    is removed and `target` is left as it was.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        if durable:
            _apply_default_permissions(staging)
            _sync_tree(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(target: Path) -> None:
    """Delete `.<name>.tmp-<pid>-*` / `.<name>.old-<pid>` folders left next to `target` by a killed save.

    Only folders whose process is gone on this machine are deleted, so a concurrent save is never disturbed.
    """
    for kind in ("tmp", "old"):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            pid = leftover.name[len(f".{target.name}.{kind}-") :].split("-")[0]
            if leftover.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
                logger.warning(f"HyWIA: removing {leftover}, left by an interrupted save (process {pid}).")
                shutil.rmtree(leftover, ignore_errors=True)


def replace_directory(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, replacing what is there, with the old contents removed only after the move.

    On Linux an existing `target` is swapped with `staging` atomically, so `target` names a complete checkpoint at
    every instant; where the filesystem cannot, `target` is first renamed to `.<name>.old-<pid>`.
    """
    if target.exists() and exchange_paths(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous checkpoint
        return
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step with Linux's `renameat2(RENAME_EXCHANGE)`; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # libc without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _apply_default_permissions(folder: Path) -> None:
    """Staging folders are private (mkdtemp); the result gets the permissions a plain mkdir/open would give."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _sync_tree(folder: Path) -> None:
    """Flush the files of `folder` to disk before it is renamed, so a crash right after cannot leave empty files."""
    if os.name != "posix":
        return
    for path in [*folder.rglob("*"), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
