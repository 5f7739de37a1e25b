"""The ``llm`` proposer: asks a chat model for one experiment at a time.

Talks to any OpenAI-compatible chat endpoint through ``huggingface_hub``'s
``InferenceClient``: a ``base_url`` (a local server), or a ``provider`` and a model
(hosted inference). The prompt is :mod:`autolab.agents.proposers.context`'s; the
answer must be one JSON object with a hypothesis and a unified diff
(:mod:`autolab.agents.proposers.answers`).

An answer that cannot be used (not JSON, a diff that does not apply, a path the lab
protects, a change already tried) goes back to the model with the reason, at most
``[llm] retries`` times; then the proposal is recorded as refused (a failed
experiment holding the reason), so its cost and the reason stay in the lab and later
prompts show it. A call that times out or is rate-limited is retried (honouring
``Retry-After``); an endpoint that stays unreachable ends the round with
:class:`LlmUnavailable` after recording what was already spent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from autolab.agents.events import WARNING, emit
from autolab.agents.proposers.answers import AnswerError, parse_answer
from autolab.agents.proposers.base import Outcome
from autolab.agents.proposers.context import LabContext, build_context, render
from autolab.protocol.errors import AutoLabError, PatchError
from autolab.protocol.patch_judge import judge_patch
from autolab.protocol.patches import normalized_hash
from autolab.protocol.transactions import Proposal

if TYPE_CHECKING:
    from autolab.protocol.config import LlmConfig
    from autolab.protocol.lab import Lab
    from autolab.protocol.reader import LabView

SYSTEM = ("You are an ML researcher running experiments in a shared lab. You propose one "
          "small, testable change at a time and answer with JSON only.")
CALL_ATTEMPTS = 4  # per model call: timeouts and rate limits retried
MAX_RETRY_AFTER = 120.0  # seconds: a longer Retry-After is cut to this


class LlmUnavailable(AutoLabError):
    """The endpoint could not be reached or kept refusing calls."""


@dataclass
class Spend:
    """Tokens one proposal cost, over every call made for it."""

    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def usd(self, config: LlmConfig) -> float | None:
        if not (config.usd_per_mtok_in or config.usd_per_mtok_out):
            return None
        return (self.prompt_tokens * config.usd_per_mtok_in
                + self.completion_tokens * config.usd_per_mtok_out) / 1e6

    def origin(self, config: LlmConfig) -> dict[str, Any]:
        return {"proposer": "llm", "model": self.model, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "llm_usd": self.usd(config)}


@dataclass
class LlmProposer:
    """Proposes with a chat model configured by ``config`` (``[llm]`` plus flags).

    ``chat`` defaults to an ``InferenceClient``'s ``chat_completion``; ``sleep`` is how
    it waits out a rate limit.
    """

    config: LlmConfig
    say: Callable[[str], None] = print
    name: str = "llm"
    sleep: Callable[[float], None] = time.sleep
    _client: Any = field(default=None, repr=False)

    def client(self) -> Any:
        if self._client is None:
            from huggingface_hub import InferenceClient

            key = os.environ.get(self.config.api_key_env) or None
            if self.config.base_url:
                self._client = InferenceClient(base_url=self.config.base_url, api_key=key,
                                               timeout=self.config.timeout)
            else:
                self._client = InferenceClient(provider=self.config.provider,  # type: ignore[arg-type]
                                               api_key=key, timeout=self.config.timeout)
        return self._client

    def propose(self, lab: Lab, view: LabView, count: int) -> list[Outcome]:
        """Up to ``count`` outcomes, one conversation each, built on ``view``."""
        ctx = build_context(lab, view)
        tried = view.state.patch_hashes()
        outcomes: list[Outcome] = []
        for _ in range(count):
            outcome = self._converse(lab, view, ctx, tried)
            outcomes.append(outcome)
            if outcome.refused is None:
                tried.add(normalized_hash(outcome.proposal.patch))
                ctx.running.append(outcome.proposal.hypothesis)
        return outcomes

    def _converse(self, lab: Lab, view: LabView, ctx: LabContext, tried: set[str]) -> Outcome:
        messages: list[dict[str, str]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": render(ctx, self.config.context_chars)}]
        spend = Spend(model=self.config.model)
        last = Proposal(hypothesis="(no usable answer)", patch="", priority=1.0)
        reason = "no answer"
        for turn in range(self.config.retries + 1):
            try:
                text = self._call(messages, spend)
            except LlmUnavailable as exc:
                if spend.prompt_tokens or spend.completion_tokens or turn:
                    # Calls were paid for: keep them in the lab, then stop the round.
                    return Outcome(replace(last, origin=spend.origin(self.config)),
                                   refused=f"the model stopped answering: {exc}")
                raise
            try:
                answer = parse_answer(text)
                last = Proposal(answer.hypothesis, answer.diff)
                judge_patch(lab.store, view.main, answer.diff, view.config)
                if normalized_hash(answer.diff) in tried:
                    raise AnswerError("this change was already tried or is queued: "
                                      "propose a different one")
            except (AnswerError, PatchError) as exc:
                reason = str(exc)
                emit(self.say, "llm_refused", f"answer {turn + 1} refused: {reason}",
                     level=WARNING, reason=reason, turn=turn + 1)
                messages += [{"role": "assistant", "content": text},
                             {"role": "user", "content": f"Refused: {reason}\nReply again "
                              "with one JSON object, fixing that."}]
                continue
            known = {i["id"] for i in ctx.ideas}
            return Outcome(replace(last, origin=spend.origin(self.config)),
                           rationale=answer.rationale,
                           idea=answer.idea if answer.idea in known else None)
        return Outcome(replace(last, origin=spend.origin(self.config)),
                       refused=f"after {self.config.retries + 1} answers: {reason}")

    def _call(self, messages: list[dict[str, str]], spend: Spend) -> str:
        """One completion (retrying timeouts and rate limits); adds its tokens to ``spend``."""
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        unreachable = _transport_errors()

        problem = ""
        for attempt in range(CALL_ATTEMPTS):
            try:
                out = self.client().chat_completion(
                    messages, model=self.config.model, max_tokens=self.config.max_tokens,
                    temperature=self.config.temperature)
            except InferenceTimeoutError:
                problem = f"timed out after {self.config.timeout:g}s"
                wait = 2.0 ** attempt
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                problem = f"HTTP {status}: {str(exc).splitlines()[0][:200]}"
                if status == 429 or (status is not None and status >= 500):
                    wait = _retry_after(exc.response) or 2.0 ** attempt
                else:
                    raise LlmUnavailable(f"llm: {problem}") from None
            except unreachable as exc:  # a refused connection, DNS
                problem = f"cannot reach the endpoint ({exc})"
                wait = 2.0 ** attempt
            else:
                usage = getattr(out, "usage", None)
                if usage is not None:
                    spend.prompt_tokens += int(usage.prompt_tokens or 0)
                    spend.completion_tokens += int(usage.completion_tokens or 0)
                if getattr(out, "model", None) and not spend.model:
                    spend.model = out.model
                choices = out.choices or []
                content = choices[0].message.content if choices else None
                return content or ""
            if attempt + 1 < CALL_ATTEMPTS:
                emit(self.say, "llm_retry", f"llm call {problem}; retrying in {wait:.0f}s",
                     level=WARNING, reason=problem, wait_s=wait)
                self.sleep(min(wait, MAX_RETRY_AFTER))
        raise LlmUnavailable(f"llm: {problem} ({CALL_ATTEMPTS} attempts)")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a refused connection raises through ``huggingface_hub``'s HTTP client."""
    try:
        import httpx2  # the client huggingface_hub 2.x sends with
    except ImportError:
        return (OSError,)
    return (OSError, httpx2.TransportError)


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
