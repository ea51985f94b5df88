"""Inference with a run's saved global model (the handler behind ``POST /api/predict`` and the
batch classifier). A module whose job is to run a model, so TensorFlow is imported here, lazily.

* :class:`RunModel` is a saved ``.keras`` model with the metadata the server writes next to it
  (``best.json``: the task's classes, image size and model, the run id and best round).
* :func:`decode_upload` turns uploaded bytes into the model's input with the same decoding and
  resizing as training (:func:`hemafed.data.imagefiles.decode_rgb`), refusing non-images (415),
  corrupt images (422) and oversized files or images (413) with a clear reason.
* :class:`Predictor` serves the best model of the server's finished run: it loads
  ``results/<run>/best.keras`` once (the artefact the run exported), caches it, and answers 409
  while the run has no finished model.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from hemafed.data.imagefiles import ImageDecodeError, decode_rgb
from hemafed.schemas import ClassProbability, PredictionPublic

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import UploadFile

    from hemafed_aggregator.server import FederatedServer

TOP_K = 3


class PredictError(Exception):
    """A prediction that cannot be made; ``status`` is the HTTP status the API answers."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ModelFileError(ValueError):
    """A saved model (or its metadata) that cannot be used."""


@dataclass
class RunModel:
    """A loaded global model and what it was trained for."""

    model: Any  # keras.Model
    classes: list[str]
    image_size: int
    model_name: str
    run_id: str
    round: int | None
    path: Path
    mtime_ns: int
    _trainer: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path, classes: list[str] | None = None) -> RunModel:
        """Load ``path`` (``.keras``) and its sibling ``.json`` metadata (written by the server).

        ``classes`` overrides the metadata's class list (needed when there is no ``.json``)."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        meta_path = path.with_suffix(".json")
        meta: dict[str, Any] = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as exc:
                raise ModelFileError(f"cannot read the model metadata {meta_path}: {exc}") from exc
        elif classes is None:
            raise ModelFileError(f"no metadata {meta_path.name} next to {path.name}: pass the class names")
        task = meta.get("task") or {}
        classes = list(classes if classes is not None else task.get("classes") or [])
        from hemafed.models import load_model

        mtime_ns = path.stat().st_mtime_ns
        try:
            model = load_model(path)
        except Exception as exc:  # noqa: BLE001 - any loader failure means an unusable file
            raise ModelFileError(f"cannot load the model {path}: {type(exc).__name__}: {exc}") from exc
        shape = model.input_shape
        if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
            raise ModelFileError(f"{path.name}: expected an (S, S, 3) image input, got {shape}")
        outputs = int(model.output_shape[-1])
        if len(classes) != outputs:
            raise ModelFileError(f"{path.name} has {outputs} outputs but {len(classes)} class names were given")
        rnd = meta.get("round") or meta.get("best_round") or meta.get("rounds")
        return cls(model=model, classes=classes, image_size=int(shape[1]), model_name=str(task.get("model", "")),
                   run_id=str(meta.get("run_id", "")), round=int(rnd) if rnd is not None else None,
                   path=path, mtime_ns=mtime_ns)

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 images ``(N, S, S, 3)``: the same forward
        pass as evaluation (the model rescales its uint8-range input itself)."""
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected images of shape (N, {self.image_size}, {self.image_size}, 3), "
                             f"got {images.shape}")
        if self._trainer is None:
            from hemafed.training import LocalTrainer

            self._trainer = LocalTrainer(self.model)
        return self._trainer.predict(images, batch_size=batch_size)

    def top(self, probs: np.ndarray, k: int = TOP_K) -> list[ClassProbability]:
        """The ``k`` most probable classes of one probability row, most probable first."""
        return [ClassProbability(label=self.classes[i], probability=p) for i, p in top_k(probs, k)]


def top_k(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """``(index, probability)`` of the ``k`` largest entries, descending (ties: lower index first),
    probabilities clipped into [0, 1]."""
    probs = np.asarray(probs, dtype=np.float64).ravel()
    order = np.argsort(-probs, kind="stable")[: max(0, k)]
    return [(int(i), float(min(1.0, max(0.0, probs[i])))) for i in order]


def decode_upload(data: bytes, image_size: int, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> uint8 ``(S, S, 3)``, decoded and resized exactly as training does.

    Raises :class:`PredictError`: 415 not an image, 422 empty or corrupt, 413 too many pixels."""
    if not data:
        raise PredictError(422, "the uploaded file is empty")
    try:  # the header only: format and size, before anything is decoded
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:
        raise PredictError(413, f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise PredictError(415, "the file is not an image HemaFed can read (JPEG, PNG, BMP or TIFF expected)") from exc
    except Exception as exc:  # noqa: BLE001 - a malformed header
        raise PredictError(422, f"the image is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
    if width * height > max_pixels:
        raise PredictError(413, f"the image has {width} x {height} pixels; the limit is {max_pixels} pixels")
    try:
        return decode_rgb(io.BytesIO(data), image_size)  # type: ignore[arg-type] - PIL reads file objects
    except ImageDecodeError as exc:
        if exc.reason == "too_large":
            raise PredictError(413, f"the image has too many pixels: {exc}") from exc
        cause = exc.__cause__ or exc
        raise PredictError(422, f"the image is corrupt or truncated ({type(cause).__name__}: {cause})") from exc


class Predictor:
    """Answers predictions with the best model of the server's finished run (loaded once, cached)."""

    def __init__(self, *, max_bytes: int, max_pixels: int) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._cached: RunModel | None = None

    def model_for(self, server: FederatedServer) -> RunModel:
        """The finished run's best model; :class:`PredictError` 409 while there is none."""
        st = server.state
        if st.status == "failed":
            raise PredictError(409, f"run {st.run_id} failed ({st.message}): it has no model to predict with")
        if st.status != "finished":
            raise PredictError(409, f"no finished model yet: run {st.run_id} is {st.status} "
                                    f"(round {st.round} of {st.rounds_total}); try again when it has finished")
        path = server.run_dir / "best.keras"
        with self._lock:
            cached = self._cached
            try:
                mtime_ns = path.stat().st_mtime_ns
            except OSError:
                raise PredictError(409, f"run {st.run_id} finished but its best model {path.name} is missing "
                                        "from the results folder") from None
            if cached is None or cached.path != path or cached.mtime_ns != mtime_ns:
                try:
                    cached = RunModel.load(path)
                except ModelFileError as exc:
                    raise PredictError(409, f"run {st.run_id}: the best model cannot be used: {exc}") from exc
                if not cached.run_id:
                    cached.run_id = st.run_id
                if cached.round is None:
                    cached.round = st.best_round or st.rounds_total
                self._cached = cached
            return cached

    def predict_bytes(self, server: FederatedServer, data: bytes) -> PredictionPublic:
        """Blocking: decode ``data`` and return the top classes (run it in a worker thread)."""
        if len(data) > self.max_bytes:
            raise PredictError(413, f"the file is larger than the limit of {self.max_bytes} bytes")
        rm = self.model_for(server)
        image = decode_upload(data, rm.image_size, self.max_pixels)
        probs = rm.probabilities(image[None])[0]
        return PredictionPublic(run_id=rm.run_id, round=int(rm.round or 0), model=rm.model_name,
                                image_size=rm.image_size, predictions=rm.top(probs))

    async def predict_upload(self, server: FederatedServer, file: UploadFile) -> PredictionPublic:
        """Read the uploaded file (at most ``max_bytes`` + 1 bytes) and predict in a worker thread."""
        data = await file.read(self.max_bytes + 1)
        return await asyncio.to_thread(self.predict_bytes, server, data)
