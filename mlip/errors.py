"""One exception type for every problem with a user's input.

The CLI catches :class:`InputError` and prints its one-line message with a non-zero exit code,
so a bad file never ends in a deep traceback. Messages name the file, the frame and the key.
"""
from typing import Optional


class InputError(ValueError):
    """A user's data, config or model file is wrong in a way the user can fix."""

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
