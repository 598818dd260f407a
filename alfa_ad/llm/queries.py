"""What generate-prompts asks: the paper's queries, paraphrases, started lists and rules.

A small model asked "list 40 descriptions" answers with one paragraph; given a
*started* numbered list ("1. A bottle with a crack ...\\n2. A bottle with") it
continues the list with a dozen or more sentences.  So each request is one of the
paper's queries (or a paraphrase), the class context, the normality rules as
conditions, and a numbered list we start with one example of ours (never kept
as a prompt) and the head of item 2.  The list goes either at the end of the
user message (``style="chat"``, any chat server) or into the assistant turn
(``style="chatml"``: the conversation rendered with the ChatML template that
Qwen models use and sent to ``/completions``, so the model continues our
assistant text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .classes import article, class_context, query_name
from ..prompting.templates import readable_class_name

__all__ = ["SYSTEM_PROMPT", "Query", "QUERIES", "build_messages", "PARAPHRASES", "STARTERS", "Ask",
           "descriptor_ask", "side_ask", "rule_ask", "STYLES", "render_chatml"]

SYSTEM_PROMPT = (
    "You describe the visual appearance of objects for an image-text model. "
    "Answer with short, concrete visual descriptions, one per line, "
    "with no introduction and no closing remarks."
)
STYLES = ("chat", "chatml")


@dataclass(frozen=True)
class Query:
    """One of the paper's questions (kept for the descriptor query and for reference)."""

    kind: str          # "free" | "abnormal" | "normal" | "descriptors"
    side: str          # "abnormal" | "normal" | "descriptors"
    template: str      # formatted with cls=<readable class name>
    min_words: int = 3

    def text(self, class_name: str) -> str:
        return self.template.format(cls=readable_class_name(class_name))


# The paper's queries (section 4.2, 5.3 "syntactic consistency", 5.4 descriptors).
QUERIES: tuple[Query, ...] = (
    Query("free", "abnormal", "How to identify an abnormal {cls} in an image?"),
    Query("abnormal", "abnormal",
          "How to identify an abnormal {cls} in an image? "
          "State each description beginning with: An abnormal image of {cls}. "
          "Write 10 different short descriptions, one per line."),
    Query("normal", "normal",
          "How to identify a normal {cls} in an image? "
          "State each description beginning with: A normal image of {cls}. "
          "Write 10 different short descriptions, one per line."),
    Query("descriptors", "descriptors",
          "Q: What are useful descriptions for distinguishing an anomaly {cls} in a photo?\n"
          "A: There are several key descriptions to tell there is an anomaly {cls} in a photo:\n-",
          min_words=1),
)


def build_messages(query: Query, class_name: str) -> list[dict[str, str]]:
    """The chat messages for one of the paper's :data:`QUERIES` as written."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": query.text(class_name)}]


# Paraphrases of the paper's two questions; index 0 is the paper's wording.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "abnormal": (
        "How to identify an abnormal {c} in an image?",
        "What does a defective {c} look like in a photo?",
        "Which visible defects can a damaged {c} have?",
        "How can you tell from a photo that {a} {c} is faulty?",
        "Describe the flaws an inspector would see on a bad {c}.",
    ),
    "normal": (
        "How to identify a normal {c} in an image?",
        "What does a flawless {c} look like in a photo?",
        "Describe the appearance of {a} {c} in perfect condition.",
        "How can you tell from a photo that {a} {c} has no defects?",
        "Describe what an inspector sees on a good {c}.",
    ),
}

# Started lists: our example sentence (item 1, never kept) and the head of item 2.
# Index 0 follows the paper's syntactic-consistency form ("An abnormal image of {c} ...").
STARTERS: dict[str, tuple[tuple[str, str], ...]] = {
    "abnormal": (
        ("An abnormal image of {c} with a crack across its surface.", "An abnormal image of {c} with"),
        ("{A} {c} with a deep scratch on its surface.", "{A} {c} with"),
        ("A photo of a damaged {c} that is missing a piece.", "A photo of a damaged {c} that"),
        ("A defective {c} showing a dark stain.", "A defective {c} showing"),
        ("{A} {c} that is bent out of shape.", "{A} {c} that"),
    ),
    "normal": (
        ("A normal image of {c} with a clean, uniform surface.", "A normal image of {c} with"),
        ("{A} {c} with smooth, even edges.", "{A} {c} with"),
        ("A photo of a flawless {c} that has a consistent colour.", "A photo of a flawless {c} that"),
        ("A perfect {c} showing no scratches or marks.", "A perfect {c} showing"),
        ("{A} {c} that is complete and correctly shaped.", "{A} {c} that"),
    ),
}

_WANT = {"abnormal": "one visible defect or abnormality", "normal": "one visible property of a normal, defect-free one"}


def _fill(text: str, name: str) -> str:
    art = article(name)
    return text.format(c=name, a=art, A=art.capitalize())


@dataclass(frozen=True)
class Ask:
    """One request: the question text, our started list, and where the sentences go."""

    side: str                 # "normal" | "abnormal" | "descriptors"
    kind: str                 # "side" | "rule" | "descriptors"
    question: str             # the user text without the started list
    example: str = ""         # item 1 of the started list (ours; never kept)
    head: str = ""            # the open item 2 ("A bottle with")
    rule: str = ""            # the rule a "rule" request is about

    @property
    def started(self) -> str:
        return f"1. {self.example}\n2. {self.head}" if self.head else ""

    def messages(self, style: str) -> list[dict[str, str]]:
        """Chat messages; with ``style="chatml"`` the last one is the assistant's started list."""
        if not self.head:
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.question}]
        if style == "chatml":
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.question},
                    {"role": "assistant", "content": self.started}]
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"{self.question}\nContinue this list:\n{self.started}"}]

    def as_record(self) -> dict[str, Any]:
        out = {"side": self.side, "kind": self.kind, "question": self.question}
        if self.head:
            out.update(example=self.example, head=self.head)
        if self.rule:
            out["rule"] = self.rule
        return out


def render_chatml(messages: list[dict[str, str]]) -> str:
    """ChatML text (Qwen's chat template) of ``messages``, the last assistant turn left open."""
    parts = []
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "assistant" and last:
            parts.append(f"<|im_start|>assistant\n{m['content']}")
        else:
            parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if messages[-1]["role"] != "assistant":
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _context(class_name: str) -> str:
    ctx = class_context(class_name)
    return f"The images show {ctx}. " if ctx else ""


def _rules_text(side: str, name: str, rules: list[str]) -> str:
    if not rules:
        return ""
    listed = "; ".join(rules)
    if side == "normal":
        return f" A normal {name} satisfies all of these rules: {listed}."
    return f" A {name} is abnormal when it breaks any of these rules: {listed}, or when it has a visible defect."


def side_ask(class_name: str, side: str, round_: int, rules: list[str] = (), n_items: int = 20) -> Ask:
    """The ``round_``-th request for one side: paraphrase and starter rotate with the round."""
    name = query_name(class_name)
    paras, starters = PARAPHRASES[side], STARTERS[side]
    para = paras[round_ % len(paras)]
    example, head = starters[(round_ + round_ // len(paras)) % len(starters)]
    question = (f"{_context(class_name)}{_fill(para, name)}{_rules_text(side, name, list(rules))} "
                f"Write a numbered list of {n_items} different one-sentence descriptions of a photo, each naming "
                f"the {name} and describing {_WANT[side]}.")
    return Ask(side, "side", question, _fill(example, name), _fill(head, name))


def rule_ask(class_name: str, side: str, rule: str, n_items: int = 10) -> Ask:
    """A request for prompts derived from one rule: objects that follow it (normal) or break it (abnormal)."""
    name = query_name(class_name)
    art = article(name)
    if side == "normal":
        question = (f"{_context(class_name)}Rule for a normal {name}: {rule}. Write a numbered list of {n_items} "
                    f"different one-sentence descriptions of a photo of a normal {name} that follows this rule.")
        example, head = f"A normal {name} that follows the rule: {rule}.", f"{art.capitalize()} {name} where"
    else:
        question = (f"{_context(class_name)}Rule for a normal {name}: {rule}. Write a numbered list of {n_items} "
                    f"different one-sentence descriptions of a photo of an abnormal {name} that breaks this rule.")
        example, head = f"An abnormal {name} that breaks the rule: {rule}.", f"{art.capitalize()} {name} where"
    return Ask(side, "rule", question, example, head, rule=rule)


def descriptor_ask(class_name: str) -> Ask:
    """The paper's descriptor query (section 5.4), as written."""
    return Ask("descriptors", "descriptors", QUERIES[3].template.format(cls=query_name(class_name)))
