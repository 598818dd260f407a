"""The LLM and VLM tool chain, apart from what the detector needs.

- prompt-library generation (``generate``: queries, reply parsing, sentence filters,
  class names, normality rules) writes the files that
  :class:`alfa_ad.prompting.library.LLMPromptSource` reads;
- the vision-language model's second opinion on a scored image (``vlm`` builds and
  asks, ``second_opinion`` runs it on one image or a run's folder).

The detector never imports this package; the CLI and the service do, lazily.
Modules are imported by name (``alfa_ad.llm.generate``), so importing the package
costs nothing.
"""
