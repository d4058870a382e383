"""File-system helpers every writer uses: atomic folders and files, stale-staging clean-up, checksums, versions.

Crash safety (kill -9 at any instant) rests on three rules:

- a folder is built in a staging sibling and swapped in with one `renameat2(RENAME_EXCHANGE)` (Linux), so
  the target path always holds either the old or the new folder; where the file system cannot exchange, the
  old folder is moved aside first and a later run puts it back if the process died in between;
- every staging folder has a lock file beside it, held (flock) by the process that writes it; a staging folder
  whose lock nobody holds belongs to a dead process and is removed by the next writer in the same folder;
- files are written to a unique temporary name in their folder and renamed over the target.

Torch-free: the lean runtime may use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from edgeser.errors import OutputError

STAGING_MARK = ".edgeser-tmp-"
ASIDE_MARK = ".edgeser-old-"
# `.<target name>.edgeser-tmp-<pid>-<token>` (a folder or file) and its `<...>.lock`.
_STAGING = re.compile(r"^\.(?P<target>.+)\.edgeser-(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_CWD_LOCK = threading.Lock()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of the libraries a checkpoint, bundle or report depends on (those installed here)."""
    import importlib.metadata as metadata

    versions: dict[str, str] = {}
    for package in ("edgeser", "torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


# --------------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a unique temporary path beside `path` for a writer that takes a file name (safetensors, tokenizers);
    once the block has written it, flush it to disk and rename it over `path`. On failure it is removed; if the
    process is killed, `clean_stale_staging` of the folder removes it (`.NAME.edgeser-tmp-PID-TOKEN`)."""
    tmp = path.with_name(f".{path.name}{STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a unique temporary file beside `path`, flush it to disk, and rename it over `path`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# --------------------------------------------------------------------------------------------- staging


def _lock_free(lock: Path) -> bool:
    """True when no live process holds `lock` (its writer died or finished)."""
    try:
        handle = lock.open("a")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove staging folders and files in `parent` left by dead processes; restore a target moved aside.

    A moved-aside old folder (`.NAME.edgeser-old-*`) whose target is missing goes back to `NAME` (the process
    died between moving it aside and putting the new one in); otherwise it is removed. Returns what was removed
    or restored.
    """
    if not parent.is_dir():
        return []
    cleaned: list[Path] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match is None:
            continue
        lock = entry.with_name(entry.name + ".lock")
        if lock.exists():
            if not _lock_free(lock):
                continue
        elif _pid_alive(int(match["pid"])):
            continue  # a plain temporary file of a live writer (no lock: written and renamed in one call)
        target = parent / match["target"]
        if match["kind"] == "old" and not target.exists() and entry.is_dir():
            os.replace(entry, target)
            cleaned.append(target)
        else:
            _remove(entry)
            cleaned.append(entry)
        lock.unlink(missing_ok=True)
    for lock in [*parent.glob(f".*{STAGING_MARK}*.lock"), *parent.glob(f".*{ASIDE_MARK}*.lock")]:
        if not lock.with_name(lock.name[: -len(".lock")]).exists() and _lock_free(lock):
            lock.unlink(missing_ok=True)  # a lock whose folder is already gone
    return cleaned


@contextlib.contextmanager
def _held_lock(lock: Path) -> Iterator[BinaryIO]:
    handle = lock.open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def staging_dir(parent: Path, name: str, kind: str = "tmp") -> Iterator[Path]:
    """A private folder `parent/.NAME.edgeser-tmp-PID-TOKEN`, locked while in use and removed afterwards.

    Stale staging of dead processes in `parent` is cleaned first. If this process is killed, the next writer in
    `parent` removes the folder.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{parent / name}: cannot create its folder ({err.strerror or err})") from err
    clean_stale_staging(parent)
    mark = STAGING_MARK if kind == "tmp" else ASIDE_MARK
    path = parent / f".{name}{mark}{os.getpid()}-{secrets.token_hex(4)}"
    lock = path.with_name(path.name + ".lock")
    try:
        lock.touch()
    except OSError as err:
        raise OutputError(f"{parent / name}: cannot write in {parent} ({err.strerror or err})") from err
    with _held_lock(lock):
        try:
            path.mkdir()
            path.chmod(0o755)  # a bundle or checkpoint is meant to be shared
            yield path
        finally:
            _remove(path)
            lock.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a))


def swap_in(staging: Path, target: Path) -> None:
    """Put the finished folder `staging` at `target`; the old `target` (if any) ends up at `staging`'s path.

    With RENAME_EXCHANGE there is no instant without a complete folder at `target`. Without it, the old folder
    is first moved to a locked `.NAME.edgeser-old-*` sibling, which `clean_stale_staging` puts back if the
    process dies before the new folder is in place.
    """
    if not target.exists() and not target.is_symlink():
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        return
    aside = target.with_name(f".{target.name}{ASIDE_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    lock = aside.with_name(aside.name + ".lock")
    with _held_lock(lock):
        os.replace(target, aside)
        os.replace(staging, target)
        os.replace(aside, staging)  # the caller removes the old folder with its staging
    lock.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces `target` whole, on failure (or a kill) it vanishes.

    At every instant `target` is either the old folder or the complete new one.
    """
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder")
    with staging_dir(target.parent, target.name) as staging:
        yield staging
        swap_in(staging, target)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run a block with `path` as the current directory (for libraries that write scratch files into it).

    The current directory is process-wide: the block holds a lock so two such blocks never interleave.
    """
    with _CWD_LOCK, contextlib.chdir(path):
        yield
