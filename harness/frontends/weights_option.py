"""``NAME=PATH``: point a registered model at a local weights file or a local tokenizer (pytest and CLI options)."""

from __future__ import annotations

from pathlib import Path

from fixtures.registry import set_tokenizer_override, set_weights_override


def parse_name_path(text: str, option: str, example: str) -> tuple[str, Path]:
    """Split ``NAME=PATH`` given to ``option``; raise ``ValueError`` with the expected form (``example``)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"{option} expects NAME=PATH (e.g. {example}), got {text!r}")
    return name.strip(), Path(path.strip()).expanduser()


def parse_weights_option(text: str) -> tuple[str, Path]:
    """Split ``--claims-weights NAME=PATH``; raise ``ValueError`` with the expected form."""
    return parse_name_path(text, "--claims-weights", "arena-attn-only-2l=attn_only_2L_half.pth")


def parse_tokenizer_option(text: str) -> tuple[str, Path]:
    """Split ``--claims-tokenizer NAME=PATH``; raise ``ValueError`` with the expected form."""
    return parse_name_path(text, "--claims-tokenizer", "gpt2-small=gpt2/tokenizer.json")


def apply_weights_option(text: str) -> None:
    """Register the override; unknown models and missing files are ``ValueError``s naming them."""
    name, path = parse_weights_option(text)
    try:
        set_weights_override(name, path)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None


def apply_tokenizer_option(text: str) -> None:
    """Tokenize for model NAME with the local ``tokenizer.json`` or folder PATH; unknown models,
    models that read no Hugging Face tokenizer and missing paths are ``ValueError``s naming them."""
    name, path = parse_tokenizer_option(text)
    try:
        set_tokenizer_override(name, path)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
