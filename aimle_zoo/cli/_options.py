"""Reusable option types and parsers shared by the commands."""

from __future__ import annotations

import json
from typing import Any

import typer


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["k=3", "ties=exact"]`` -> ``{"k": 3, "ties": "exact"}``; values are JSON if valid."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params
