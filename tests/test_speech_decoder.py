"""The speech decoder's network and mel front end: frame counts, both heads learn, streaming equals
offline, and the streaming guarantee is real (a later token changes no earlier block)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_speech.speech_decoder.mel import MelSettings, MelSpectrogram, griffin_lim
from megatron_speech.speech_decoder.token_to_mel import TokenToMel, TokenToMelSettings, block_mask
from megatron_speech.testing.crash import CrashAt, Crashed, crash_and_find_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _tiny(head: str, **overrides) -> TokenToMel:
    torch.manual_seed(0)
    settings = TokenToMelSettings(codebook_size=16, num_speakers=2, n_mels=8, d_model=32, num_layers=2, num_heads=2,
                                  ffn_dim=64, dropout=0.0, estimator_channels=32, estimator_layers=2, head=head,
                                  block_size=4, lookahead=2, flow_steps=4, **overrides)
    return TokenToMel(settings).eval()


def test_a_12_5_hz_token_is_five_frames_at_16_khz_hop_256_and_two_25_hz_tokens_are_five():
    mel = MelSettings()
    assert mel.token_frames(12.5) == (5, 1) and mel.token_frames(25.0) == (5, 2) and mel.token_frames(50.0) == (5, 4)
    with pytest.raises(ValueError, match=r"4\.267 frames a token at 12\.5 Hz \(64 frames every 15 tokens\)"):
        MelSettings(hop_length=300).token_frames(12.5)
    audio = torch.randn(1, 1280 * 7)
    frames = MelSpectrogram(mel)(audio)
    assert frames.shape == (1, 80, mel.frames(1280 * 7)) and mel.frames(1280 * 7) == 7 * 5 + 1


def test_griffin_lim_turns_a_mel_back_into_audio_of_its_length_and_pitch():
    mel = MelSettings()
    t = np.arange(16000) / 16000
    tone = torch.from_numpy((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    audio = griffin_lim(MelSpectrogram(mel)(tone[None])[0], mel, iterations=16)
    assert len(audio) == mel.frames(16000) * mel.hop_length
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 20  # the tone survives


def test_block_mask_lets_a_token_see_its_block_and_every_earlier_one():
    mask = block_mask(6, 2)
    visible = [[int(not m) for m in row] for row in mask.tolist()]
    assert visible[0] == [1, 1, 0, 0, 0, 0] and visible[3] == [1, 1, 1, 1, 0, 0] and visible[5] == [1] * 6


HEADS_AND_UPSAMPLES = [("l1", "repeat"), ("flow", "repeat"), ("l1", "linear")]


@pytest.mark.parametrize("head, upsample", HEADS_AND_UPSAMPLES)
def test_each_head_overfits_a_tiny_batch(head, upsample):
    model = _tiny(head, upsample=upsample).train()
    tokens = torch.randint(0, 16, (2, 12))
    lengths = torch.tensor([12, 9])
    speakers = torch.tensor([0, 1])
    mels = torch.randn(2, 8, 60)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model.loss(tokens, lengths, speakers, mels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses[::10]


def test_an_unknown_head_or_upsampling_is_refused_by_name():
    for key, value in (("head", "diffusion"), ("upsample", "cubic")):
        with pytest.raises(ValueError, match=f"{key} must be one of .*{value}"):
            TokenToMelSettings(codebook_size=16, **{key: value})


@pytest.mark.parametrize("head, upsample", HEADS_AND_UPSAMPLES)
def test_streaming_equals_offline(head, upsample):
    model = _tiny(head, upsample=upsample)
    tokens = torch.randint(0, 16, (11,))
    offline = model.generate(tokens[None], torch.tensor([11]), torch.tensor([1]))[0]
    blocks = list(model.stream(tokens, speaker=1))
    assert [b.shape[-1] for b in blocks] == [20, 20, 15]
    torch.testing.assert_close(torch.cat(blocks, dim=-1), offline, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("upsample", ["repeat", "linear"])
def test_a_block_does_not_depend_on_tokens_after_its_lookahead(upsample):
    model = _tiny("flow", upsample=upsample)
    tokens = torch.randint(0, 16, (12,))
    changed = tokens.clone()
    changed[7:] = (changed[7:] + 1) % 16  # block 0 is tokens 0-3; its look-ahead reaches token 5
    a = model.generate(tokens[None], torch.tensor([12]), torch.tensor([0]))[0]
    b = model.generate(changed[None], torch.tensor([12]), torch.tensor([0]))[0]
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("upsample", ["repeat", "linear"])
def test_at_25_hz_two_tokens_become_five_frames_and_streaming_still_equals_offline(upsample):
    """2.5 frames a token: frames are whole (7 tokens give 17), a group's frames come from its own
    two tokens only, and blocks of whole groups stream as offline decoding."""
    model = _tiny("l1", upsample=upsample, frames_per_group=5, tokens_per_group=2)
    assert model.frame_lengths(torch.tensor([7, 8])).tolist() == [17, 20]
    tokens = torch.randint(0, 16, (11,))
    offline = model.generate(tokens[None], torch.tensor([11]), torch.tensor([1]))[0]
    assert offline.shape == (8, 27)
    blocks = list(model.stream(tokens, speaker=1))
    assert [b.shape[-1] for b in blocks] == [10, 10, 7]
    torch.testing.assert_close(torch.cat(blocks, dim=-1), offline, atol=1e-5, rtol=1e-4)
    x = torch.randn(1, 4, 32)  # the upsampling alone: frames 0-4 from tokens 0-1, frames 5-9 from tokens 2-3
    y = x.clone()
    y[:, 2:] += 1
    a, b = model.upsample(x), model.upsample(y)
    assert a.shape == (1, 10, 32)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    with pytest.raises(ValueError, match="block_size 5 is not a whole number of token groups"):
        TokenToMelSettings(codebook_size=16, tokens_per_group=2, block_size=5)


def test_at_12_5_hz_the_grouped_upsampling_is_the_plain_repeat():
    """One token a group: what every decoder trained before groups existed computes."""
    model = _tiny("l1")
    x = torch.randn(2, 6, 32)
    expected = x.repeat_interleave(5, dim=1) + model.frame_offset.weight.repeat(6, 1)[None]
    torch.testing.assert_close(model.upsample(x), expected)


def test_padding_in_a_batch_changes_nothing():
    model = _tiny("l1")
    tokens = torch.randint(0, 16, (2, 10))
    alone = model.generate(tokens[1:, :6], torch.tensor([6]), torch.tensor([0]))
    batched = model.generate(tokens, torch.tensor([10, 6]), torch.tensor([1, 0]))
    torch.testing.assert_close(batched[1:, :, :30], alone, atol=1e-5, rtol=1e-4)



def test_a_decoder_of_vectors_reads_vectors_streams_and_refuses_token_ids():
    model = _tiny("l1", feature_dim=6)
    vectors = torch.randn(11, 6)
    offline = model.generate(vectors[None], torch.tensor([11]), torch.tensor([1]))[0]
    torch.testing.assert_close(torch.cat(list(model.stream(vectors, speaker=1)), dim=-1), offline, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(offline, model.generate(vectors[None] + 1, torch.tensor([11]), torch.tensor([1]))[0])
    with pytest.raises(ValueError, match=r"takes vectors \[B, T, 6\], got a torch.int64"):
        model.generate(torch.randint(0, 16, (1, 11)), torch.tensor([11]), torch.tensor([1]))
    with pytest.raises(ValueError, match="takes token ids, got a torch.float32"):
        _tiny("l1").generate(vectors[None], torch.tensor([11]), torch.tensor([1]))


def test_the_critic_learns_to_tell_true_frames_from_blurred_ones():
    """What the adversarial term is for: frames averaged in time (what L1 regression makes of
    uncertain timing) are told from true ones by the critic, and a critic that saw no training
    cannot tell them apart."""
    from nemo.collections.tts.losses.hifigan_losses import DiscriminatorLoss

    from megatron_speech.speech_decoder.mel_discriminator import MelDiscriminator

    torch.manual_seed(0)
    critic = MelDiscriminator(n_mels=8, channels=16, layers=3)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=2e-3, betas=(0.8, 0.99))

    def batch():  # random steps between levels, held 1-6 frames: movement in time
        frames = torch.randn(8, 8, 12).repeat_interleave(torch.randint(1, 7, (12,)), dim=2)[..., :48]
        blurred = torch.nn.functional.avg_pool1d(frames, 5, stride=1, padding=2, count_include_pad=False)
        return frames, blurred

    def gap() -> float:
        with torch.no_grad():
            frames, blurred = batch()
            return (critic(frames)[0].mean() - critic(blurred)[0].mean()).item()

    untrained = gap()
    for _ in range(150):
        frames, blurred = batch()
        loss, _, _ = DiscriminatorLoss()(disc_real_outputs=[critic(frames)[0]],
                                         disc_generated_outputs=[critic(blurred)[0]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert abs(untrained) < 0.2 and gap() > 0.6, (untrained, gap())


def test_the_adversarial_term_needs_the_l1_head_and_a_sane_weight(pairs, tmp_path):
    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    cfg = _config(pairs, tmp_path, head="flow")
    cfg.model.adversarial.weight = 0.5
    with pytest.raises(ValueError, match="adversarial needs the l1 head"):
        SpeechDecoderModel(cfg.model)
    cfg.model.adversarial.weight = -1.0
    with pytest.raises(ValueError, match="adversarial weight"):
        SpeechDecoderModel(cfg.model)
    cfg.model.adversarial = {"weight": 0.5, "wieght": 1.0}
    with pytest.raises(ValueError, match="wieght"):
        SpeechDecoderModel(cfg.model)


def test_the_adversarial_term_starts_at_its_step_and_resumes_with_its_critic(pairs, tmp_path):
    """Two optimizers stepped by the model: ``global_step`` counts batches, the critic moves only from
    ``start_step`` on, the decoder from the first step, and a checkpoint carries the critic's optimizer."""
    import lightning.pytorch as pl

    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    cfg = _config(pairs, tmp_path, head="l1")
    cfg.model.adversarial.update({"weight": 0.5, "start_step": 2, "channels": 16, "layers": 2})
    cfg.trainer.enable_checkpointing = False
    cfg.trainer.gradient_clip_val = None  # the model clips each optimizer (tools/train_speech_decoder.py does this)

    def fit(max_steps: int, model: SpeechDecoderModel, ckpt: str | None = None) -> pl.Trainer:
        cfg.trainer.max_steps = max_steps
        trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(tmp_path))
        model.set_trainer(trainer)
        trainer.fit(model, ckpt_path=ckpt)
        return trainer

    model = SpeechDecoderModel(cfg.model)
    critic0 = [p.detach().clone() for p in model.discriminator.parameters()]
    decoder0 = [p.detach().clone() for p in model.net.parameters()]
    trainer = fit(2, model)
    assert trainer.global_step == 2 and model._discriminator_optim is None
    assert all(torch.equal(a, b) for a, b in zip(critic0, model.discriminator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(decoder0, model.net.parameters()))
    trainer = fit(4, model)
    assert trainer.global_step == 4
    assert not all(torch.equal(a, b) for a, b in zip(critic0, model.discriminator.parameters()))
    for key in ("critic", "score", "features", "l1"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    trainer.save_checkpoint(tmp_path / "adv.ckpt")
    saved = torch.load(tmp_path / "adv.ckpt", weights_only=False)
    state = saved["discriminator_optimizer"]["state"]
    assert state and all(int(s["step"]) == 2 for s in state.values())  # the critic's two steps
    resumed = SpeechDecoderModel(cfg.model)
    trainer = fit(5, resumed, ckpt=str(tmp_path / "adv.ckpt"))
    assert trainer.global_step == 5
    assert all(int(s["step"]) == 3 for s in resumed._discriminator_optim.state_dict()["state"].values())

def test_epoch_batches_replay_an_epoch_and_give_each_rank_an_equal_disjoint_share(monkeypatch):
    """The decoder's training order is a function of (seed, epoch), so a resumed run can replay it,
    and each rank takes its own share of it (the decoder trains with ``use_distributed_sampler: false``)."""
    from megatron_speech.nemo_runs import EpochBatches

    def epoch(sampler: EpochBatches, number: int) -> list:
        sampler.set_epoch(number)
        return list(sampler)

    sampler = EpochBatches(11, 3, seed=5)
    first, again, second = epoch(sampler, 0), epoch(EpochBatches(11, 3, seed=5), 0), epoch(sampler, 1)
    assert first == again and len(first) == len(sampler) == 3  # 11 items: three whole batches of 3
    assert {e for batch in second for e, _ in batch} == {1}
    assert first != [[(0, i) for _, i in b] for b in second]
    assert epoch(EpochBatches(11, 3, seed=6), 0) != first
    assert [len(b) for b in epoch(EpochBatches(11, 3, seed=5, drop_last=False), 0)] == [3, 3, 3, 2]

    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        ranked = EpochBatches(11, 1, seed=5)
        shares.append([i for batch in epoch(ranked, 2) for _, i in batch])
        assert len(ranked) == 3
    seen = [i for share in shares for i in share]
    assert len(seen) == len(set(seen)) == 9  # 11 cut to 9: three each, none twice


def test_a_training_crop_depends_on_its_item_and_epoch_only(pairs):
    """Crops drawn from (seed, epoch, index): the same whatever came before, another in another epoch.
    A generator shared by the dataset (before) gave a resumed run, or each loader worker, other crops."""
    from megatron_speech.speech_decoder.data import TokenAudioPairs

    def dataset(seed: int = 3) -> TokenAudioPairs:
        return TokenAudioPairs(pairs / "tokens.jsonl", pairs / "manifest.jsonl", [], 16000, TOKEN_SAMPLES,
                               max_tokens=4, random_crop=True, seed=seed)

    def crops(data: TokenAudioPairs, keys: list) -> list:
        return [data[key]["tokens"].tolist() for key in keys]

    keys = [(epoch, index) for epoch in range(3) for index in range(6)]
    forward = crops(dataset(), keys)
    assert crops(dataset(), keys[::-1]) == forward[::-1]
    assert forward[:6] != forward[6:12] and crops(dataset(seed=4), keys[:6]) != forward[:6]
    assert all(len(c) == 4 for c in forward)


# ---- the NeMo model and the tools, on tones standing in for speech ------------------------------

TOKEN_SAMPLES = 1280  # 12.5 Hz at 16 kHz


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Six utterances (tones), two voices, with speech tokens of the right count and their record."""
    from megatron_speech.data import speech_tokens
    from megatron_speech.speech.audio import write_wav

    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    manifest, tokens = [], []
    for i in range(6):
        n = 8 + 2 * i
        t = np.arange(n * TOKEN_SAMPLES - 300) / 16000
        write_wav(root / f"u{i}.wav", (8000 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.int16), 16000)
        voice = ["flite:slt", "espeak:en-us"][i % 2]
        manifest.append({"id": f"u{i}", "audio_filepath": f"u{i}.wav", "duration": len(t) / 16000, "text": f"tone {i}",
                         "speaker": voice})
        tokens.append({"id": f"u{i}", "text": f"tone {i}", "speech_tokens": rng.integers(0, 16, n).tolist()})
    (root / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    (root / "tokens.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tokens))
    speech_tokens.write_info(root / "tokens.jsonl", {"name": "test", "model_type": "whisper_vq", "token_rate": 12.5,
                                                     "codebook_size": 16, "fingerprint": "0"})
    return root


def _config(pairs, tmp_path, head="flow"):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "examples" / "speech_decoder" / "conf" / "mini.yaml")
    small = {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "estimator_channels": 32,
             "estimator_layers": 1, "head": head, "flow_steps": 2, "mu_l1_weight": 1.0}
    cfg.model.net = OmegaConf.merge(cfg.model.net, small)
    for split in ("train_ds", "validation_ds"):
        cfg.model[split].tokens_filepath = str(pairs / "tokens.jsonl")
        cfg.model[split].manifest_filepath = str(pairs / "manifest.jsonl")
        cfg.model[split].batch_size = 3
    cfg.model.optim.sched.warmup_steps = 1
    cfg.trainer.update({"max_steps": 4, "val_check_interval": 4, "limit_val_batches": 1, "log_every_n_steps": 1,
                        "enable_progress_bar": False, "enable_model_summary": False})
    cfg.exp_manager.exp_dir = str(tmp_path)
    return cfg


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    """A tiny decoder trained four steps in this process (the tool's own run is a slow test)."""
    import lightning.pytorch as pl

    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    out = tmp_path_factory.mktemp("decoder")
    cfg = _config(pairs, out)
    trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(out))
    model = SpeechDecoderModel(cfg.model, trainer=trainer)
    trainer.fit(model)
    model.save_to(str(out / "tiny.nemo"))
    return out / "tiny.nemo"


def test_the_model_takes_voices_rate_and_codebook_from_its_training_data(trained):
    from megatron_speech.speech_decoder.decode import load_decoder

    cfg = load_decoder(str(trained)).cfg
    assert list(cfg.speakers) == ["espeak:en-us", "flite:slt"]  # the manifest's
    assert cfg.token_rate == 12.5 and cfg.net.codebook_size == 16  # the tokens' record


@pytest.mark.slow
def test_the_training_tool_writes_a_nemo_and_its_record_and_resumes(pairs, tmp_path):
    from omegaconf import OmegaConf

    cfg = _config(pairs, tmp_path)
    overrides = [f"model.net.{k}={v}" for k, v in cfg.model.net.items() if v is not None]
    overrides += [f"model.{s}.{k}={cfg.model[s][k]}" for s in ("train_ds", "validation_ds")
                  for k in ("tokens_filepath", "manifest_filepath", "batch_size")]
    overrides += [f"trainer.{k}={v}" for k, v in OmegaConf.to_container(cfg.trainer).items()
                  if k in ("max_steps", "val_check_interval", "limit_val_batches", "log_every_n_steps")]
    overrides += ["model.optim.sched.warmup_steps=1", f"exp_manager.exp_dir={tmp_path}", "name=tiny"]
    tool = [sys.executable, str(ROOT / "tools" / "train_speech_decoder.py"), *overrides]
    done = subprocess.run(tool, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "tiny" / "tiny.train.json").read_text())
    assert report["steps"] == 4 and not report["cut_short"] and report["val_mel_l1"] > 0
    assert (tmp_path / "tiny" / "tiny.nemo").is_file()
    longer = subprocess.run([*tool, "trainer.max_steps=6"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert longer.returncode == 0 and "resuming from" in longer.stdout, longer.stderr[-4000:]
    record = json.loads((tmp_path / "tiny" / "tiny.train.json").read_text())
    assert record["steps"] == 6 and record["resumed_from"].endswith("step=4.ckpt")
    # other model settings on the same folder are refused, naming them, and nothing is written
    other = subprocess.run([*tool, "trainer.max_steps=8", "model.optim.lr=0.5"], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
    assert other.returncode != 0 and "these differ: model.optim.lr" in other.stderr + other.stdout
    assert json.loads((tmp_path / "tiny" / "tiny.train.json").read_text()) == record


def test_a_run_that_crashed_mid_epoch_resumes_to_the_uninterrupted_runs_weights(pairs, tmp_path):
    """An 8-step run (three batches an epoch) that crashes after its step-4 checkpoint (epoch 1, one
    batch in) and is resumed from it ends with the weights of the same run uninterrupted: the data goes
    on from epoch 1's second batch and the flow's noise is drawn from the generators the uninterrupted
    run had (``nemo_runs.ExactResume``, the training tool's); a resume without it ends elsewhere."""
    import lightning.pytorch as pl

    from megatron_speech import nemo_runs
    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    cfg = _config(pairs, tmp_path, head="flow")
    cfg.model.train_ds.batch_size = 2
    cfg.trainer.update({"max_steps": 8, "val_check_interval": 4, "max_time": None})

    def fit(name: str, resume: str | None = None, crash: bool = False, exact: bool = True) -> dict:
        trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(tmp_path / name),
                             callbacks=[nemo_runs.ExactResume()] * exact + [CrashAt(4)] * crash)
        torch.manual_seed(0)  # every run starts from the same weights
        model = SpeechDecoderModel(cfg.model, trainer=trainer)
        trainer.fit(model, ckpt_path=resume)
        return {k: v.clone() for k, v in model.state_dict().items()}

    whole = fit("whole")
    step4, position = crash_and_find_checkpoint(fit, tmp_path, 4)
    assert (position["epoch"], position["batches"]) == (1, 1)
    resumed = fit("resumed", resume=str(step4))
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    # Lightning alone: epoch 1 from its start, other noise
    elsewhere = fit("plain", resume=str(step4), exact=False)
    assert [k for k in whole if not torch.equal(whole[k], elsewhere[k])]


def _two_rank_fit(pairs: str, root: str, name: str, resume: str | None, crash: bool,
                  exact: bool) -> dict | None:
    """One rank of a two-process decoder run (Lightning's DDP on gloo), one batch a step, three steps
    an epoch, each rank drawing its own noise; it returns its weights, or None when it crashed as told
    (after the step-4 checkpoint)."""
    import lightning.pytorch as pl

    from megatron_speech import nemo_runs
    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    cfg = _config(Path(pairs), Path(root), head="flow")
    cfg.model.train_ds.batch_size = 1
    cfg.trainer.update({"max_steps": 8, "val_check_interval": 4, "max_time": None, "devices": 2,
                        "strategy": "ddp"})
    trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(Path(root) / name),
                         callbacks=[nemo_runs.ExactResume()] * exact + [CrashAt(4)] * crash)
    torch.manual_seed(0)
    model = SpeechDecoderModel(cfg.model, trainer=trainer)
    torch.manual_seed(100 + int(os.environ["RANK"]))  # each rank its own noise
    try:
        trainer.fit(model, ckpt_path=resume)
    except Crashed:
        return None
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_two_rank_run_resumes_with_each_ranks_generators(pairs, tmp_path):
    """Each rank's generators are gathered into the checkpoint rank 0 writes and each rank takes its
    own back: a two-rank run crashed after its step-4 checkpoint and resumed ends with the uninterrupted
    run's weights (the ranks' noise differs, so one rank given another's, or none, ends elsewhere:
    the checkpoint's generators shuffled between the ranks do)."""
    from megatron_speech import nemo_runs
    from megatron_speech.testing.multiprocess import run_processes

    def fit(name: str, resume: Path | None = None, crash: bool = False) -> list:
        return run_processes(_two_rank_fit, 2, str(pairs), str(tmp_path), name, resume and str(resume),
                             crash, True)

    whole = fit("whole")
    assert all(torch.equal(whole[0][k], whole[1][k]) for k in whole[0])  # DDP keeps the ranks equal
    assert fit("crashed", crash=True) == [None, None]
    (step4,) = (tmp_path / "crashed").glob("**/*step=4.ckpt")
    checkpoint = torch.load(step4, map_location="cpu", weights_only=False)
    state = checkpoint[nemo_runs.ExactResume.KEY]
    assert (state["epoch"], state["batches"], len(state["generators"])) == (1, 1, 2)
    assert not torch.equal(state["generators"][0]["torch"], state["generators"][1]["torch"])
    resumed = fit("resumed", resume=step4)
    assert [k for k in whole[0] if not torch.equal(whole[0][k], resumed[0][k])] == []
    state["generators"].reverse()  # each rank given the other's
    torch.save(checkpoint, tmp_path / "swapped.ckpt")
    swapped = fit("swapped", resume=tmp_path / "swapped.ckpt")
    assert [k for k in whole[0] if not torch.equal(whole[0][k], swapped[0][k])]


@pytest.mark.slow
def test_the_training_tool_starts_an_adversarial_run_from_another_decoders_weights(pairs, trained, tmp_path):
    """``init_from_nemo_model`` loads the decoder's weights (at a learning rate of ~0 they come out as
    they went in, unlike a fresh start's), and the trainer's gradient clipping, which Lightning
    refuses with two optimizers, is left to the model."""
    from megatron_speech.speech_decoder.decode import load_decoder

    cfg = _config(pairs, tmp_path, head="flow")
    overrides = [f"model.net.{k}={v}" for k, v in cfg.model.net.items() if v is not None and k != "head"]
    overrides += [f"model.{s}.{k}={cfg.model[s][k]}" for s in ("train_ds", "validation_ds")
                  for k in ("tokens_filepath", "manifest_filepath", "batch_size")]
    overrides += ["model.net.head=flow", "trainer.max_steps=2", "trainer.val_check_interval=2",
                  "trainer.limit_val_batches=1", "model.optim.lr=1e-12", "model.optim.sched.min_lr=0",
                  "model.optim.sched.warmup_steps=1", "model.adversarial.weight=0.5", "model.adversarial.lr=1e-12",
                  f"exp_manager.exp_dir={tmp_path}"]
    tool = [sys.executable, str(ROOT / "tools" / "train_speech_decoder.py"), *overrides]
    refused = subprocess.run([*tool, "name=flow"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert refused.returncode != 0 and "adversarial needs the l1 head" in refused.stderr
    overrides = [o for o in tool if not o.startswith("model.net.head")] + ["model.net.head=l1"]
    start = load_decoder(str(trained)).net.state_dict()
    runs = {}
    for name, init in (("warm", [f"init_from_nemo_model={trained}"]), ("cold", [])):
        done = subprocess.run([*overrides, f"name={name}", *init], capture_output=True, text=True, timeout=600,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr[-4000:]
        assert ("starting from the weights of" in done.stdout) == bool(init)
        runs[name] = load_decoder(str(tmp_path / name / f"{name}.nemo")).net.state_dict()
    shared = [k for k in runs["warm"] if k in start]  # the flow head's estimator is not an l1 model's
    assert len(shared) == len(runs["warm"])
    for key in shared:
        assert torch.allclose(runs["warm"][key], start[key], atol=1e-6), key
    assert not all(torch.allclose(runs["cold"][k], start[k], atol=1e-6) for k in shared)

def test_the_evaluation_checks_streaming_and_says_when_a_decoder_does_not_stream(trained):
    from megatron_speech.evaluation.decoded_speech import streaming_check
    from megatron_speech.speech_decoder.decode import load_decoder

    decoder = load_decoder(str(trained))
    rows = [{"tokens": [i % 16 for i in range(n)], "decoder_voice": "flite:slt"} for n in (7, 16, 23)]
    streamed = streaming_check(decoder, rows)
    assert streamed["utterances"] == 3 and streamed["block_tokens"] == decoder.net_settings.block_size > 0
    assert streamed["max_abs_difference"] < 1e-4 and streamed["first_block_seconds"] > 0
    decoder.net_settings.block_size = 0  # full attention: an offline decoder (decoding still works)
    assert decoder.decode([rows[0]["tokens"]], [0])[0].shape[-1] == 7 * 5
    offline = streaming_check(decoder, rows)
    assert offline["max_abs_difference"] is None and offline["utterances"] == 0

def test_nemo_round_trip_decodes_the_same(trained, tmp_path):
    from megatron_speech.speech_decoder.decode import load_decoder

    a = load_decoder(str(trained))
    a.save_to(str(tmp_path / "again.nemo"))
    b = load_decoder(str(tmp_path / "again.nemo"))
    assert list(b.cfg.speakers) == list(a.cfg.speakers) and b.net_settings == a.net_settings
    codes = [[1, 2, 3, 4, 5, 6, 7], [9, 9, 9]]
    first, second = a.decode(codes, [0, 1]), b.decode(codes, [0, 1])
    assert [tuple(m.shape) for m in first] == [(80, 35), (80, 15)]  # 5 frames a token
    for x, y in zip(first, second):
        torch.testing.assert_close(x, y)


def test_a_decoder_of_25_hz_tokens_crops_on_frames_trains_and_decodes(pairs, tmp_path):
    """The same audio with twice the tokens (25 Hz): the model takes the group (5 frames, 2 tokens)
    from the tokens' record, crops start on an even token (a whole frame), and Lightning trains it."""
    import lightning.pytorch as pl

    from megatron_speech.data import speech_tokens
    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    records = [json.loads(line) for line in (pairs / "tokens.jsonl").read_text().splitlines()]
    for record in records:
        record["speech_tokens"] = [c for c in record["speech_tokens"] for _ in range(2)]
    tokens = tmp_path / "tokens25.jsonl"
    tokens.write_text("".join(json.dumps(r) + "\n" for r in records))
    speech_tokens.write_info(tokens, {"name": "test", "model_type": "whisper_vq", "token_rate": 25.0,
                                      "codebook_size": 16, "fingerprint": "0"})
    cfg = _config(pairs, tmp_path / "run", head="l1")
    for split in ("train_ds", "validation_ds"):
        cfg.model[split].tokens_filepath = str(tokens)
        cfg.model[split].max_tokens = 7  # odd: a crop may end inside a group
    cfg.model.net.block_size = 4
    trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(tmp_path / "run"))
    model = SpeechDecoderModel(cfg.model, trainer=trainer)
    assert (model.net_settings.frames_per_group, model.net_settings.tokens_per_group, model.samples_per_token) == (5, 2, 640)
    data = model._train_dl.dataset
    starts = set()
    for _ in range(20):
        for index in range(len(data)):
            item = data[index]
            codes = data.pairs[index]["speech_tokens"]
            start = next((s for s in range(0, len(codes), 2) if codes[s: s + 7] == item["tokens"].tolist()), None)
            assert start is not None, f"a crop of {data.pairs[index]['id']} starts on no even token"
            starts.add(start)
            assert item["audio"].numel() == 7 * 640
    assert len(starts) > 2  # random crops
    trainer.fit(model)
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["val_mel_l1"].item()))
    mels = model.decode([[1] * 7, [2] * 8], [0, 1])
    assert [m.shape for m in mels] == [(80, 17), (80, 20)]


def test_a_token_count_that_does_not_fit_the_audio_is_named(pairs, tmp_path):
    from megatron_speech.data.corpus import CorpusError
    from megatron_speech.speech_decoder.data import TokenAudioPairs

    lines = (pairs / "tokens.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["speech_tokens"] = record["speech_tokens"] * 2
    (tmp_path / "tokens.jsonl").write_text("\n".join(lines[:2] + [json.dumps(record)]) + "\n")
    data = TokenAudioPairs(tmp_path / "tokens.jsonl", pairs / "manifest.jsonl", ["flite:slt"], 16000, TOKEN_SAMPLES,
                           50, random_crop=False)
    assert data[0]["audio"].numel() == 8 * TOKEN_SAMPLES  # padded to the tokens' span
    with pytest.raises(CorpusError, match=r"tokens\.jsonl:3: id 'u2': 24 speech tokens .*manifest\.jsonl line 3"):
        data[2]


class _VectorTokenizer:
    """Stands in for the Whisper tokenizer's ``continuous_vectors``: one vector a token, whose first
    value is the token's index and second the loudness of its audio (so a crop can be checked)."""

    def __init__(self, dim: int = 6):
        from types import SimpleNamespace

        self.cfg, self.dim, self.calls = SimpleNamespace(sample_rate=16000), dim, 0

    def continuous_vectors(self, audio, lengths):
        self.calls += 1
        out = []
        for wave, n in zip(audio, lengths.tolist()):
            tokens = -(-n // TOKEN_SAMPLES)
            rows = torch.zeros(tokens, self.dim)
            rows[:, 0] = torch.arange(tokens)
            rows[:, 1] = torch.stack([wave[j * TOKEN_SAMPLES: (j + 1) * TOKEN_SAMPLES].abs().mean() for j in range(tokens)])
            out.append(rows)
        return out


def test_a_vector_store_keeps_each_utterances_vectors_and_the_crops_line_up(pairs, tmp_path):
    from megatron_speech.data.corpus import CorpusError
    from megatron_speech.speech_decoder.data import TokenAudioPairs
    from megatron_speech.speech_decoder.vector_store import VectorStore, write_store

    tokenizer = _VectorTokenizer()
    meta = write_store(tokenizer, pairs / "manifest.jsonl", tmp_path / "vectors", batch_size=4)
    assert (meta["dim"], sorted(meta["index"]), meta["rows"]) == (6, [f"u{i}" for i in range(6)], sum(8 + 2 * i for i in range(6)))
    assert write_store(tokenizer, pairs / "manifest.jsonl", tmp_path / "vectors") == meta and tokenizer.calls == 2  # done: not redone
    store = VectorStore(tmp_path / "vectors")
    assert store["u3"].shape == (14, 6) and store["u3"].dtype == torch.float32
    data = TokenAudioPairs(pairs / "tokens.jsonl", pairs / "manifest.jsonl", ["flite:slt"], 16000, TOKEN_SAMPLES, 5,
                           random_crop=True, seed=3, vector_store=str(tmp_path / "vectors"))
    starts = []
    for index in range(6):
        item, codes = data[index], data.pairs[index]["speech_tokens"]
        starts.append(int(item["vectors"][0, 0]))
        assert item["vectors"][:, 0].tolist() == list(range(starts[-1], starts[-1] + 5))
        assert item["tokens"].tolist() == codes[starts[-1]: starts[-1] + 5]  # the tokens' crop, the vectors' crop
        loudness = torch.stack([item["audio"][j * TOKEN_SAMPLES: (j + 1) * TOKEN_SAMPLES].abs().mean() for j in range(5)])
        torch.testing.assert_close(item["vectors"][:4, 1], loudness[:4], atol=1e-3, rtol=1e-3)  # and the audio's
    assert len(set(starts)) > 1  # random crops
    short = _VectorTokenizer()
    short.continuous_vectors = lambda audio, lengths: [v[:-1] for v in _VectorTokenizer().continuous_vectors(audio, lengths)]
    write_store(short, pairs / "manifest.jsonl", tmp_path / "short")
    data = TokenAudioPairs(pairs / "tokens.jsonl", pairs / "manifest.jsonl", ["flite:slt"], 16000, TOKEN_SAMPLES, 5,
                           random_crop=False, vector_store=str(tmp_path / "short"))
    with pytest.raises(CorpusError, match=r"tokens\.jsonl:2: id 'u1': 10 tokens but 9 vectors in .*short\.f16"):
        data[1]
    with pytest.raises(FileNotFoundError, match="no complete vector store"):
        VectorStore(tmp_path / "missing")
    from megatron_speech.jobs import JobError, exclusive_lock

    with exclusive_lock(tmp_path / "busy.lock", "held"):  # another writer of the same store
        with pytest.raises(JobError, match=r"busy\.f16: the vector store is being written by another process"):
            write_store(_VectorTokenizer(), pairs / "manifest.jsonl", tmp_path / "busy")
    assert not (tmp_path / "busy.json").exists()


def test_a_decoder_trains_on_vectors_and_the_evaluation_feeds_it_vectors(pairs, tmp_path):
    import lightning.pytorch as pl

    from megatron_speech.evaluation.decoded_speech import decoder_input, streaming_check
    from megatron_speech.speech_decoder.decode import load_decoder
    from megatron_speech.speech_decoder.model import SpeechDecoderModel
    from megatron_speech.speech_decoder.vector_store import write_store

    tokenizer = _VectorTokenizer()
    write_store(tokenizer, pairs / "manifest.jsonl", tmp_path / "vectors")
    cfg = _config(pairs, tmp_path / "run", head="l1")
    for split in ("train_ds", "validation_ds"):
        cfg.model[split].vector_store = str(tmp_path / "vectors")
    trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(tmp_path / "run"))
    model = SpeechDecoderModel(cfg.model, trainer=trainer)
    trainer.fit(model)
    model.save_to(str(tmp_path / "vectors.nemo"))
    decoder = load_decoder(str(tmp_path / "vectors.nemo"))
    assert decoder.cfg.net.feature_dim == 6 and not hasattr(decoder.net, "token_embedding")
    audio = torch.sin(torch.arange(7 * TOKEN_SAMPLES) / 10.0)
    vectors = decoder_input(decoder, tokenizer, audio, tokens=[1] * 7)
    assert vectors.shape == (7, 6)
    assert decoder.decode([vectors], [0])[0].shape == (80, 35)
    with pytest.raises(ValueError, match="this decoder takes vectors"):
        decoder.decode([[1] * 7], [0])
    assert streaming_check(decoder, [{"tokens": [1] * 7, "decoder_voice": "flite:slt"}])["max_abs_difference"] is None
    token_decoder = SpeechDecoderModel(_config(pairs, tmp_path / "tokens", head="l1").model)
    assert decoder_input(token_decoder, tokenizer, audio, tokens=[1] * 7) == [1] * 7


def _decode(pairs, output, model_path, *extra, env=None):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "decode_speech.py"), str(pairs / "tokens.jsonl"),
                           str(output), "--model", str(model_path), "--griffin-lim-iterations", "4", "--batch-size", "2",
                           *extra], capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **(env or {})})


def _config_for(pairs, output, **kw):
    from megatron_speech.speech_decoder.decode import DecodeConfig

    return DecodeConfig(str(pairs / "tokens.jsonl"), str(output), "unused.nemo", griffin_lim_iterations=4, batch_size=2,
                        **kw)


def test_decoding_writes_a_speech_manifest_of_exact_lengths_and_resumes(pairs, trained, tmp_path):
    from megatron_speech.speech.audio import read_wav
    from megatron_speech.speech_decoder.decode import decode_tokens, load_decoder

    model = load_decoder(str(trained))
    whole = decode_tokens(_config_for(pairs, tmp_path / "whole"), model)
    assert whole["written"] == 6 and whole["real_time_factor"] > 0
    # shard 0 of 2 completes chunks 0, 2, ...; a torn part of chunk 1 is left as a killed writer leaves it
    first = decode_tokens(_config_for(pairs, tmp_path / "cut", chunk_bytes=200, shard_index=0, num_shards=2), model)
    parts = tmp_path / "cut" / "job" / "parts"
    assert first["written"] >= 2 and not (tmp_path / "cut" / "manifest.jsonl").exists()
    kept = {p: p.stat().st_mtime_ns for p in parts.glob("*.jsonl")}
    (parts / "00001.jsonl.999.tmp").write_text("torn")
    decode_tokens(_config_for(pairs, tmp_path / "cut", chunk_bytes=200, shard_index=1, num_shards=2), model)
    assert (tmp_path / "cut" / "manifest.jsonl").read_text() == (tmp_path / "whole" / "manifest.jsonl").read_text()
    assert not parts.exists() and all(m == kept[p] for p, m in kept.items() if p.exists())
    lines = [json.loads(x) for x in (tmp_path / "cut" / "manifest.jsonl").read_text().splitlines()]
    tokens = [json.loads(x) for x in (pairs / "tokens.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [t["id"] for t in tokens]
    for line, record in zip(lines, tokens):
        samples, rate = read_wav(tmp_path / "cut" / line["audio_filepath"])
        assert rate == 16000 and len(samples) == TOKEN_SAMPLES * len(record["speech_tokens"])
        assert line["speaker"] == "espeak:en-us"  # no speaker in the record: the first voice
        whole_samples, _ = read_wav(tmp_path / "whole" / line["audio_filepath"])
        # deterministic (the fixed noise, Griffin-Lim's fixed first phases) up to float rounding in other batches
        assert np.abs(samples.astype(int) - whole_samples).max() <= 100, np.abs(samples.astype(int) - whole_samples).max()
    assert decode_tokens(_config_for(pairs, tmp_path / "cut"), model)["already_done"]


@pytest.mark.slow
def test_decode_tool_resumes_after_a_kill(pairs, trained, tmp_path):
    from megatron_speech.jobs import CRASH_AFTER_DOCS_ENV

    crashed = _decode(pairs, tmp_path / "out", trained, env={CRASH_AFTER_DOCS_ENV: "3"})
    assert crashed.returncode != 0 and not (tmp_path / "out" / "manifest.jsonl").exists()
    resumed = _decode(pairs, tmp_path / "out", trained)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["written"] == 6
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 6


def test_bad_token_records_are_named_by_line_or_skipped(pairs, trained, tmp_path):
    from megatron_speech.speech_decoder.decode import DecodeConfig, decode_tokens, load_decoder
    from megatron_speech.data.corpus import CorpusError

    model = load_decoder(str(trained))
    lines = (pairs / "tokens.jsonl").read_text().splitlines()[:3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps({"id": "x", "speech_tokens": [1, 99]}), lines[1], "{broken"]) + "\n")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: speech token 99 is not a code of this decoder"):
        decode_tokens(DecodeConfig(str(bad), str(tmp_path / "stop"), "unused.nemo", griffin_lim_iterations=2), model)
    stats = decode_tokens(DecodeConfig(str(bad), str(tmp_path / "skip"), "unused.nemo", griffin_lim_iterations=2,
                                       on_error="skip"), model)
    assert stats["written"] == 2 and stats["skipped"] == 2
    errors = [json.loads(x) for x in (tmp_path / "skip" / "manifest.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["record"] for e in errors] == [2, 4]


def test_the_full_config_has_glm_4_voice_shapes():
    """GLM-4-Voice scale (22.05 kHz, 80 bins, 16,384 codes at 12.5 Hz): built and run for shape only."""
    from omegaconf import OmegaConf

    from megatron_speech.config_loader import build

    cfg = OmegaConf.load(ROOT / "examples" / "speech_decoder" / "conf" / "full.yaml")
    mel = build(MelSettings, OmegaConf.to_container(cfg.model.mel), "model.mel")
    assert (mel.sample_rate, mel.n_mels, mel.token_frames(12.5)) == (22050, 80, (7, 1))
    net = OmegaConf.to_container(cfg.model.net)
    net.update(codebook_size=16384, num_speakers=4, frames_per_group=7, n_mels=80)
    model = TokenToMel(build(TokenToMelSettings, net, "model.net")).eval()
    tokens = torch.randint(0, 16384, (1, 13))
    assert tuple(model.condition(tokens, torch.tensor([13]), torch.tensor([3])).shape) == (1, 80, 91)
    assert 20e6 < sum(p.numel() for p in model.parameters()) < 60e6


def test_the_25_hz_config_is_the_mini_recipe_in_seconds():
    """``--config-name mini_25hz`` (Hydra's defaults list on mini.yaml) keeps the crops, streaming
    blocks and look-ahead of the mini recipe in seconds, blocks hold whole groups of 2 tokens, and
    nothing else changes but where its tokens are and the time guard."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from megatron_speech.config_loader import build, differing_keys

    with initialize_config_dir(config_dir=str(ROOT / "examples" / "speech_decoder" / "conf"), version_base=None):
        slow, fast = compose("mini"), compose("mini_25hz")
    assert fast.model.train_ds.max_tokens / 25 == slow.model.train_ds.max_tokens / 12.5 == 4.0
    assert fast.model.validation_ds.max_tokens / 25 == slow.model.validation_ds.max_tokens / 12.5
    assert fast.model.net.block_size / 25 == slow.model.net.block_size / 12.5
    assert fast.model.net.lookahead / 25 == slow.model.net.lookahead / 12.5
    frames, tokens = build(MelSettings, OmegaConf.to_container(fast.model.mel), "model.mel").token_frames(25)
    assert (frames, tokens) == (5, 2) and fast.model.net.block_size % tokens == 0
    assert fast.model.net.upsample == "linear"
    differing = differing_keys(OmegaConf.to_container(slow, resolve=True), OmegaConf.to_container(fast, resolve=True))
    assert set(differing) == {
        "name", "exp_manager.name", "model.net.upsample", "model.net.block_size", "model.net.lookahead",
        "model.train_ds.tokens_filepath", "model.train_ds.max_tokens", "model.validation_ds.tokens_filepath",
        "model.validation_ds.max_tokens", "trainer.max_time"}


# ---- the vocoders ---------------------------------------------------------------------------------


def _hifigan_config(mel: MelSettings | None = None, small: bool = False, pairs: Path | None = None):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "examples" / "speech_decoder" / "conf" / "hifigan_full.yaml")
    if mel is not None:
        cfg.model.mel = OmegaConf.create({k: getattr(mel, k) for k in cfg.model.mel})
    if small:  # hop 256 = 8 x 8 x 4, a few channels
        cfg.model.generator.update({"upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
                                    "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                                    "resblock_dilation_sizes": [[1, 3, 5]]})
        cfg.model.train_ds.dataset.n_samples = 32 * cfg.model.mel.hop_length
    for split in ("train_ds", "validation_ds") if pairs else ():  # NeMo's dataset reads our manifest
        cfg.model[split].dataset.dataset_meta.corpus = {"manifest_path": str(pairs / "manifest.jsonl"),
                                                        "audio_dir": str(pairs)}
        cfg.model[split].dataset.min_duration = 0.1
        cfg.model[split].dataloader_params.num_workers = 0
    return cfg


def test_the_hifigan_hears_the_frames_the_decoder_makes():
    """NeMo's preprocessor, as vocoder.py writes it, computes mel.py's log mels (half a hop later,
    the exact-padding framing): a HiFi-GAN trained on its frames can voice the decoder's."""
    from nemo.collections.asr.parts.preprocessing.features import FilterbankFeatures

    from megatron_speech.speech_decoder.vocoder import hifigan_preprocessor

    mel = MelSettings(sample_rate=22050, hop_length=252)
    settings = {k: v for k, v in hifigan_preprocessor(mel).items() if k != "_target_"}
    nemo_mels = FilterbankFeatures(**settings).eval()
    t = torch.arange(100 * mel.hop_length) / mel.sample_rate
    audio = (0.3 * torch.sin(2 * np.pi * 220 * t) * torch.sin(2 * np.pi * 3 * t)
             + 0.05 * torch.randn(len(t), generator=torch.Generator().manual_seed(0)))[None].float()
    theirs, _ = nemo_mels(audio, torch.tensor([audio.shape[1]]))
    ours = MelSpectrogram(mel)(audio[:, mel.hop_length // 2:]) * mel.std + mel.mean
    assert theirs.shape[-1] == 100  # exact padding: a frame a hop
    inner = slice(2, 98)
    assert (theirs[..., inner] - ours[..., inner]).abs().max() < 0.05
    assert theirs[..., inner].std() > 0.5  # the signal is not silence


def test_the_full_hifigan_config_turns_a_frame_into_a_hop():
    from hydra.utils import instantiate

    from megatron_speech.speech_decoder.vocoder import hifigan_model_config

    cfg = _hifigan_config()
    model = hifigan_model_config(cfg.model)
    assert model.preprocessor.n_window_stride == 252 and model.preprocessor.sample_rate == 22050
    generator = instantiate(model.generator).eval()
    with torch.no_grad():
        audio = generator(x=torch.randn(1, 80, 13 * 7))
    assert audio.shape[-1] == 13 * 7 * 252  # 13 tokens at 12.5 Hz, 22.05 kHz
    cfg.model.generator.upsample_rates = [8, 8, 4]
    with pytest.raises(ValueError, match="not the hop 252"):
        hifigan_model_config(cfg.model)


def _saved_hifigan(path: Path, mel: MelSettings, pairs: Path) -> Path:
    from nemo.collections.tts.models import HifiGanModel

    from megatron_speech.speech_decoder.vocoder import hifigan_model_config

    import lightning.pytorch as pl

    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         default_root_dir=str(path.parent))  # NeMo builds the datasets with the model
    HifiGanModel(hifigan_model_config(_hifigan_config(mel, small=True, pairs=pairs).model), trainer).save_to(str(path))
    return path


@pytest.mark.slow  # trains a HiFi-GAN
def test_decoding_with_a_hifigan_and_refusing_one_of_other_frames(pairs, trained, tmp_path):
    from megatron_speech.speech.audio import read_wav
    from megatron_speech.speech_decoder.decode import DecodeConfig, decode_tokens, load_decoder

    model = load_decoder(str(trained))
    vocoder = _saved_hifigan(tmp_path / "hifigan.nemo", model.mel_settings, pairs)
    config = DecodeConfig(str(pairs / "tokens.jsonl"), str(tmp_path / "out"), "unused.nemo", vocoder=str(vocoder))
    assert decode_tokens(config, model)["written"] == 6
    tokens = [json.loads(x) for x in (pairs / "tokens.jsonl").read_text().splitlines()]
    for line, record in zip((tmp_path / "out" / "manifest.jsonl").read_text().splitlines(), tokens):
        samples, rate = read_wav(tmp_path / "out" / json.loads(line)["audio_filepath"])
        assert rate == 16000 and len(samples) == TOKEN_SAMPLES * len(record["speech_tokens"])
    other = MelSettings(fmax=7600.0)
    wrong = _saved_hifigan(tmp_path / "other.nemo", other, pairs)
    with pytest.raises(ValueError, match=r"other\.nemo: this HiFi-GAN's mel frames are not .*highfreq: vocoder 7600"):
        decode_tokens(DecodeConfig(str(pairs / "tokens.jsonl"), str(tmp_path / "x"), "unused.nemo",
                                   vocoder=str(wrong)), model)


@pytest.mark.slow
def test_the_training_tool_trains_a_hifigan_on_a_speech_manifest(pairs, tmp_path):
    """One step of a small HiFi-GAN on the tones (NeMo's dataset reading our manifest, relative paths)."""
    tool = [sys.executable, str(ROOT / "tools" / "train_speech_decoder.py"), "--config-name", "hifigan_full",
            "model.generator.upsample_rates=[8,8,4]", "model.generator.upsample_kernel_sizes=[16,16,8]",
            "model.generator.upsample_initial_channel=16", "model.generator.resblock_kernel_sizes=[3]",
            "model.generator.resblock_dilation_sizes=[[1,3,5]]", "model.mel.sample_rate=16000",
            "model.mel.hop_length=256", "model.train_ds.dataset.n_samples=2048", "model.train_ds.dataset.min_duration=0.1",
            "model.validation_ds.dataset.min_duration=0.1", "model.train_ds.dataloader_params.batch_size=2",
            "model.train_ds.dataloader_params.num_workers=0", "model.validation_ds.dataloader_params.num_workers=0",
            "model.validation_ds.dataloader_params.batch_size=1",
            *[f"model.{s}.dataset.dataset_meta.corpus.{k}={v}" for s in ("train_ds", "validation_ds")
              for k, v in (("manifest_path", pairs / "manifest.jsonl"), ("audio_dir", pairs))],
            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.max_steps=4",
            "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            f"exp_manager.exp_dir={tmp_path}", "name=voc"]
    done = subprocess.run(tool, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "voc" / "voc.train.json").read_text())
    assert report["model"] == "hifigan" and report["steps"] >= 2 and report["val_mel_l1"] > 0
    assert (tmp_path / "voc" / "voc.nemo").is_file()


def test_the_mel_damage_probe_damages_as_it_says():
    """examples/speech_decoder/mel_damage.py: a token's frames share their mean, blurs keep the level and
    spread an impulse over their width (in time or across bins), the noise has the asked mean size."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mel_damage", ROOT / "examples/speech_decoder/mel_damage.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    mel = torch.randn(8, 23)
    flat = probe.token_mean(mel)
    for start in range(0, 23, 5):
        block = flat[:, start:start + 5]
        assert torch.allclose(block, block[:, :1].expand_as(block))
        assert torch.allclose(block[:, 0], mel[:, start:start + 5].mean(-1))
    half = probe.damages_at(2.5)["token_mean"](mel, 0)  # 25 Hz: tokens of 3 and 2 frames in turn
    for start, end in ((0, 3), (3, 5), (5, 8), (8, 10), (20, 23)):
        assert torch.allclose(half[:, start:end], mel[:, start:end].mean(-1, keepdim=True).expand(-1, end - start))
    assert not torch.allclose(half[:, 2], half[:, 3])
    assert torch.allclose(probe.blur(torch.full((8, 23), 2.0), 5, -1), torch.full((8, 23), 2.0))
    impulse = torch.zeros(8, 23)
    impulse[4, 11] = 1.0
    for dim, axis in ((-1, 1), (0, 0)):
        spread = probe.blur(impulse, 3, dim)
        assert spread.shape == impulse.shape and (spread > 0).sum(axis).max() == 3
        assert torch.isclose(spread.sum(), torch.tensor(1.0))
    assert (probe.blur(impulse, 3, -1)[4, 10:13] > 0).all() and (probe.blur(impulse, 3, 0)[3:6, 11] > 0).all()
    assert torch.allclose(probe.sharpen(torch.full((8, 23), 2.0), 1.0), torch.full((8, 23), 2.0))
    step = torch.zeros(1, 10)
    step[:, 5:] = 1.0
    steeper = probe.sharpen(step, 1.0)  # overshoots on both sides of the step, flat far from it
    assert steeper[0, 4] < 0 and steeper[0, 5] > 1 and steeper[0, 0] == 0 and steeper[0, 9] == 1
    big = torch.zeros(80, 2000)
    assert abs(float((probe.noise(big, 0.18, 0) - big).abs().mean()) - 0.18) < 0.005
