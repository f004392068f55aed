"""The NeMo speech tokenizer: forward/backward, exact token rate, quantizer upkeep, NeMo checkpoints."""

import json
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from megatron_speech.speech_tokenizer.quantizer import VectorQuantizerEMA

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("nemo.collections.asr", reason="nemo_toolkit[asr] is installed by scripts/setup.sh")


def tiny_config(token_rate: float = 12.5, subsampling_factor: int = 4):
    cfg = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/mini.yaml").model
    cfg.token_rate = token_rate
    cfg.encoder.subsampling_factor = subsampling_factor
    cfg.encoder.update(n_layers=1, d_model=32, n_heads=2, conv_kernel_size=5)
    cfg.post_encoder.update(feat_in=32, n_layers=1, d_model=32, n_heads=2, conv_kernel_size=3)
    cfg.quantizer.update(num_codes=16, dim=8)
    cfg.train_ds = cfg.validation_ds = None
    return cfg


def _model(token_rate: float = 12.5, subsampling_factor: int = 4):
    from megatron_speech.speech_tokenizer.model import SpeechTokenizerModel

    torch.manual_seed(0)
    return SpeechTokenizerModel(tiny_config(token_rate, subsampling_factor))


@pytest.mark.parametrize("token_rate, seconds, tokens, subsampling_factor",
                         [(12.5, 10.0, 125, 4), (12.5, 3.3, 41, 4), (25.0, 10.0, 250, 4), (12.5, 10.0, 125, 8)])
def test_token_rate_is_exact(token_rate, seconds, tokens, subsampling_factor):
    model = _model(token_rate, subsampling_factor).eval()
    samples = int(16000 * seconds)
    codes = model.tokenize(torch.randn(2, samples) * 0.1, torch.tensor([samples, samples // 2]))
    assert [len(c) for c in codes] == [tokens, samples // 2 // int(16000 / token_rate)]
    assert all(0 <= c < 16 for seq in codes for c in seq)


def test_a_token_rate_the_encoder_cannot_reach_is_refused():
    with pytest.raises(ValueError, match="subsampling_factor 8"):
        _model(token_rate=25.0, subsampling_factor=8)


def test_forward_backward_reaches_every_trained_part():
    model = _model().train()
    audio = torch.randn(3, 24000) * 0.1
    lengths = torch.tensor([24000, 20000, 16000])
    targets = torch.randint(0, 27, (3, 8))
    loss = model.training_step((audio, lengths, targets, torch.tensor([8, 6, 5])), 0)
    loss.backward()
    for part in (model.encoder, model.pre_quantizer, model.post_quantizer, model.post_encoder, model.ctc_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), type(part).__name__
    assert torch.isfinite(loss)


def test_dead_codes_are_restarted_at_batch_frames():
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(num_codes=64, dim=4, decay=0.5, dead_code_threshold=0.5).train()
    vq(torch.randn(1, 200, 4))  # the codebook starts at these frames
    frames = torch.randn(1, 200, 4) + 10.0  # the data moves far away: one code would win it all
    restarts = [vq(frames).restarted for _ in range(5)]
    assert sum(restarts) > 0
    vq.reset_usage()
    vq.eval()
    vq(frames)
    assert vq.codebook_usage() > 0.5  # restarted codes took over parts of the data
    distances = torch.cdist(vq.codebook, frames[0]).min(dim=1).values
    assert (distances < 3).float().mean() > 0.9


def test_quantizer_is_straight_through_and_masks_padding():
    vq = VectorQuantizerEMA(num_codes=8, dim=4).train()
    x = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = vq(x, mask)
    out.quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert vq.usage.sum().item() == 8  # only the 8 real frames are counted


def test_near_misses_pass_the_second_nearest_code_up_in_training_only():
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(num_codes=16, dim=4, decay=1.0, restart_interval=None, near_miss=0.3).train()
    x = torch.randn(4, 500, 4)
    mask = torch.ones(4, 500, dtype=torch.bool)
    mask[0, 250:] = False
    vq(x, mask)  # the codebook starts at these frames (decay 1.0: it stays there)
    out = vq(x, mask)
    two = vq.nearest(x.reshape(-1, 4), k=2)
    assert torch.equal(out.codes.reshape(-1), two[:, 0])  # the tokens are still the nearest codes
    passed = out.quantized.reshape(-1, 4)
    second = torch.isclose(passed, vq.codebook[two[:, 1]]).all(1)
    assert torch.isclose(passed[~second], vq.codebook[two[~second, 0]]).all()
    assert 0.25 < second[mask.reshape(-1)].float().mean() < 0.35
    assert not second[~mask.reshape(-1)].any()  # padding frames are left alone
    assert torch.allclose(vq.eval()(x, mask).quantized, vq.codebook[out.codes])  # evaluation: the nearest
    with pytest.raises(ValueError, match="near_miss"):
        VectorQuantizerEMA(num_codes=4, dim=2, near_miss=1.0)


def test_continuous_vectors_are_what_the_tokens_round():
    """The Conformer tokenizer's vectors before its quantizer (the evaluation's and the speech decoder's
    diagnostic) are those ``tokenize`` rounds to codes, one a token, padding left out."""
    model = _model().eval()
    audio, lengths = torch.randn(2, 24000) * 0.1, torch.tensor([24000, 16000])
    vectors, tokens = model.continuous_vectors(audio, lengths), model.tokenize(audio, lengths)
    assert [len(v) for v in vectors] == [len(t) for t in tokens] == model.token_lengths(lengths).tolist()
    assert [model.quantizer.nearest(v).tolist() for v in vectors] == tokens


def test_quantizer_input_geometry_per_voice():
    """The evaluation's per-voice quantization error and the voices' share of the variance, on frames
    whose answers are worked out by hand: voice a sits on the codes, voice b is a shifted copy."""
    from megatron_speech.speech_tokenizer.evaluate import QuantizerInput

    quantizer = VectorQuantizerEMA(num_codes=2, dim=2)
    quantizer.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    geometry = QuantizerInput()
    on_codes, shifted = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[3.0, 2.0], [2.0, 3.0]])
    geometry.add([on_codes[:1], shifted], ["a", "b"], quantizer)
    geometry.add([on_codes[1:]], ["a"], quantizer)  # a voice's frames may come in several batches
    # b's frames are 8 (squared) from their nearest codes, of 13 each; a's lie on the codes
    assert geometry.relative_errors() == pytest.approx({"a": 0.0, "b": 16 / 26})
    assert geometry.relative_error() == pytest.approx(16 / 28)  # of all norms: 2 (a) + 26 (b)
    # means (0.5, 0.5) and (2.5, 2.5) around (1.5, 1.5): between 2, within 0.5, of a total 2.5
    assert geometry.voice_share() == pytest.approx(0.8)
    one_voice = QuantizerInput()
    one_voice.add([shifted], ["b"], quantizer)
    assert one_voice.voice_share() is None


def test_the_evaluation_transcribes_the_tokens_the_tokenizing_job_writes(evaluation_agrees_with_the_tokens):
    """As for the Whisper tokenizer: one pass under the quantizer a batch, the tokens' transcripts."""
    evaluation_agrees_with_the_tokens(_model().eval())


def test_nemo_checkpoint_round_trip(tmp_path):
    from megatron_speech.speech_tokenizer.model import SpeechTokenizerModel

    model = _model().eval()
    audio = torch.randn(1, 16000) * 0.1
    before = model.tokenize(audio, torch.tensor([16000]))
    model.save_to(str(tmp_path / "tok.nemo"))
    restored = SpeechTokenizerModel.restore_from(str(tmp_path / "tok.nemo"), map_location="cpu").eval()
    assert restored.tokenize(audio, torch.tensor([16000])) == before
    assert restored.transcribe_tokens(before) == model.transcribe_tokens(before)


def test_subword_ctc_units_train_once_and_travel_in_the_nemo(tmp_path):
    """A SentencePiece model of the transcripts becomes the CTC head's units, and the .nemo carries it."""
    from megatron_speech.speech_tokenizer.subwords import train_subword_model
    from megatron_speech.speech_tokenizer.model import SpeechTokenizerModel

    words = "the cat sat on a mat while the dog ran after the red ball in the park".split()
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n" for i in range(16)))
    model_path = train_subword_model(manifest, 40, tmp_path / "subwords")
    modified = model_path.stat().st_mtime_ns
    assert train_subword_model(manifest, 40, tmp_path / "subwords") == model_path  # rerun: kept, not retrained
    assert model_path.stat().st_mtime_ns == modified and not (tmp_path / "subwords.tmp").exists()

    cfg = tiny_config()
    cfg.subwords = {"vocab_size": 40, "model_path": str(model_path)}
    torch.manual_seed(0)
    model = SpeechTokenizerModel(cfg).eval()
    units = model.text_units
    assert model.blank == units.vocab_size and model.ctc_head.out_features == model.upsample * (units.vocab_size + 1)
    ids = units.text_to_ids("the dog ran")
    assert len(ids) < len("the dog ran")  # pieces, not characters
    logits = torch.full((1, 2 * len(ids), model.num_classes), -10.0)
    for t, i in enumerate(ids):  # each piece, then a blank: greedy CTC must spell the text back
        logits[0, 2 * t, i] = logits[0, 2 * t + 1, model.blank] = 0.0
    assert model.greedy_decode(logits, torch.tensor([2 * len(ids)])) == ["the dog ran"]

    model.save_to(str(tmp_path / "tok.nemo"))
    (tmp_path / "subwords").rename(tmp_path / "moved")  # the restored model must not need the original file
    restored = SpeechTokenizerModel.restore_from(str(tmp_path / "tok.nemo"), map_location="cpu").eval()
    assert restored.text_units.text_to_ids("the dog ran") == ids
    codes = [[1, 2, 3, 4, 5, 6]]
    assert restored.transcribe_tokens(codes) == model.transcribe_tokens(codes)


# ---------------------------------------------------------------- manifest -> speech tokens -> preprocessing


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from megatron_speech.speech.corpus import SpeechCorpusConfig, build_corpus

    root = tmp_path_factory.mktemp("corpus")
    build_corpus(SpeechCorpusConfig(str(root), num_sentences=6, voices=["flite:slt", "espeak:en-us", "flite:awb"],
                                    held_out_voice="flite:awb", voices_per_sentence=2, dev_sentences=0,
                                    test_sentences=0))
    return root


def _tokenize(manifest, output, model, **kw):
    from megatron_speech.speech_tokenizer.tokenize import TokenizeConfig, tokenize_manifest

    info = {"name": "test", "model_type": "conformer", "token_rate": model.token_rate,
            "codebook_size": model.quantizer.num_codes, "fingerprint": "0" * 16}  # no .nemo to describe
    return tokenize_manifest(TokenizeConfig(str(manifest), str(output), "unused.nemo", batch_size=4, **kw), model, info)


def test_tokens_feed_the_preprocessing_tool(small_corpus, tmp_path, text_tokenizer_file):
    from megatron_speech.data.preprocess import PreprocessConfig, preprocess
    from megatron_speech.lm_tokenizer import SpeechTextTokenizer
    from megatron_speech.speech.audio import read_wav

    model = _model().eval()  # the output folder does not exist yet: the tool makes it
    tokens = tmp_path / "tokens" / "train.jsonl"
    stats = _tokenize(small_corpus / "train.jsonl", tokens, model)
    records = [json.loads(l) for l in tokens.read_text().splitlines()]
    manifest = [json.loads(l) for l in (small_corpus / "train.jsonl").read_text().splitlines()]
    assert stats["written"] == len(records) == len(manifest) == 12
    for record, line in zip(records, manifest):
        samples, _ = read_wav(small_corpus / line["audio_filepath"])
        assert len(record["speech_tokens"]) == samples.size // 1280 and record["text"] == line["text"]
        assert record["speaker"] == line["speaker"]  # kept for a voice-conditioned text-to-token model
    # a vocabulary with as many speech codes as this tokenizer has (contract 2 refuses another size)
    SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, model.quantizer.num_codes).save(tmp_path / "tok")
    for layout in ("speech", "asr", "tts"):
        preprocess(PreprocessConfig([str(tokens)], str(tmp_path / layout), str(tmp_path / "tok"),
                                    layout=layout))
        assert (tmp_path / f"{layout}.bin").stat().st_size > 0
    assert _tokenize(small_corpus / "train.jsonl", tokens, model)["already_done"]


def test_resume_after_a_crash_gives_the_same_file(small_corpus, tmp_path):
    """A chunk torn mid-write (its part, no marker) is redone; complete chunks are kept as they are."""
    model = _model().eval()
    manifest = small_corpus / "train.jsonl"
    _tokenize(manifest, tmp_path / "full.jsonl", model)
    full = (tmp_path / "full.jsonl").read_text()
    # Shard 0 of 2 completes chunks 0, 2, ...; a "crash" in chunk 1 leaves a torn temporary part.
    stats = _tokenize(manifest, tmp_path / "cut.jsonl", model, chunk_bytes=600, shard_index=0, num_shards=2)
    parts = tmp_path / "cut.jsonl.shards" / "parts"
    assert stats["chunks_done_now"] >= 2 and not (tmp_path / "cut.jsonl").exists()
    kept = {p: p.stat().st_mtime_ns for p in parts.glob("*.jsonl")}
    (parts / "00001.jsonl.999.tmp").write_text(full[:50])
    _tokenize(manifest, tmp_path / "cut.jsonl", model, chunk_bytes=600, shard_index=1, num_shards=2)
    assert (tmp_path / "cut.jsonl").read_text() == full  # the last shard joined every part in order
    assert not parts.exists()
    assert all(mtime == kept[p] for p, mtime in kept.items() if p.exists())


@pytest.mark.parametrize("problem, message", [
    ("missing", "file not found"), ("empty", "empty audio"), ("corrupt", "not a readable wav"),
    ("rate", "sample rate 8000 Hz, expected 16000 Hz")])
def test_bad_audio_is_named_or_skipped(small_corpus, tmp_path, problem, message):
    from megatron_speech.speech.audio import write_wav
    import numpy as np

    lines = (small_corpus / "train.jsonl").read_text().splitlines()
    bad = {"audio_filepath": "bad.wav", "text": "x", "id": "bad"}
    if problem == "empty":
        write_wav(tmp_path / "bad.wav", np.zeros(0, np.int16), 16000)
    elif problem == "corrupt":
        (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    elif problem == "rate":
        write_wav(tmp_path / "bad.wav", np.ones(8000, np.int16), 8000)
    good = [json.loads(l) for l in lines[:3]]
    for g in good:
        g["audio_filepath"] = str(small_corpus / g["audio_filepath"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [good[0], bad, *good[1:]]))
    model = _model().eval()
    with pytest.raises(ValueError, match=f"m.jsonl:2: .*bad.wav: {message}"):
        _tokenize(manifest, tmp_path / "out.jsonl", model)
    stats = _tokenize(manifest, tmp_path / "out.jsonl", model, on_error="skip")
    assert stats["written"] == 3 and stats["skipped"] == 1
    report = [json.loads(l) for l in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert report[0]["record"] == 2 and report[0]["file"] == str(manifest) and message in report[0]["reason"]


def test_duration_buckets_give_every_utterance_once(small_corpus):
    """The mini recipe's Lhotse loader: one pass is the manifest, each utterance once, batches within
    their duration budget."""
    data = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/mini.yaml").model.train_ds
    assert data.use_bucketing and data.batch_duration
    data.update(manifest_filepath=str(small_corpus / "train.jsonl"), batch_duration=6.0, num_buckets=2,
                num_cuts_for_bins_estimate=100)
    from megatron_speech.speech_tokenizer.loader import lhotse_loader

    model = _model()
    texts = []
    loader = lhotse_loader(data, model, model.text_units)
    for audio, audio_lengths, targets, target_lengths in (batch[:4] for batch in loader):
        assert len(audio_lengths) == 1 or audio_lengths.sum() / 16000 <= 6.0
        assert audio.shape[1] == audio_lengths.max()
        for t, n in zip(targets.tolist(), target_lengths.tolist()):
            texts.append(model.text_units.ids_to_text(t[:n]))
    manifest = [json.loads(l)["text"] for l in (small_corpus / "train.jsonl").read_text().splitlines()]
    assert sorted(texts) == sorted(manifest)


def test_a_restored_loader_goes_on_with_the_batches_an_uninterrupted_one_gives(small_corpus):
    """A resumed run's data: the loader restored to (epoch, batches trained) yields the rest of that
    epoch's batches, in the uninterrupted order, not the epoch from its start (issue 22's resumable
    jobs; before, a resume mid-epoch started the epoch's data over)."""
    from megatron_speech.speech_tokenizer.loader import training_loader

    data = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/mini.yaml").model.train_ds
    data.update(manifest_filepath=str(small_corpus / "train.jsonl"), batch_duration=3.0, num_buckets=2,
                num_cuts_for_bins_estimate=100)
    model = _model()

    def batches(loader) -> list:
        return [(batch[1].tolist(), batch[2].tolist()) for batch in loader]

    uninterrupted = training_loader(data, model, model.text_units)
    epochs = [batches(uninterrupted)]
    uninterrupted.sampler.set_epoch(1)  # as Lightning does at each epoch's start
    epochs.append(batches(uninterrupted))
    assert len(epochs[0]) >= 4 and epochs[0] != epochs[1]  # several batches, and each epoch its own order
    for epoch, whole in enumerate(epochs):
        resumed = training_loader(data, model, model.text_units)
        resumed.sampler.restore(epoch, 3)
        assert batches(resumed) == whole[3:], f"epoch {epoch}"
        assert batches(resumed) == whole, "a restore skips once: the next pass is the whole epoch"


@pytest.mark.parametrize("concurrent, leaves_a_thread", [(None, False), (True, True)], ids=["recipe", "concurrent"])
def test_a_loader_stopped_early_leaves_no_thread_behind(small_corpus, tmp_path, concurrent, leaves_a_thread):
    """Training stops mid-pass (max_steps, max_time). Lhotse's concurrent bucketing fills buckets
    from a non-daemon thread that sleeps while they are full (a corpus larger than the bucket
    buffer, 20,000 cuts by NeMo's defaults, as the recipe's 26,000): alive, it kept
    tools/train_speech_tokenizer.py from ever exiting. The recipe's loader has none; the concurrent
    one (the old default) shows the check bites. The corpus is five times the bucket buffer, so the
    producer is blocked (not finished) at the check however fast the machine: a corpus smaller than
    the buffer let a fast CI machine read it all first."""
    import threading

    from megatron_speech.speech_tokenizer.loader import lhotse_loader

    lines = [json.loads(l) for l in (small_corpus / "train.jsonl").read_text().splitlines()]
    for line in lines:
        line["audio_filepath"] = str(small_corpus / line["audio_filepath"])
    buffer = 200
    large = tmp_path / "large.jsonl"  # more cuts than the bucket buffer, on the same few wavs
    large.write_text("".join(json.dumps(l) + "\n" for _ in range(5 * buffer // len(lines) + 1) for l in lines))
    data = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/mini.yaml").model.train_ds
    data.update(manifest_filepath=str(large), batch_duration=2.0, num_buckets=2, num_cuts_for_bins_estimate=100,
                bucket_buffer_size=buffer, shuffle_buffer_size=None)  # NeMo adds the latter to the former
    if concurrent is not None:
        data.concurrent_bucketing = concurrent
    before = set(threading.enumerate())
    model = _model()
    loader = lhotse_loader(data, model, model.text_units)
    next(iter(loader))  # one step, then training "stops" with the rest of the pass unread
    time.sleep(0.5)
    left = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    loader.sampler.cuts_iter.close()  # Lhotse's bucketer joins its producer when closed: none is left
    assert bool(left) == leaves_a_thread, left
    assert not [t for t in left if t.is_alive()]


@pytest.mark.slow
@pytest.mark.parametrize("units", [[], ["model.subwords={vocab_size: 30}"]], ids=["characters", "subwords"])
def test_training_recipe_writes_a_checkpoint_and_its_report(tmp_path, units):
    """tools/train_speech_tokenizer.py end to end on a tiny corpus and model: .nemo + eval.json."""
    import subprocess
    import sys

    from megatron_speech.speech.corpus import SpeechCorpusConfig, build_corpus

    corpus = tmp_path / "corpus"
    voices = ["flite:slt", "espeak:en-us", "flite:awb"]
    build_corpus(SpeechCorpusConfig(str(corpus), num_sentences=8, voices=voices, held_out_voice="flite:awb",
                                    dev_sentences=2, test_sentences=2))
    tiny = ["model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.n_heads=2",
            "model.post_encoder.feat_in=32", "model.post_encoder.n_layers=1", "model.post_encoder.d_model=32",
            "model.post_encoder.n_heads=2", "model.quantizer.num_codes=16", "model.quantizer.dim=8",
            f"model.train_ds.manifest_filepath={corpus}/train.jsonl", "model.train_ds.batch_duration=8",
            "model.train_ds.num_buckets=2", f"model.validation_ds.manifest_filepath={corpus}/dev.jsonl",
            "model.optim.sched.warmup_steps=1", "trainer.max_steps=3", "trainer.val_check_interval=3",
            f"exp_manager.exp_dir={tmp_path}/runs", "name=tiny", *units]
    tool = REPO / "tools/train_speech_tokenizer.py"
    # It must also exit by itself once its outputs are written. (The thread that once kept it alive
    # needs a corpus larger than Lhotse's bucket buffer: test_a_loader_stopped_early_... checks that.)
    done = subprocess.run([sys.executable, str(tool), "--config-name", "mini", *tiny], check=True, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    report = json.loads((tmp_path / "runs/tiny/tiny.eval.json").read_text())
    assert report["steps"] == 3 and report["token_rate"] == 12.5
    assert not report["cut_short"] and "cut short" not in done.stderr
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["nemo-toolkit"]
    # the held-out voice's dev set is validated beside the training voices' (the recipe's extra_sets)
    (validation,) = report["validation"]
    assert validation["step"] == 3 and {"val_wer", "val_wer_heldout_voice"} <= set(validation)
    assert all(0 <= validation[k] for k in ("val_wer", "val_wer_heldout_voice", "val_loss_heldout_voice"))
    assert [r["manifest"] for r in report["results"]] == ["test.jsonl", "test_heldout_voice.jsonl"]
    assert all(r["utterances"] == 2 and 0 <= r["codebook_usage"] <= 1 for r in report["results"])
    test, heldout = report["results"]
    assert set(heldout["by_speaker"]) == {"flite:awb"} and heldout["by_speaker"]["flite:awb"]["wer"] == heldout["wer"]
    assert set(test["by_speaker"]) <= {"flite:slt", "espeak:en-us"}
    assert sum(v["utterances"] for v in test["by_speaker"].values()) == 2
    assert heldout["voice_variance_share"] is None  # one voice
    assert all(0 <= r["by_speaker"][s]["quantization_error"] for r in report["results"] for s in r["by_speaker"])
    assert heldout["by_speaker"]["flite:awb"]["quantization_error"] == pytest.approx(heldout["quantization_error"])
    # the evaluation alone, on the saved checkpoint, gives the same figures as after training
    evaluate = REPO / "tools/evaluate_speech_tokenizer.py"
    subprocess.run([sys.executable, str(evaluate), str(tmp_path / "runs/tiny/tiny.nemo"),
                    str(corpus / "test_heldout_voice.jsonl"), "--output", str(tmp_path / "again.json")],
                   check=True, cwd=tmp_path, capture_output=True)
    (again,) = json.loads((tmp_path / "again.json").read_text())["results"]
    assert again["wer"] == heldout["wer"] and again["by_speaker"] == heldout["by_speaker"]
    assert again["perplexity"] == pytest.approx(heldout["perplexity"])  # the same tokens
    assert (tmp_path / "runs/tiny/tiny.nemo").stat().st_size > 0
    assert ("model_path" in (report["config"]["subwords"] or {})) == bool(units)
    if units:
        return
    (checkpoint,) = (tmp_path / "runs/tiny").glob("**/*step=3.ckpt")  # the tool's trainer keeps where it was
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["exact_resume"]
    assert set(state) == {"epoch", "batches", "generators"} and len(state["generators"]) == 1  # one rank's
    assert set(state["generators"][0]) >= {"torch", "python"}
    # a rerun resumes from the newest checkpoint, and the report keeps the validation made before it
    longer = subprocess.run([sys.executable, str(tool), "--config-name", "mini", *tiny, "trainer.max_steps=5"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert longer.returncode == 0 and "resuming from" in longer.stdout, longer.stderr[-4000:]
    resumed = json.loads((tmp_path / "runs/tiny/tiny.eval.json").read_text())
    assert resumed["steps"] == 5 and resumed["resumed_from"].endswith("step=3.ckpt")
    assert resumed["validation"][0] == validation


@pytest.mark.parametrize("model_class", ["conformer", "whisper_vq"])
def test_the_validations_so_far_travel_in_a_checkpoint(model_class):
    """A resumed run's report covers the whole schedule: both tokenizer models keep their validation
    history in the Lightning checkpoint and take it back from one."""
    from types import SimpleNamespace

    from megatron_speech.speech_tokenizer.load import model_class as resolve

    cls = resolve(model_class)
    before = SimpleNamespace(validation_history=[{"step": 550, "val_wer": 0.4}])
    checkpoint: dict = {}
    cls.on_save_checkpoint(before, checkpoint)
    after = SimpleNamespace(validation_history=[])
    cls.on_load_checkpoint(after, checkpoint)
    assert after.validation_history == [{"step": 550, "val_wer": 0.4}]


def test_a_resumes_rerun_of_a_validation_leaves_the_record_the_run_made():
    """On a resume Lightning reruns the validation its checkpoint was saved in; with two validation sets
    it reran only part of the first (session 47: 23.9% at step 550 where the run had measured 34.8% and
    41.1%). The report keeps the whole validation's record and adds the next step's."""
    from types import SimpleNamespace

    import torch

    from megatron_speech.speech_tokenizer.loader import log_validation

    made = {"step": 550, "val_loss": 0.947, "val_wer": 0.348, "val_loss_heldout_voice": 1.04,
            "val_wer_heldout_voice": 0.411}
    trainer = SimpleNamespace(global_step=550, sanity_checking=False)
    partial = [{"val_loss": torch.tensor(0.65), "wer": 0.239, "set": 0}]  # the first set's, no held-out voice
    model = SimpleNamespace(validation_history=[dict(made)], validation_set_names=["", "heldout_voice"],
                            validation_step_outputs=partial, _trainer=trainer, trainer=trainer,
                            log=lambda *args, **kwargs: None)
    log_validation(model)
    assert model.validation_history == [made] and model.validation_step_outputs == []
    trainer.global_step = 1100
    model.validation_step_outputs += [{"val_loss": torch.tensor(0.5), "wer": 0.15, "set": 0},
                                      {"val_loss": torch.tensor(0.7), "wer": 0.26, "set": 1}]
    log_validation(model)
    assert model.validation_history[1] == {"step": 1100, "val_loss": 0.5, "val_wer": 0.15,
                                           "val_loss_heldout_voice": 0.7, "val_wer_heldout_voice": 0.26}


def test_a_run_folder_has_one_writer_and_resumes_from_its_newest_checkpoint(tmp_path, capsys):
    import os

    from megatron_speech import nemo_runs

    out = tmp_path / "run"
    with nemo_runs.run_folder(out) as resume:
        assert resume is None
        with pytest.raises(SystemExit, match=f"run folder {out} is in use"):
            with nemo_runs.run_folder(out):
                pass
    (out / "checkpoints").mkdir()
    for step, mtime in ((550, 100), (1100, 200)):
        (out / "checkpoints" / f"step={step}.ckpt").write_bytes(b"")
        os.utime(out / "checkpoints" / f"step={step}.ckpt", (mtime, mtime))
    with nemo_runs.run_folder(out) as resume:  # the lock is free again once its holder is done
        assert resume == str(out / "checkpoints" / "step=1100.ckpt")
    assert "resuming from" in capsys.readouterr().out


def test_a_resume_with_other_model_settings_is_refused_naming_them(tmp_path):
    from megatron_speech import nemo_runs

    made_with = OmegaConf.create({"optim": {"lr": 3e-4}, "vq": {"quantize_vocab_size": 1024}})
    ckpt = tmp_path / "step=550.ckpt"
    torch.save({"hyper_parameters": {"cfg": made_with}, "state_dict": {}}, ckpt)
    nemo_runs.check_resume_settings(str(ckpt), OmegaConf.create(OmegaConf.to_container(made_with)))
    nemo_runs.check_resume_settings(None, OmegaConf.create({}))  # nothing to resume: nothing to check
    other = OmegaConf.create({"optim": {"lr": 6e-4}, "vq": {"quantize_vocab_size": 1024}, "new": 1})
    with pytest.raises(SystemExit, match=r"step=550.ckpt was made with other model settings; these differ: "
                                         r"model.new, model.optim.lr\."):
        nemo_runs.check_resume_settings(str(ckpt), other)
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(SystemExit, match="no model settings in the checkpoint"):
        nemo_runs.check_resume_settings(str(ckpt), other)


def test_a_missing_extra_validation_set_is_named(small_corpus):
    from types import SimpleNamespace

    from megatron_speech.speech_tokenizer.loader import validation_loaders

    model = SimpleNamespace(cfg=OmegaConf.create({"sample_rate": 16000}), global_rank=0, world_size=1)
    cfg = OmegaConf.create({"manifest_filepath": str(small_corpus / "train.jsonl"), "batch_size": 2,
                            "extra_sets": {"heldout_voice": "dev_of_nobody.jsonl"}})
    with pytest.raises(FileNotFoundError, match="extra_sets.heldout_voice: no manifest .*dev_of_nobody.jsonl"):
        validation_loaders(cfg, model, text_units=lambda text: [1])
    cfg.extra_sets = {"again": str(small_corpus / "train.jsonl")}  # an absolute path, as it is
    loaders, names = validation_loaders(cfg, model, text_units=lambda text: [1])
    assert names == ["", "again"] and len(loaders) == 2


@pytest.mark.slow
def test_a_run_that_crashed_mid_epoch_resumes_to_the_uninterrupted_runs_weights(tmp_path):
    """A 6-step run that crashes after its step-3 checkpoint (mid-epoch 0) and is resumed from it ends
    with the weights of the same run uninterrupted: the data goes on where it was, the generators (the
    quantizer's code restarts draw from them at every step here) are the ones the uninterrupted run
    had, and so is the quantizer's update count. The trainer is the training tool's
    (``nemo_runs.ExactResume``); a resume without it ends elsewhere."""
    import lightning.pytorch as pl

    from megatron_speech import nemo_runs
    from megatron_speech.speech.corpus import SpeechCorpusConfig, build_corpus
    from megatron_speech.speech_tokenizer.model import SpeechTokenizerModel
    from megatron_speech.testing.crash import CrashAt, crash_and_find_checkpoint

    corpus = tmp_path / "corpus"
    build_corpus(SpeechCorpusConfig(str(corpus), num_sentences=16, voices=["flite:slt", "espeak:en-us", "flite:awb"],
                                    held_out_voice="flite:awb", dev_sentences=2, test_sentences=2))
    recipe = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/mini.yaml")
    cfg = tiny_config()
    cfg.train_ds = recipe.model.train_ds
    cfg.train_ds.update(manifest_filepath=str(corpus / "train.jsonl"), batch_duration=3.0, num_buckets=2,
                        num_cuts_for_bins_estimate=100)
    cfg.validation_ds = recipe.model.validation_ds
    cfg.validation_ds.update(manifest_filepath=str(corpus / "dev.jsonl"), extra_sets=None)
    cfg.optim.sched.warmup_steps = 1

    def fit(name: str, resume: str | None = None, crash: bool = False, exact: bool = True) -> dict:
        trainer = pl.Trainer(**{**recipe.trainer, "max_steps": 6, "val_check_interval": 3, "max_time": None},
                             default_root_dir=str(tmp_path / name), enable_progress_bar=False,
                             callbacks=[nemo_runs.ExactResume()] * exact + [CrashAt(3)] * crash)
        model = SpeechTokenizerModel(cfg, trainer=trainer)
        trainer.fit(model, ckpt_path=resume)
        histories[name] = model.validation_history
        return {k: v.clone() for k, v in model.state_dict().items()}

    histories: dict[str, list] = {}
    whole = fit("whole")
    step3, position = crash_and_find_checkpoint(fit, tmp_path, 3)
    assert (position["epoch"], position["batches"]) == (0, 3)
    resumed = fit("resumed", resume=str(step3))
    assert int(whole["quantizer.updates"]) == 6 == int(resumed["quantizer.updates"])
    # every weight and buffer but the quantizer's tally of codes chosen, which Lightning's rerun of the
    # step-3 validation adds to (a diagnostic: nothing in training reads it)
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == ["quantizer.usage"]
    # the report's validations: step 3 once (Lightning reran it on the resume) and step 6 as uninterrupted
    assert [r["step"] for r in histories["resumed"]] == [3, 6] and histories["resumed"] == histories["whole"]
    (last,) = (tmp_path / "resumed").glob("**/*step=6.ckpt")  # still epoch 0: the crash was mid-epoch
    assert torch.load(last, map_location="cpu", weights_only=False)[nemo_runs.ExactResume.KEY]["epoch"] == 0
    elsewhere = fit("plain", resume=str(step3), exact=False)  # Lightning alone: the epoch over, other draws
    assert [k for k in whole if not torch.equal(whole[k], elsewhere[k])]


@pytest.mark.slow
def test_a_run_the_time_guard_stops_says_so_loudly(tmp_path):
    import subprocess
    import sys

    from megatron_speech.speech.corpus import SpeechCorpusConfig, build_corpus

    corpus = tmp_path / "corpus"
    build_corpus(SpeechCorpusConfig(str(corpus), num_sentences=8, voices=["flite:slt", "flite:awb"],
                                    held_out_voice="flite:awb", dev_sentences=2, test_sentences=2))
    tiny = ["model.encoder.n_layers=1", "model.encoder.d_model=32", "model.encoder.n_heads=2",
            "model.post_encoder.feat_in=32", "model.post_encoder.n_layers=1", "model.post_encoder.d_model=32",
            "model.post_encoder.n_heads=2", "model.quantizer.num_codes=16", "model.quantizer.dim=8",
            f"model.train_ds.manifest_filepath={corpus}/train.jsonl", "model.train_ds.batch_duration=8",
            "model.train_ds.num_buckets=2", f"model.validation_ds.manifest_filepath={corpus}/dev.jsonl",
            "trainer.max_steps=1000000", "trainer.max_time=00:00:00:05", "trainer.val_check_interval=1000000",
            f"exp_manager.exp_dir={tmp_path}/runs", "name=cut"]
    done = subprocess.run([sys.executable, str(REPO / "tools/train_speech_tokenizer.py"), "--config-name", "mini", *tiny], check=True,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "runs/cut/cut.eval.json").read_text())
    assert report["cut_short"] and 0 < report["steps"] < report["max_steps"] == 1000000
    assert done.stderr.count("WARNING: the schedule was cut short") == 2  # before and after the report


def test_spec_augment_masks_features_in_training_only():
    from megatron_speech.speech_tokenizer.model import SpeechTokenizerModel

    plain_cfg = tiny_config()
    plain_cfg.preprocessor.dither = 0.0  # dither is random in training too: only the masks may differ
    masked_cfg = plain_cfg.copy()
    masked_cfg.spec_augment = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                               "freq_masks": 2, "freq_width": 20, "time_masks": 2, "time_width": 0.2}
    masked, plain = SpeechTokenizerModel(masked_cfg), SpeechTokenizerModel(plain_cfg)
    plain.load_state_dict(masked.state_dict())
    audio, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    masked.eval(), plain.eval()  # first: training steps move the batch-norm statistics apart
    assert torch.equal(masked.encode(audio, lengths)[0], plain.encode(audio, lengths)[0])
    masked.train(), plain.train()
    assert not torch.allclose(masked.encode(audio, lengths)[0], plain.encode(audio, lengths)[0])


def test_full_scale_config_has_consistent_shapes():
    """The cluster config is not trained here; build one layer of each stack at full width and check
    shapes, and that the whole encoder is Whisper-large-sized."""
    from megatron_speech.speech_tokenizer.model import SpeechTokenizerModel

    cfg = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/full.yaml").model
    layers = cfg.encoder.n_layers
    cfg.encoder.n_layers = cfg.post_encoder.n_layers = 1
    cfg.train_ds = cfg.validation_ds = None
    model = SpeechTokenizerModel(cfg).eval()
    per_layer = sum(p.numel() for p in model.encoder.layers[0].parameters())
    assert 550e6 < per_layer * layers < 750e6  # Whisper large's encoder: ~635M parameters
    codes = model.tokenize(torch.randn(1, 32000) * 0.1, torch.tensor([32000]))
    assert len(codes[0]) == 25 and max(codes[0]) < 16384
