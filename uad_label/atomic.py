"""Files appear whole or not at all: write to a temporary file in the same folder, then rename.
A reader (or a crash) never sees half a file; the datastore, results and weights all write this way."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on an
    exception it is removed. `suffix` keeps the extension writers look at (".nii.gz")."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files: give the file the mode open() would
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
        if fsync:  # make the rename itself durable (a kill -9 or power loss right after keeps it)
            _fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike, fsync: bool = False) -> None:
    """Copy `src` to `dest` so that `dest` is whole or absent (streamed, not read into memory)."""
    import shutil

    with atomic_path(dest, fsync=fsync) as tmp, open(src, "rb") as inp, open(tmp, "wb") as out:
        shutil.copyfileobj(inp, out, 1 << 20)


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    write_bytes(path, text.encode(), fsync)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
