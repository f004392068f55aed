"""The built-in small text corpus: the Python documentation's help topics.

The default recipe must run on any fresh machine with no download; CPython ships ``pydoc_data``
(about 460 KB of real English prose, PSF licence) with every install. Each paragraph of each topic
becomes one document, in a fixed order, so the corpus is identical wherever it is built.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def default_documents(min_words: int = 8) -> list[str]:
    from pydoc_data.topics import topics

    documents = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(paragraph.split())
            if len(text.split()) >= min_words:
                documents.append(text)
    return documents


def write_default_corpus(path: str | Path) -> int:
    """Write the corpus as jsonl (atomically); returns the number of documents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    documents = default_documents()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for i, text in enumerate(documents):
            f.write(json.dumps({"id": f"pydoc-{i}", "text": text}) + "\n")
    tmp.replace(path)
    return len(documents)
