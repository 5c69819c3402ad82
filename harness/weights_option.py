"""``NAME=PATH``: point a registered model at a local weights file (pytest and CLI option)."""

from __future__ import annotations

from pathlib import Path


def parse_weights_option(text: str) -> tuple[str, Path]:
    """Split ``NAME=PATH``; raise ``ValueError`` with the expected form."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"--claims-weights expects NAME=PATH (e.g. arena-attn-only-2l=attn_only_2L_half.pth), got {text!r}")
    return name.strip(), Path(path.strip()).expanduser()


def apply_weights_option(text: str) -> None:
    """Register the override; unknown models and missing files are ``ValueError``s naming them."""
    from fixtures.registry import set_weights_override

    name, path = parse_weights_option(text)
    try:
        set_weights_override(name, path)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
