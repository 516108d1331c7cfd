"""Device names as the user writes them (``"auto"``, ``"cpu"``, ``"cuda:1"``), checked."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or any other
    torch device, as a device this machine has.

    Raises:
        ValueError: not a device name, or a CUDA device PyTorch cannot see.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N or auto ({err})"
        ) from err
    if resolved.type == "cpu":
        return torch.device("cpu")  # one CPU device; "cpu:0" would upset safetensors
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index is not None and resolved.index >= count):
            raise ValueError(
                f"device {str(device)!r} requested but PyTorch sees {count} CUDA device(s) here; "
                "use cpu (or auto)"
            )
    return resolved
