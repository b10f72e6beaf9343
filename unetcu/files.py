"""Writing result files safely: every file unetcu writes (checkpoints, logs, plots, predictions)
goes to a temporary name in the same folder and is renamed over the target only when complete, so
an interrupt or a failure never leaves a half-written file and never destroys the previous one.

Permissions follow the user's umask (0666 & ~umask, as `open()` would give): mkstemp creates its
file 0600, which left checkpoints and predictions unreadable to a group that can read the logs.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    old = os.umask(0)  # the only way to read it; set it straight back
    os.umask(old)
    return old


def atomic_write(path, write) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it to `path`.

    write: a function that writes the whole file at the path it is given (str). On any exception,
    KeyboardInterrupt included, the temporary file is removed and `path` is left as it was.
    Returns `path` as a Path."""
    path = Path(path)
    if not path.parent.is_dir():  # else mkstemp's error would name the temporary file
        raise FileNotFoundError(f"cannot write {path}: no folder {path.parent}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def same_file(a, b) -> bool:
    """Whether two paths name one file (links followed); by resolved path when one does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
