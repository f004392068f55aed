"""Text for speech: the shared normalisation (what ASR losses and WER see) and the WordNet sentences
the synthetic corpus speaks.

WordNet 3.0's example sentences (Debian ``wordnet-base``; WordNet licence, Princeton University,
free to use with attribution) are about 30,000 real English sentences, offline.
"""

from __future__ import annotations

import re
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
_SENTENCE = re.compile(r"[A-Za-z][A-Za-z' ,]*[A-Za-z]")


def normalize_text(text: str) -> str:
    """What the ASR loss sees: lower case, letters, apostrophes and single spaces."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def wordnet_sentences(min_words: int, max_words: int, wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """WordNet's quoted usage examples that are plain words, in a fixed (sorted) order."""
    files = sorted(wordnet_dir.glob("data.*"))
    if not files:
        raise FileNotFoundError(f"no WordNet data files in {wordnet_dir}; install Debian's wordnet-base")
    found = set()
    for path in files:
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # licence header
            for quoted in re.findall(r'"([^"]*)"', line):
                if _SENTENCE.fullmatch(quoted) and min_words <= len(quoted.split()) <= max_words:
                    found.add(quoted)
    return sorted(found)
