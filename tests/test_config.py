"""The one config loader: YAML, includes, --set overrides, unknown keys refused with the key named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_speech import config_loader as config
from megatron_speech.synthesis.pipeline import SynthesisConfig
from megatron_speech.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _run_yaml(tmp_path, **extra) -> Path:
    values = {"tokenizer": "tok", "data": {"sources": [{"prefix": "p"}]}, **extra}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(values))
    return path


def test_a_misspelled_section_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(config.ConfigError, match=r"run\.yaml: unknown key chekpoint .*'checkpoint'"):
        TrainConfig.from_yaml(_run_yaml(tmp_path), ["chekpoint.dir=/tmp/x"])


@pytest.mark.parametrize("override, named", [
    ("model.hiden_size=64", "model.hiden_size"),
    ("schedule.step=5", "schedule.step"),
    ("data.sources=[{prefix: p, wieght: 1}]", r"data.sources\[0\].wieght"),
])
def test_unknown_nested_keys_are_named_with_their_section(tmp_path, override, named):
    with pytest.raises(config.ConfigError, match=rf"unknown key {named} \(keys of "):
        TrainConfig.from_yaml(_run_yaml(tmp_path), [override])


def test_overrides_and_includes_build_typed_sections(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("schedule: {steps: 3, seed: 9}\noptim: {lr: 0.5}\n")
    path = _run_yaml(tmp_path, include="base.yaml", schedule={"steps": 4})
    run = TrainConfig.from_yaml(path, ["optim.lr=0.25", "data.sources=[{prefix: a, loss: audio}]"])
    assert (run.schedule.steps, run.schedule.seed, run.optim.lr) == (4, 9, 0.25)  # inline beats the include
    assert run.data.sources[0].loss == "audio" and type(run.data.sources[0]).__name__ == "DataSource"


def test_include_cycles_and_bad_files_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(config.ConfigError, match="included from itself"):
        config.read_yaml("a.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(config.ConfigError, match="list.yaml: expected a mapping"):
        config.read_yaml("list.yaml")
    with pytest.raises(config.ConfigError, match="config file not found: nope.yaml"):
        config.read_yaml("nope.yaml")
    with pytest.raises(config.ConfigError, match="--set needs KEY=VALUE"):
        config.parse_overrides(["schedule.steps"])


def test_a_value_check_names_its_section(tmp_path):
    with pytest.raises(config.ConfigError, match=r"data\.sources\[0\]: .*loss must be one of"):
        TrainConfig.from_yaml(_run_yaml(tmp_path), ["data.sources=[{prefix: p, loss: everything}]"])


def test_synthesis_config_refuses_unknown_keys_too(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({"inputs": ["x"], "output_dir": "o", "checkpoint": "c", "tokenizer": "t",
                                "spans": {"ratio": 0.3, "mean_wrds": 4}}))
    with pytest.raises(config.ConfigError, match=r"unknown key spans\.mean_wrds"):
        config.load(SynthesisConfig, path)


def test_the_tool_reports_a_bad_key_as_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "synthesize_interleaved.py"), "--config",
                             str(_run_yaml(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown key" in result.stderr and "Traceback" not in result.stderr
