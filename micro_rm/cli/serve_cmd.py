"""``micro-rm serve``: the personalized reward service (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import app, config_option, field_docs, open_state
from micro_rm.cli.options import CacheDir, Device

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
_help = field_docs("micro_rm.serve.settings:ServeSettings")[0]
_option = config_option("micro_rm.serve.settings:ServeSettings")


@app.command("serve")
def serve(
    model: str = typer.Option(..., "--model", help=_help("model")),
    state: str = _option("state"),
    host: str = _option("host"),
    port: int = _option("port"),
    eta: float = _option("eta"),
    device: Device = "cpu",
    admin_token_file: Optional[Path] = typer.Option(None, "--admin-token-file", help="File whose first "
                                                    "line is the admin token (else $MICRO_RM_ADMIN_TOKEN)."),
    anonymous_scoring: bool = _option("anonymous_scoring"),
    labels: str = _option("labels"),
    cache_dir: CacheDir = None,
    disk_cache: bool = typer.Option(True, "--disk-cache/--no-disk-cache", help=_help("disk_cache")),
    lru_items: int = _option("lru_items"),
    batch_wait_ms: float = _option("batch_wait_ms"),
    max_batch_items: int = _option("max_batch_items"),
    max_body_bytes: int = _option("max_body_bytes"),
    max_texts: int = _option("max_texts"),
    max_text_chars: int = _option("max_text_chars"),
    body_timeout_s: float = _option("body_timeout_s"),
    log_level: str = typer.Option("info", "--log-level",
                                  help="uvicorn log level: critical, error, warning, info, debug or trace."),
) -> None:
    """Serve a model over HTTP: /score, /compare, /get_reward (OpenRLHF), /feedback (online
    per-user Hedge), /users, /healthz, /metrics (Prometheus), /stats (JSON); OpenAPI docs at /docs.

    Example: MICRO_RM_ADMIN_TOKEN=$(cat admin.token) micro-rm serve --model runs/dsp --state sqlite:///state.db

    For OpenRLHF (its client sends no token; labels carry each sample's context):
    micro-rm serve --model runs/dsp --anonymous-scoring --labels context
    """
    import logging

    from micro_rm.errors import MicroRMError
    from micro_rm.serve.settings import ServeSettings, read_admin_token

    if log_level not in LOG_LEVELS:
        raise MicroRMError(f"--log-level {log_level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    settings = ServeSettings(model=model, state=state, host=host, port=port, eta=eta, device=device,
                             admin_token=read_admin_token(admin_token_file),
                             anonymous_scoring=anonymous_scoring, labels=labels,
                             cache_dir=str(cache_dir) if cache_dir else None, disk_cache=disk_cache,
                             lru_items=lru_items, batch_wait_ms=batch_wait_ms, max_batch_items=max_batch_items,
                             max_body_bytes=max_body_bytes, max_texts=max_texts, max_text_chars=max_text_chars,
                             body_timeout_s=body_timeout_s)
    if labels != "ignore" and not anonymous_scoring:
        logging.getLogger("micro_rm.serve").warning(
            "--labels %s without --anonymous-scoring: OpenRLHF's remote reward client sends no "
            "token, so its requests will get 401 and train with reward None; add "
            "--anonymous-scoring for it", labels)
    if host not in _LOOPBACK:
        logging.getLogger("micro_rm.serve").warning(
            "binding %s: the service is reachable from other machines; put TLS in front of it "
            "(bearer tokens travel in clear text over plain HTTP)", host)

    try:
        import uvicorn

        from micro_rm.serve.app import create_app
    except ImportError as exc:
        raise MicroRMError(f"micro-rm serve needs the service extra ({exc.name} is missing): "
                           "pip install 'micro-rm[serve]'") from None
    from micro_rm.scoring.engine import RewardScorer

    # Load and check everything before the server starts, so a bad --model, --state or --cache
    # is one line here rather than a server that answers 500 (--device is checked as it is parsed).
    if disk_cache:
        from micro_rm.features.cache import FeatureCache
        FeatureCache(settings.cache_dir)
    scorer = RewardScorer.load(model, device=device)
    with open_state(state, scorer.model):
        pass    # opened only to check it: the app opens its own
    uvicorn.run(create_app(settings, scorer=scorer), host=host, port=port, log_level=log_level)
