"""Writing local files: folders checked writable before any work, files that appear complete
or not at all."""
import contextlib
import os
import tempfile

from ..errors import UserError

__all__ = ["atomic_open", "check_writable_dir"]


# Permission bits of a new file before the umask, as open() creates it.
_NEW_FILE_MODE = 0o666
_PERMISSION_BITS = 0o7777


def _current_umask() -> int:
    """The process's umask (read from /proc where possible: os.umask can only set it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    """The permission bits ``open(path, "w")`` would leave: the existing file's, else 0666 & ~umask."""
    try:
        return os.stat(path).st_mode & _PERMISSION_BITS
    except FileNotFoundError:
        return _NEW_FILE_MODE & ~_current_umask()


class _AtomicLocalFile:
    """A file object that is written under a temporary name and renamed over the target on close.

    A crash (or an exception inside the ``with`` block) before the rename leaves the
    previous file at ``path`` untouched and removes the temporary file. The file gets the
    permissions a plain ``open(path, "w")`` would give it (``tempfile.mkstemp`` makes 0600).
    """

    def __init__(self, path: str, mode: str):
        directory = os.path.dirname(os.path.abspath(path))
        fd, self._temporary_path = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
        self._path = path
        try:
            os.chmod(self._temporary_path, _mode_for(path))
            self._file = os.fdopen(fd, mode)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            os.unlink(self._temporary_path)
            raise

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(OSError):  # flushing may fail again (a full disk)
                self._file.close()
            os.unlink(self._temporary_path)

    def close(self):
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:  # e.g. a full disk: the temporary file goes, the target stays
            with contextlib.suppress(OSError):
                self._file.close()
            os.unlink(self._temporary_path)
            raise
        self._file.close()
        os.replace(self._temporary_path, self._path)


def atomic_open(path: str, mode: str = "w"):
    """Open a local file for writing so that it appears complete or not at all.

    Use as a context manager; the file replaces ``path`` when the block exits normally. It
    gets the permissions ``open(path, mode)`` would give: those of the file it replaces, or
    0666 minus the umask for a new file.
    """
    return _AtomicLocalFile(path, mode)


def check_writable_dir(path, what="output folder"):
    """Create ``path`` if needed and check that a file can be written in it, before any work.

    Raises:
        UserError: naming the folder and the reason (not writable, a file, no space...).
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".vos_det_write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{what} {path} is not writable: {e.strerror or e}") from e
    return path
