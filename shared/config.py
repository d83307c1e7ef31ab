"""The one place that reads the environment. Everything else receives a `Settings`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def default_var_dir() -> Path:
    """`./var` of the folder the command runs in: state belongs to whoever starts the service, never to
    the source checkout or site-packages (`make run` runs from the checkout, so its state is there)."""
    return Path.cwd() / "var"


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be a whole number, got {raw!r}") from exc


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from exc


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _networks(env: dict[str, str], name: str) -> tuple[str, ...]:
    """A comma- or space-separated list of CIDR ranges (e.g. "10.0.0.0/8, 127.0.0.1/32"), checked now."""
    import ipaddress

    ranges = []
    for item in (env.get(name) or "").replace(",", " ").split():
        try:
            ranges.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            raise ValueError(f"setting {name} must list address ranges like 10.0.0.0/8, got {item!r}") from exc
    return tuple(ranges)


@dataclass(frozen=True)
class ImageLimits:
    """Limits every uploaded image must respect (checked before pixels are decoded)."""

    max_bytes: int = 64 * MiB
    max_pixels: int = 50_000_000
    min_side: int = 64


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM node results are sent to: its AE title, host and port (written `AE@host:port`)."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


_DESTINATION = re.compile(r"^(?P<ae>[^@\\]{1,16})@(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")


def parse_destinations(raw: str) -> tuple[DicomDestination, ...]:
    """`XRAY_DICOM_DESTINATIONS`: `AE@host:port` items separated by commas or spaces (IPv6 hosts in
    brackets). A clear error names the item that is wrong."""
    found: list[DicomDestination] = []
    for item in raw.replace(",", " ").split():
        match = _DESTINATION.match(item)
        port = int(match["port"]) if match else 0
        if match is None or not match["ae"].strip() or not 0 < port < 65536:
            raise ValueError(f"XRAY_DICOM_DESTINATIONS: {item!r} is not AE@host:port (an AE title of 1 to 16 "
                             "characters, a host name or address, a port from 1 to 65535)")
        destination = DicomDestination(match["ae"].strip(), match["host"].strip("[]"), port)
        if destination not in found:
            found.append(destination)
    return tuple(found)


@dataclass(frozen=True)
class Settings:
    var_dir: Path = field(default_factory=default_var_dir)
    database_url: str = ""
    redis_url: str | None = None  # None: `xray up` starts an embedded Redis server
    storage_dir: Path = field(default_factory=lambda: default_var_dir() / "storage")
    # shared.storage.make_storage: "" (STORAGE_DIR), file:///path, or s3://bucket/prefix. For S3, the
    # endpoint of a store other than AWS (SeaweedFS, MinIO, Ceph) and the usual AWS_* credentials;
    # without keys, boto3's own chain (profile, instance or pod role) is used.
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_session_token: str | None = field(default=None, repr=False)
    model_dir: Path = PROJECT_ROOT / "models" / "demo"
    secret_key: str = ""
    queue_name: str = "xray.diagnose"
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_upload_bytes: int = 2048 * MiB
    task_time_limit_s: int = 600
    task_soft_time_limit_s: int = 540
    max_attempts: int = 5
    reconcile_after_s: int = 60
    # Metrics (web/metrics.py, worker/metrics.py): address ranges that may scrape the web's /metrics
    # without a token, and the port the worker's main process serves its metrics on (None: off).
    metrics_allow: tuple[str, ...] = ()
    worker_metrics_port: int | None = None
    worker_metrics_address: str = "0.0.0.0"
    worker_max_memory_mb: int = 3000  # a worker process past this after a task is replaced
    inference_runtime: str = "auto"  # shared.runtime: auto | tensorflow | openvino
    inference_precision: str = "auto"  # auto | f32 | bf16
    triage_max_wait_minutes: float = 240.0
    # Accounts and privacy. `production` (XRAY_ENV=production) makes an empty SECRET_KEY an
    # error; `session_cookie_secure` forces the Secure cookie flag (set it behind a TLS-terminating
    # proxy; requests that arrive over https get it anyway); `deidentify` pseudonymises DICOM on intake.
    production: bool = False
    session_cookie_secure: bool = False
    deidentify: bool = False
    # Reverse proxies in front of the web whose X-Forwarded-For / X-Forwarded-Proto are believed, counted
    # from the web outwards (XRAY_TRUSTED_PROXIES=1: one nginx). 0, the default, believes no header: the
    # client's address is the connection's, so nobody can claim another one (docs/SECURITY.md).
    trusted_proxies: int = 0
    # The DICOM receiver (gateway.receiver): its AE title, address, and the calling AE titles it
    # accepts (empty: none; "*": any).
    dicom_aet: str = "XRAY"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    dicom_allowed_aets: tuple[str, ...] = ()
    dicom_destinations: tuple[DicomDestination, ...] = ()
    delivery_max_attempts: int = 12

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from environment variables (XRAY_* plus the usual service names)."""
    env = dict(os.environ if env is None else env)
    # Absolute, so that children started elsewhere (`xray up` passes it on) agree on one folder.
    var_dir = Path(env.get("XRAY_VAR_DIR") or default_var_dir()).absolute()
    limits = ImageLimits(
        max_bytes=_int(env, "XRAY_MAX_FILE_BYTES", ImageLimits.max_bytes),
        max_pixels=_int(env, "XRAY_MAX_PIXELS", ImageLimits.max_pixels),
        min_side=_int(env, "XRAY_MIN_SIDE", ImageLimits.min_side),
    )
    return Settings(
        var_dir=var_dir,
        database_url=env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'xray.db'}",
        redis_url=env.get("REDIS_URL") or None,
        storage_dir=Path(env.get("STORAGE_DIR") or var_dir / "storage"),
        storage_url=env.get("STORAGE_URL") or "",
        s3_endpoint_url=env.get("S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or None,
        s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        s3_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        s3_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        s3_session_token=env.get("AWS_SESSION_TOKEN") or None,
        model_dir=Path(env.get("MODEL_DIR") or PROJECT_ROOT / "models" / "demo"),
        secret_key=env.get("SECRET_KEY") or "",
        queue_name=env.get("XRAY_QUEUE") or "xray.diagnose",
        limits=limits,
        max_upload_bytes=_int(env, "XRAY_MAX_UPLOAD_BYTES", Settings.max_upload_bytes),
        task_time_limit_s=_int(env, "XRAY_TASK_TIME_LIMIT", Settings.task_time_limit_s),
        task_soft_time_limit_s=_int(env, "XRAY_TASK_SOFT_TIME_LIMIT", Settings.task_soft_time_limit_s),
        max_attempts=_int(env, "XRAY_MAX_ATTEMPTS", Settings.max_attempts),
        reconcile_after_s=_int(env, "XRAY_RECONCILE_AFTER", Settings.reconcile_after_s),
        metrics_allow=_networks(env, "XRAY_METRICS_ALLOW"),
        worker_metrics_port=_int(env, "XRAY_WORKER_METRICS_PORT", 0) or None,
        worker_metrics_address=env.get("XRAY_WORKER_METRICS_ADDRESS") or "0.0.0.0",
        worker_max_memory_mb=_int(env, "XRAY_WORKER_MAX_MEMORY_MB", Settings.worker_max_memory_mb),
        inference_runtime=env.get("XRAY_RUNTIME") or "auto",
        inference_precision=env.get("XRAY_PRECISION") or "auto",
        triage_max_wait_minutes=_float(env, "XRAY_TRIAGE_MAX_WAIT_MIN", Settings.triage_max_wait_minutes),
        production=(env.get("XRAY_ENV") or "").strip().lower() in {"production", "prod"},
        session_cookie_secure=_bool(env, "SESSION_COOKIE_SECURE", False),
        deidentify=_bool(env, "XRAY_DEIDENTIFY", False),
        trusted_proxies=_trusted_proxies(env),
        dicom_aet=(env.get("XRAY_DICOM_AET") or "XRAY").strip(),
        dicom_host=env.get("XRAY_DICOM_HOST") or "0.0.0.0",
        dicom_port=_int(env, "XRAY_DICOM_PORT", Settings.dicom_port),
        dicom_allowed_aets=tuple(t.strip() for t in (env.get("XRAY_DICOM_ALLOWED_AETS") or "").split(",") if t.strip()),
        dicom_destinations=parse_destinations(env.get("XRAY_DICOM_DESTINATIONS") or ""),
        delivery_max_attempts=_int(env, "XRAY_DELIVERY_MAX_ATTEMPTS", Settings.delivery_max_attempts),
    )


def _trusted_proxies(env: dict[str, str]) -> int:
    hops = _int(env, "XRAY_TRUSTED_PROXIES", Settings.trusted_proxies)
    if not 0 <= hops <= 10:
        raise ValueError(f"setting XRAY_TRUSTED_PROXIES is the number of proxies in front of the web (0-10), "
                         f"got {hops}")
    return hops
