"""Where ALFA's run-time prompt selection (eq. 4) applies; torch-free, so the detector's
configuration can check it without loading torch (docs/method.md section 2).

* ``global``: the kept prompts give the image-level score (eq. 10); every window is
  compared with every prompt (eq. 11).
* ``all``: the kept prompts give the image-level score and every window's score (the
  paper's literal reading; the ``paper`` preset).
* ``soft``: every prompt weighted by its contextual score ``S_c`` in the image-level
  score; every window compared with every prompt.
* ``off``: every prompt everywhere (no adaptation).  The default: on the mini-CLIP table
  every placement that uses eq. (4) scored below ``off`` (docs/mini_clip.md).
"""

from __future__ import annotations

PLACEMENTS = ("global", "all", "soft", "off")
DEFAULT_PLACEMENT = "off"


def parse_placement(value: "str | bool") -> str:
    """A placement name (``True``/``False``: ``all``/``off``, the earlier boolean option);
    a one-line error otherwise."""
    if value is True or value is False:
        return "all" if value else "off"
    if value not in PLACEMENTS:
        raise ValueError(f"contextual must be one of {', '.join(PLACEMENTS)}, got {value!r}")
    return str(value)
