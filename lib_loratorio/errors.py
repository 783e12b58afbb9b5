"""Errors a user can act on. Each message names the problem and the fix."""


class LoratorioError(Exception):
    """Base class: anything raised for bad input or an unusable LoRA."""


class InvalidParameterError(LoratorioError, ValueError):
    """A setting has a value outside what is allowed."""


class NonFiniteError(LoratorioError, FloatingPointError):
    """A branch produced NaN or inf; ``who`` names the branch as the message does (e.g. "The base model")."""

    def __init__(self, message: str, who: str = "") -> None:
        super().__init__(message)
        self.who = who


class LoraFileError(LoratorioError):
    """A LoRA file cannot be read (missing, not safetensors, corrupt, unknown layout)."""


class LoraMismatchError(LoratorioError):
    """A LoRA file does not fit the loaded model (e.g. an SDXL LoRA on an SD1.5 model)."""
