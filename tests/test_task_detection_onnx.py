"""Issue 25: a third-party-style ONNX detector (end-to-end output [N, K, 6]) evaluated on COCO mAP
with `--data images.npz --annotations gt.json`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

N_IMAGES = 120


@pytest.fixture(scope="module")
def e2e_detector(tmp_path_factory):
    """ShapesNet with its decoding in the graph (peaks via MaxPool + TopK): [N, 100, 6] with COCO-style
    1-based category ids; the first N_IMAGES test images as .npz and their boxes as gt.json."""
    import torch
    from edgecompile.models import shapes
    from edgecompile.models.shapes.data import IMG

    class End2End(torch.nn.Module):
        def __init__(self, net, k=100):
            super().__init__()
            self.net, self.k = net, k

        def forward(self, x):
            m = self.net(x)
            heat = m[:, :3]
            peak = heat * (torch.nn.functional.max_pool2d(heat, 3, 1, 1) == heat).float()
            n, _, h, w = heat.shape
            scores, idx = peak.reshape(n, -1).topk(self.k, dim=1)
            cls = torch.div(idx, h * w, rounding_mode="floor")
            pos = idx - cls * h * w
            row = torch.div(pos, w, rounding_mode="floor")
            ys, xs = row.float(), (pos - row * w).float()
            g = torch.gather(m[:, 3:].reshape(n, 4, h * w), 2, pos[:, None, :].expand(n, 4, self.k))
            cx, cy, bw, bh = (xs + g[:, 2]) * 4, (ys + g[:, 3]) * 4, g[:, 0] * 16, g[:, 1] * 16
            return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores, (cls + 1).float()], 2)

    d = tmp_path_factory.mktemp("e2e")
    ds = shapes.load_split("test").take(N_IMAGES)
    x = ds.inputs["input"]
    prog = torch.onnx.export(End2End(shapes.create()).eval(), (torch.from_numpy(x[:2]),), dynamo=True,
                             input_names=["images"], output_names=["detections"], opset_version=20,
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    prog.save(str(d / "det.onnx"))
    np.savez(d / "images.npz", images=x)
    images = [{"id": 1000 + i, "width": IMG, "height": IMG} for i in range(N_IMAGES)]
    anns = []
    for i, row in enumerate(ds.labels):
        for x1, y1, x2, y2, c in row[row[:, 4] >= 0]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 1000 + i,
                    "category_id": int(c) + 1,
                    "iscrowd": 0,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": float((x2 - x1) * (y2 - y1)),
                }
            )
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(shapes.frontend_spec()["classes"])]
    (d / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return d


def test_onnx_detector_scored_on_coco_map(e2e_detector, tmp_path):
    d = e2e_detector
    out = tmp_path / "bundle"
    code, stdout, stderr = run_cli("build", d / "det.onnx", "--backend", "ort", "--data", d / "images.npz",
                                   "--annotations", d / "gt.json", "-o", out)
    assert code == 0, stderr
    rep = json.loads((out / "report.json").read_text())
    man = json.loads((out / "manifest.json").read_text())
    acc = rep["accuracy"]
    assert man["metric"] == "map" and acc["metric"] == "map" and acc["reference_model"] == "source onnx (ORT fp32)"
    det = acc["detection"]
    assert det["images"] == N_IMAGES and det["map50"] >= 0.9 and 0.6 < det["map"] <= det["map50"]
    assert [r["class"] for r in det["per_class"]] == ["circle", "square", "triangle"]
    assert acc["beside"]["map50"]["candidate"] == det["map50"]
    assert "map" in stdout


def test_bad_annotations_are_one_line_data_errors(e2e_detector, tmp_path):
    d = e2e_detector
    gt = json.loads((d / "gt.json").read_text())
    gt["images"] = gt["images"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(gt))
    for ann, msg in ((tmp_path / "short.json", f"{N_IMAGES - 1} images, but the data have {N_IMAGES} samples"),
                     (tmp_path / "missing.json", "does not exist")):
        code, _, stderr = run_cli("build", d / "det.onnx", "--backend", "ort", "--data", d / "images.npz",
                                       "--annotations", ann, "-o", tmp_path / "x")
        assert code == 2 and msg in stderr and "Traceback" not in stderr, stderr
    code, _, stderr = run_cli("build", "models/diabetes", "--annotations", d / "gt.json", "-o", tmp_path / "y")
    assert code == 2 and "applies to .onnx detectors" in stderr and "Traceback" not in stderr
