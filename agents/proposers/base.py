"""What every proposer hands the planner (DESIGN.md §6: state in, proposals out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from autolab.protocol.transactions import Proposal

if TYPE_CHECKING:
    from autolab.protocol.lab import Lab
    from autolab.protocol.reader import LabView


@dataclass
class Outcome:
    """One proposal attempt's end: a proposal to enqueue, or one to record as refused
    (``refused`` holds the reason; the proposal keeps what was spent on it)."""

    proposal: Proposal
    refused: str | None = None
    rationale: str = ""
    idea: str | None = None  # a recorded idea it builds on (marked used once enqueued)


class Proposer(Protocol):
    """Proposes up to ``count`` experiments on ``view``'s ``main``.

    A proposer reads the lab and may spend (model tokens, an agent's time) but never
    writes to it: the planner enqueues what it returns, or records it as refused.
    """

    name: str

    def propose(self, lab: Lab, view: LabView, count: int) -> list[Outcome]: ...
