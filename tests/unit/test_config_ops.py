"""The settings of issue 15: loader_workers (auto | 0..16), warm_trainers and metrics_public (booleans)."""

from __future__ import annotations

import pytest

from gpjobs.config import ConfigError, load_config


def test_defaults():
    config = load_config(env={})
    assert (config.loader_workers, config.warm_trainers, config.metrics_public) == ("auto", True, False)


def test_from_the_environment_and_the_file(tmp_path):
    env = {"GPJOBS_LOADER_WORKERS": "3", "GPJOBS_WARM_TRAINERS": "false", "GPJOBS_METRICS_PUBLIC": "true"}
    config = load_config(env=env)
    assert (config.loader_workers, config.warm_trainers, config.metrics_public) == (3, False, True)
    path = tmp_path / "c.toml"
    path.write_text('loader_workers = "AUTO"\nwarm_trainers = true\n')
    assert load_config(path, env={}).loader_workers == "auto"


@pytest.mark.parametrize("value", ["-1", "17", "many", "2.5", True])
def test_bad_loader_workers_says_what_is_allowed(value):
    with pytest.raises(ConfigError, match="loader_workers .*auto.* 0 to 16"):
        load_config(overrides={"loader_workers": value}, env={})


def test_bad_boolean_names_the_setting():
    with pytest.raises(ConfigError):
        load_config(overrides={"warm_trainers": "sometimes"}, env={})
