"""Server configuration: frozen dataclasses, a TOML file, GPJOBS_* environment overrides, fail-fast checks.

Precedence (lowest first): defaults < config file < environment < explicit overrides (command-line flags).
Relative paths are taken relative to the current directory; `data_dir` defaults to `./var` and every other
storage path defaults to a place inside it. `config.example.toml` documents every setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpjobs.catalog import MAX_LOADER_WORKERS
from gpjobs.parsing import parse_bool

ENV_PREFIX = "GPJOBS_"
STORE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
DEVICE = re.compile(r"^(cpu|cuda:\d+)$")
WORK_RETENTION = ("logs", "all", "none")
POOLS = ("local", "ray")


class ConfigError(ValueError):
    """A setting is wrong; the message names the setting and the fix."""


@dataclass(frozen=True)
class AuthConfig:
    anonymous: bool = True  # anyone is the admin; refused unless the server binds to loopback


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = None  # absolute base for links (behind a proxy); None: from the request
    data_dir: Path = Path("var")
    db_path: Path | None = None  # default: data_dir/gpjobs.sqlite3
    content_dir: Path | None = None  # published .dlpk files; default: data_dir/content
    jobs_dir: Path | None = None  # per-job work dirs (spec, checkpoints, logs); default: data_dir/jobs
    file_shares: dict[str, Path] = field(default_factory=dict)
    raster_stores: dict[str, Path] = field(default_factory=dict)
    # UNC prefixes (\\server\share) -> the local mount they are reachable at; a mapped path must still lie
    # inside a registered store.
    unc_paths: dict[str, Path] = field(default_factory=dict)
    # One slot per entry; a slot of several devices ("cuda:0+cuda:1") trains each job on all of them with
    # torch.distributed. "auto": one slot per GPU, else cpu; "auto:all": one slot with every GPU, else cpu.
    # With pool = "ray": the one shape a job gets on a Ray node ("cpu", "cuda:0", "cuda:0+cuda:1").
    devices: list[str] = field(default_factory=lambda: ["auto"])
    pool: str = "local"  # "local": children on this machine; "ray": children on a Ray cluster (gpjobs[ray])
    ray_address: str = "auto"  # the cluster to join ("auto": the one `ray start` runs here; or "HOST:6379")
    ray_cpus_per_job: float = 0.0  # CPUs a Ray job asks for; 0: child_threads per device
    auth: AuthConfig = field(default_factory=AuthConfig)
    weights_dir: Path | None = None  # torchvision-named ImageNet weight files
    missing_weights: str = "random"  # "random" | "fail"
    trainer_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "gpjobs.training"])
    max_attempts: int = 3
    retry_backoff_s: float = 5.0  # base of the exponential backoff before a lost job is claimed again
    heartbeat_timeout_s: float = 120.0
    max_runtime_s: float = 0.0  # 0: no limit
    cancel_grace_s: float = 10.0  # SIGTERM -> SIGKILL
    shutdown_grace_s: float = 10.0  # graceful stop: time children get to checkpoint after SIGTERM
    watchdog_interval_s: float = 5.0
    progress_flush_s: float = 2.0  # child messages/progress are batched into one transaction this often
    child_threads: int = 1  # torch threads per child (OMP_NUM_THREADS)
    # data loader worker processes per job when its num_workers argument is unset: "auto" (from the slot's
    # CPU share and its device kind, scheduler/child_input.py) or a number (0: load in the training process)
    loader_workers: int | str = "auto"
    warm_trainers: bool = True  # keep one training child per slot started ahead (torch imported): fast starts
    metrics_public: bool = False  # /metrics without a token (default: admin tokens only)
    retention_days: float = 0.0  # 0: keep finished jobs forever
    # What a finished job's work folder keeps: "logs" (spec + child logs; checkpoints and the package copy go),
    # "all" (everything, for debugging training), "none" (the folder goes when the job ends).
    work_retention: str = "logs"
    max_queued_per_user: int = 20  # 0: unlimited
    max_request_bytes: int = 1 << 20
    max_arguments_bytes: int = 8192
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    db_synchronous: str = "FULL"  # "FULL" | "NORMAL"

    # Derived paths are never None after load_config(); these accessors keep callers simple.
    @property
    def content(self) -> Path:
        return self.content_dir or self.data_dir / "content"

    @property
    def jobs(self) -> Path:
        return self.jobs_dir or self.data_dir / "jobs"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_PATH_FIELDS = {"data_dir", "db_path", "content_dir", "jobs_dir", "weights_dir", "tls_cert", "tls_key"}
_INT_FIELDS = {
    "port",
    "max_attempts",
    "child_threads",
    "max_queued_per_user",
    "max_request_bytes",
    "max_arguments_bytes",
}
_BOOL_FIELDS = {"warm_trainers", "metrics_public"}
_FLOAT_FIELDS = {
    "ray_cpus_per_job",
    "retry_backoff_s",
    "heartbeat_timeout_s",
    "max_runtime_s",
    "cancel_grace_s",
    "shutdown_grace_s",
    "watchdog_interval_s",
    "progress_flush_s",
    "retention_days",
}


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Build the configuration; raises ConfigError naming the bad setting.

    `overrides` uses the same keys as the file (`auth.anonymous` may be given as `anonymous`); None values
    are ignored so that unset command-line flags do not override anything.
    """
    raw: dict[str, Any] = {}
    env = os.environ if env is None else env
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw.update(tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _merge(raw, _from_env(env))
    _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(raw)


def _merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if key == "anonymous":
            key, value = "auth", {"anonymous": value}
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in ("anonymous", "auth_anonymous"):
            out["auth"] = {"anonymous": value}
        elif name in ("file_shares", "raster_stores", "unc_paths"):
            out[name] = parse_named_paths(value.split(","), setting=key)
        elif name in ("devices", "trainer_command"):
            out[name] = value.split(",") if name == "devices" else value.split()
        elif name in _FIELDS:
            out[name] = value
        # other GPJOBS_* variables belong to other tools (e.g. GPJOBS_SAMPLES_DIR): ignore them
    return out


def parse_named_paths(entries: list[str] | tuple[str, ...], *, setting: str) -> dict[str, str]:
    """`["name=/path", ...]` (command line, environment) -> {name: path}."""
    out: dict[str, str] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{setting}: {entry!r} must look like NAME=PATH")
        out[name.strip()] = value.strip()
    return out


def _build(raw: dict[str, Any]) -> Config:
    unknown = [k for k in raw if k not in _FIELDS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError("unknown setting(s): " + ", ".join(hints))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _coerce(key, value)
    config = Config(**values)
    data_dir = config.data_dir.expanduser().absolute()
    config = dataclasses.replace(
        config,
        data_dir=data_dir,
        db_path=(config.db_path or data_dir / "gpjobs.sqlite3").expanduser().absolute(),
        content_dir=(config.content_dir or data_dir / "content").expanduser().absolute(),
        jobs_dir=(config.jobs_dir or data_dir / "jobs").expanduser().absolute(),
        devices=config.devices if config.pool == "ray" else resolve_devices(config.devices),
        # The `default` file share always exists (under data_dir unless configured) so that a fresh
        # server has somewhere to put exports and file-share outputs.
        file_shares={"default": data_dir / "fileshares" / "default", **config.file_shares},
    )
    validate(config)
    return config


def _coerce(key: str, value: Any) -> Any:
    try:
        if key == "auth":
            if not isinstance(value, dict):
                raise ConfigError("auth must be a table, e.g. [auth] anonymous = false")
            bad = set(value) - {"anonymous"}
            if bad:
                raise ConfigError(f"unknown auth setting(s): {sorted(bad)}")
            return AuthConfig(anonymous=_to_bool(value.get("anonymous", True)))
        if key in ("file_shares", "raster_stores", "unc_paths"):
            if not isinstance(value, dict):
                raise ConfigError(f'{key} must be a table of NAME = "PATH"')
            return {str(n): Path(str(p)).expanduser().absolute() for n, p in value.items()}
        if key in ("devices", "trainer_command"):
            if isinstance(value, str):
                value = value.split(",") if key == "devices" else value.split()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} must be a list of strings")
            return [v.strip() for v in value if v.strip()]
        if key in _PATH_FIELDS:
            return None if value in (None, "") else Path(str(value))
        if key in _INT_FIELDS:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if key in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key in _BOOL_FIELDS:
            return _to_bool(value)
        if key == "loader_workers":
            return _loader_workers(value)
        if key == "public_url":
            return str(value).rstrip("/") or None
        return str(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{key} = {value!r} is not a valid {_FIELDS[key].type}") from None


def _loader_workers(value: Any) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) > MAX_LOADER_WORKERS:
        raise ConfigError(f'loader_workers = {value!r}: use "auto" or a whole number from 0 to {MAX_LOADER_WORKERS}')
    return int(value)


def _to_bool(value: Any) -> bool:
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve_devices(devices: list[str]) -> list[str]:
    """Expand "auto" to one slot per NVIDIA GPU (cuda:0..N-1) and "auto:all" to one slot with every GPU
    ("cuda:0+cuda:1+..."); either is ["cpu"] when there is none. No torch import."""
    out: list[str] = []
    for device in devices:
        if device in ("auto", "auto:all"):
            gpus = _cuda_devices()
            out.extend(["cpu"] if not gpus else gpus if device == "auto" else ["+".join(gpus)])
        else:
            out.append(device)
    return out


def slot_devices(slot: str) -> list[str]:
    """The devices of one slot, one training process (rank) each: "cuda:0+cuda:1" -> ["cuda:0", "cuda:1"]."""
    return [part.strip() for part in slot.split("+")]


def _cuda_devices() -> list[str]:
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    if count == 0 and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            count = 0
    return [f"cuda:{i}" for i in range(count)]


def validate(config: Config) -> None:
    """Fail fast on settings that cannot work."""
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is out of range (0-65535; 0 picks a free port)")
    if config.auth.anonymous and not config.is_loopback:
        raise ConfigError(
            f"anonymous access is only allowed on a loopback bind, not host {config.host!r}: set "
            "[auth] anonymous = false (GPJOBS_ANONYMOUS=false) and create tokens with `gpjobs token create`, "
            "or bind to 127.0.0.1"
        )
    _validate_devices(config)
    if config.work_retention not in WORK_RETENTION:
        raise ConfigError(f"work_retention = {config.work_retention!r}: use {', '.join(map(repr, WORK_RETENTION))}")
    if config.missing_weights not in ("random", "fail"):
        raise ConfigError(f'missing_weights = {config.missing_weights!r}: use "random" or "fail"')
    if config.db_synchronous.upper() not in ("FULL", "NORMAL"):
        raise ConfigError(f"db_synchronous = {config.db_synchronous!r}: use FULL or NORMAL")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level = {config.log_level!r}: use debug, info, warning or error")
    if config.max_attempts < 1:
        raise ConfigError("max_attempts must be at least 1")
    if not config.trainer_command:
        raise ConfigError("trainer_command is empty")
    positive = (
        "heartbeat_timeout_s",
        "cancel_grace_s",
        "shutdown_grace_s",
        "watchdog_interval_s",
        "progress_flush_s",
        "max_request_bytes",
        "max_arguments_bytes",
        "child_threads",
    )
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be greater than 0")
    for name in ("max_runtime_s", "retention_days", "max_queued_per_user", "retry_backoff_s"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be 0 or more")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("tls_cert and tls_key go together: set both or neither")
    for kind in ("file_shares", "raster_stores"):
        for name in getattr(config, kind):
            if not STORE_NAME.match(name):
                raise ConfigError(f"{kind} name {name!r} may only use letters, digits, '_', '-' and '.'")
    for prefix in config.unc_paths:
        if not re.match(r"^(\\\\|//)[^\\/]+[\\/][^\\/]+", prefix):
            raise ConfigError(f"unc_paths key {prefix!r} must be a UNC share such as '\\\\server\\share'")
    if config.public_url and not re.match(r"^https?://", config.public_url):
        raise ConfigError(f"public_url {config.public_url!r} must start with http:// or https://")


def _validate_devices(config: Config) -> None:
    if config.pool not in POOLS:
        raise ConfigError(f'pool = {config.pool!r}: use "local" (this machine) or "ray" (a Ray cluster)')
    if not config.devices:
        raise ConfigError("devices is empty: list at least one of cpu, cuda:N, cuda:0+cuda:1, auto or auto:all")
    if config.pool == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("pool = \"ray\" needs Ray on this host: pip install 'gpjobs[ray]' (docs/deploy.md)")
    if config.pool == "ray" and len(config.devices) != 1:
        raise ConfigError(
            f'pool = "ray": devices = {config.devices} must be one entry, what one job gets on a '
            'Ray node ("cpu", "cuda:0" or "cuda:0+cuda:1"); the slots come from the cluster'
        )
    for slot in config.devices:
        parts = slot_devices(slot)
        if any(not DEVICE.match(part) for part in parts):
            hint = (
                ' (auto picks the GPUs of this machine; with pool = "ray" name the shape, e.g. "cuda:0")'
                if slot.startswith("auto")
                else ""
            )
            raise ConfigError(
                f"device {slot!r} is not cpu, cuda:N, several joined by '+' (cuda:0+cuda:1), auto or auto:all{hint}"
            )
        if len(parts) > 1 and len({p == "cpu" for p in parts}) > 1:
            raise ConfigError(f"device slot {slot!r} mixes cpu and cuda devices; a slot is all GPUs or all cpu")
    cuda = [d for slot in config.devices for d in slot_devices(slot) if d != "cpu"]
    if len(cuda) != len(set(cuda)):
        raise ConfigError(f"devices {config.devices} lists a GPU twice (each GPU belongs to one slot)")
    if config.ray_cpus_per_job < 0:
        raise ConfigError("ray_cpus_per_job must be 0 (child_threads per device) or more")
