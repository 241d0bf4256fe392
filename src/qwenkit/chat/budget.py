"""Thinking budget: close Qwen3's reasoning on time so that an answer always follows.

Per the Qwen3 technical report (section 4.3): when thinking reaches the budget, halt it with the
stop-thinking phrase and `</think>`, and let the model continue with the answer. Here it is a
`StepController` the engine runs after every token, forcing those tokens itself; the engine
stays ignorant of Qwen.

Two limits close thinking, whichever comes first:
- the user's budget (`thinking_budget`, or one derived from `reasoning_effort`), after a short
  grace that lets the current sentence end;
- the answer reserve: thinking never eats into the last `answer_reserve(max_tokens)` tokens, so
  `max_tokens` cannot end a response inside thinking with an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qwenkit.errors import BadRequest

STOP_PHRASE = (
    "Considering the limited time by the user, I have to give the solution based on the thinking directly now."
)
GRACE_TOKENS = 32
_SENTENCE_ENDS = (".", "!", "?", "\n", "。", "！", "？")

# reasoning_effort -> thinking budget in tokens (None: no budget beyond the answer reserve).
EFFORT_BUDGETS: dict[str, int | None] = {"low": 512, "medium": 2048, "high": None}


def answer_reserve(max_tokens: int) -> int:
    """Tokens kept for the answer: a quarter of max_tokens, at least 64, at most half."""
    return min(max(64, max_tokens // 4), max_tokens // 2)


MIN_THINKING_TOKENS = 16


def room_to_think(max_tokens: int, closing_len: int) -> bool:
    """Whether `max_tokens` leaves room for some thinking, the closing phrase and the answer."""
    return max_tokens - answer_reserve(max_tokens) - closing_len >= MIN_THINKING_TOKENS


class ThinkingBudget:
    """Forces `\\n\\n<phrase>\\n</think>\\n\\n` once thinking has spent its budget."""

    def __init__(
        self,
        *,
        budget: int | None,
        max_tokens: int,
        closing: Sequence[int],
        think_open: int,
        think_close: int,
        starts_in_thinking: bool,
        token_text: Callable[[int], str],
        grace: int = GRACE_TOKENS,
    ) -> None:
        self.closing = list(closing)
        self.think_open, self.think_close = think_open, think_close
        self.token_text = token_text
        hard_cap = max(0, max_tokens - answer_reserve(max_tokens) - len(self.closing))
        self.soft_limit = hard_cap if budget is None else min(budget, hard_cap)
        self.hard_limit = min(self.soft_limit + grace, hard_cap)
        self.in_thinking = starts_in_thinking
        self.done = False
        self.spent = 0  # reasoning tokens so far

    @property
    def reasoning_token_limit(self) -> int:
        """Reasoning tokens before the closing is forced, for engines that force it natively
        (no grace there: the answer reserve is already taken out of it)."""
        return self.soft_limit

    def after_token(self, generated: Sequence[int]) -> Sequence[int]:
        if self.done:
            return ()
        token = generated[-1]
        if token == self.think_open:
            self.in_thinking = True
        if not self.in_thinking:
            if len(generated) > 1:  # the answer began without thinking: nothing to govern
                self.done = True
            return ()
        if token == self.think_close:
            self.done = True
            return ()
        self.spent += 1
        if self.spent < self.soft_limit:
            return ()
        if self.spent < self.hard_limit and not self.token_text(token).endswith(_SENTENCE_ENDS):
            return ()  # let the sentence finish, within the grace
        self.done = True
        return self.closing


def closing_text() -> str:
    return f"\n\n{STOP_PHRASE}\n</think>\n\n"


def resolve_budget(
    thinking_budget: int | None, reasoning_effort: str | None, efforts: dict[str, int | None] | None = None
) -> tuple[bool | None, int | None]:
    """(thinking override, budget) from the request: effort "none" turns thinking off."""
    if thinking_budget is not None and thinking_budget < 0:
        raise BadRequest("thinking_budget must be >= 0")
    if reasoning_effort is None:
        return None, thinking_budget
    table = efforts or EFFORT_BUDGETS
    if reasoning_effort == "none":
        return False, None
    if reasoning_effort not in table:
        raise BadRequest(f"reasoning_effort must be one of none, {', '.join(table)}")
    effort_budget = table[reasoning_effort]
    if thinking_budget is not None and effort_budget is not None:
        return True, min(thinking_budget, effort_budget)
    return True, thinking_budget if effort_budget is None else effort_budget


def parse_effort_budgets(text: str) -> dict[str, int | None]:
    """`"low=256,medium=1024,high=none"` over the defaults (a server's --reasoning-effort-budgets)."""
    table = dict(EFFORT_BUDGETS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in table or not (value == "none" or value.isdigit()):
            raise BadRequest(f"bad effort budget {item!r}: expected low|medium|high=TOKENS or =none")
        table[name] = None if value == "none" else int(value)
    return table
