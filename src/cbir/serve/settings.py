"""The settings of ``cbir serve``: its defaults and limits, and how they reach ``--workers`` processes."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cbir.serve.auth import TOKEN_ENV

DEFAULT_MAX_UPLOAD_MB = 64.0  # a camera's RAW file is 20-60 MB
DEFAULT_MAX_PIXELS = 40_000_000
MAX_TOP_K = 50
DEFAULT_MAX_CONCURRENT = 32
DEFAULT_UPLOAD_TIMEOUT = 30.0
DEFAULT_RELOAD_INTERVAL = 10.0
SETTINGS_ENV = "CBIR_SERVE_SETTINGS"  # the settings of `--workers` processes (the token travels in CBIR_TOKEN)


@dataclass(frozen=True)
class ServeSettings:
    """How ``cbir serve`` serves its cell: the cell and how to load it, a query's defaults, and the limits."""

    model: Path
    k: int | None = None
    top_k: int = 5
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "auto"
    metric: str = "euclidean"
    space: str = "best"  # the embedding space searched: raw, a fitted one, or best (validation's choice)
    threads: int | None = None  # torch's intra-op threads for the CNN forward; None: torch's default
    max_concurrent: int = DEFAULT_MAX_CONCURRENT  # requests in progress per process; more get a 503
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT  # seconds for a request body to arrive; slower gets a 408
    reload_interval: float = DEFAULT_RELOAD_INTERVAL  # seconds between checks of the cell's files; 0: SIGHUP only
    token: str | None = field(default=None, repr=False)  # every request needs it (bearer or login cookie)

    def to_env(self) -> str:
        """These settings, less the token, as JSON for the environment of worker processes."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "token"}
        return json.dumps({**values, "model": str(self.model)})

    @classmethod
    def from_env(cls) -> ServeSettings:
        values = json.loads(os.environ[SETTINGS_ENV])
        return cls(**{**values, "model": Path(values["model"]), "token": os.environ.get(TOKEN_ENV) or None})
