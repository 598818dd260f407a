"""The torch backend with a bfloat16 model on the CPU (the CUDA half-precision path's
dtype handling, checked without a GPU): outputs are float32 and close to fp32's."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from alfa_ad.detector import Detector
from alfa_ad.model import load_backbone


def test_bfloat16_model_on_cpu_scores_like_float32(make_spot_image):
    images = [make_spot_image(seed=i, box=(20 + 30 * i, 40 + 50 * i, 60 + 30 * i, 100 + 50 * i))[0] for i in range(3)]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        bb = load_backbone(weights="planted", device="cpu")
        bb.clip.to(dtype)
        bb.dtype = dtype  # what ClipBackbone(half=True) does with float16 on CUDA
        det = Detector(bb, cache_dir=None, llm_prompts=False, tile="none", batch_size=3)
        pixels = bb.preprocess([Image.fromarray(im) for im in images])
        assert pixels.dtype == dtype
        with torch.no_grad():
            assert det.method.head.encode(pixels).tokens.dtype == dtype  # the encoder really runs in dtype
        results[dtype] = det.predict(images, "widget")
    for a, b in zip(results[torch.float32], results[torch.bfloat16]):
        assert b.anomaly_map.dtype == np.float32
        assert abs(a.score - b.score) <= 0.02  # bfloat16 keeps 8 bits of mantissa
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 0.05
    # the ranking of the images (spots at different places) is the same
    assert np.argsort([r.score for r in results[torch.float32]]).tolist() == \
        np.argsort([r.score for r in results[torch.bfloat16]]).tolist()
