"""How a (prompt, context) becomes the model's conditioning text.

The user context goes in the user turn as the user's own requirements (seed 004 App. C.2).
Models without a chat template (base models such as Gemma 3 270M) get the project's plain
template from ``prompts/default_chat_template.jinja``; generation stops when such a model
starts writing the next user turn.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from mipo_engine.resources import read_prompt
from mipo_engine.templates import render

Message = dict[str, str]

DEFAULT_TEMPLATE_NAME = "default_chat_template.jinja"
# The plain template's turn marker: a base model that writes it has finished its answer.
DEFAULT_STOP = ("\nUser:", "\nAssistant:")


def user_turn(prompt: str, context: str | None) -> str:
    """Text of the user turn: the request, followed by the context as the user's requirements."""
    if context is None or not context.strip():
        return prompt
    return render("user_turn_with_context.txt", prompt=prompt, context=context.strip()).strip()


def build_messages(prompt: str, context: str | None = None) -> list[Message]:
    return [{"role": "user", "content": user_turn(prompt, context)}]


@lru_cache(maxsize=1)
def default_chat_template() -> str:
    return read_prompt(DEFAULT_TEMPLATE_NAME)


def has_own_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the plain default template if it has none; True if it was added."""
    if has_own_template(tokenizer):
        return False
    tokenizer.chat_template = default_chat_template()
    return True


def render_chat(tokenizer: Any, messages: list[Message]) -> str:
    """Conditioning text for ``messages`` ending with the assistant's generation prompt."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_plain(messages: list[Message], bos_token: str = "", eos_token: str = "") -> str:
    """The default template rendered without a tokenizer (used for servers we only talk to)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string(default_chat_template())
    return template.render(
        messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
    )
