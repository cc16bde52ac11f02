"""All configuration, from environment variables with the ``ATELIER_`` prefix (or a ``.env`` file).

Read through :func:`get_settings` (cached), never at import time, so tests and the launcher can set
the environment first. Every limit the service enforces is a field here, documented in README.md.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.contract.limits import DEFAULT_MAX_PERSONA_IMAGES, DEFAULT_MAX_PERSONAS_PER_KEY, PRIORITY_RANGE

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="inputs, results, generated demo models, embedded Redis")
    redis_url: str | None = Field(None, description="broker + task store: redis://, rediss:// (TLS), unix:// or"
                                  " sentinel://host:26379;sentinel://host2:26379 (docs/deployment.md \"Redis high"
                                  " availability\"); unset = embedded Redis (make run)")
    redis_sentinel_master: str = Field("mymaster", min_length=1, description="a sentinel:// URL: the name the"
                                       " sentinels monitor the master under")
    redis_sentinel_password: str | None = Field(None, description="a sentinel:// URL: the sentinels' own password"
                                                " (requirepass of sentinel.conf); the URL's password is the master's")
    redis_wait_replicas: int = Field(0, ge=0, description="a submission is acknowledged (RetCode 0) only once this"
                                     " many replicas hold its task and job (Redis WAIT); else 150. 0 = no WAIT")
    redis_wait_timeout_ms: int = Field(1000, ge=1, description="how long a submission waits for those replicas")
    storage_url: str = Field("", pattern=r"^(s3://[^/?#]+(/[^?#]*)?)?$",
                             description="where inputs, results and personas are kept: empty = the data dir's"
                             " folders; s3://bucket/prefix = an S3-compatible bucket (endpoint, credentials and"
                             " region from boto3's own AWS_* configuration; docs/deployment.md \"Object storage\")")
    keys_file: Path | None = Field(None, description="YAML with `keys: [{PublicKey, PrivateKey}]`; unset = dev key")
    models_config: Path = Field(PROJECT_ROOT / "models_config" / "models.yaml")
    demo_models_dir: Path | None = Field(None, description="where demo models are generated; default data_dir/models")

    # --- gateway -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(None, description="base URL put into ImgList; default http://host:port")

    # --- limits (each enforced in exactly one place; see README "Limits") -----------------------
    max_body_bytes: int = Field(64 * 1024 * 1024, description="request body size; larger -> 230")
    max_image_pixels: int = Field(4096 * 4096, description="decoded pixels per input image (bomb guard)")
    max_images: int = Field(8, description="images in ImageAndMaskList, or in ImageList and MaskList together")
    max_prompt_chars: int = Field(2000, description="all positive (or negative) prompts together")
    max_active_tasks_per_key: int = Field(32, description="Queuing+Running tasks per key; more -> 153")
    max_personas_per_key: int = Field(DEFAULT_MAX_PERSONAS_PER_KEY, ge=0, description="personas a key may keep"
                                      " (CreatePersona beyond it -> 230 naming Name); 0 = personas off")
    max_persona_images: int = Field(DEFAULT_MAX_PERSONA_IMAGES, ge=1, description="images of one persona"
                                    " (CreatePersona's ImageList; more -> 230 naming ImageList)")
    max_priority: int = Field(int(PRIORITY_RANGE.hi), ge=PRIORITY_RANGE.lo, le=PRIORITY_RANGE.hi,
                              description="the highest Priority a key's tasks run at unless its key entry says"
                                          " MaxPriority (a higher one is lowered to it, with a Note)")

    # --- results -------------------------------------------------------------------------------
    result_retention_s: int = Field(24 * 3600, description="results, inputs and task records kept this long")
    result_links: str = Field("gateway", pattern=r"^(gateway|presigned)$",
                              description="gateway: ImgList links to the gateway, which streams the result;"
                              " presigned: the bucket's presigned GET URLs, valid until the retention ends"
                              " (an s3:// storage only; the data dir has none)")
    cleanup_interval_s: int = Field(300, description="how often the gateway sweeps expired files")

    # --- recovery (docs/deployment.md "Recovery") ------------------------------------------------
    lease_s: float = Field(20.0, gt=0, description="a running task's lease: its worker renews it twice a second;"
                           " one not renewed this long is taken as a dead worker's and runs again")
    reap_interval_s: float = Field(2.0, gt=0, description="how often the gateway looks for expired leases")
    max_worker_deaths: int = Field(3, ge=1, description="a task whose run killed this many workers ends in Error")
    job_time_base_s: float = Field(300.0, gt=0, description="a job's time budget: this, plus ...")
    job_time_per_megapixel_step_s: float = Field(
        5.0, gt=0, description="... this many seconds per megapixel, denoising step and image of the job")

    # --- webhooks (docs/API.md "Webhooks") --------------------------------------------------------
    webhook_allow_private: bool = Field(False, description="deliver to private, loopback and link-local"
                                        " addresses too (tests; a deployment whose receivers are internal)")
    webhook_timeout_s: float = Field(10.0, gt=0, description="one delivery attempt's HTTP timeout")
    webhook_retry_for_s: float = Field(3 * 3600.0, ge=3600, description="how long a failing delivery is retried"
                                       " (exponential backoff), at least an hour")
    webhook_interval_s: float = Field(1.0, gt=0, description="how often the gateway looks for due deliveries")

    # --- metrics (docs/deployment.md "Metrics") ----------------------------------------------------
    worker_metrics_port: int = Field(0, ge=0, le=65535, description="a worker serves Prometheus metrics on this"
                                     " port plus its ATELIER_WORKER_INDEX (make run sets both); 0 = not served")

    # --- worker --------------------------------------------------------------------------------
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    queue: str = Field("atelier", description="Celery queue the gateway sends to and workers consume")
    route_backlog: int = Field(32, ge=0, description="model-aware routing (docs/deployment.md \"Scheduling\"): a job"
                               " goes to a worker's own queue while that worker has fewer jobs waiting there than"
                               " this, else to the shared queue; 0 = no routing (every job to the shared queue)")
    route_switch_jobs: float = Field(4.0, ge=0, description="routing: what loading a model a worker does not hold"
                                     " costs, in jobs waiting (a job goes to a cold worker only when the warm ones"
                                     " have this many more waiting)")
    route_group_s: float = Field(30.0, ge=0, description="routing: a job routed to a worker waits there right behind"
                                 " the newest waiting job of its model (one load for the group, not one per change of"
                                 " model), passing only jobs that have waited less than this many seconds; 0 = first"
                                 " come, first served")
    worker_overlap: bool = Field(True, description="a solo worker overlaps a job's CPU work with the denoising of its"
                                 " neighbours: the next queued job's inputs composed and models loaded while one"
                                 " denoises, its results stored while the next one denoises (docs/deployment.md"
                                 " \"Scheduling\")")
    progress_interval_s: float = Field(0.5, description="min seconds between progress writes to Redis")
    result_png_level: int = Field(1, ge=0, le=9, description="deflate level of the result PNGs (lossless at every"
                                  " level): 0..3 by ISA-L (fast: the default 1, about 7 ms for a 512x512 photo),"
                                  " 4..9 by zlib (smaller files, far slower); workers/png.py")
    model_cache_bytes: int = Field(24 * 1024**3, ge=0, description="worker: budget of the models on its device"
                                   " (pipelines, VAEs, ControlNets, annotators), measured from their tensors;"
                                   " least recently used evicted beyond it, never one a running job holds")
    model_cache_ram_bytes: int = Field(4 * 1024**3, ge=0, description="worker: budget of the models it keeps in host"
                                       " RAM (parsed LoRA/embedding/hypernetwork files, the prompt translator)")
    composition_cache_bytes: int = Field(256 * 1024**2, ge=0, description="worker: budget of the compositions"
                                         " it keeps (a mannequin and its clothes mask brought to an output size,"
                                         " with the paste-back seam), reused by the next job with the same inputs"
                                         " and geometry; 0 = none kept")
    dtype: str = Field("auto", pattern=r"^(auto|float16|bfloat16|float32)$",
                       description="auto | float16 | bfloat16 | float32: weights dtype on CUDA (auto = float16);"
                       " the CPU always uses float32")
    workers: int = Field(1, ge=1, description="make run: Celery worker processes it starts, each with"
                         " ATELIER_WORKER_INDEX=0..N-1, restarted with backoff when one exits")

    @property
    def models_dir(self) -> Path:
        return self.demo_models_dir or self.data_dir / "models"

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
