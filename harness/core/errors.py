"""Errors that name where in which file the problem is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A 1-based position in a text file."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a claim file: where, which key, and the rule it breaks."""

    location: Location
    key: str
    message: str

    def __str__(self) -> str:
        where = f" [{self.key}]" if self.key else ""
        return f"{self.location}:{where} {self.message}"


class SpecError(Exception):
    """A claim file (or several) is invalid; ``issues`` lists every problem found.

    The message is one line per issue, ``file:line:column: [key] rule``, so editors and
    terminals can jump to it.
    """

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class ModelUnavailable(Exception):
    """The weights of a model cannot be had here; ``reason`` says which and how to supply them."""

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(f"model {model!r} unavailable: {reason}")


class WeightsIntegrityError(Exception):
    """A weights file is not what it must be: an error, never a skip.

    Raised when the file's sha256 differs from the pinned one, when it cannot be read
    (truncated, corrupt, not safetensors nor a PyTorch state dict), or when its tensors do not
    fit the model's config. ``path`` names the file; ``reason`` says what is wrong.
    """

    def __init__(self, model: str, path: str, reason: str) -> None:
        self.model = model
        self.path = path
        self.reason = reason
        super().__init__(f"model {model!r}: weights file {path}: {reason}")


class TokenizerUnavailable(ModelUnavailable):
    """The model is here but its tokenizer is not, and the claim's inputs are text: a skip.

    ``reason`` says which tokenizer and how to supply it (a local file or folder, the Hugging
    Face cache, or the download opt-in).
    """

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(model, reason)
        Exception.__init__(self, f"model {model!r}: its tokenizer is unavailable: {reason}")
