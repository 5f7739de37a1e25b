"""The ``space`` proposer: one-knob mutations of the current best.

"One hypothesis, one edit, one run": each proposal changes a single knob declared in
``autolab.toml`` away from its value on ``main`` (which holds the current best), and
says in a sentence what it expects.
"""

from __future__ import annotations

import ast
import math
import random
from typing import Any

from autolab.protocol.config import Knob, LabConfig
from autolab.protocol.knobs import format_value, knob_patch, read_knob
from autolab.protocol.patches import normalized_hash
from autolab.protocol.transactions import Proposal

BASELINE_HYPOTHESIS = "baseline: measure main as it is, so that changes have a reference"
SPACE = {"proposer": "space"}


def current_values(config: LabConfig, files: dict[str, str]) -> dict[str, Any]:
    """Each knob's literal value on main (None where it cannot be read)."""
    out: dict[str, Any] = {}
    for name, knob in config.knobs.items():
        text = read_knob(files.get(knob.file, ""), name)
        try:
            out[name] = ast.literal_eval(text) if text is not None else None
        except (ValueError, SyntaxError):
            out[name] = None
    return out


def mutate(knob: Knob, value: Any, rng: random.Random) -> Any:
    """A new value for ``knob`` near ``value`` (never equal to it when avoidable)."""
    if knob.type == "choice":
        others = [c for c in knob.choices if c != value]
        return rng.choice(others) if others else value
    low, high = float(knob.low), float(knob.high)  # type: ignore[arg-type]
    if value is None:
        value = (low + high) / 2
    if knob.type == "int":
        step = max(1, round((high - low) / 8))
        new = int(value) + rng.choice([-2, -1, 1, 2]) * step
        return int(min(high, max(low, new)))
    if knob.log and value > 0:
        new = math.exp(math.log(value) + rng.uniform(-1, 1) * math.log(2.5))
    else:
        new = value + rng.uniform(-1, 1) * (high - low) / 4
    return float(f"{min(high, max(low, new)):.3g}")


# Why a change might help, by what the knob's name says it is (up, down).
_REASONS = (
    (("LR", "LEARNING_RATE"), "larger steps make more progress within the fixed budget",
     "smaller steps make training more stable"),
    (("BATCH",), "larger batches give less noisy gradients",
     "smaller batches fit more optimizer steps into the budget"),
    (("LAYER", "EMBD", "WIDTH", "DEPTH", "HIDDEN", "HEAD"),
     "more capacity can model more of the data",
     "a smaller model trains more steps within the budget"),
    (("BLOCK", "CONTEXT", "SEQ"), "a longer context lets the model see more history",
     "a shorter context makes each step cheaper"),
    (("DROPOUT", "DECAY", "REG"), "more regularization may generalize better",
     "less regularization lets the model fit faster within the budget"),
    (("WARMUP",), "a longer warmup avoids early instability",
     "a shorter warmup spends more of the budget at full learning rate"),
)


def hypothesis(name: str, old: Any, new: Any) -> str:
    """One sentence: the edit, and why it might help."""
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        up = new > old
        why = next((r[1] if up else r[2] for r in _REASONS
                    if any(key in name.upper() for key in r[0])), "it may suit the task better")
        verb = "Raising" if up else "Lowering"
        return f"{verb} {name} from {format_value(old)} to {format_value(new)}: {why}"
    return (f"Switching {name} from {format_value(old)} to {format_value(new)}: it may suit the "
            f"task better")


def propose_space(config: LabConfig, files: dict[str, str], tried: set[str], count: int,
                  *, baseline: bool, rng: random.Random | None = None) -> list[Proposal]:
    """Up to ``count`` new one-knob proposals whose normalized hash is not in ``tried``.

    Args:
        files: the knob files on main (path -> text).
        tried: normalized patch hashes of every experiment that has not failed.
        baseline: also propose the unchanged main first (when nothing is measured yet).
    """
    rng = rng or random.Random()
    out: list[Proposal] = []
    seen = set(tried)
    if baseline and normalized_hash("") not in seen:
        out.append(Proposal(BASELINE_HYPOTHESIS, "", priority=100.0, origin=SPACE))
        seen.add(normalized_hash(""))
    values = current_values(config, files)
    names = [n for n in config.knobs if values.get(n) is not None]
    attempts = 0
    while names and len(out) < count and attempts < count * 20:
        attempts += 1
        name = rng.choice(names)
        new = mutate(config.knobs[name], values[name], rng)
        if new == values[name]:
            continue
        patch = knob_patch(config, files, [f"{name}={new}"])
        digest = normalized_hash(patch)
        if digest in seen:
            continue
        seen.add(digest)
        out.append(Proposal(hypothesis(name, values[name], new), patch, origin=SPACE))
    return out
