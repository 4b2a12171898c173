"""The exceptions that reach the user as one line, and the exit code each gives.

The CLI catches :class:`MLIPError` and prints its one-line message with the error's exit code,
so a bad file or a full disk never ends in a deep traceback:

* :class:`InputError` (exit 2): the user's data, config or model file is wrong in a way the
  user can fix. Messages name the file, the frame and the key.
* :class:`StorageError` (exit 1): a file of a run could not be written (disk full, quota,
  read-only file system). Messages say which file and what is still intact.
* :class:`TrainingDiverged` (exit 1): the loss or gradients became NaN or inf; the message names
  the batch's structures and the last good checkpoint.
* :class:`NonFiniteError` (exit 1): a model predicted NaN or inf for a structure that passed
  the input checks. Messages name the model and the structure.
"""
import errno
from typing import Optional


class MLIPError(Exception):
    """Base of the errors reported as one line; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(MLIPError, ValueError):
    """A user's data, config or model file is wrong in a way the user can fix."""

    exit_code = 2

    def __init__(self, message: str, path: Optional[str] = None, frame: Optional[int] = None,
                 key: Optional[str] = None):
        where = []
        if path is not None:
            where.append(str(path))
        if frame is not None:
            where.append(f"frame {frame}")
        if key is not None:
            where.append(f"key '{key}'")
        self.path, self.frame, self.key = path, frame, key
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    @classmethod
    def at(cls, source: str, message: str, key: Optional[str] = None) -> "InputError":
        """An error about the structure ``source`` (``"file:frame"``, as :class:`Frame` keeps it)."""
        path, _, frame = (source or "").rpartition(":")
        if not frame.isdigit():
            path, frame = source or "", ""
        return cls(message, path or None, int(frame) if frame else None, key)


class StorageError(MLIPError, OSError):
    """Writing a file of a run failed; the previous version of that file is unchanged."""

    exit_code = 1


class TrainingDiverged(MLIPError, RuntimeError):
    """The loss or the gradients became NaN or inf; the run stopped before using them."""

    exit_code = 1


class NonFiniteError(MLIPError, FloatingPointError):
    """A model's prediction is NaN or inf; never handed on as a number."""

    exit_code = 1


# what a failed write of a run's files looks like (wrapped by torch in a RuntimeError, say)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def describe_os_error(exc: BaseException) -> Optional[OSError]:
    """The :class:`OSError` behind ``exc`` (itself, or in its chain of causes), else None.

    torch and other writers wrap the operating system's error (``No space left on device``)
    in their own exceptions; the user needs the original.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and not isinstance(exc, MLIPError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_text(exc: OSError) -> str:
    """``No space left on device`` and friends, with a hint for the common causes."""
    text = exc.strerror or str(exc) or type(exc).__name__
    hints = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free space within your quota",
             errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
             errno.EPERM: "no permission to write there"}
    hint = hints.get(exc.errno or 0)
    return f"{text} ({hint})" if hint and hint not in text else text
