"""The text A2R sends and reads back: the synthesizer template, chat rendering and the answer part of a path.

Inference (`programs.synthesizer`) and RL data building (`rl`) both render prompts here, so the model is
trained on exactly the prompt it is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THINK_START, THINK_END = "<think>", "</think>"  # Qwen3 / R1 thinking delimiters

# The paper's synthesizer template (section 3.2), word for word; references are tagged <referenceI>.
SYNTHESIZER_TEMPLATE = (
    "Instruction: You can solve the problem using the provided references, or you can choose to find a new "
    "solution. The final answer should be placed in \\boxed{{}}.\n"
    "Query: {query}\n"
    "Reference: {references}"
)


@dataclass(frozen=True)
class AnswerPart:
    """A path's answer part A_i and whether it had to fall back because no `</think>` closed the trace."""

    text: str
    fallback: bool


def answer_part(path_text: str) -> AnswerPart:
    """Split A_i off a path: the text after the last `</think>`.

    Fallback, flagged: a path with no `</think>` (truncated mid-thought, or a model that does not think) keeps
    its whole text, minus a leading `<think>`. A long fallback is cut to fit later by `fit_references`, which
    keeps the end of each reference, where a conclusion would be.
    """
    _, sep, tail = path_text.rpartition(THINK_END)
    if sep:
        return AnswerPart(tail.strip(), fallback=False)
    return AnswerPart(path_text.removeprefix(THINK_START).strip(), fallback=True)


def split_thinking(text: str) -> tuple[str, str]:
    """(the thinking, the rest) of a reply; a reply that never closed its thought is all thinking."""
    thinking, sep, rest = text.partition(THINK_END)
    if not sep:
        return text.removeprefix(THINK_START).strip(), ""
    return thinking.strip().removeprefix(THINK_START).strip(), rest.strip()


def format_references(answer_parts: list[str]) -> str:
    return "".join(f"<reference{i}>{a}</reference{i}>" for i, a in enumerate(answer_parts, start=1))


def synthesizer_query(query: str, answer_parts: list[str]) -> str:
    """Q' = template(Q, R_ref): the user turn the synthesizer sees."""
    return SYNTHESIZER_TEMPLATE.format(query=query, references=format_references(answer_parts))


def chat_prompt(tokenizer: Any, user_text: str | Sequence[dict[str, str]], thinking: bool = True) -> str:
    """Render one user turn (or a whole conversation of role/content messages) with the model's own chat
    template, ready for the assistant to answer.

    The model's template (not a frontend-side guess) decides how thinking starts, e.g. Qwen3 opens
    `<think>` itself while R1-style templates put it in the prompt. `enable_thinking` is ignored by
    templates that do not know it.
    """
    messages = [{"role": "user", "content": user_text}] if isinstance(user_text, str) else list(user_text)
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=thinking,
    )
