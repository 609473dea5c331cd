"""Config loading: precedence, derived paths, fail-fast validation, and the example file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpjobs.config import ConfigError, load_config


def test_defaults_put_everything_under_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert (config.host, config.port) == ("127.0.0.1", 8765)
    assert config.data_dir == tmp_path / "var"
    assert config.db_path == tmp_path / "var" / "gpjobs.sqlite3"
    assert config.content_dir == tmp_path / "var" / "content"
    assert config.jobs_dir == tmp_path / "var" / "jobs"
    assert config.file_shares["default"] == tmp_path / "var" / "fileshares" / "default"
    assert config.auth.anonymous is True
    assert config.devices and all(d == "cpu" or d.startswith("cuda:") for d in config.devices)


def test_precedence_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'port = 9000\nmax_attempts = 5\ndata_dir = "%s"\n[file_shares]\nexports = "/srv/x"\n' % (tmp_path / "d")
    )
    config = load_config(
        path, env={"GPJOBS_PORT": "9001", "GPJOBS_MAX_ATTEMPTS": "4"}, overrides={"port": 9002, "host": None}
    )
    assert config.port == 9002  # flag beats env beats file
    assert config.max_attempts == 4  # env beats file
    assert config.host == "127.0.0.1"  # a None override (unset flag) changes nothing
    assert config.file_shares["exports"] == Path("/srv/x")
    assert config.db_path == tmp_path / "d" / "gpjobs.sqlite3"


def test_env_lists_and_shares(tmp_path):
    config = load_config(
        env={
            "GPJOBS_FILE_SHARES": "a=/x,b=/y",
            "GPJOBS_DEVICES": "cpu,cpu",
            "GPJOBS_TRAINER_COMMAND": "python fake.py",
            "GPJOBS_SAMPLES_DIR": "/ignored",
        }
    )
    assert config.file_shares["a"] == Path("/x") and config.file_shares["b"] == Path("/y")
    assert config.devices == ["cpu", "cpu"]
    assert config.trainer_command == ["python", "fake.py"]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"host": "0.0.0.0"}, "loopback"),
        ({"prot": 1}, "did you mean 'port'"),
        ({"port": 70000}, "out of range"),
        ({"devices": ["gpu0"]}, "is not cpu, cuda:N"),
        ({"devices": ["cuda:0+gpu1"]}, "is not cpu, cuda:N"),
        ({"devices": ["cuda:0+cuda:1", "cuda:1"]}, "twice"),
        ({"devices": ["cpu+cuda:0"]}, "mixes cpu and cuda"),
        ({"pool": "slurm"}, "ray"),
        ({"pool": "ray"}, "name the shape"),
        ({"pool": "ray", "devices": ["cpu", "cpu"]}, "one entry"),
        ({"devices": ["cuda:0", "cuda:0"]}, "twice"),
        ({"missing_weights": "download"}, "random"),
        ({"max_attempts": 0}, "at least 1"),
        ({"tls_cert": "/x.pem"}, "tls_key"),
        ({"file_shares": {"bad/name": "/x"}}, "letters"),
        ({"port": "abc"}, "port"),
    ],
)
def test_bad_settings_fail_fast(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        load_config(overrides=overrides, env={})


def test_non_loopback_bind_allowed_with_auth():
    config = load_config(overrides={"host": "0.0.0.0", "anonymous": False}, env={})
    assert config.auth.anonymous is False and not config.is_loopback


def test_bad_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_example_config_is_valid(repo_root):
    example = repo_root / "config.example.toml"
    if not example.exists():
        pytest.fail("config.example.toml is missing")
    config = load_config(example, env={})
    assert config.port == 8765


def test_slots_of_several_devices(monkeypatch):
    import gpjobs.config as config_module

    monkeypatch.setattr(config_module, "_cuda_devices", lambda: ["cuda:0", "cuda:1"])
    assert load_config(overrides={"devices": ["auto"]}, env={}).devices == ["cuda:0", "cuda:1"]
    assert load_config(overrides={"devices": ["auto:all"]}, env={}).devices == ["cuda:0+cuda:1"]
    assert load_config(env={"GPJOBS_DEVICES": "cpu+cpu,cuda:0"}).devices == ["cpu+cpu", "cuda:0"]
    monkeypatch.setattr(config_module, "_cuda_devices", lambda: [])
    assert load_config(overrides={"devices": ["auto:all"]}, env={}).devices == ["cpu"]
    assert config_module.slot_devices("cuda:2+cuda:3") == ["cuda:2", "cuda:3"]


def test_ray_pool_keeps_the_job_shape():
    config = load_config(
        overrides={"pool": "ray", "devices": ["cuda:0+cuda:1"], "ray_address": "10.0.0.1:6379"}, env={}
    )
    assert (config.pool, config.devices, config.ray_address) == ("ray", ["cuda:0+cuda:1"], "10.0.0.1:6379")


def test_ray_pool_without_ray_installed_is_a_configuration_error(monkeypatch):
    import gpjobs.config as config_module

    real_find_spec = config_module.importlib.util.find_spec
    monkeypatch.setattr(
        config_module.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'gpjobs\[ray\]'"):
        load_config(overrides={"pool": "ray", "devices": ["cpu"]}, env={})
