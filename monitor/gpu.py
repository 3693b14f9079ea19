"""The GPU as NVML sees it (``nvidia-ml-py``, imported as ``pynvml``), for the health action.

NVML answers from the driver in microseconds and does not touch CUDA, so reading it never
competes with A1111 for the GPU. It is imported and initialised on first use only, once per
process: a machine without the package or without an NVIDIA driver (CI, a laptop) gets
``None`` and the reason instead of an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_MIB = 1024 * 1024
_lock = threading.Lock()
_loaded: tuple[Any | None, str | None] | None = None  # (the initialised pynvml, why not)


def load_nvml() -> tuple[Any | None, str | None]:
    """``(pynvml, None)`` once NVML is initialised, or ``(None, reason)``; decided once."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _init()
        return _loaded


def _init() -> tuple[Any | None, str | None]:
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (the package that provides pynvml)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML did not start: {exc} (no NVIDIA driver or GPU visible to this container)"
    except OSError as exc:
        return None, f"NVML did not start: {exc}"
    return pynvml, None


def read_gpu() -> tuple[dict[str, Any] | None, str | None]:
    """``(reading, None)`` for the worker's GPU, or ``(None, reason)``."""
    nvml, reason = load_nvml()
    if nvml is None:
        return None, reason
    return gpu_status(nvml)


def gpu_status(nvml: Any, index: int = 0) -> tuple[dict[str, Any] | None, str | None]:
    """Read GPU ``index`` (the one A1111 uses) through an initialised NVML module. A value
    the device does not report (temperature or utilisation on a MIG slice) is None."""
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if count <= index:
            return None, f"NVML sees {count} GPU(s)"
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
    except nvml.NVMLError as exc:
        return None, f"NVML could not read GPU {index}: {exc}"
    util = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    mem = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    return {
        "index": index,
        "count": count,
        "name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
        "temperature_c": _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
        "temperature_slowdown_c": _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperatureThreshold(
            handle, nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))),
        "utilization_percent": None if util is None else int(util.gpu),
        "memory_busy_percent": None if util is None else int(util.memory),
        "memory_total_mb": None if mem is None else round(mem.total / _MIB),
        "memory_used_mb": None if mem is None else round(mem.used / _MIB),
        "memory_free_mb": None if mem is None else round(mem.free / _MIB),
    }, None


def _optional(nvml: Any, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except nvml.NVMLError:
        return None
