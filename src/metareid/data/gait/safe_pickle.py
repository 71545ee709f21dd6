"""Restricted unpickling of silhouette ``.pkl`` files.

A pkl of the OpenGait format holds one numpy array (or a list/tuple/dict of arrays); its pickle
stream only needs numpy's array reconstructors. ``pickle.load`` would also import and call any
other global a crafted file names (``os.system`` through ``__reduce__``), so a shared dataset copy
could run code. :class:`SilhouetteUnpickler` resolves only the globals below and refuses every
other one *before* it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

#: ``(module, name)`` globals a pickled numpy array needs, for numpy 1.x (``numpy.core``) and
#: 2.x (``numpy._core``), pickle protocols 2-5. ``_codecs.encode`` turns a str into bytes
#: (protocol 2 stores the array buffer that way); containers (list, tuple, dict) are opcodes.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class DisallowedGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""


class SilhouetteUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DisallowedGlobalError(f"{module}.{name}")


def load_silhouette_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only numpy arrays and plain containers.

    Raises:
        ValueError: naming the file and the refused global (nothing of the file is executed),
            or the file as empty/truncated/unreadable.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return SilhouetteUnpickler(io.BytesIO(data)).load()
    except DisallowedGlobalError as error:
        raise ValueError(
            f"{path}: refused to unpickle: it names the global {error}, which a silhouette pkl "
            "never needs (only numpy arrays are allowed). The file may be malicious or not a "
            "silhouette sequence; replace it from a trusted copy (src/prepare.py re-creates it)."
        ) from None
    except EOFError as error:
        raise ValueError(f"{path}: empty or truncated pkl file") from error
    except Exception as error:  # any unpickling failure means the same thing to the user
        raise ValueError(f"{path}: cannot unpickle ({type(error).__name__}: {error})") from error
