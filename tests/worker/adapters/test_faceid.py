"""FaceID IP-Adapters on the CPU: the face aligned from the detector's landmarks (real photos, the real MTCNN), the
ArcFace-shaped ONNX embedding, files in the published layout (one written here by hand, not by the demo builder)
with their LoRA part, diffusers' own FaceID projections reproduced, and the UNet back bit for bit after a job."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.faces import photo
from support.models import garment, load_folder
from workers.adapters.encoder import encode_reference, load_image_encoder
from workers.adapters.faceid import (
    ARCFACE_TEMPLATE,
    NoFaceFound,
    align_face,
    face_embeds,
    faceid_lora,
    load_face_model,
    main_face,
)
from workers.adapters.files import read_adapter_file
from workers.adapters.ip_adapter import AdapterUnit, adapters_applied, build_adapter
from workers.demo.adapters import ensure_demo_clip_vision
from workers.demo.faceid import arcface_model, ensure_demo_arcface, ensure_demo_faceid
from workers.demo.model import ensure_demo_model
from workers.faces.detect import load_face_detector
from workers.inference.inpaint import Sampling, run_inpaint
from workers.submodels.lora import patched

STEPS = 3
PROMPT, NEGATIVE = "a woman in a dress", "blurry"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faceid-models")


@pytest.fixture(scope="module")
def demo_dir(models) -> Path:
    return ensure_demo_model(models / "demo-inpaint")


@pytest.fixture(scope="module")
def base(demo_dir):
    return load_folder(demo_dir)


@pytest.fixture(scope="module")
def detector():
    return load_face_detector("cpu")


@pytest.fixture(scope="module")
def encoder(models):
    return load_image_encoder(ensure_demo_clip_vision(models / "clip"), "cpu", torch.float32)


@pytest.fixture(scope="module")
def face_model(models):
    return load_face_model(ensure_demo_arcface(models / "arcface"))


@pytest.fixture(scope="module")
def plus(models, demo_dir):
    return build_adapter(read_adapter_file(ensure_demo_faceid(models / "faceid", base_model=demo_dir)), "cpu",
                         torch.float32)


def draw(pipe, units=(), seed=5) -> np.ndarray:
    sampling = Sampling(seed=seed, steps=STEPS, guidance_scale=5.0, output="np")
    with adapters_applied(pipe, list(units), guidance_scale=sampling.guidance_scale) as run:
        return run_inpaint(pipe, garment(64, 64), PROMPT, NEGATIVE, sampling, pipeline_kwargs=run.kwargs(pipe))[0]


# --- alignment and the embedding -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["biden.jpg", "astronaut.jpg", "two_people.jpg"])
def test_the_aligned_crop_puts_the_face_s_eyes_on_arcface_s_template(detector, name):
    """Dots painted on the photo at the detector's five landmarks land, in the aligned 112x112 crop, on the
    template's points: the eyes within 3 pixels, every point within 7 (a face is not the template's average face)."""
    import cv2

    image = np.array(photo(name))
    face = main_face(detector.detect(Image.fromarray(image)))
    marks = np.zeros(image.shape[:2], np.uint8)
    for x, y in face.landmarks:
        cv2.circle(marks, (round(x), round(y)), 2, 255, -1)
    crop = align_face(np.dstack([marks] * 3), face.landmarks)[..., 0]
    assert crop.shape == (112, 112)
    ys, xs = np.nonzero(crop > 40)
    found = []
    for tx, ty in ARCFACE_TEMPLATE:  # the centroid of the painted pixels nearest each template point
        near = (xs - tx) ** 2 + (ys - ty) ** 2 < 8 ** 2
        assert near.any(), (tx, ty)
        found.append((xs[near].mean(), ys[near].mean()))
    error = np.linalg.norm(np.array(found) - ARCFACE_TEMPLATE, axis=1)
    assert error[:2].max() < 3 and error.max() < 7, error
    aligned = align_face(image, face.landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.std() > 20  # the face itself, not the black border


def test_the_similarity_is_the_least_squares_one_opencv_finds_with_every_point_an_inlier():
    import cv2

    from workers.adapters.faceid import similarity

    rng = np.random.default_rng(3)
    src = ARCFACE_TEMPLATE * 1.7 + 40 + rng.normal(0, 2, (5, 2))
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = src @ rot.T
    expected, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), ARCFACE_TEMPLATE, method=cv2.RANSAC,
                                              ransacReprojThreshold=1e4)
    np.testing.assert_allclose(similarity(src, ARCFACE_TEMPLATE), expected, atol=1e-3)


def test_the_main_face_is_the_largest_and_none_is_no_face(detector):
    faces = detector.detect(photo("two_people.jpg"))
    assert len(faces) == 2
    assert main_face(faces) is max(faces, key=lambda f: f.width * f.height)
    with pytest.raises(NoFaceFound):
        main_face([])


def test_the_onnx_embedding_is_512_wide_normalised_the_same_for_the_same_face_another_for_another(
        detector, face_model):
    one = photo("biden.jpg")
    a = face_embeds(one, detector.detect(one), face_model, "face_id")
    b = face_embeds(one.copy(), detector.detect(one.copy()), face_model, "face_id")
    assert a.kind == "face_id" and a.positive.shape == (1, 512) and torch.count_nonzero(a.negative) == 0
    assert torch.linalg.vector_norm(a.positive).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(a.positive, b.positive)
    two = photo("two_people.jpg")
    left, right = detector.detect(two)
    x = face_model.embed(align_face(two, left.landmarks))
    y = face_model.embed(align_face(two, right.landmarks))
    assert not np.allclose(x, y, atol=1e-3)
    with pytest.raises(NoFaceFound):
        face_embeds(Image.new("RGB", (64, 64), (90, 90, 90)), [], face_model, "face_id")


def test_the_face_model_reads_pixels_as_insightface_does(tmp_path):
    """A graph without Sub/Mul up front gets (x - 127.5) / 127.5; one that normalises itself gets raw pixels."""
    import onnx
    from onnx import helper

    plain = arcface_model()
    onnx.save_model(plain, str(tmp_path / "a.onnx"))
    normalising = copy.deepcopy(plain)
    nodes = list(normalising.graph.node)
    nodes[0].input[0] = "scaled"
    normalising.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                                          onnx.numpy_helper.from_array(np.array(1 / 127.5, np.float32), "std")])
    del normalising.graph.node[:]
    normalising.graph.node.extend([helper.make_node("Sub", ["input.1", "mean"], ["centred"]),
                                   helper.make_node("Mul", ["centred", "std"], ["scaled"]), *nodes])
    onnx.save_model(normalising, str(tmp_path / "b.onnx"))
    a, b = load_face_model(tmp_path / "a.onnx"), load_face_model(tmp_path / "b.onnx")
    assert (a.raw_pixels, b.raw_pixels) == (False, True)
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(a.embed(crop), b.embed(crop), atol=1e-5)  # the same arithmetic, either way


def test_a_model_of_another_shape_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from workers.adapters.faceid import FaceModelError

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                    str(tmp_path / "x.onnx"))
    with pytest.raises(FaceModelError, match="112"):
        load_face_model(tmp_path / "x.onnx")


# --- files ----------------------------------------------------------------------------------------------

def hand_written_faceid(unet, path: Path) -> None:
    """A FaceID file written here from the published layout (h94/IP-Adapter-FaceID's ip-adapter-faceid_sd15.bin, a
    torch pickle of two dicts): image_proj.proj.0/proj.2 (512 -> 1024 -> 4 tokens) and norm; ip_adapter.<n>.to_k_ip /
    to_v_ip for the cross-attention processors (odd n) and the LoRA part to_q/k/v/out_lora.down/up for every
    processor n (rank 2 here; 128 in the real file)."""
    width, g = unet.config.cross_attention_dim, torch.Generator().manual_seed(11)
    image_proj = {"proj.0.weight": torch.randn(1024, 512, generator=g) * 0.05, "proj.0.bias": torch.zeros(1024),
                  "proj.2.weight": torch.randn(4 * width, 1024, generator=g) * 0.05,
                  "proj.2.bias": torch.zeros(4 * width), "norm.weight": torch.ones(width),
                  "norm.bias": torch.zeros(width)}
    ip_adapter = {}
    # the demo UNet: 8 attention processors, attn1 (self, even n, 64 wide) before attn2 (cross, odd n)
    for n in range(8):
        if n % 2:
            ip_adapter[f"{n}.to_k_ip.weight"] = torch.randn(64, width, generator=g) * 0.5
            ip_adapter[f"{n}.to_v_ip.weight"] = torch.randn(64, width, generator=g) * 0.5
        kv_in = width if n % 2 else 64
        for x, (inp, out) in {"q": (64, 64), "k": (kv_in, 64), "v": (kv_in, 64), "out": (64, 64)}.items():
            ip_adapter[f"{n}.to_{x}_lora.down.weight"] = torch.randn(2, inp, generator=g) * 0.1
            ip_adapter[f"{n}.to_{x}_lora.up.weight"] = torch.randn(out, 2, generator=g) * 0.1
    torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)


def test_a_hand_written_faceid_file_loads_with_its_lora_part_and_acts(base, detector, face_model, tmp_path):
    hand_written_faceid(base.unet, tmp_path / "ip-adapter-faceid_sd15.bin")
    data = read_adapter_file(tmp_path / "ip-adapter-faceid_sd15.bin")
    assert (data.variant, data.embeds, data.embed_dim, data.tokens) == ("faceid", "face_id", 512, 4)
    assert sorted(data.lora) == list(range(8)) and len(data.lora[1]) == 8 and sorted(data.layers) == [1, 3, 5, 7]
    adapter = build_adapter(data, "cpu", torch.float32)
    face = photo("biden.jpg")
    embeds = face_embeds(face, detector.detect(face), face_model, "face_id")
    ids = embeds.positive
    # diffusers' own FaceID projection, built here from the same tensors by hand
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    ref = IPAdapterFaceIDImageProjection(image_embed_dim=512, cross_attention_dim=base.unet.config.cross_attention_dim,
                                         mult=2, num_tokens=4)
    p = data.image_proj
    ref.load_state_dict({"ff.net.0.proj.weight": p["proj.0.weight"], "ff.net.0.proj.bias": p["proj.0.bias"],
                         "ff.net.2.weight": p["proj.2.weight"], "ff.net.2.bias": p["proj.2.bias"],
                         "norm.weight": p["norm.weight"], "norm.bias": p["norm.bias"]})
    torch.testing.assert_close(adapter.projection(ids), ref(ids))
    plain = draw(base)
    one = draw(base, [AdapterUnit(adapter, embeds, 1.0)])
    assert not np.array_equal(one, plain) and np.array_equal(draw(base), plain)


def test_the_lora_part_is_patched_in_and_taken_out_bit_for_bit(base, tmp_path):
    hand_written_faceid(base.unet, tmp_path / "f.bin")
    data = read_adapter_file(tmp_path / "f.bin")
    lora = faceid_lora(data.lora, base.unet, "f.bin")
    first, second = (name.removesuffix(".processor") for name in list(base.unet.attn_processors)[:2])
    assert len(lora.layers) == 32 and f"unet.{second}.to_k" in lora.layers and f"unet.{first}.to_out.0" in lora.layers
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    q = base.unet.get_submodule(f"{first}.to_q").weight
    parts = data.lora[0]
    expected = before[f"{first}.to_q.weight"] + parts["q.up"] @ parts["q.down"]  # scale 1: no alpha, as diffusers
    with patched(base, [("faceid", lora, 1.0)]):
        torch.testing.assert_close(q.detach(), expected)
        changed = [k for k, v in base.unet.state_dict().items() if not torch.equal(v, before[k])]
        assert len(changed) == 32
    after = base.unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_the_plus_projection_is_diffusers_with_the_clip_states_of_the_face_crop(plus, encoder, detector,
                                                                                face_model):
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

    assert (plus.variant, plus.embeds, plus.clip_dim) == ("faceid-plus", "face_id_plus", 32)
    face = photo("astronaut.jpg")
    found = detector.detect(face)
    embeds = face_embeds(face, found, face_model, "face_id_plus", encoder)
    crop = Image.fromarray(align_face(face, main_face(found).landmarks, 224))
    clip = encode_reference(encoder, crop, "hidden_states")
    inner = plus.projection.inner
    assert isinstance(inner, IPAdapterFaceIDPlusImageProjection) and inner.shortcut  # v2 by the file's name
    ids = embeds.positive[:, :512]
    inner.clip_embeds = clip.positive[:, None]
    try:
        expected = inner(ids)
    finally:
        inner.clip_embeds = None
    torch.testing.assert_close(plus.projection(embeds.positive), expected)
    assert inner.clip_embeds is None  # nothing stays on the shared module
    torch.testing.assert_close(embeds.negative[:, 512:], clip.negative.flatten(1))


def test_a_faceid_plus_unit_changes_the_image_the_same_face_gives_the_same(base, plus, encoder, detector,
                                                                          face_model):
    def unit(name, **kw):
        img = photo(name)
        return AdapterUnit(plus, face_embeds(img, detector.detect(img), face_model, "face_id_plus", encoder),
                           **{"weight": 1.0, **kw})

    plain = draw(base)
    one = draw(base, [unit("biden.jpg")])
    assert not np.array_equal(one, plain)
    assert np.array_equal(draw(base, [unit("biden.jpg")]), one)
    assert not np.array_equal(draw(base, [unit("astronaut.jpg")]), one)
    assert np.array_equal(draw(base, [unit("biden.jpg", weight=0.0)]), plain)


# --- per job, then gone; SDXL --------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse", [False, True])
def test_a_faceid_job_s_lora_part_and_units_leave_the_unet_bit_for_bit(demo_dir, plus, encoder, detector,
                                                                      face_model, fuse):
    """The job's order (workers/jobs/generate.py): the LoRA part patched in, then the units applied; both undone,
    on a fused (speed.fuse_qkv) UNet too, where the LoRA reaches the fused projections."""
    from workers.patching.attention import set_attention

    pipe = load_folder(demo_dir)
    set_attention(pipe.unet, sdpa=True, fuse=fuse)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    processors = {name: id(p) for name, p in pipe.unet.attn_processors.items()}
    plain = draw(pipe)
    face = photo("biden.jpg")
    unit = AdapterUnit(plus, face_embeds(face, detector.detect(face), face_model, "face_id_plus", encoder), 1.0)
    with patched(pipe, [("faceid", faceid_lora(plus.lora, pipe.unet, plus.name), 1.0)]):
        assert any(not torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
        with_lora_only = draw(pipe)
        both = draw(pipe, [unit])
    assert not np.array_equal(with_lora_only, plain) and not np.array_equal(both, with_lora_only)
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {name: id(p) for name, p in pipe.unet.attn_processors.items()} == processors
    assert np.array_equal(draw(pipe), plain)


def test_an_sdxl_faceid_file_acts_on_an_sdxl_inpainting_pipeline(tmp_path, detector, face_model):
    """A faceid file of the SDXL layout (ip-adapter-faceid_sdxl: the same keys, the UNet's 2048-wide cross-attention
    here the tiny SDXL's 64) on SDXL's pipeline: the face changes the image, its LoRA part comes and goes."""
    from safetensors.torch import save_file

    from support.tiny import build_sdxl
    from workers.demo.faceid import demo_faceid_state

    pipe = load_folder(build_sdxl(tmp_path / "sdxl"), family="sdxl")
    save_file(demo_faceid_state(pipe.unet, plus=False), str(tmp_path / "ip-adapter-faceid_sdxl.safetensors"))
    data = read_adapter_file(tmp_path / "ip-adapter-faceid_sdxl.safetensors")
    assert (data.variant, data.cross_attention_dim) == ("faceid", pipe.unet.config.cross_attention_dim)
    xl = build_adapter(data, "cpu", torch.float32)
    face = photo("astronaut.jpg")
    unit = AdapterUnit(xl, face_embeds(face, detector.detect(face), face_model, "face_id"), 1.0)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = draw(pipe)
    with patched(pipe, [("faceid-xl", faceid_lora(xl.lora, pipe.unet, xl.name), 1.0)]):
        one = draw(pipe, [unit])
    assert not np.array_equal(one, plain)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert np.array_equal(draw(pipe), plain)
