"""Every public exception of edgeshrink.

Each error is also a standard-library category (OSError, ValueError, ...) so
callers that do not know edgeshrink can still catch it sensibly, and each
carries a ``hint``: the next step a user should take.  The CLI prints the
message and the hint on one line each and exits 1.
"""

from __future__ import annotations


class EdgeshrinkError(Exception):
    """Base of every error edgeshrink raises on purpose."""

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class ModelFileError(EdgeshrinkError, OSError):
    """A model file is missing, unreadable, truncated or not of the format it claims."""

    default_hint = "check the path and that the file was copied completely"


class ImatrixError(ModelFileError):
    """An importance matrix that is unreadable, or made for another model."""

    default_hint = "compute one for this model with `edgeshrink imatrix MODEL`"


class UnsupportedFormatError(EdgeshrinkError, ValueError):
    """A file or directory of a kind edgeshrink does not handle (yet)."""

    default_hint = "edgeshrink reads .gguf files; see `edgeshrink --help`"


class ProfileError(EdgeshrinkError, ValueError):
    """A hardware profile is unknown or malformed."""

    default_hint = "run `edgeshrink profiles list` to see the known profiles"


class TargetError(EdgeshrinkError, ValueError):
    """A target is unknown or malformed."""

    default_hint = "run `edgeshrink targets list` to see the known targets"


class QuantizationError(EdgeshrinkError, ValueError):
    """A quantization type is unknown, unsupported, or the quantizer failed."""

    default_hint = "run `edgeshrink quant-types` to see the types this llama.cpp supports"


class DoesNotFitError(EdgeshrinkError, ValueError):
    """No candidate fits the device's memory budget."""

    default_hint = "pick a larger device profile, a smaller model, or a shorter --ctx"


class RuntimeMissingError(EdgeshrinkError, ImportError):
    """A runtime (llama-cpp-python, onnxruntime, ...) is not installed where it is needed."""

    default_hint = "pip install 'edgeshrink[gguf]'"


class TransportError(EdgeshrinkError, OSError):
    """Copying to or running on a device failed."""

    default_hint = "check that the device is reachable (`edgeshrink doctor TARGET`)"


class AgentError(EdgeshrinkError, RuntimeError):
    """The on-device agent failed, timed out, was killed or printed no valid result."""

    default_hint = "re-run with EDGESHRINK_DEBUG=1 to see the agent's stderr"


class BenchParamsError(EdgeshrinkError, ValueError):
    """Benchmark parameters that the model cannot run with."""

    default_hint = "see `edgeshrink bench --help`"


class StoreError(EdgeshrinkError, OSError):
    """The results database cannot be opened, migrated or written."""

    default_hint = "check --db / EDGESHRINK_DB: a writable SQLite file or a postgresql:// URL"


class CalibrationError(QuantizationError):
    """Static int8 has no calibration data, or the data does not fit the model's inputs."""

    default_hint = "pass --calibration data.npz whose keys are the model's input names"


class EvalError(EdgeshrinkError, ValueError):
    """An LLM evaluation cannot run as asked (text too short, vocabularies differ, ...)."""

    default_hint = "see `edgeshrink eval --help`"


class EvalDataError(EdgeshrinkError, ValueError):
    """The evaluation inputs or labels do not fit the models."""

    # Not an option name: eval reads them with --inputs, check and sweep with --eval.
    default_hint = "give evaluation inputs (an .npz) whose keys are the model's input names"


class QualityBudgetError(EdgeshrinkError, ValueError):
    """A candidate lost more quality than the budget allows."""

    default_hint = "use a gentler quantization (fp16, per-channel int8, real calibration data)"


class SweepError(EdgeshrinkError, ValueError):
    """A sweep cannot run as asked (its inputs or budget do not fit the model)."""

    default_hint = "see `edgeshrink sweep --help`"


class LabConfigError(EdgeshrinkError, ValueError):
    """An inventory or suite file is unreadable or malformed."""

    default_hint = (
        "targets/lab.toml and lab/suite.toml in the edgeshrink repository show the format"
    )


class LabLockError(EdgeshrinkError, RuntimeError):
    """A device (or a run) is held by another lab run."""

    default_hint = "wait for the other run, or pass --lock-wait SECONDS to wait for it"


class OutputPathError(EdgeshrinkError, OSError):
    """An output file cannot be created where it was asked for."""

    default_hint = "choose another output path (-o PATH) in a directory you can write"


class RecipeError(EdgeshrinkError, ValueError):
    """A recipe names a pass that does not exist, a bad setting, or a pass the format lacks."""

    default_hint = "`edgeshrink shrink --help` lists the passes and their settings"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during work that keeps what it had done (a training checkpoint): the CLI
    says what was kept and how to go on, and exits 130 like any interruption."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
