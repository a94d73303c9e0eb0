"""Read torch.save files (models, checkpoints, training state) without running code from them.

Every such file the project reads goes through ``load_torch_file``: ``torch.load(weights_only=True)`` rebuilds
tensors and plain containers (dict, list, tuple, str, numbers) only, widened per format by an explicit
allowlist of exact globals (``allow``: e.g. ``MMENGINE_GLOBALS`` for OpenMMLab checkpoints with numpy
metadata). A file that pickles anything else (an arbitrary class, or a function such as ``os.system`` that a
full unpickle would call) is refused with ``ModelFileError`` naming the file and the global; nothing from it
runs. Plain ``pickle`` / ``weights_only=False`` is never used.
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import pickletools
import re
import threading
import zipfile
from typing import Any, Callable, Iterable

import numpy as np
import torch

from simhand_ray import storage

_LOCK = threading.Lock()
#: An allowlist entry: an object (matched by its ``module.qualname``) or (object, "name it is pickled as").
Allowed = Callable | tuple[Callable, str]


class ModelFileError(ValueError):
    """A model / checkpoint / state file that cannot be loaded safely: unreadable, or pickling code.

    ``uri`` is the file; ``globals`` the disallowed globals found in it (empty when it is just unreadable).
    """

    def __init__(self, message: str, uri: str, globals_: Iterable[str] = ()):
        super().__init__(message)
        self.uri = uri
        self.globals = list(globals_)

    def __reduce__(self):  # re-raised intact from a Ray worker
        return type(self), (str(self), self.uri, self.globals)


def _numpy_globals() -> tuple[Allowed, ...]:
    """What numpy arrays, dtypes and scalars pickle as, under numpy 2 names and the numpy 1 ones older files
    hold; dtype classes are the numeric, bool and string ones (no object or structured dtypes)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray

    dtype_classes = tuple(type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGSU")
    return (multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"),
            np.ndarray, np.dtype) + tuple(dict.fromkeys(dtype_classes))


#: numpy arrays / dtypes / scalars, as in mmengine checkpoints' ``meta`` (``dataset_meta``: sigmas, colours)
NUMPY_GLOBALS: tuple[Allowed, ...] = _numpy_globals()


#: the statistics mmengine's HistoryBuffer pickles as ``getattr(HistoryBuffer, name)`` (its default ones)
HISTORY_BUFFER_METHODS = ("min", "max", "current", "mean")


def _history_buffer_method(cls: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling an mmengine checkpoint: returns only the methods
    of ``HistoryBuffer`` its pickles name, and refuses every other attribute of anything."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if cls is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(cls, name)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr({getattr(cls, '__qualname__', cls)},{name!r})")


def mmengine_globals() -> tuple[Allowed, ...]:
    """What an mmengine checkpoint pickles: NUMPY_GLOBALS (``meta.dataset_meta``), and for a training
    checkpoint's ``message_hub`` the plain-data class ``HistoryBuffer`` (two arrays and a length) and the
    ``getattr(HistoryBuffer, "min" | "max" | "current" | "mean")`` calls that store its statistics methods
    (``getattr`` itself stays refused). mmengine is imported only when such a file is read."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return NUMPY_GLOBALS + (HistoryBuffer, (_history_buffer_method, "builtins.getattr"))


def _names(allow: Iterable[Allowed]) -> set[str]:
    return {a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}" for a in allow}


def _pickle_bytes(data: bytes) -> bytes:
    """The pickle inside a torch.save zip (``*/data.pkl``), else ``data`` itself (raw or legacy pickle)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            return z.read(names[0]) if names else b""
    return data


def _py3_name(module: str, name: str) -> str:
    """``module.name`` under Python 3 names (protocol-2 pickles, torch.save's, say ``__builtin__.eval``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def pickled_globals(data: bytes) -> list[str]:
    """Every global (``module.name``) a pickle / torch.save file refers to, read without unpickling:
    GLOBAL opcodes and STACK_GLOBAL ones (their module and name are the last two strings pushed), over each
    pickle in turn (a legacy torch.save file is several, then raw storage bytes)."""
    found = []
    stream = io.BytesIO(_pickle_bytes(data))
    while stream.tell() < len(stream.getbuffer()):
        strings, memo, top = [], {}, None   # top: the string just pushed, if the last push was one
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(_py3_name(*arg.split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = top
                    continue
                top = arg if "UNICODE" in op.name or op.name.endswith("STRING") else None
                if op.name in ("GET", "BINGET", "LONG_BINGET"):
                    top = memo.get(arg)
                if top is not None:
                    strings.append(top)
        except Exception:   # junk, truncated, or the raw bytes after the pickles: what was read so far
            break
    return list(dict.fromkeys(found))


def _disallowed(data: bytes, allow: Iterable[Allowed]) -> list[str]:
    from torch import _weights_only_unpickler as wou

    ok = _names(allow) | _names(torch.serialization.get_safe_globals()) | set(getattr(wou, "_get_allowed_globals", dict)())
    return [g for g in pickled_globals(data) if g not in ok]


def load_torch_file(source: str | os.PathLike | bytes, *, allow: Iterable[Allowed] = (), name: str = "") -> Any:
    """Load a torch.save file from a path, an s3:// URI or its bytes, on CPU, with ``weights_only=True`` and
    the extra globals in ``allow``; refuses a file that pickles anything else, and one that is not a torch.save
    file, with ``ModelFileError`` naming the file (as ``name`` when given, e.g. "checkpoint s3://b/k") and the
    global."""
    is_bytes = isinstance(source, (bytes, bytearray))
    uri = "<bytes>" if is_bytes else str(source)
    label = name or uri
    data = bytes(source) if is_bytes else storage.read_bytes(uri)
    allow = tuple(allow)
    try:
        with _LOCK, torch.serialization.safe_globals(list(allow)):   # the allowlist is process-wide while set
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        bad = _disallowed(data, allow)
        if not bad:
            m = re.search(r"GLOBAL (\S+)", str(e))
            bad = [m.group(1)] if m else []
        if bad:
            raise ModelFileError(
                f"refusing to load {label}: it pickles {', '.join(bad)}, which a model, checkpoint or state file "
                f"has no need of (only tensors and plain containers{', plus an allowlist of exact types,' if allow else ''} "
                f"are loaded; unpickling it in full would run code from the file). If you trust its source, "
                f"re-save just its tensors (e.g. its state_dict) with torch.save.", uri, bad) from None
        m = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", str(e), re.S)
        detail = m.group(1) if m else str(e).strip().splitlines()[-1]
        raise ModelFileError(f"cannot read {label}: not a torch.save file, or truncated ({detail})", uri) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        detail = f"{type(e).__name__}: {str(e).strip()}".split(". ")[0].splitlines()[0]
        raise ModelFileError(f"cannot read {label}: not a torch.save file, or truncated ({detail})", uri) from None
