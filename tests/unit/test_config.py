from __future__ import annotations

from pathlib import Path

import pytest

from voxloop.pipeline.config import DEFAULT_CONFIG, load_settings
from voxloop.pipeline.errors import ConfigError


def test_the_shipped_config_loads_and_matches_the_defaults() -> None:
    settings = load_settings(DEFAULT_CONFIG, env={})
    assert settings.stt.model == "whisper-tiny.en"
    assert settings.llm.backend == "embedded"
    assert settings.vad.hangover_ms == 500
    assert settings.wake.words[0].name == "hey_jarvis"


def test_env_overrides_are_typed_and_nested() -> None:
    env = {
        "VOXLOOP_LLM__BACKEND": "openai",
        "VOXLOOP_LLM__BASE_URL": "http://127.0.0.1:9999/v1",
        "VOXLOOP_VAD__HANGOVER_MS": "350",
        "VOXLOOP_WAKE__ENABLED": "true",
        "UNRELATED": "x",
    }
    settings = load_settings(DEFAULT_CONFIG, env=env)
    assert settings.llm.backend == "openai"
    assert settings.llm.base_url == "http://127.0.0.1:9999/v1"
    assert settings.vad.hangover_ms == 350
    assert settings.wake.enabled is True


def test_a_bad_value_names_the_key_and_the_value(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("vad:\n  hangover_ms: soon\n")
    with pytest.raises(ConfigError, match=r"vad\.hangover_ms = 'soon'"):
        load_settings(path, env={})


def test_an_env_override_with_a_bad_value_is_reported_like_a_file_value() -> None:
    with pytest.raises(ConfigError, match=r"llm\.backend = 'gpt'.*'embedded' or 'openai'"):
        load_settings(DEFAULT_CONFIG, env={"VOXLOOP_LLM__BACKEND": "gpt"})


def test_a_misspelt_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("stt:\n  beam: 5\n")
    with pytest.raises(ConfigError, match=r"stt\.beam: unknown setting"):
        load_settings(path, env={})


def test_cross_field_rules_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("vad:\n  start_threshold: 0.3\n  end_threshold: 0.6\n")
    with pytest.raises(ConfigError, match="end_threshold must not exceed start_threshold"):
        load_settings(path, env={})


def test_broken_yaml_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("vad: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_a_wake_word_without_a_threshold_takes_its_measured_default() -> None:
    from voxloop.pipeline.config import WAKE_THRESHOLDS, WakeSettings

    words = WakeSettings.model_validate({"words": [{"name": "alexa"}, {"name": "hey_mycroft", "threshold": 0.4}]})
    assert [w.threshold for w in words.words] == [WAKE_THRESHOLDS["alexa"], 0.4]  # a given threshold wins
    assert WakeSettings.model_validate({"words": [{"name": "/models/mine.onnx"}]}).words[0].threshold == 0.5
