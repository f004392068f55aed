"""The synthetic interleaved data engine: span sampling, batched generation, the sharded job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_speech.data.default_corpus import default_documents
from megatron_speech.jobs import CRASH_AFTER_DOCS_ENV
from megatron_speech.synthesis.generate import filtered_probabilities
from megatron_speech.synthesis.spans import SpanConfig, sample_spans, split_document, word_offsets
from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.testing.tiny import SYNTHETIC_RATE, tts_records

REPO = Path(__file__).resolve().parents[1]


# ---- span sampling ---------------------------------------------------------------------------


def _corpus(count: int = 400) -> list[tuple[str, str]]:
    return [(f"doc-{i}", text) for i, text in enumerate(default_documents()[:count])]


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.4])
def test_span_fraction_matches_eta_over_a_corpus(ratio):
    config = SpanConfig(ratio=ratio)
    words = speech = 0
    lengths = []
    for doc_id, text in _corpus():
        spans = sample_spans(text, doc_id, config)
        words += len(word_offsets(text))
        speech += sum(b - a for a, b in spans)
        lengths += [b - a for a, b in spans]
    assert abs(speech / words - ratio) < 0.01, speech / words
    assert 8.0 < np.mean(lengths) < 12.0  # Poisson, mean 10, clipped by short documents


def test_spans_lie_on_word_boundaries_without_overlap():
    config = SpanConfig(ratio=0.4, mean_words=3)
    for doc_id, text in _corpus(200):
        spans = sample_spans(text, doc_id, config)
        assert all(a < b for a, b in spans)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:])), "spans must be separated by text"
        pieces = split_document(text, spans)
        assert "".join(p.text for p in pieces) == text
        offsets = word_offsets(text)
        speech = [p.text for p in pieces if p.speech]
        assert speech == [text[offsets[a][0]: offsets[b - 1][1]] for a, b in spans]
        assert all(s == s.strip() and s for s in speech)


def test_spans_depend_only_on_seed_and_document_id():
    config = SpanConfig()
    corpus = _corpus(100)
    forward = {doc_id: sample_spans(text, doc_id, config) for doc_id, text in corpus}
    # another sharding: every fourth document, in reverse order
    for doc_id, text in reversed(corpus[1::4]):
        assert sample_spans(text, doc_id, config) == forward[doc_id]
    reseeded = {doc_id: sample_spans(text, doc_id, SpanConfig(seed=1)) for doc_id, text in corpus}
    assert reseeded != forward


def test_short_documents_and_extreme_ratios():
    assert sample_spans("one two three", "a", SpanConfig(ratio=0.0)) == []
    assert sample_spans("one two three", "a", SpanConfig(ratio=1.0)) == [(0, 3)]
    assert sample_spans("", "a", SpanConfig(ratio=1.0)) == []
    with pytest.raises(ValueError, match="ratio"):
        SpanConfig(ratio=1.5)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(filtered_probabilities(logits, 1.0, 0, 1.0), torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(filtered_probabilities(logits, 1.0, 2, 1.0), torch.tensor([[0.625, 0.375, 0, 0]]))
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 reaches it
    assert torch.allclose(filtered_probabilities(logits, 1.0, 0, 0.7), torch.tensor([[0.625, 0.375, 0, 0]]))
    assert torch.allclose(filtered_probabilities(logits, 1.0, 0, 0.4), torch.tensor([[1.0, 0, 0, 0]]))


def _generate(checkpoint: str, tokenizer_dir: str, texts: list[str], configs: list[dict]) -> list:
    from megatron_speech.synthesis.pipeline import SynthesisConfig, load_generator

    out = []
    for settings in configs:
        config = SynthesisConfig(inputs=["-"], output_dir="-", checkpoint=checkpoint, tokenizer=tokenizer_dir,
                                 generation=settings)
        generator = load_generator(config)
        seeds = list(range(100, 100 + len(texts)))
        out.append([r.codes for r in generator.generate(texts, seeds)])
    return out


def test_batched_generation_equals_one_by_one(t2t):
    work, tokenizer_dir, tokenizer = t2t
    texts = [r["text"] for r in tts_records(tokenizer.codebook_size, 40)[::7]][:12]
    greedy_batched, greedy_single, sampled_batched, sampled_single = run_processes(
        _generate, 1, str(work / "ckpt"), str(tokenizer_dir), texts,
        [{"batch_size": 8, **SYNTHETIC_RATE}, {"batch_size": 1, **SYNTHETIC_RATE},
         {"batch_size": 8, "strategy": "sample", "top_k": 8, "top_p": 0.9, **SYNTHETIC_RATE},
         {"batch_size": 1, "strategy": "sample", "top_k": 8, "top_p": 0.9, **SYNTHETIC_RATE}])[0]
    assert greedy_batched == greedy_single
    assert sampled_batched == sampled_single
    assert sampled_batched != greedy_batched
    # beam search on Megatron-Core's own KV cache: a beam of one is greedy, a beam of 4 does not
    # depend on the batch
    beam_one, beam_batched, beam_single = run_processes(
        _generate, 1, str(work / "ckpt"), str(tokenizer_dir), texts,
        [{"batch_size": 8, "strategy": "beam", "beam_size": 1, **SYNTHETIC_RATE},
         {"batch_size": 8, "strategy": "beam", "beam_size": 4, **SYNTHETIC_RATE},
         {"batch_size": 1, "strategy": "beam", "beam_size": 4, **SYNTHETIC_RATE}])[0]
    assert [b for g, b in zip(greedy_batched, beam_one) if g is not None] == [g for g in greedy_batched if g is not None]
    assert beam_batched == beam_single
    accepted = [c for c in greedy_batched if c is not None]
    assert len(accepted) >= len(texts) // 2, greedy_batched  # the model learned to end its spans


# ---- beam search --------------------------------------------------------------------------

PAD, STOP, S, A, B, C, D, E = range(8)


class _CacheMarkovModel(torch.nn.Module):
    """A second-order Markov chain over 8 ids that reads the previous id from Megatron-Core's static
    KV cache, as attention does: a beam search that reordered its rows but not the cache would read
    another hypothesis's history. After the prompt's ``S``: ``a`` 0.5, ``b`` 0.45; ``a`` is followed
    by ``c`` 0.32 and ``d``/``e`` 0.29 each, ``b`` by ``c`` 0.95; ``c`` after ``b`` ends (0.99), after ``a``
    goes on to ``e`` (0.9), and ``e`` ends (0.9). Greedy takes a c e <stop> (p 0.12); the best
    span is b c <stop> (p 0.42)."""

    pre_process = post_process = True

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        table = torch.full((8, 8, 8), 1e-4)
        table[:, :, STOP] = 0.5  # anything not listed below ends
        table[:, S] = torch.tensor([1e-4, 0.02, 1e-4, 0.5, 0.45, 0.01, 0.01, 0.01])
        table[S, A] = torch.tensor([1e-4, 0.1, 1e-4, 1e-4, 1e-4, 0.32, 0.29, 0.29])
        table[S, B] = torch.tensor([1e-4, 0.01, 1e-4, 1e-4, 1e-4, 0.95, 0.02, 0.02])
        table[B, C] = torch.tensor([1e-4, 0.99, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 0.01])
        table[A, C] = torch.tensor([1e-4, 0.05, 1e-4, 1e-4, 1e-4, 1e-4, 0.05, 0.9])
        table[:, E] = torch.tensor([1e-4, 0.9, 1e-4, 0.02, 0.02, 0.02, 0.02, 0.02])
        self.register_buffer("log_table", (table / table.sum(-1, keepdim=True)).log())

    def forward(self, tokens, positions, mask, inference_context, runtime_gather_output=True):
        context = inference_context
        if 1 not in context.key_value_memory_dict:
            shape = (context.max_sequence_length, context.max_batch_size, 1, 1)
            context.key_value_memory_dict[1] = (torch.zeros(shape), torch.zeros(shape))
        keys = context.key_value_memory_dict[1][0]
        start, end = context.sequence_len_offset, context.sequence_len_offset + tokens.shape[1]
        keys[start:end, :, 0, 0] = tokens.T.float()
        previous = keys[end - 2, :, 0, 0].long() if end >= 2 else torch.full((tokens.shape[0],), PAD)
        return self.log_table[previous, tokens[:, -1]][:, None, :]


def _beam(prompts, beam, max_new=6, min_new=0, length_penalty=1.0):
    from megatron_speech.models.decoding import beam_search_batch

    allowed = torch.ones(8, dtype=torch.bool)
    allowed[[PAD, S]] = False
    return beam_search_batch(_CacheMarkovModel(), prompts, [max_new] * len(prompts), [min_new] * len(prompts),
                             beam, allowed, STOP, PAD, 8, length_penalty)


def test_beam_search_finds_the_likelier_span_that_greedy_misses():
    from megatron_speech.models.decoding import decode_batch, greedy

    greedy_ids = decode_batch(_CacheMarkovModel(), [[S]], [6], greedy(), (STOP,), PAD, 8)
    assert greedy_ids == [[A, C, E, STOP]]
    assert _beam([[S]], 1) == [[A, C, E, STOP]]  # a beam of one is greedy
    assert _beam([[S]], 2) == [[B, C, STOP]]  # needs the cache reordered: c ends only after b
    assert _beam([[S]], 2, length_penalty=0.0) == [[B, C, STOP]]


def test_beam_search_rows_do_not_depend_on_the_batch_and_bounds_hold():
    prompts = [[S], [D, D, S], [E, S]]  # unequal prompts start generating at different steps
    alone = [_beam([p], 3)[0] for p in prompts]
    assert _beam(prompts, 3) == alone == [[B, C, STOP]] * 3
    assert all(len(ids) - 1 >= 3 for ids in _beam(prompts, 3, min_new=3))  # <stop> barred before 3 ids
    assert _beam([[S]], 2, max_new=2) == [[B, C]]  # nothing ended in time: the best, without <stop>


def test_beam_settings_change_a_jobs_fingerprint_only_under_beam_search():
    from megatron_speech.synthesis.generate import GenerationConfig

    assert GenerationConfig().signature() == GenerationConfig(beam_size=8, length_penalty=0.5).signature()
    assert "beam_size" not in GenerationConfig(strategy="sample").signature()
    assert GenerationConfig(strategy="beam").signature() != GenerationConfig(strategy="beam", beam_size=8).signature()
    with pytest.raises(ValueError, match="beam_size"):
        GenerationConfig(strategy="beam", beam_size=0)


# ---- the sharded job, through the tool -------------------------------------------------------


def _job_config(t2t, tmp_path, corpus: Path, output: str, **extra) -> Path:
    work, tokenizer_dir, _ = t2t
    values = {"inputs": [str(corpus)], "output_dir": str(tmp_path / output), "checkpoint": str(work / "ckpt"),
              "tokenizer": str(tokenizer_dir), "chunk_bytes": 3000, "documents_per_batch": 8,
              "spans": {"ratio": 0.3, "mean_words": 4}, "generation": SYNTHETIC_RATE, **extra}
    path = tmp_path / f"{output}.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def _tool(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "synthesize_interleaved.py"), "--config", str(config),
                           *args], capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})


def _parts(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((output / "parts").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth_corpus") / "corpus.jsonl"
    docs = [" ".join(d.split()[:40]) for d in default_documents()[1000:1060]]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    return path


@pytest.fixture(scope="module")
def reference(t2t, corpus, tmp_path_factory):
    """One uninterrupted run, one shard, finalized into indexed binaries."""
    tmp = tmp_path_factory.mktemp("synth_ref")
    config = _job_config(t2t, tmp, corpus, "ref", indexed_prefix=str(tmp / "indexed"))
    assert _tool(config).returncode == 0
    result = _tool(config, "--finalize")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "ref", tmp / "indexed", json.loads(result.stdout)


def test_records_interleave_every_document_once(reference, corpus, t2t):
    output, _, stats = reference
    tokenizer = t2t[2]
    source = {json.loads(line)["id"]: json.loads(line)["text"] for line in corpus.read_text().splitlines()}
    records = [json.loads(line) for part in _parts(output).values() for line in part.decode().splitlines()]
    assert [r["id"] for r in records] == list(source)
    audio_spans = 0
    for record in records:
        segments = record["segments"]
        kinds = ["audio" if "audio" in s else "text" for s in segments]
        assert all(a != b or a == "audio" for a, b in zip(kinds, kinds[1:])), "adjacent text segments are joined"
        audio_spans += kinds.count("audio")
        for seg in segments:
            if "audio" in seg:
                assert seg["audio"] and all(0 <= c < tokenizer.codebook_size for c in seg["audio"])
            else:
                assert seg["text"] in source[record["id"]]
    assert audio_spans == stats["spans"] - stats["rejected"] > 0
    assert stats["documents"] == len(source) and 0.2 < stats["eta"] <= 0.4
    assert stats["speech_tokens"] == sum(len(s["audio"]) for r in records for s in r["segments"] if "audio" in s)


def test_finalize_builds_indexed_binaries(reference, t2t):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    _, indexed, stats = reference
    tokenizer = t2t[2]
    dataset = IndexedDataset(str(indexed))
    assert len(dataset) == stats["documents"]
    ids = np.concatenate([dataset[i] for i in range(len(dataset))])
    assert (ids == tokenizer.boa).sum() == (ids == tokenizer.eoa).sum() == stats["spans"] - stats["rejected"]
    assert np.isin(ids, np.arange(tokenizer.audio_offset, tokenizer.audio_offset + tokenizer.codebook_size)).sum() \
        == stats["speech_tokens"]


@pytest.mark.slow
def test_shards_cover_the_corpus_like_one_job(reference, t2t, corpus, tmp_path):
    config = _job_config(t2t, tmp_path, corpus, "sharded")
    for index in range(3):
        result = _tool(config, "--shard-index", str(index), "--num-shards", "3")
        assert result.returncode == 0, result.stderr[-3000:]
    assert _parts(tmp_path / "sharded") == _parts(reference[0])


@pytest.mark.slow
def test_killed_shard_is_redone_byte_identically(reference, t2t, corpus, tmp_path):
    config = _job_config(t2t, tmp_path, corpus, "killed")
    crashed = _tool(config, env={CRASH_AFTER_DOCS_ENV: "20"})
    assert crashed.returncode == 17
    parts = tmp_path / "killed" / "parts"
    assert list(parts.glob("*.tmp")), "the crash should leave a partial part"
    assert _tool(config, "--finalize").returncode != 0  # incomplete: refused
    assert _tool(config).returncode == 0
    assert _parts(tmp_path / "killed") == _parts(reference[0])
    assert not list(parts.glob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in parts.iterdir()}
    assert _tool(config).returncode == 0  # a finished shard: nothing is redone
    assert {p: p.stat().st_mtime_ns for p in parts.iterdir()} == before


@pytest.mark.slow
def test_malformed_records_stop_or_are_skipped(t2t, corpus, tmp_path):
    lines = corpus.read_text().splitlines()[:10]
    lines[3] = '{"id": "bad", "text": '  # malformed JSON on line 4
    lines[6] = json.dumps({"id": "empty", "text": "  "})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    result = _tool(_job_config(t2t, tmp_path, bad, "stop", chunk_bytes=1 << 20))
    assert result.returncode != 0 and f"{bad}:4: malformed JSON" in result.stderr
    config = _job_config(t2t, tmp_path, bad, "skip", chunk_bytes=1 << 20, on_error="skip")
    assert _tool(config).returncode == 0
    stats = json.loads(_tool(config, "--finalize").stdout)
    assert stats["documents"] == 8 and stats["skipped_records"] == 2
    report = json.loads((tmp_path / "skip" / "stats.json").read_text())["errors"]
    assert [(e["record"], e["reason"]) for e in report] == [(4, "malformed JSON (Expecting value)"), (7, "empty document")]


@pytest.mark.slow
def test_output_of_another_job_is_not_mixed_in(t2t, corpus, tmp_path):
    assert _tool(_job_config(t2t, tmp_path, corpus, "out", chunk_bytes=1 << 20)).returncode == 0
    other = _job_config(t2t, tmp_path, corpus, "out", chunk_bytes=1 << 20, spans={"ratio": 0.2})
    result = _tool(other)
    assert result.returncode != 0 and "another synthesis job" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("strategy, attempts", [("greedy", 1), ("sample", 3)])
def test_rejected_spans_stay_text(t2t, corpus, tmp_path, strategy, attempts):
    config = _job_config(t2t, tmp_path, corpus, "strict", chunk_bytes=1 << 20,
                         generation={"min_tokens_per_char": 10.0, "strategy": strategy})  # min > max
    assert _tool(config).returncode == 0
    stats = json.loads(_tool(config, "--finalize").stdout)
    assert stats["rejected"] == stats["spans"] > 0 and stats["speech_tokens"] == 0
    assert stats["attempts"] == attempts * stats["spans"]  # sampling tries twice more; greedy would repeat
    source = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    records = [json.loads(line) for line in (tmp_path / "strict" / "parts" / "00000.jsonl").read_text().splitlines()]
    assert [r["segments"] for r in records] == [[{"text": t}] for t in source]


# ---- the WER check ----------------------------------------------------------------------------


class _OracleGenerator:
    """Returns each text's real tokens: a text-to-token model that is exactly right."""

    def __init__(self, tokens_by_text: dict[str, list[int]]) -> None:
        from megatron_speech.synthesis.generate import GenerationConfig

        self.tokens_by_text = tokens_by_text
        self.config = GenerationConfig()

    def generate(self, texts, seeds, voices=None):
        from megatron_speech.synthesis.generate import SpanResult

        self.voices = voices
        return [SpanResult(tuple(self.tokens_by_text[t]), 1) if t in self.tokens_by_text
                else SpanResult(None, 1, "too short") for t in texts]


def test_wer_check_scores_an_exact_model_like_real_tokens():
    from megatron_speech.synthesis.evaluate import evaluate_synthesis
    from test_speech_tokenizer import _model

    speech_model = _model().eval()
    rng = np.random.default_rng(0)
    records = [{"text": text, "speech_tokens": rng.integers(0, 16, 8 + 2 * i).tolist()}
               for i, text in enumerate(["The cat sat.", "a dog ran home", "birds fly south", "it rained"])]
    oracle = _OracleGenerator({r["text"]: r["speech_tokens"] for r in records[:3]})
    report = evaluate_synthesis(oracle, speech_model, records, batch_size=2)
    assert report["spans"] == 4 and report["accepted"] == 3 and report["rejected_reasons"] == ["too short"]
    exact = evaluate_synthesis(oracle, speech_model, records[:3])
    assert exact["synthetic_wer"] == exact["real_tokens_wer"] and exact["synthetic_cer"] == exact["real_tokens_cer"]
    assert exact["synthetic_tokens_per_char"] == exact["real_tokens_per_char"]
    assert exact["wer_gap"] == {"points": 0.0, "ci95": [0.0, 0.0], "sentences": 3}
    assert report["wer_gap"]["sentences"] == 3  # the rejected span's sentence is left out of the pairs
    hyps = speech_model.transcribe_tokens([r["speech_tokens"] for r in records[:3]])
    assert [e["transcript"] for e in exact["examples"]] == hyps
    assert [e["text"] for e in exact["examples"]] == ["the cat sat", "a dog ran home", "birds fly south"]


def test_the_gap_to_real_tokens_is_the_difference_of_the_wers_with_an_interval_over_sentences():
    from nemo.collections.asr.metrics.wer import word_error_rate

    from megatron_speech.synthesis.evaluate import wer_gap

    refs = ["the cat sat on the mat", "a dog ran home", "birds fly south", "it rained all day", ""] * 8
    synthetic = ["the cat sat on a mat", "a dog ran", "words fly south", "it rained all day", "uh"] * 8
    real = ["the cat sat on the mat", "a dog ran home", "birds fly south", "it rained all day", ""] * 8
    real[2] = "birds fly"  # real tokens lose a word in one sentence
    gap = wer_gap(synthetic, real, refs)
    said = [i for i, r in enumerate(refs) if r]  # the empty references: the synthetic "uh" is 8 insertions
    expected = 100 * (word_error_rate([synthetic[i] for i in said], [refs[i] for i in said])
                      - word_error_rate([real[i] for i in said], [refs[i] for i in said])) + 100 * 8 / 136
    assert gap["points"] == pytest.approx(expected) and gap["sentences"] == 40
    low, high = gap["ci95"]
    assert 0 < low < gap["points"] < high  # every sentence but one loses words synthetic: above 0 in every draw
    assert wer_gap(synthetic, real, refs) == gap  # seeded
    more = wer_gap(synthetic[:5] * 80, real[:5] * 80, refs[:5] * 80)["ci95"]
    assert more[1] - more[0] < (high - low) / 2  # ten times the sentences: about a third the width


def test_each_span_is_spoken_in_the_voice_it_is_given(speech_tokenizer, monkeypatch):
    from megatron_speech.synthesis.generate import GenerationConfig, SpanGenerator

    generator = SpanGenerator(torch.nn.Linear(1, 1), speech_tokenizer, GenerationConfig(voice="flite:slt"))
    tok = speech_tokenizer
    assert generator.prompt("the cat", "espeak:en-gb") == [tok.eod, *tok.tokenize("[espeak:en-gb] the cat"), tok.boa]
    assert generator.prompt("the cat") == [tok.eod, *tok.tokenize("the cat"), tok.boa]
    seen = []
    monkeypatch.setattr(generator, "decode", lambda prompts, max_new, seeds, min_new=None: seen.extend(prompts) or [[]] * len(prompts))
    generator.generate(["a dog", "the cat"], [0, 1])
    generator.generate(["a dog", "the cat"], [0, 1], voices=["awb", "rms"])
    assert sorted(seen) == sorted([generator.prompt("a dog", "flite:slt"), generator.prompt("the cat", "flite:slt"),
                                   generator.prompt("a dog", "awb"), generator.prompt("the cat", "rms")])


def test_the_wer_check_speaks_each_text_in_its_records_voice():
    from megatron_speech.synthesis.evaluate import evaluate_synthesis
    from test_speech_tokenizer import _model

    speech_model = _model().eval()
    records = [{"id": "a", "text": "a dog ran home", "speech_tokens": list(range(8)), "speaker": "flite:slt"},
               {"id": "b", "text": "birds fly south", "speech_tokens": list(range(10)), "speaker": "espeak:en-gb"}]
    oracle = _OracleGenerator({r["text"]: r["speech_tokens"] for r in records})
    report = evaluate_synthesis(oracle, speech_model, records, voices_from_records=True)
    assert oracle.voices == ["flite:slt", "espeak:en-gb"]
    assert sorted(report["synthetic_wer_by_voice"]) == ["espeak:en-gb", "flite:slt"]
    with pytest.raises(ValueError, match="record 1 .'b'. has no 'speaker'"):
        evaluate_synthesis(oracle, speech_model, [records[0], {k: v for k, v in records[1].items() if k != "speaker"}],
                           voices_from_records=True)
