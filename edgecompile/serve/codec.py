"""Request bodies -> validated numpy feeds, and outputs -> response bodies.

Three formats: JSON (`{"inputs": {NAME: nested list}}` -> `{"outputs": {NAME: nested list}}`),
`application/x-npy` (one array, single-input models; answered with .npy for a single output,
else .npz) and `application/x-npz` (arrays named after the inputs; answered with .npz named after
the outputs). Every problem is a `RequestError` carrying the HTTP status and a message that names
the input, the shape or dtype, and what the model expects.
"""
from __future__ import annotations

import io
import json

import numpy as np

NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON = "application/json"


class RequestError(Exception):
    """A request the server refuses: `status` (4xx/5xx), a one-line message and optional headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def media_type(content_type: str | None) -> str:
    return (content_type or JSON).split(";", 1)[0].strip().lower() or JSON


def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed JSON body: {exc}") from None


def feeds_from_json(doc, inputs) -> dict[str, np.ndarray]:
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise RequestError(400, 'JSON body must be an object {"inputs": {NAME: nested list}} (or {"texts": [...]} '
                                'for text bundles)')
    specs = {s.name: s for s in inputs}
    feeds = {}
    for name, value in doc["inputs"].items():
        spec = specs.get(name)
        if spec is None:
            continue                                # reported with the other name problems by validate()
        want = np.dtype(spec.dtype)
        try:
            arr = np.array(value)
        except ValueError:
            raise RequestError(400, f"input {name!r}: ragged nested list (rows of different lengths)") from None
        if arr.dtype == object:
            raise RequestError(400, f"input {name!r}: ragged nested list (rows of different lengths)")
        if arr.dtype.kind not in "biuf":
            raise RequestError(
                400,
                f"input {name!r}: values must be numbers, got {arr.dtype.kind == 'U' and 'strings' or arr.dtype.name}",
            )
        if want.kind in "biu" and arr.dtype.kind == "f":
            raise RequestError(400, f"input {name!r} has floating-point values, the model expects {want.name}")
        if want.kind == "b" and arr.dtype.kind != "b":
            raise RequestError(400, f"input {name!r} has {arr.dtype.name} values, the model expects bool")
        feeds[name] = arr.astype(want, copy=False)
    return validate({**{n: None for n in doc["inputs"] if n not in specs}, **feeds}, inputs)


def feeds_from_binary(body: bytes, kind: str, inputs) -> dict[str, np.ndarray]:
    names = [s.name for s in inputs]
    try:
        obj = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:
        raise RequestError(400, f"body is not a readable {kind} file ({exc.__class__.__name__}: {exc})") from None
    if kind == NPY:
        if not isinstance(obj, np.ndarray):
            raise RequestError(400, "body is an .npz archive, but Content-Type says application/x-npy")
        if len(names) != 1:
            raise RequestError(400, f"an application/x-npy body holds one array, but the model has inputs {names}; "
                                    "send application/x-npz with one array per input name")
        feeds = {names[0]: obj}
    else:
        if isinstance(obj, np.ndarray):
            raise RequestError(400, "body is a single .npy array, but Content-Type says application/x-npz")
        try:
            with obj as z:
                feeds = {k: z[k] for k in z.files}
        except Exception as exc:
            raise RequestError(400, f"body is not a readable {kind} file ({exc.__class__.__name__}: {exc})") from None
    return validate(feeds, inputs)


def validate(feeds: dict, inputs) -> dict[str, np.ndarray]:
    """Names, dtypes, ranks and fixed dimensions, as the Runner checks them, before a request joins a batch."""
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        what = "; ".join(
            filter(None, [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""])
        )
        raise RequestError(400, f"wrong input names: {what} (the model's inputs are {names})")
    for spec in inputs:
        arr = feeds[spec.name]
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            raise RequestError(400, f"input {spec.name!r} has dtype {arr.dtype.name}, the model expects {want.name}")
        if arr.ndim != len(spec.shape) or any(isinstance(d, int) and d > 0 and arr.shape[i] != d
                                              for i, d in enumerate(spec.shape)):
            raise RequestError(400, f"input {spec.name!r} has shape {list(arr.shape)}, the model expects "
                                    f"{list(spec.shape)} (named dimensions may take any size)")
    return feeds


def encode(outputs: dict[str, np.ndarray], kind: str) -> tuple[bytes, str]:
    """The response body and its media type, in the request's format."""
    if kind == JSON:
        return json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}}).encode(), JSON
    buf = io.BytesIO()
    if kind == NPY and len(outputs) == 1:
        np.save(buf, next(iter(outputs.values())), allow_pickle=False)
        return buf.getvalue(), NPY
    np.savez(buf, **outputs)
    return buf.getvalue(), NPZ


def to_jsonable(obj):
    """Front-end results (numpy arrays, scalars, tuples, dicts) as plain JSON values."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj
