"""The compute backend interface shared by every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from autolab.protocol.errors import AutoLabError


@dataclass(frozen=True)
class RunRequest:
    """One experiment run: ``command`` in ``workdir`` within ``timeout`` seconds."""

    command: str
    workdir: Path
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    metric: str = "metric"
    bounds: tuple[float, float] | None = None


@dataclass
class RunResult:
    """How a run ended: ``status`` is ok | crash | timeout | invalid."""

    status: str
    metric: float | None
    metrics: dict[str, float]
    reason: str | None
    runtime_s: float
    log_path: Path | None = None
    returncode: int | None = None
    job_id: str | None = None


class HostError(AutoLabError):
    """This machine cannot run experiments (a full disk, say): not the experiment's
    fault, so its attempt is given back rather than recorded."""


class Backend(ABC):
    """Runs experiment commands. Implementations must never raise for a failed run:
    every outcome, including a crash or a timeout, is a :class:`RunResult`. A fault of
    the host itself raises :class:`HostError`."""

    name: str

    @abstractmethod
    def run(self, request: RunRequest) -> RunResult:
        """Run to completion (or timeout) and classify the outcome."""
