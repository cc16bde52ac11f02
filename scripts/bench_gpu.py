"""``make bench-gpu``: images/s of Atelier's generation path against stock diffusers, on real-size models.

No weights are downloaded: the models are the real SD 1.5 and SDXL inpainting architectures with random
weights (:mod:`workers.demo.realsize`), so they do the real checkpoints' FLOPs and hold their memory.

For each architecture (``--archs``) one pipeline is built and measured three ways, in this order (the later
ones change the pipeline, so stock goes first and nothing is built twice):

1. **stock**: the ``StableDiffusionInpaintPipeline`` (SDXL: ``StableDiffusionXLInpaintPipeline``) as built,
   in the benchmark's dtype with diffusers' default settings, called as a diffusers user would for N images:
   one call with ``num_images_per_prompt=N`` (``stock_images_per_s``, the baseline of the ratios) and N calls
   of one image (``stock_sequential_images_per_s``, what Atelier did before; at N=1 it is the same call and
   the same figure). Both pipelines get the same prompt, negative prompt, guidance (7.5), strength (1.0),
   image, mask and size; progress bars are off for both (the service switches them off).
2. **atelier**: :func:`workers.models.speed.apply_speed` with the service's default fast paths (channels_last,
   SDPA, fused QKV; plus ``compile`` on CUDA), then the service's own generation,
   :func:`workers.inference.inpaint.run_inpaint` with ``batch_size`` N, from the example mannequin and clothes
   mask (``examples/``) composed by :func:`workers.inference.compose.prepare` inside the timed region.
3. **atelier_deepcache**: the same plus DeepCache (``deep_cache_interval``, default 3). It changes the
   images, so the headline ratio is without it.

Timing: ``--warmup`` untimed calls at each measured shape first (on CUDA the first atelier call at each batch,
which compiles, is reported as ``compile_warmup_s``), then ``--repeats`` timed ones with
``torch.cuda.synchronize()`` around each; images/s = N / median seconds.

FLOPs: the UNet's FLOPs for one image, :func:`workers.demo.realsize.unet_forward_flops` of a meta-device UNet
(nothing allocated) at batch 2 (classifier-free guidance) times the UNet calls per image (the pipeline's
``num_timesteps``: PNDM, SD 1.5's scheduler, makes 21 calls for 20 steps). The VAE and the text encoders are
not counted. ``peak_fraction`` = those FLOPs x images/s / the GPU's peak dense fp16/bf16 tensor FLOP/s
(:data:`PEAK_TENSOR_FLOPS`); null on the CPU, in float32, or for a GPU not in the table.

Output: progress on stderr, then ONE JSON object on the last line of stdout::

    device             torch.cuda.get_device_name() or "cpu"
    dtype, steps       the benchmark's dtype and denoising steps
    size               the image side in pixels (square; SDXL's may differ: --sdxl-size, see results.sdxl.size)
    compile            whether the atelier variants ran with torch.compile
    compile_mode       its mode (``--compile-mode``; the service's default unless asked) or null
    peak_tflops        the peak used for peak_fraction (TFLOP/s) or null
    goal_ratio_b8      2.0: the issue's goal for ratio at BatchSize 8
    goal_met           {arch: ratio >= goal at b8, or null if b8 was not measured}
    torch, diffusers   versions
    results            {arch: {...}} with, per architecture:
      size, unet_params, unet_calls_per_image, build_s (building the random-weight pipeline), apply_speed_s
      b<N>             per BatchSize N (``--batches``):
        stock_images_per_s             stock, one call with num_images_per_prompt=N
        stock_sequential_images_per_s  stock, N calls of one image
        atelier_images_per_s           Atelier's path (apply_speed + run_inpaint), without DeepCache
        ratio                          atelier / stock (the headline; goal >= 2 at b8)
        ratio_sequential               atelier / stock_sequential
        atelier_deepcache_images_per_s Atelier's path with DeepCache (null with --deep-cache 0)
        ratio_deepcache                atelier_deepcache / stock
        compile_warmup_s               duration of the first atelier call at this batch (null without compile)
        images_per_call                how many images each atelier pipeline call takes (the service's chunking)
        unet_tflop_per_image           UNet TFLOPs per image (all steps, guidance included)
        peak_fraction                  achieved fraction of peak for atelier (null when unknown)
        stock_peak_fraction            the same for stock

CPU mode (no CUDA, or ``--device cpu``): the defaults shrink to SD 1.5 only, 64x64, 2 steps, batches 1 and 2,
float32, no compile, no warm-up, 1 repeat: the figures only show that the script works. The architectures stay the
real ones, so on a 2-core machine SD 1.5 takes about 1.5 minutes (each pipeline call some 7 s: the weights, not the
size, dominate; 5 minutes when other processes share the cores) and SDXL (``--archs sdxl``) about 4 minutes per
BatchSize under the same load, with 17 GB of memory at its peak in float32.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from app.contract.registry import COMPILE_MODES, SpeedOptions  # noqa: E402
from workers.demo.realsize import BUILDERS, unet_forward_flops  # noqa: E402
from workers.inference.compose import inpaint_mask, prepare  # noqa: E402
from workers.inference.inpaint import Sampling, run_inpaint  # noqa: E402
from workers.models.speed import apply_speed  # noqa: E402
from workers.patching.per_call import images_per_call  # noqa: E402

PROMPT = "a professional fashion photograph of a young woman wearing the dress, studio light"
NEGATIVE_PROMPT = "blurry, low quality, deformed hands"
GUIDANCE = 7.5
SEED = 1
GOAL_RATIO_B8 = 2.0

#: Peak dense (non-sparse) fp16 tensor-core FLOP/s with fp32 accumulation (what PyTorch's fp16 and bf16
#: matmuls use; bf16 has the same peak on all of these), from NVIDIA's datasheets, keyed by a substring of
#: ``torch.cuda.get_device_name()``; the first match wins, so the more specific names come first. Entries
#: marked "unsure" are not from a datasheet the author could check; correct them if you can.
PEAK_TENSOR_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4e12),     # Grace Hopper: an H100 SXM-class GPU
    ("H200 NVL", 835.5e12),  # unsure (half of the datasheet's 1671 sparse)
    ("H200", 989.4e12),      # H200 SXM
    ("H100 NVL", 835.5e12),  # unsure (half of the datasheet's 1671 sparse)
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),      # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0e12),      # SXM and PCIe
    ("L40S", 362.05e12),
    ("L40", 181.05e12),
    ("L4", 121.0e12),
    ("A10G", 125.0e12),      # unsure: no NVIDIA datasheet for the A10G; this is the A10's figure
    ("A10", 125.0e12),
    ("RTX 4090", 165.2e12),  # GeForce: fp32 accumulation runs at half the fp16-accumulate rate (330.3)
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def log(msg: str) -> None:
    print(f"[bench-gpu] {msg}", file=sys.stderr, flush=True)


def peak_flops(device_name: str, dtype: str) -> float | None:
    """The GPU's peak dense fp16/bf16 tensor FLOP/s (:data:`PEAK_TENSOR_FLOPS`); None in float32 (tensor-core
    fp16 peaks do not apply) or for a GPU the table does not know."""
    if dtype == "float32":
        return None
    lowered = device_name.lower()
    for key, value in PEAK_TENSOR_FLOPS:
        if key.lower() in lowered:
            return value
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--archs", default=None, help="comma-separated: sd15, sdxl (default: both on CUDA, sd15 on CPU)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; CPU 64)")
    ap.add_argument("--sdxl-size", type=int, default=None, help="SDXL's image side (default: --size; 1024 is SDXL's"
                    " native size)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; CPU 2)")
    ap.add_argument("--batches", default=None, help="comma-separated BatchSizes (default 1,8; CPU 1,2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3; CPU 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs before each measurement (default 1;"
                    " CPU 0; with compile at least 1)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default float16; CPU float32")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the UNet in the atelier variants (default: on CUDA only)")
    ap.add_argument("--compile-mode", choices=COMPILE_MODES, default=SpeedOptions().compile_mode,
                    help="torch.compile mode (default: the service's, %(default)s; 'default' compiles in a"
                    " fraction of the time, for a short GPU slot)")
    ap.add_argument("--deep-cache", type=int, default=3, help="DeepCache interval of the atelier_deepcache"
                    " variant (0: skip it)")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cuda", "cpu"):
        ap.error("--device must be cuda or cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    cpu = args.device == "cpu"
    args.archs = (args.archs or ("sd15" if cpu else "sd15,sdxl")).split(",")
    unknown = [a for a in args.archs if a not in BUILDERS]
    if unknown:
        ap.error(f"unknown arch(s) {unknown}; known: {', '.join(BUILDERS)}")
    args.size = args.size or (64 if cpu else 512)
    args.sdxl_size = args.sdxl_size or args.size
    args.steps = args.steps or (2 if cpu else 20)
    args.batches = [int(b) for b in (args.batches or ("1,2" if cpu else "1,8")).split(",")]
    args.repeats = args.repeats or (1 if cpu else 3)
    args.warmup = (0 if cpu else 1) if args.warmup is None else args.warmup
    args.dtype = args.dtype or ("float32" if cpu else "float16")
    args.compile = (not cpu) if args.compile is None else args.compile
    for side in (args.size, args.sdxl_size):
        if side < 64 or side % 8:
            ap.error(f"sizes must be multiples of 8, at least 64 (got {side})")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batches):
        ap.error("steps, repeats and batches must be >= 1, warmup >= 0")
    if args.deep_cache == 1 or args.deep_cache < 0:
        ap.error("--deep-cache must be 0 (off) or >= 2")
    return args


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds ``fn()`` takes, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(fn: Callable[[], object], images: int, device: str, warmup: int, repeats: int,
            label: str) -> tuple[float, float | None]:
    """(images/s = ``images`` / median of ``repeats`` timed runs, duration of the first warm-up run or None)."""
    first = None
    for i in range(warmup):
        seconds = timed(fn, device)
        first = seconds if i == 0 else first
    runs = [timed(fn, device) for _ in range(repeats)]
    rate = images / statistics.median(runs)
    log(f"  {label}: {rate:.4g} images/s (runs {', '.join(f'{s:.3f}s' for s in runs)}"
        + (f"; first warm-up {first:.3f}s)" if first is not None else ")"))
    return rate, first


def release(device: str) -> None:
    """Free the measured pipeline before the next architecture: compiled graphs (which hold their module) too."""
    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure_pipeline(pipe, arch: str, args: argparse.Namespace, size: int, mannequin: Image.Image,
                     mask: Image.Image) -> tuple[dict[int, dict], float]:
    """Measure stock, then atelier, then atelier_deepcache on ``pipe`` at every batch (this order: the
    later ones change the pipeline). Returns ({batch: {variant: images/s, "warmup": first atelier call's
    seconds}}, seconds :func:`apply_speed` took)."""
    device = args.device
    comp = prepare(mannequin, mask, size, size)
    stock_mask = inpaint_mask(comp)

    def stock(n: int) -> None:
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, image=comp.image, mask_image=stock_mask,
             height=size, width=size, strength=1.0, num_inference_steps=args.steps, guidance_scale=GUIDANCE,
             num_images_per_prompt=n, generator=torch.Generator("cpu").manual_seed(SEED))

    def atelier(n: int) -> None:
        composed = prepare(mannequin, mask, size, size)
        images = run_inpaint(pipe, composed, PROMPT, NEGATIVE_PROMPT,
                             Sampling(seed=SEED, batch_size=n, steps=args.steps, guidance_scale=GUIDANCE))
        if len(images) != n:
            raise RuntimeError(f"run_inpaint returned {len(images)} images for a batch of {n}")

    rows: dict[int, dict] = {n: {} for n in args.batches}
    log(f"{arch}: stock diffusers")
    for n in args.batches:
        rows[n]["stock"], _ = measure(lambda n=n: stock(n), n, device, args.warmup, args.repeats, f"{arch} stock b{n}")
        if n == 1:
            rows[n]["stock_sequential"] = rows[n]["stock"]  # the same single call
        else:  # warm already: the b1 shapes ran first, or the warm-up below runs them
            rows[n]["stock_sequential"], _ = measure(lambda n=n: [stock(1) for _ in range(n)], n, device,
                                                     args.warmup if 1 not in args.batches else 0, args.repeats,
                                                     f"{arch} stock sequential b{n}")

    options = SpeedOptions(dtype=args.dtype, compile=args.compile, compile_mode=args.compile_mode)
    shown = options.model_dump(include={"dtype", "channels_last", "sdpa", "fuse_qkv", "compile", "compile_mode"})
    log(f"{arch}: atelier, apply_speed({shown})")
    start = time.perf_counter()
    apply_speed(pipe, options, device)
    apply_speed_s = time.perf_counter() - start
    warmup = max(args.warmup, 1) if args.compile else args.warmup  # compiling is never timed
    for n in args.batches:
        rows[n]["atelier"], rows[n]["warmup"] = measure(lambda n=n: atelier(n), n, device, warmup, args.repeats,
                                                        f"{arch} atelier b{n}")
    if args.deep_cache:
        log(f"{arch}: atelier with DeepCache (interval {args.deep_cache})")
        apply_speed(pipe, options.model_copy(update={"deep_cache_interval": args.deep_cache}), device)
        for n in args.batches:
            rows[n]["deepcache"], _ = measure(lambda n=n: atelier(n), n, device, warmup, args.repeats,
                                              f"{arch} atelier_deepcache b{n}")
    return rows, apply_speed_s


def bench_arch(arch: str, args: argparse.Namespace, mannequin: Image.Image, mask: Image.Image) -> dict:
    """Build ``arch`` once, measure it (:func:`measure_pipeline`) and free it; the arch's JSON entry."""
    device, dtype = args.device, DTYPES[args.dtype]
    size = args.sdxl_size if arch == "sdxl" else args.size
    builder = BUILDERS[arch]
    cfg_batch = 2 if GUIDANCE > 1 else 1
    call_flops = unet_forward_flops(builder("meta", dtype).unet, size, size, cfg_batch)

    log(f"{arch}: building the real-size architecture with random weights ({args.dtype}, {device})")
    start = time.perf_counter()
    pipe = builder(device, dtype)
    build_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    log(f"{arch}: built in {build_s:.1f}s (UNet {unet_params / 1e6:.1f}M parameters); {size}x{size}, "
        f"{args.steps} steps, batches {args.batches}")
    rows, apply_speed_s = measure_pipeline(pipe, arch, args, size, mannequin, mask)
    unet_calls = pipe.num_timesteps  # UNet calls per image, set by the pipeline's last call
    per_call = images_per_call(pipe, size, size)
    del pipe
    release(device)

    peak = peak_flops(args.device_name, args.dtype)
    flop_per_image = call_flops * unet_calls

    def fraction(rate: float) -> float | None:
        return round(flop_per_image * rate / peak, 4) if peak else None

    result: dict = {"size": size, "unet_params": unet_params, "unet_calls_per_image": unet_calls,
                    "build_s": round(build_s, 2), "apply_speed_s": round(apply_speed_s, 2)}
    for n, row in rows.items():
        deep_rate = row.get("deepcache")
        result[f"b{n}"] = {
            "stock_images_per_s": round(row["stock"], 4),
            "stock_sequential_images_per_s": round(row["stock_sequential"], 4),
            "atelier_images_per_s": round(row["atelier"], 4),
            "ratio": round(row["atelier"] / row["stock"], 3),
            "ratio_sequential": round(row["atelier"] / row["stock_sequential"], 3),
            "atelier_deepcache_images_per_s": round(deep_rate, 4) if deep_rate is not None else None,
            "ratio_deepcache": round(deep_rate / row["stock"], 3) if deep_rate is not None else None,
            "compile_warmup_s": round(row["warmup"], 2) if args.compile and row["warmup"] is not None else None,
            "images_per_call": min(n, per_call),
            "unet_tflop_per_image": round(flop_per_image / 1e12, 4),
            "peak_fraction": fraction(row["atelier"]),
            "stock_peak_fraction": fraction(row["stock"]),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if args.device == "cpu":
        log("CPU mode: small size, few steps, float32, no compile. These figures only show that the script "
            "works; they say nothing about GPU speed. Run `make bench-gpu` on a CUDA machine for real figures.")
    torch.manual_seed(SEED)
    mannequin = Image.open(ROOT / "examples" / "mannequin.png").convert("RGB")
    mask = Image.open(ROOT / "examples" / "clothes_mask.png")
    results = {arch: bench_arch(arch, args, mannequin, mask) for arch in args.archs}
    peak = peak_flops(args.device_name, args.dtype)
    if args.device == "cuda" and peak is None and args.dtype != "float32":
        log(f"no peak FLOP/s known for {args.device_name!r}: peak_fraction is null (add it to PEAK_TENSOR_FLOPS)")
    report = {
        "device": args.device_name,
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "peak_tflops": round(peak / 1e12, 2) if peak else None,
        "goal_ratio_b8": GOAL_RATIO_B8,
        "goal_met": {arch: (r["b8"]["ratio"] >= GOAL_RATIO_B8) if "b8" in r else None for arch, r in results.items()},
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "results": results,
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
