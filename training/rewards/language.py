"""Language consistency (R1 stage 2): the share of the reasoning's letters written in the target script.

Guards against language mixing in the chain of thought, which the R1 paper saw under RL. Letters are
classified by their Unicode character names (`LATIN SMALL LETTER E WITH ACUTE`, `CJK UNIFIED
IDEOGRAPH-4E2D`, `CYRILLIC CAPITAL LETTER ZHE`); digits, punctuation and symbols are not letters and
do not count. Greek letters count for nothing unless the target is Greek: in mathematics they are
variables (alpha, pi), not a change of language. Reasoning without letters (`7 + 5 = 12.`) mixes no
language and scores 1: scoring it 0 would pay a policy to add words to plain arithmetic. An empty
reasoning block, or none, scores 0: skipping the reasoning earns nothing.
"""

from __future__ import annotations

import functools
import re
import unicodedata

SCRIPTS = {
    "latin": ("LATIN",),
    "cjk": ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"),
    "cyrillic": ("CYRILLIC",),
    "greek": ("GREEK",),
    "arabic": ("ARABIC",),
}
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def language_consistency(response: str, script: str = "latin") -> float:
    """Share of letters inside the first think block that are in `script`; 1.0 for a block without
    letters, 0.0 for an empty block or none."""
    if script not in SCRIPTS:
        raise ValueError(f"script {script!r} is not one of {sorted(SCRIPTS)}")
    m = _THINK.search(response)
    if m is None or not m[1].strip():
        return 0.0
    scripts = [_script(ch) for ch in m[1] if ch.isalpha()]
    counted = [s for s in scripts if s != "greek" or script == "greek"]
    return sum(s == script for s in counted) / len(counted) if counted else 1.0


@functools.lru_cache(maxsize=1 << 16)
def _script(ch: str) -> str:
    words = unicodedata.name(ch, "").replace("-", " ").split()
    return next((name for name, keys in SCRIPTS.items() if any(k in words for k in keys)), "other")
