"""``make bench``: service figures, each a ratio against a baseline measured in the same run.

service_overhead_ratio = end-to-end time of one job through the real gateway, Redis, Celery worker
and storage (submit -> the worker has stored the images and marked the task Finished -> images
downloaded) divided by a bare diffusers call of the same job on a warm pipeline of the same model,
in this process, alternating with the service jobs. Goal <= 1.10.

lora_switch_ratio = a job whose LoRA differs from the previous job's divided by a job that uses the
same LoRA again, on one warm pipeline (goal <= 1.2); pipeline_reload_s is what reloading the base
pipeline instead would cost (on the demo model, whose load is far cheaper than a real checkpoint's). The client polls every 0.25 s but the
moment of completion is the task record's own timestamp, so the polling interval (a client's
choice) is not counted as service overhead, and the polling does not steal the CPU from the worker.

The job size is calibrated so that the bare call takes about a second on this machine. Ends by
printing one JSON object on the last line of stdout.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

PK, SK = "bench", "bench-secret"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def signed(body: dict) -> dict:
    from app.signature import sign

    body = {"PublicKey": PK, "request_uuid": str(uuid.uuid4()), **body}
    body["Signature"] = sign(body, SK)
    return body


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def inputs() -> tuple[Image.Image, Image.Image]:
    man = Image.open(ROOT / "examples" / "mannequin.png").convert("RGB")
    mask = Image.open(ROOT / "examples" / "clothes_mask.png")
    return man, mask


def bare_call_seconds(pipe, comp, steps: int, guidance: float, seed: int, repeats: int) -> float:
    """The diffusers call alone (no composition, no paste-back, no storage), warm."""
    import torch

    from workers.inference.compose import inpaint_mask

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe(prompt="a woman, studio photo", negative_prompt="", image=comp.image, mask_image=inpaint_mask(comp),
             height=comp.height, width=comp.width, strength=1.0, num_inference_steps=steps,
             guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target-s", type=float, default=1.0, help="aimed duration of the bare call")
    args = ap.parse_args()

    from app.contract.registry import get_registry
    from app.contract.settings import Settings
    from workers.inference.compose import prepare
    from workers.models.cache import PipelineCache

    work = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    keys = work / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"PublicKey": PK, "PrivateKey": SK}]}))
    env = {**os.environ, "ATELIER_DATA_DIR": str(work / "data"), "ATELIER_KEYS_FILE": str(keys),
           "ATELIER_DEVICE": "cpu", "ATELIER_PORT": "0", "PYTHONPATH": str(ROOT),
           "ATELIER_DEMO_MODELS_DIR": os.environ.get("ATELIER_DEMO_MODELS_DIR",
                                                     str(Path.home() / ".cache" / "atelier" / "test-models"))}
    settings = Settings(data_dir=work / "data", device="cpu", demo_models_dir=Path(env["ATELIER_DEMO_MODELS_DIR"]))
    registry = get_registry(settings.models_config)
    entry = registry.get("demo-inpaint")
    steps, guidance = entry.defaults.steps, entry.defaults.guidance_scale
    pipe = PipelineCache(settings).get(entry, registry)

    # calibrate: the smallest square size whose bare call takes >= target
    man, mask = inputs()
    size = 256
    while True:
        comp = prepare(man, mask, size, size)
        bare_call_seconds(pipe, comp, steps, guidance, 1, 1)  # warm at this size
        t = bare_call_seconds(pipe, comp, steps, guidance, 1, 1)
        if t >= args.target_s or size >= 1024:
            break
        size += 64
    log(f"job: demo-inpaint {size}x{size}, {steps} steps")
    figures = bench_lora_switch(pipe, comp, steps, guidance, args.repeats, settings, entry, registry)

    import redis

    from app.contract.taskstore import TaskStore
    from app.cli.run import start_embedded_redis
    from tests.conftest import free_port

    redis_proc, url = start_embedded_redis(work / "data", env)
    env["ATELIER_REDIS_URL"] = url
    port = free_port()
    env["ATELIER_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                               "--log-level", "warning"], env=env, cwd=ROOT),
             subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool",
                               "solo", "-Q", "atelier", "--loglevel", "WARNING", "-n", "bench@%h"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL)]
    try:
        client = httpx.Client(timeout=60)
        for _ in range(300):
            try:
                if client.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        body = {"Action": "GenerateFromMannequin", "MainModel": {"ModelCode": "demo-inpaint"},
                "PositivePrompts": ["a woman, studio photo"], "ImageAndMaskList": [b64(man), b64(mask)],
                "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1}, "Width": size, "Height": size,
                "Seed": 1, "TranslatePrompts": False}

        store = TaskStore(redis.Redis.from_url(url, decode_responses=True), 3600)

        def one_job() -> float:
            """Submit -> the worker has stored the images and marked the task Finished (its own
            timestamp, so the client's polling interval is not counted) -> images downloaded."""
            t0 = time.time()
            out = client.post(base + "/", json=signed(body)).json()
            assert out["RetCode"] == 0, out
            while True:
                time.sleep(0.25)  # a client's polling; not part of the measured time
                d = client.post(base + "/", json=signed({"Action": "ListTasksDetails",
                                                         "TaskUIDList": [out["TaskUID"]]})).json()
                detail = d["TaskDetailList"][0]
                if detail["Status"] == "Finished":
                    break
                assert detail["Status"] != "Error", detail
            finished_at = store.get(out["TaskUID"]).finished_at
            t1 = time.perf_counter()
            for link in detail["ImgList"]:
                assert client.get(link).status_code == 200
            return (finished_at - t0) + (time.perf_counter() - t1)

        one_job()  # warm: the worker loads the pipeline
        # Alternate the bare call (here; the worker idles) and the service job (the worker runs; this
        # process sleeps between polls), so that any drift of the machine hits both alike.
        bares, e2es = [], []
        for _ in range(args.repeats):
            bares.append(bare_call_seconds(pipe, comp, steps, guidance, 1, 1))
            e2es.append(one_job())
        bare, e2e = statistics.median(bares), statistics.median(e2es)
        log(f"bare diffusers call: {bare:.3f}s, end to end through the service: {e2e:.3f}s"
            f" (medians of {args.repeats})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        redis_proc.terminate()
        redis_proc.wait(10)
    import json

    print(json.dumps({"service_overhead_ratio": round(e2e / bare, 3), **figures, "bare_call_s": round(bare, 3),
                      "end_to_end_s": round(e2e, 3), "job_size_px": size, "job_steps": steps}))
    return 0


def bench_lora_switch(pipe, comp, steps, guidance, repeats, settings, entry, registry) -> dict:
    """lora_switch_ratio: a job (submodels applied, image generated, submodels removed, as the worker
    does) whose LoRA differs from the previous job's, divided by one that uses the same LoRA again, on
    one warm pipeline, with the LoRA files in the RAM cache; and what reloading the pipeline would cost."""
    from workers.demo import demo_path
    from workers.models.loading import load_main_pipeline
    from workers.inference.inpaint import run_inpaint
    from workers.submodels import SubModelSpec, SubmodelCache, apply_submodels

    loras = [SubModelSpec(model_code=k, model_type="LoRA", path=demo_path(k, settings.models_dir), weight=0.8)
             for k in ("lora-kohya", "lora-peft")]
    cache = SubmodelCache()

    def job(spec) -> float:
        t0 = time.perf_counter()
        with apply_submodels(pipe, [spec], cache):
            run_inpaint(pipe, comp, "a woman, studio photo", "", seed=1, batch_size=1, steps=steps,
                        guidance_scale=guidance)
        return time.perf_counter() - t0

    def apply_remove(spec) -> float:
        t0 = time.perf_counter()
        with apply_submodels(pipe, [spec], cache):
            pass
        return time.perf_counter() - t0

    job(loras[0]), job(loras[1])  # warm: both files read into the RAM cache
    reuse, switch = [], []
    previous = loras[1]
    for i in range(4 * repeats):  # A A B B A A ...: each LoRA as often in both groups, drift shared
        spec = loras[(i // 2) % 2]
        (reuse if spec is previous else switch).append(job(spec))
        previous = spec
    overhead = statistics.median(apply_remove(loras[i % 2]) for i in range(2 * repeats))
    t0 = time.perf_counter()
    load_main_pipeline(entry, registry, "cpu", pipe.unet.dtype, settings.models_dir)
    reload = time.perf_counter() - t0
    ratio = statistics.median(switch) / statistics.median(reuse)
    log(f"LoRA jobs: switch {statistics.median(switch):.3f}s, reuse {statistics.median(reuse):.3f}s; "
        f"apply+remove alone {overhead * 1000:.1f} ms; full pipeline reload {reload:.3f}s")
    return {"lora_switch_ratio": round(ratio, 3), "lora_apply_remove_s": round(overhead, 4),
            "pipeline_reload_s": round(reload, 3),
            "pipeline_reload_vs_lora_apply_ratio": round(reload / overhead, 1)}


if __name__ == "__main__":
    sys.exit(main())
