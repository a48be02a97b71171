"""The loop `resgraph run` is measured against by bench/run_speed.py: Pillow + onnxruntime, no resgraph.

    python handloop.py FOLDER IMAGES --kind digits|imagenet --batch-size B --threads T

prints one JSON line per input (the fields of `resgraph run --json`).  run_speed.py copies this file into
its work folder as handloop.py and times that whole process; it also imports it and calls classify() in
process.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

DIGITS_MEAN, DIGITS_STD = np.float32(0.3), np.float32(0.38)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def digits(path):
    """[1, 8, 8] float32: greyscale, 8x8, / 255, (x - 0.3) / 0.38."""
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (8, 8):
            im = im.resize((8, 8), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / np.float32(255)
    return ((a - DIGITS_MEAN) / DIGITS_STD)[None]


def imagenet(path):
    """[3, 224, 224] float32: torchvision's Resize(256), CenterCrop(224), ToTensor(), Normalize(ImageNet)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        im = im.resize(size, Image.BILINEAR)
        w, h = im.size
        left, top = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))   # noqa: RUF046  (as torchvision)
        im = im.crop((left, top, left + 224, top + 224))
        a = np.asarray(im, dtype=np.float32) / np.float32(255)
    return (a.transpose(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD


TRANSFORMS = {"digits": digits, "imagenet": imagenet}


def session(model_path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])


def batches(sess, paths, batch, transform):
    """(the batch's paths, its logits) for each batch, in order; decoding on this thread."""
    name = sess.get_inputs()[0].name
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        x = np.stack([transform(p) for p in chunk])
        yield chunk, sess.run(None, {name: x})[0]


def classify(sess, paths, batch, transform):
    """The logits of every input, [N, classes]."""
    return np.concatenate([y for _, y in batches(sess, paths, batch, transform)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("images")
    ap.add_argument("--kind", choices=sorted(TRANSFORMS), required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--top-k", type=int, default=5)
    a = ap.parse_args()
    with open(os.path.join(a.folder, "manifest.json"), encoding="utf-8") as f:
        labels = json.load(f).get("labels")
    paths = [os.path.join(a.images, n) for n in sorted(os.listdir(a.images)) if not n.startswith(".")]
    sess = session(os.path.join(a.folder, "model.onnx"), a.threads)
    out = sys.stdout
    for chunk, y in batches(sess, paths, a.batch_size, TRANSFORMS[a.kind]):
        z = y.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        best = np.argsort(-p, axis=1, kind="stable")[:, :a.top_k]      # best[:, 0]: the argmax
        for path, pi, bi in zip(chunk, p, best):
            top = [{"index": int(i), "label": labels[i] if labels is not None else str(int(i)),
                    "score": round(float(pi[i]), 6)} for i in bi]
            out.write(json.dumps({"input": path, "ok": True, "top": top}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
