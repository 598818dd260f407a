"""Prompt learning on a frozen CLIP (PromptAD-style, from normal images only).

``alfa-ad learn-prompts`` learns normal and abnormal context vectors per class
(:mod:`.context`), from features of the normal shots and of synthetic defects made
on them (:mod:`.synthetic`, :mod:`.features`), with the losses of :mod:`.losses`,
in the loop of :mod:`.train`.  What it writes is read back as a prompt source by
:mod:`alfa_ad.prompting.learned`.  See docs/method.md, "Learned prompts".
"""

from .train import LearnConfig, learn_class, learn_prompts

__all__ = ["LearnConfig", "learn_class", "learn_prompts"]
