"""``make bench``: service figures, each against a baseline measured in the same run.

service_overhead_ms and service_overhead_ratio: one 512x512 job (BatchSize 1) end to end through the real
gateway, Redis, Celery worker and storage (submit -> the worker has stored the images and marked the task
Finished -> images downloaded), against the bare diffusers call of that job: the worker times its pipeline
calls inside the job (less their step callbacks, which are the service's progress and cancellation work), so
``service_overhead_ms`` = the median over jobs of end to end minus that job's own call (goal <= 15) and
``service_overhead_ratio`` the median of their quotients (goal <= 1.05). The headline jobs are on the same
photo (a shop's variants of one photo, another seed each: the worker reuses the composition after the first);
``new_inputs`` has the same figures for jobs each on a photo never seen before. The demo model's steps are set
(in a bench-only copy of models_config) so that a bare call of the same job on a warm pipeline, in this
process, takes about ``--target-s`` (0.3 s: a GPU job's duration), so the ratio shows what the service adds in
the GPU regime. Those bare calls, timed before and after the service jobs, are reported too (``bare_call_s``,
``vs_separate_bare``): two processes on a shared CPU do not run the same call equally fast (tens of ms apart
on a 0.3 s call here), which is why the headline subtracts each job's own call. docs/performance.md says
what was measured.

two_pass_ratio: a 1024x1536 request on the demo model (SD 1.5's native 512x512) drawn as the service draws it,
pass 1 at the native area (416x624) then upscaled and refined at 1024x1536 at the model's refine strength,
divided by one pass at 1024x1536 (the naive call), both at 10 steps, on the warm pipeline in this process
(``two_pass_s``, ``one_pass_s``). ``two_pass_flop_ratio_sd15``: the same quotient in UNet FLOPs for the real
SD 1.5 architecture at 25 steps (a meta-device UNet: nothing allocated), what a GPU is expected to spend.

lora_switch_ratio = a job whose LoRA differs from the previous job's divided by a job that uses the
same LoRA again, on one warm pipeline (goal <= 1.2); pipeline_reload_s is what reloading the base
pipeline instead would cost (on the demo model, whose load is far cheaper than a real checkpoint's).
The client polls every 0.25 s but the moment of completion is the task record's own timestamp, so the
polling interval (a client's choice) is not counted as service overhead, and the polling does not steal
the CPU from the worker.

The pipeline and the submodel files come through the worker's own code: a :class:`WorkerRuntime` built
from the settings, its model cache and :class:`WorkerModels` (a lease held as a job holds it), and
:func:`apply_submodels` reading each file through the cache, as :mod:`workers.jobs.generate` does.

routing_loads and routing_makespan_ratio (issue 26, :func:`bench_routing`; first, with a gateway, two workers and
an embedded Redis of its own): 40 jobs of two Main models on two workers whose caches hold one pipeline each, the
pipelines loaded with model-aware routing on (goal <= 4; ``routing_loads_baseline`` with it off), and the makespan
against the same jobs on one model (goal <= 1.2); ``routing_4_models`` for four models. ``--only routing`` runs
just this part.

Ends by printing one JSON object on the last line of stdout.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from app.cli.run import start_embedded_redis  # noqa: E402
from app.contract.jobs import TaskStatus  # noqa: E402
from app.contract.limits import ModelType  # noqa: E402
from app.contract.registry import get_registry  # noqa: E402
from app.contract.routing import direct_key, live_worker_ids  # noqa: E402
from app.contract.settings import Settings  # noqa: E402
from app.contract.taskstore import TaskStore, task_key  # noqa: E402
from app.signature import sign  # noqa: E402
from workers.demo.realsize import build_sd15_inpaint, unet_forward_flops  # noqa: E402
from workers.inference.compose import inpaint_mask, prepare  # noqa: E402
from workers.inference.inpaint import Sampling, run_inpaint  # noqa: E402
from workers.inference.passes import plan_passes  # noqa: E402
from workers.jobs.generate import upscaled  # noqa: E402
from workers.models.loading import load_main_pipeline  # noqa: E402
from workers.models.sources import demo_path  # noqa: E402
from workers.runtime import WorkerRuntime  # noqa: E402
from workers.submodels.apply import apply_submodels  # noqa: E402
from workers.submodels.spec import SubModelSpec  # noqa: E402

PK, SK = "bench", "bench-secret"
SIZE = 512  # the job: 512x512, BatchSize 1
TWO_PASS_SIZE = (1024, 1536)  # two passes against one (two_pass_ratio) ...
TWO_PASS_STEPS = 10           # ... at a step count that leaves the refine pass steps of its own


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signed(body: dict) -> dict:
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
    ap.add_argument("--repeats-service", type=int, default=21, help="service jobs (and bare calls) measured")
    ap.add_argument("--target-s", type=float, default=0.3, help="aimed duration of the bare call (a GPU job's)")
    add_duty_args(ap)
    ap.add_argument("--only", choices=["routing"], help="run only this part (routing: bench_routing, a few minutes)")
    ap.add_argument("--routing-jobs", type=int, default=ROUTING_JOBS, help="routing: jobs per scenario")
    ap.add_argument("--routing-seed", type=int, default=26, help="routing: the seed of the jobs' random order")
    ap.add_argument("--routing-port-base", type=int, default=0, help="routing: the gateway's port, the workers'"
                    " metrics on the next two (0: free ports)")
    args = ap.parse_args()
    routing = {} if args.duty_only else bench_routing(args.routing_jobs, args.routing_seed, args.routing_port_base)
    if args.only == "routing":
        print(json.dumps(routing))
        return 0

    work = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    keys = work / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"PublicKey": PK, "PrivateKey": SK}]}))
    models = work / "models.yaml"  # the shipped deployment, with the demo model's steps calibrated below
    shipped = yaml.safe_load((ROOT / "models_config" / "models.yaml").read_text())
    env = {**os.environ, "ATELIER_DATA_DIR": str(work / "data"), "ATELIER_KEYS_FILE": str(keys),
           "ATELIER_DEVICE": "cpu", "ATELIER_PORT": "0", "PYTHONPATH": str(ROOT),
           "ATELIER_MODELS_CONFIG": str(models),
           "ATELIER_DEMO_MODELS_DIR": os.environ.get("ATELIER_DEMO_MODELS_DIR",
                                                     str(Path.home() / ".cache" / "atelier" / "test-models"))}
    env["ATELIER_MAX_ACTIVE_TASKS_PER_KEY"] = str(args.duty_jobs + 10)  # the duty-cycle jobs are queued at once
    # Redis first: the runtime built here reads the completion timestamps from the service's task store
    redis_proc, url = start_embedded_redis(work / "data", env)
    env["ATELIER_REDIS_URL"] = url
    procs: list[subprocess.Popen] = []
    try:
        settings = Settings(data_dir=work / "data", device="cpu", redis_url=url,
                            demo_models_dir=Path(env["ATELIER_DEMO_MODELS_DIR"]))
        rt = WorkerRuntime.build(settings)
        registry = rt.registry
        entry = registry.get("demo-inpaint")
        guidance = entry.defaults.guidance_scale
        with rt.cache.lease() as lease:  # the warm pipeline, held for the whole run as a job holds it
            pipe = rt.models.pipeline(lease, entry, registry)

            # calibrate: at 512x512, the steps whose bare call takes about the target
            man, mask = inputs()
            size = SIZE
            comp = prepare(man, mask, size, size)
            probe = entry.defaults.steps
            bare_call_seconds(pipe, comp, probe, guidance, 1, 1)  # warm at this size
            per_step = bare_call_seconds(pipe, comp, probe, guidance, 1, 3) / probe
            steps = max(1, round(args.target_s / per_step))
            for m in shipped["models"]:
                if m["ModelCode"] == "demo-inpaint":
                    m["defaults"]["steps"] = steps
            models.write_text(yaml.safe_dump(shipped, sort_keys=False))
            log(f"job: demo-inpaint {size}x{size}, {steps} steps (about {per_step * steps:.2f}s bare)")
            figures = {}
            if not args.duty_only:
                figures = bench_lora_switch(rt, pipe, comp, steps, guidance, args.repeats, entry, registry)
                figures |= bench_two_pass(pipe, entry, man, mask, TWO_PASS_STEPS, guidance, max(1, args.repeats // 2))
            figures |= routing

            port = free_port()
            env["ATELIER_PORT"] = str(port)
            base = f"http://127.0.0.1:{port}"
            procs += [subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                                        "--log-level", "warning"], env=env, cwd=ROOT),
                      subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                                        "--pool", "solo", "-Q", settings.queue, "--loglevel", "WARNING", "-n",
                                        "bench@%h"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)]
            service = {} if args.duty_only else bench_service(rt, pipe, comp, steps, guidance,
                                                              args.repeats_service, base, man, mask, size)
            service |= bench_duty(rt, base, procs, env, args.duty_jobs, man, mask, size)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        redis_proc.terminate()
        redis_proc.wait(time.monotonic() + 10, 10)

    print(json.dumps({**service, **figures, "job_size_px": size, "job_steps": steps}))
    return 0


def bench_two_pass(pipe, entry, man, mask, steps: int, guidance: float, repeats: int) -> dict:
    """Two passes (the service's way) against one at the same large size: seconds here, and UNet FLOPs on SD 1.5."""
    width, height = TWO_PASS_SIZE
    real_steps = 25  # for the FLOPs: SD's usual step count
    passes = plan_passes(width, height, entry.native_size, entry.refine.strength, steps)
    real = plan_passes(width, height, entry.native_size, entry.refine.strength, real_steps)
    final, draw = prepare(man, mask, width, height), prepare(man, mask, *passes.draw)
    sampling = Sampling(seed=1, steps=steps, guidance_scale=guidance, output="np")

    def one() -> None:
        run_inpaint(pipe, final, "a woman, studio photo", "", sampling)

    def two() -> None:
        drawn, _ = upscaled(run_inpaint(pipe, draw, "a woman, studio photo", "", sampling), final)
        run_inpaint(pipe, final, "a woman, studio photo", "", sampling, starts=drawn, strength=passes.strength)

    timings = {}
    for name, run in (("one", one), ("two", two)):  # seconds-long calls: no warm-up needed on a CPU
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        timings[name] = statistics.median(times)
    unet = build_sd15_inpaint("meta", torch.float16).unet
    per_step = {size: unet_forward_flops(unet, size[1], size[0], 2) for size in (passes.draw, passes.final)}
    flops_two = per_step[passes.draw] * real_steps + per_step[passes.final] * real.refine_steps
    log(f"two passes at {width}x{height}: drawn at {passes.draw[0]}x{passes.draw[1]}, refined at strength"
        f" {passes.strength}: {timings['two']:.2f}s against {timings['one']:.2f}s for one pass")
    return {"two_pass_s": round(timings["two"], 3), "one_pass_s": round(timings["one"], 3),
            "two_pass_ratio": round(timings["two"] / timings["one"], 3),
            "two_pass_flop_ratio_sd15": round(flops_two / (per_step[passes.final] * real_steps), 3),
            "two_pass_size": f"{width}x{height}", "two_pass_draw": "{}x{}".format(*passes.draw)}


def bench_service(rt, pipe, comp, steps, guidance, repeats, base, man, mask, size) -> dict:
    """The service figures of ``repeats`` jobs on the same photo and ``repeats`` jobs each on a photo never seen
    before, alternating, and of as many bare calls here, half before the jobs and half after.

    ``service_overhead_ms``: the median over the same-photo jobs of (end to end - that job's diffusion call), the
    call timed by the worker itself around the pipeline's calls, less their step callbacks (``pipeline_s`` in
    the task record); ``service_overhead_ratio``: the median of end to end / that call. These jobs are a shop's
    variants of one photo (same mannequin and mask, another seed each): after the first, the worker finds the
    composition in its cache. ``new_inputs``: the same figures for jobs whose mannequin photo differs from
    every earlier one (one pixel changed), which the worker decodes and composes: the cost of a first job on a
    photo. ``overhead_breakdown_ms`` (medians each, so they need not add up; submit and pickup overlap when the
    worker takes the task before the POST has answered): ``submit`` the POST, ``pickup`` from the task's
    creation to a worker taking it, ``run_minus_pipeline`` the worker's run outside the pipeline (composition,
    paste-back, PNG, Redis writes), ``download`` the images. ``vs_separate_bare``: the same-photo jobs against
    the bare call timed in this process (``bare_call_s``), the definition before; noisier, as two processes on
    a shared CPU do not run one call equally fast."""
    client = httpx.Client(timeout=60)
    wait_gateway(client, base)

    def body(mannequin: Image.Image, seed: int) -> dict:
        return {"Action": "GenerateFromMannequin", "MainModel": {"ModelCode": "demo-inpaint"},
                "PositivePrompts": ["a woman, studio photo"], "ImageAndMaskList": [b64(mannequin), b64(mask)],
                "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1}, "Width": size, "Height": size,
                "Seed": seed, "TranslatePrompts": False}

    def new_photo(i: int) -> Image.Image:
        """The mannequin with one pixel changed: another photo to the service (another content hash)."""
        photo = man.copy()
        photo.putpixel((0, 0), (i % 256, i // 256 % 256, 7))
        return photo

    def one_job(request: dict) -> tuple[float, dict[str, float]]:
        """Submit -> the worker has stored the images and marked the task Finished (its own
        timestamp, so the client's polling interval is not counted) -> images downloaded. Returns that
        time and its parts: the POST, the wait for a worker to take the task, the worker's run, the download."""
        payload = signed(request)
        t0 = time.time()
        out = client.post(base + "/", json=payload).json()
        submitted = time.time() - t0
        assert out["RetCode"] == 0, out
        while True:
            time.sleep(0.25)  # a client's polling; not part of the measured time
            d = client.post(base + "/", json=signed({"Action": "ListTasksDetails",
                                                     "TaskUIDList": [out["TaskUID"]]})).json()
            detail = d["TaskDetailList"][0]
            if detail["Status"] == "Finished":
                break
            assert detail["Status"] != "Error", detail
        rec = rt.store.get(out["TaskUID"])
        t1 = time.perf_counter()
        for link in detail["ImgList"]:
            assert client.get(link).status_code == 200
        download = time.perf_counter() - t1
        parts = {"submit": submitted, "pickup": rec.started_at - rec.created_at,
                 "run": rec.finished_at - rec.started_at, "pipeline": rec.pipeline_s, "download": download}
        return (rec.finished_at - t0) + download, parts

    one_job(body(man, 1))  # warm: the worker loads the pipeline
    # The bare calls here (the cross-check) are timed before and after the service jobs, not between them: a
    # 0.3 s burst of this process's CPU right before every job would leave the gateway and Redis a cold cache
    # that a GPU deployment's CPU does not have. The two kinds of jobs alternate, so that the machine's drift
    # hits both alike.
    bares = [bare_call_seconds(pipe, comp, steps, guidance, 1, 1) for _ in range(repeats // 2)]
    jobs: dict[str, list[tuple[float, dict[str, float]]]] = {"same": [], "new": []}
    for i in range(repeats):
        jobs["same"].append(one_job(body(man, 1 + i)))
        jobs["new"].append(one_job(body(new_photo(i), 1 + i)))
    bares += [bare_call_seconds(pipe, comp, steps, guidance, 1, 1) for _ in range(repeats - repeats // 2)]
    bare = statistics.median(bares)
    same, new = figures(jobs["same"]), figures(jobs["new"])
    for name, f in (("same photo", same), ("new photos", new)):
        log(f"{name}: bare diffusers call {bare:.3f}s here, {f['job_pipeline_s']:.3f}s inside the service's jobs;"
            f" end to end through the service {f['end_to_end_s']:.3f}s (medians of {repeats}); overhead"
            f" {f['service_overhead_ms']} ms: "
            + ", ".join(f"{k} {v} ms" for k, v in f["overhead_breakdown_ms"].items()))
    return {**same, "new_inputs": new, "bare_call_s": round(bare, 3),
            "vs_separate_bare": {"overhead_ms": round((same["end_to_end_s"] - bare) * 1000, 1),
                                 "ratio": round(same["end_to_end_s"] / bare, 3)}}


def wait_gateway(client: httpx.Client, base: str, timeout_s: float = 30) -> None:
    """Wait (at most ``timeout_s``) for the gateway at ``base`` to answer ``/healthz``; the measurement that follows
    fails on its own if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get(f"{base}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


def add_duty_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--duty-jobs", type=int, default=50, help="back-to-back jobs of the duty_cycle figure")
    ap.add_argument("--duty-only", action="store_true", help="measure duty_cycle alone (a quicker run)")


def bench_duty(rt, base: str, procs: list[subprocess.Popen], env: dict, jobs: int, man, mask, size: int) -> dict:
    """duty_cycle (:func:`bench_duty_cycle`) of the worker as it runs (``ATELIER_WORKER_OVERLAP`` on), and in the same
    run, measured first, of a worker that overlaps nothing (``no_overlap``: each job stored before the next is taken,
    nothing prepared ahead: the worker before issue 26), the baseline against the same machine's state."""
    off = bench_duty_cycle(rt, base, procs, {**env, "ATELIER_WORKER_OVERLAP": "false"}, jobs, man, mask, size)
    on = bench_duty_cycle(rt, base, procs, {**env, "ATELIER_WORKER_OVERLAP": "true"}, jobs, man, mask, size)
    return {**on, "duty_no_overlap": off}


def bench_duty_cycle(rt, base: str, procs: list[subprocess.Popen], env: dict, jobs: int, man, mask, size: int) -> dict:
    """duty_cycle: ``jobs`` back-to-back jobs on one worker, each on a photo never seen before (a catalogue
    batch: another content hash each, so every job's inputs are decoded and composed), measured as the sum of
    the jobs' pipeline calls (``pipeline_s``, timed by the worker) over the wall time from the first measured
    job's start (the worker taking its task) to the last one's Finished: 1.0 when the device never waits for
    the CPU between calls (goal >= 0.98).

    The jobs are all queued before a worker takes any (``procs[-1]``, the running worker, is stopped, the jobs
    sent, a fresh worker started), so the gateway's work on the submissions does not share the CPU with the
    measured run; a first job, not measured, loads the pipeline. ``duty_gap_ms``: the measured run's time outside
    the pipeline calls per job ((wall - inside) / jobs): what the device waits for between two calls, less
    sensitive than the quotient to how fast a loaded CPU runs the calls themselves."""
    client, overlap = httpx.Client(timeout=60), env.get("ATELIER_WORKER_OVERLAP")
    wait_gateway(client, base)  # bench_service may not have run
    worker = procs.pop()
    worker.terminate()
    worker.wait(60)

    def submit(seed: int) -> str:
        photo = man.copy()
        photo.putpixel((1, 1), (seed % 256, seed // 256 % 256, 11 if overlap == "true" else 12))  # photos of its own
        out = client.post(base + "/", json=signed({
            "Action": "GenerateFromMannequin", "MainModel": {"ModelCode": "demo-inpaint"},
            "PositivePrompts": ["a woman, studio photo"], "ImageAndMaskList": [b64(photo), b64(mask)],
            "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1}, "Width": size, "Height": size, "Seed": seed,
            "TranslatePrompts": False})).json()
        assert out["RetCode"] == 0, out
        return out["TaskUID"]

    uids = [submit(10_000 + i) for i in range(jobs + 1)]  # the first loads the pipeline: not measured
    procs.append(subprocess.Popen(worker.args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
    deadline = time.monotonic() + 60 + 10 * jobs
    polls = 0
    while True:  # the last job's status alone while they run (reading all 51 records, job messages included,
        # twice a second took CPU from the worker it measures); all of them every 5 s and at the end
        polls += 1
        if polls % 10 and rt.store.r.hget(task_key(uids[-1]), "status") not in ("Finished", b"Finished"):
            assert time.monotonic() < deadline, "the duty-cycle jobs did not finish"
            time.sleep(0.5)
            continue
        recs = [rt.store.get(uid) for uid in uids]
        assert all(r is not None and r.status != "Error" for r in recs), [r and r.status for r in recs]
        if all(r.status == "Finished" for r in recs):
            break
        assert time.monotonic() < deadline, "the duty-cycle jobs did not finish"
        time.sleep(0.5)
    measured = sorted(recs[1:], key=lambda r: r.started_at)
    wall = max(r.finished_at for r in measured) - measured[0].started_at
    inside = sum(r.pipeline_s for r in measured)
    by_finish = sorted(recs, key=lambda r: r.finished_at)
    in_order = [r.uid for r in by_finish] == uids
    log(f"duty cycle (ATELIER_WORKER_OVERLAP={overlap}): {jobs} jobs, {inside:.2f}s inside the pipeline calls"
        f" over {wall:.2f}s of wall time:"
        f" {inside / wall:.3f} (results in submission order: {in_order})")
    return {"duty_cycle": round(inside / wall, 3), "duty_jobs": jobs, "duty_wall_s": round(wall, 2),
            "duty_pipeline_s": round(inside, 2), "duty_per_job_ms": round(1000 * wall / jobs, 1),
            "duty_pipeline_per_job_ms": round(1000 * inside / jobs, 1),
            "duty_gap_ms": round(1000 * (wall - inside) / jobs, 1), "duty_in_order": in_order}


def figures(jobs: list[tuple[float, dict[str, float]]]) -> dict:
    """Each job minus its own diffusion call (timed by the worker inside the job): the machine's drift and the
    two processes' different speeds cancel out; the separately timed bare call is the cross-check."""
    e2es, parts = [total for total, _ in jobs], [p for _, p in jobs]
    breakdown = {name: statistics.median(p[name] for p in parts) for name in ("submit", "pickup", "download")}
    breakdown["run_minus_pipeline"] = statistics.median(p["run"] - p["pipeline"] for p in parts)
    return {"service_overhead_ms": round(statistics.median(t - p["pipeline"] for t, p in jobs) * 1000, 1),
            "service_overhead_ratio": round(statistics.median(t / p["pipeline"] for t, p in jobs), 3),
            "overhead_breakdown_ms": {name: round(seconds * 1000, 1) for name, seconds in breakdown.items()},
            "job_pipeline_s": round(statistics.median(p["pipeline"] for p in parts), 3),
            "end_to_end_s": round(statistics.median(e2es), 3)}


def bench_lora_switch(rt, pipe, comp, steps, guidance, repeats, entry, registry) -> dict:
    """lora_switch_ratio: a job (submodels applied, image generated, submodels removed, as the worker
    does) whose LoRA differs from the previous job's, divided by one that uses the same LoRA again, on
    one warm pipeline, with the LoRA files in the model cache (each job holds them through its own lease,
    as in the worker); and what reloading the pipeline would cost."""
    models = rt.models
    loras = [SubModelSpec(model_code=k, model_type=ModelType.LORA, path=demo_path(k, models.models_dir), weight=0.8)
             for k in ("lora-kohya", "lora-peft")]

    def job(spec) -> float:
        t0 = time.perf_counter()
        with rt.cache.lease() as lease, apply_submodels(pipe, [spec], lambda s: models.submodel(lease, s)):
            run_inpaint(pipe, comp, "a woman, studio photo", "", Sampling(seed=1, steps=steps, guidance_scale=guidance))
        return time.perf_counter() - t0

    def apply_remove(spec) -> float:
        t0 = time.perf_counter()
        with rt.cache.lease() as lease, apply_submodels(pipe, [spec], lambda s: models.submodel(lease, s)):
            pass
        return time.perf_counter() - t0

    job(loras[0]), job(loras[1])  # warm: both files read into the model cache
    reuse, switch = [], []
    previous = loras[1]
    for i in range(4 * repeats):  # A A B B A A ...: each LoRA as often in both groups, drift shared
        spec = loras[(i // 2) % 2]
        (reuse if spec is previous else switch).append(job(spec))
        previous = spec
    overhead = statistics.median(apply_remove(loras[i % 2]) for i in range(2 * repeats))
    t0 = time.perf_counter()
    load_main_pipeline(entry, registry, models.device, models.dtype, models.models_dir)
    reload = time.perf_counter() - t0
    ratio = statistics.median(switch) / statistics.median(reuse)
    log(f"LoRA jobs: switch {statistics.median(switch):.3f}s, reuse {statistics.median(reuse):.3f}s; "
        f"apply+remove alone {overhead * 1000:.1f} ms; full pipeline reload {reload:.3f}s")
    return {"lora_switch_ratio": round(ratio, 3), "lora_apply_remove_s": round(overhead, 4),
            "pipeline_reload_s": round(reload, 3),
            "pipeline_reload_vs_lora_apply_ratio": round(reload / overhead, 1)}


ROUTING_JOBS = 40  # the measurement: 40 jobs of two Main models in a random order, sent at once
ROUTING_SIZE = 256  # a small job ...
ROUTING_TARGET_S = 0.35  # ... whose bare call on one thread takes about this (a job about 0.4 s in a worker)
ROUTING_MODELS = ("route-a", "route-b", "route-c", "route-d")  # copies of the demo checkpoint: one pipeline each
#: one demo pipeline (4.2 MB) fits a worker's model cache, two do not; nothing kept in host memory either
ROUTING_CACHE_BYTES = 6 * 1024**2
#: (name, Main models, routing on): each on fresh workers (cold caches), a queue of its own
ROUTING_SCENARIOS = (("baseline", 2, False), ("routed", 2, True), ("one_model", 1, True),
                     ("four_models", 4, True), ("four_models_baseline", 4, False))


def bench_routing(jobs: int, seed: int, port_base: int) -> dict:
    """Model-aware routing (issue 26, docs/deployment.md "Scheduling"): two workers (separate Celery processes, solo
    pool, one thread each) whose model caches hold one demo pipeline each, one gateway, an embedded Redis of its
    own. ``jobs`` jobs of two Main models (two copies of the demo checkpoint) in a random order, submitted at once
    (8 clients), with routing off (``ATELIER_ROUTE_BACKLOG=0``: every job to the shared queue, the behaviour before
    routing) and on (the shipped settings); then all of them on one model (the reference), and of four models with
    routing on and off. Fresh workers for each. ``routing_loads``: the pipelines the workers loaded (their own
    ``atelier_model_cache_misses_total{kind="pipeline"}``) with routing on (goal <= 4); ``routing_makespan_ratio``:
    its makespan (the first task's creation to the last one's Finished, the task records' timestamps) over the
    one-model run's (goal <= 1.2)."""
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-routing-"))
    keys = work / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"PublicKey": PK, "PrivateKey": SK}]}))
    demo_dir = Path(os.environ.get("ATELIER_DEMO_MODELS_DIR", str(Path.home() / ".cache" / "atelier" / "test-models")))
    steps, bare_s, load_s = routing_calibration(demo_dir)
    models = yaml.safe_load((ROOT / "models_config" / "models.yaml").read_text())
    demo = demo_path("inpaint", demo_dir)
    for code in ROUTING_MODELS:  # the same weights in another folder each: another pipeline to load
        folder = shutil.copytree(demo, work / "models" / code)
        models["models"].append({"ModelCode": code, "Name": code, "ModelType": "Main", "family": "sd15",
                                 "source": {"path": str(folder)},
                                 "defaults": {"steps": steps, "guidance_scale": 5.0}, "faces": {"refine": False}})
    (work / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    if port_base:
        port, metrics = port_base, port_base + 1
    else:
        port, metrics = free_port(), free_port_pair()
    env = {**os.environ, "ATELIER_DATA_DIR": str(work / "data"), "ATELIER_KEYS_FILE": str(keys),
           "ATELIER_DEVICE": "cpu", "PYTHONPATH": str(ROOT), "ATELIER_MODELS_CONFIG": str(work / "models.yaml"),
           "ATELIER_DEMO_MODELS_DIR": str(demo_dir), "OMP_NUM_THREADS": "1",
           "ATELIER_MODEL_CACHE_BYTES": str(ROUTING_CACHE_BYTES), "ATELIER_MODEL_CACHE_RAM_BYTES": "0",
           "ATELIER_MAX_ACTIVE_TASKS_PER_KEY": str(jobs + 8), "ATELIER_PORT": str(port),
           "ATELIER_WORKER_METRICS_PORT": str(metrics)}
    redis_proc, url = start_embedded_redis(work / "data", env)
    env["ATELIER_REDIS_URL"] = url
    man, mask = inputs()
    images = [b64(man), b64(mask)]
    log(f"routing: {jobs} jobs of {ROUTING_SIZE}x{ROUTING_SIZE}, {steps} steps ({bare_s:.2f}s bare on one thread;"
        f" a pipeline load {load_s:.2f}s), 2 workers whose caches hold one pipeline each")
    try:
        runs = {}
        for name, n_models, routed in ROUTING_SCENARIOS:
            order = [ROUTING_MODELS[i % n_models] for i in range(jobs)]
            random.Random(seed).shuffle(order)
            runs[name] = routing_scenario(work, env, name, order, routed, images)
    finally:
        redis_proc.terminate()
        redis_proc.wait(time.monotonic() + 10, 10)
    on, off, one = runs["routed"], runs["baseline"], runs["one_model"]
    four, four_off = runs["four_models"], runs["four_models_baseline"]
    return {"routing_loads": on["loads"], "routing_loads_baseline": off["loads"],
            "routing_loads_one_model": one["loads"],
            "routing_makespan_ratio": round(on["makespan_s"] / one["makespan_s"], 3),
            "routing_makespan_ratio_baseline": round(off["makespan_s"] / one["makespan_s"], 3),
            # the same, each makespan over the seconds its jobs spent inside the pipeline's calls: what a CPU shared
            # with other work (its neighbours slowing every call) does not move
            "routing_makespan_ratio_per_pipeline_s": round(on["makespan_s"] / on["pipeline_s"]
                                                           / (one["makespan_s"] / one["pipeline_s"]), 3),
            "routing_makespan_s": on["makespan_s"], "routing_makespan_baseline_s": off["makespan_s"],
            "routing_makespan_one_model_s": one["makespan_s"],
            "routing_4_models": {"loads": four["loads"], "loads_baseline": four_off["loads"],
                                 "makespan_s": four["makespan_s"], "makespan_baseline_s": four_off["makespan_s"],
                                 "makespan_ratio": round(four["makespan_s"] / one["makespan_s"], 3),
                                 "makespan_ratio_baseline": round(four_off["makespan_s"] / one["makespan_s"], 3)},
            "routing_job": {"jobs": jobs, "size_px": ROUTING_SIZE, "steps": steps, "bare_call_s": round(bare_s, 3),
                            "pipeline_load_s": round(load_s, 3), "seed": seed},
            "routing_scenarios": runs}


def routing_calibration(demo_dir: Path) -> tuple[int, float, float]:
    """The steps of a routing job (its bare call on one thread, as each worker has, about ``ROUTING_TARGET_S``),
    that call's seconds, and what loading the demo pipeline costs (median of 3)."""
    registry = get_registry(ROOT / "models_config" / "models.yaml")
    entry = registry.get("demo-inpaint")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loads = []
        for _ in range(3):
            t0 = time.perf_counter()
            pipe = load_main_pipeline(entry, registry, "cpu", torch.float32, demo_dir)
            loads.append(time.perf_counter() - t0)
        man, mask = inputs()
        comp = prepare(man, mask, ROUTING_SIZE, ROUTING_SIZE)
        probe = entry.defaults.steps
        bare_call_seconds(pipe, comp, probe, entry.defaults.guidance_scale, 1, 1)  # warm at this size
        per_step = bare_call_seconds(pipe, comp, probe, entry.defaults.guidance_scale, 1, 3) / probe
    finally:
        torch.set_num_threads(threads)
    steps = max(1, round(ROUTING_TARGET_S / per_step))
    return steps, per_step * steps, statistics.median(loads)


def free_port_pair() -> int:
    """A free port whose next one is free too (the two workers' metrics ports)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def routing_scenario(work: Path, base_env: dict[str, str], name: str, order: list[str], routed: bool,
                     images: list[str]) -> dict:
    """One run: a gateway and two fresh workers on a queue of their own, the jobs of ``order`` (their models)
    submitted at once, waited for; the workers' pipeline loads, the makespan and who ran what."""
    queue = f"atelier-bench-{name}-{uuid.uuid4().hex[:6]}"
    backlog = Settings.model_fields["route_backlog"].default if routed else 0
    env = {**base_env, "ATELIER_QUEUE": queue, "ATELIER_ROUTE_BACKLOG": str(backlog)}
    r = redis.Redis.from_url(env["ATELIER_REDIS_URL"], decode_responses=True)
    store = TaskStore(r, 3600)
    base = f"http://127.0.0.1:{env['ATELIER_PORT']}"
    metrics = int(env["ATELIER_WORKER_METRICS_PORT"])
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    def start(tag: str, argv: list[str], **extra: str) -> subprocess.Popen:
        with (logs / f"{name}-{tag}.log").open("ab") as out:
            return subprocess.Popen(argv, env={**env, **extra}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    procs = [start("gateway", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                               env["ATELIER_PORT"], "--log-level", "warning"])]
    procs += [start(f"worker{i}", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool",
                                   "solo", "-Q", queue, "--loglevel", "INFO", "-n", f"{name}{i}@%h"],
                    ATELIER_WORKER_INDEX=str(i)) for i in range(2)]
    worker_ids = [f"{socket.gethostname()}:{p.pid}" for p in procs[1:]]
    client = httpx.Client(timeout=60)
    try:
        deadline = time.monotonic() + 180
        while True:  # the gateway answers, both workers are alive and consume their direct queues
            try:
                up = client.get(f"{base}/healthz").status_code == 200
            except httpx.HTTPError:
                up = False
            ready = set(worker_ids) <= set(live_worker_ids(r, queue)) & r.smembers(direct_key(queue))
            if up and ready:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"routing bench {name}: the deployment did not come up (logs in {logs})")
            time.sleep(0.2)

        def submit(job: tuple[int, str]) -> str:
            i, model = job
            out = client.post(base + "/", json=signed({
                "Action": "GenerateFromMannequin", "MainModel": {"ModelCode": model},
                "PositivePrompts": ["a woman, studio photo"], "ImageAndMaskList": images,
                "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1}, "Width": ROUTING_SIZE,
                "Height": ROUTING_SIZE, "Seed": i, "TranslatePrompts": False})).json()
            assert out["RetCode"] == 0, out
            return out["TaskUID"]

        with ThreadPoolExecutor(8) as pool:  # at once: clients in parallel, as a shop's batch arrives
            uids = list(pool.map(submit, enumerate(order)))
        deadline = time.monotonic() + 600
        while True:
            records = [store.get(uid) for uid in uids]
            if all(rec.status == TaskStatus.FINISHED for rec in records):
                break
            failed = [rec for rec in records if rec.status in (TaskStatus.ERROR, TaskStatus.CANCELED)]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"routing bench {name}: {failed[:1] or 'timed out'} (logs in {logs})")
            time.sleep(0.25)
        loads = [routing_pipeline_loads(client, metrics + i) for i in range(2)]
    finally:
        client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    makespan = max(rec.finished_at for rec in records) - min(rec.created_at for rec in records)
    model_of = dict(zip(uids, order, strict=True))
    letters = {m: chr(ord("a") + i) for i, m in enumerate(sorted(set(order)))}
    sequences = ["".join(letters[model_of[rec.uid]] for rec in sorted(records, key=lambda rec: rec.started_at)
                         if rec.worker == w) for w in worker_ids]
    by_worker = [sum(rec.worker == w for rec in records) for w in worker_ids]
    log(f"routing {name}: {len(set(order))} model(s), routing {'on' if routed else 'off'}: {sum(loads)} pipeline"
        f" loads {loads}, makespan {makespan:.1f}s, models run by each worker {sequences}")
    return {"models": len(set(order)), "routing": routed, "loads": sum(loads), "loads_by_worker": loads,
            "makespan_s": round(makespan, 2), "jobs_by_worker": by_worker, "models_by_worker": sequences,
            "pipeline_s": round(sum(rec.pipeline_s for rec in records), 2),
            "job_s": round(statistics.median(rec.finished_at - rec.started_at for rec in records), 3)}


def routing_pipeline_loads(client: httpx.Client, port: int) -> int:
    """The pipelines a worker has loaded: its own ``atelier_model_cache_misses_total{kind="pipeline"}``."""
    text = client.get(f"http://127.0.0.1:{port}/metrics").text
    found = re.search(r'^atelier_model_cache_misses_total\{kind="pipeline"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


if __name__ == "__main__":
    sys.exit(main())
