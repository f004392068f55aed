"""A SentencePiece model of the training transcripts, for a subword CTC head.

Why: with characters, a small corpus spends most word errors on English spelling ("serfisse" for
"surface"); with subword units the ASR head can learn frequent words whole. NeMo trains the model
(``create_spt_model``, unigram by default) and loads it (``SentencePieceTokenizer``); this module only
picks the text and makes the result appear atomically, once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MODEL_FILE = "tokenizer.model"


def train_subword_model(manifest: str | Path, vocab_size: int, out_dir: str | Path,
                        model_type: str = "unigram") -> Path:
    """The SentencePiece model of ``manifest``'s transcripts in ``out_dir`` (trained unless it is there)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out_dir = Path(out_dir)
    if (out_dir / MODEL_FILE).exists():
        return out_dir / MODEL_FILE
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    texts = tmp / "transcripts.txt"
    texts.write_text("".join(json.loads(line)["text"] + "\n"
                             for line in Path(manifest).read_text().splitlines() if line.strip()))
    create_spt_model(str(texts), vocab_size, sample_size=-1, do_lower_case=False, tokenizer_type=model_type,
                     output_dir=str(tmp))
    os.replace(tmp, out_dir)
    return out_dir / MODEL_FILE
