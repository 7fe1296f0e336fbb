"""Load mmengine checkpoints under torch >= 2.6's ``weights_only=True`` default, safely.

mmengine 0.10.x calls ``torch.load(path, map_location=...)`` without ``weights_only``; since torch 2.6
that means ``weights_only=True``, and Runner resume / ``load_from`` fail with ``UnpicklingError``
because an mmengine checkpoint holds a few non-tensor objects. The blunt workaround,
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, turns the safe unpickler off for *every* load in the process.

Instead, :func:`mmengine_safe_globals` allow-lists exactly what mmengine (0.10.7, numpy 2) writes:

* ``message_hub.log_scalars``: ``mmengine.logging.history_buffer.HistoryBuffer`` instances holding
  numpy arrays (``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype`` and the
  per-dtype classes ``numpy.dtypes.{Float64,Int64,Float32,Int32,Bool}DType``) and,
  via ``HistoryBuffer.__getstate__``, references to its statistics functions, which pickle as
  ``builtins.getattr(HistoryBuffer, 'min')``. ``builtins.getattr`` is *not* allowed as such: the
  name is bound to :func:`_history_buffer_getattr`, which only resolves
  ``HistoryBuffer.{min,max,mean,current}`` and raises ``UnpicklingError`` for anything else.
* ``message_hub.runtime_info``: numpy scalars (``numpy._core.multiarray.scalar``).

(Plus the numpy 1.x spellings ``numpy.core.multiarray.*`` so older checkpoints load.) Everything
else -- an arbitrary class, ``os.system``, a getattr on another object -- is still refused by torch's
weights-only unpickler. The context manager is scoped: outside it nothing is added.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any, Iterator

# The statistics functions HistoryBuffer registers by default (mmengine 0.10.x).
HISTORY_BUFFER_STATISTICS = ("min", "max", "mean", "current")


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling: only ``HistoryBuffer.<statistic>``."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"refusing getattr({getattr(obj, '__qualname__', type(obj).__name__)!r}, {name!r}) in a "
        "checkpoint: only HistoryBuffer statistics are allowed")


def mmengine_checkpoint_globals() -> list:
    """The allow-list for :func:`torch.serialization.safe_globals` (objects or (object, name) pairs)."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    entries: list = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        (_history_buffer_getattr, "builtins.getattr"),
    ]
    # A dtype's pickle BUILDs an instance of its per-dtype class: HistoryBuffer keeps float64 values
    # and int64 counts; float32/int32/bool cover the same arrays written on other platforms.
    entries += [type(np.dtype(t)) for t in ("float64", "int64", "float32", "int32", "bool")]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        entries.append((multiarray._reconstruct, f"{module}._reconstruct"))
        entries.append((multiarray.scalar, f"{module}.scalar"))
    return entries


@contextlib.contextmanager
def mmengine_safe_globals() -> Iterator[None]:
    """Within this block, ``torch.load(weights_only=True)`` accepts mmengine checkpoints."""
    import torch

    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: weights_only is not the default
        yield
        return
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        yield


__all__ = ["mmengine_safe_globals", "mmengine_checkpoint_globals", "HISTORY_BUFFER_STATISTICS"]
