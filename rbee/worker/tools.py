"""Tool calls on a worker: how the model is told which functions it may call, and the grammar that holds its
answer to a call of one of them (or, when a call is not required, to text that is plainly not one).

A call is the JSON object `{"name": ..., "arguments": {...}}`, whatever the model's own template would have
used: the grammar makes every model write it the same way, and the queen turns it into the client's shape
(OpenAI's tool_calls). Text answers may not begin with "{", which is what tells the two apart.
"""

from __future__ import annotations

import json

from rbee.api.calls import Constraint
from rbee.api.wire import ChatMessage


def instructions(constraint: Constraint) -> ChatMessage:
    """A system message that lists the tools and how to call one."""
    listed = [
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters} for tool in constraint.tools
    ]
    when = "You must call one of them." if constraint.required else "Call one when it helps; otherwise answer."
    return ChatMessage(
        role="system",
        content=(
            f"You can call these functions: {json.dumps(listed)}. {when} To call a function, answer with only "
            'a JSON object {"name": <function name>, "arguments": <its arguments>}.'
        ),
    )


def with_instructions(messages: tuple[ChatMessage, ...], constraint: Constraint) -> tuple[ChatMessage, ...]:
    """The chat with the tools described: inside the first system message when there is one (most templates
    take only one), else in a system message of its own before the rest."""
    told = instructions(constraint)
    if messages and messages[0].role == "system":
        first = messages[0].model_copy(update={"content": f"{messages[0].content or ''}\n\n{told.content}"})
        return (first, *messages[1:])
    return (told, *messages)


def grammar(constraint: Constraint) -> str:
    """llguidance's Lark grammar for a tool-call answer: a call, or (not required) text not starting with "{"."""
    # No free whitespace inside the call: a small model may otherwise pad it with blanks until max_tokens.
    schema = {**constraint.call_schema(), "x-guidance": {"whitespace_flexible": False}}
    call = "call: %json " + json.dumps(schema)
    if constraint.required:
        return f"start: call\n{call}\n"
    return f"start: call | text\n{call}\ntext: /[^{{\\s][\\s\\S]*/\n"
