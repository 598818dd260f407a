"""Side by side with anomalib's WinCLIP on identical weights and inputs.

    pip install "anomalib==2.7.0"      # benchmark-only dependency, not needed by alfa-ad
    python benchmarks/agreement/compare_anomalib.py [--data ../shared/data] [--images 4] [--repeats 3]

Builds ViT-B-16-plus-240 with random weights (seed 0; no pretrained weights are
reachable here), loads the same state dict into anomalib's ``WinClipModel``
(its weight download is replaced by our model) and into ``alfa-ad``'s WinCLIP
mode, feeds both the same preprocessed images from ``--data``, and prints

* the maximum absolute difference of image scores and anomaly maps, zero-shot
  and 1-shot, for our ``anomalib_compat`` mode (reproduces anomalib, see
  docs/method.md) and for our default mode;
* per-image CPU latency (median of ``--repeats`` after a warm-up) of anomalib
  WinCLIP, our WinCLIP and our ALFA, and their ratios.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from alfa_ad import Detector
from alfa_ad.io.datasets import discover
from alfa_ad.io.images import load_image
from alfa_ad.model import load_backbone
from alfa_ad.prompting import WinClipEnsembleSource, readable_class_name
from alfa_ad.prompting.templates import WINCLIP_TEMPLATES_ANOMALIB

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common.timing import median_seconds  # noqa: E402


def anomalib_model(state_dict: dict, class_name: str, reference: torch.Tensor | None):
    """anomalib's WinClipModel with ``state_dict`` instead of downloaded weights."""
    import open_clip
    from anomalib.models.image.winclip.torch_model import WinClipModel

    original = open_clip.create_model_and_transforms

    def same_weights(name, pretrained=None, **kwargs):
        model, train_tf, eval_tf = original(name, pretrained=None, **kwargs)
        model.load_state_dict(state_dict)
        return model, train_tf, eval_tf

    open_clip.create_model_and_transforms = same_weights
    try:
        model = WinClipModel(class_name=class_name, reference_images=reference, scales=(2, 3))
    finally:
        open_clip.create_model_and_transforms = original
    return model.eval()



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    ap.add_argument("--datasets", default="mpdd,hazelnut_toy")
    ap.add_argument("--images", type=int, default=3, help="test images per dataset")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: image folder not found; pass --data ROOT (e.g. ../shared/data)")
    try:
        import anomalib  # noqa: F401
    except ImportError:
        raise SystemExit('anomalib is not installed: pip install "anomalib==2.7.0" (benchmark-only dependency)')
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)

    backbone = load_backbone("ViT-B-16-plus-240", weights="random", seed=0, device="cpu")
    state = backbone.clip.state_dict()
    print("ViT-B-16-plus-240, random weights (seed 0), CPU, torch threads", torch.get_num_threads())
    for name in args.datasets.split(","):
        dataset, _ = discover(args.data / name)
        (cls, samples), = dataset.items()
        tests = [s for s in samples if s.label == 1][: args.images - 1] + [s for s in samples if s.label == 0][:1]
        refs = sorted((args.data / name / cls / "train" / "good").iterdir())[:1]
        pixels = [backbone.preprocess([load_image(s.path)]) for s in tests]
        ref_pixels = backbone.preprocess([load_image(refs[0])])
        words = readable_class_name(cls)
        print(f"\n== {name}/{cls}: {len(tests)} test images, class prompt word {words!r}")
        for shots in (0, 1):
            ref = ref_pixels if shots else None
            theirs = anomalib_model(state, words, ref)
            for compat in (True, False):
                src = WinClipEnsembleSource(WINCLIP_TEMPLATES_ANOMALIB)  # same prompts; only the attention differs
                det = Detector(backbone, method="winclip", sources=[src], cache_dir=None, anomalib_compat=compat)
                text = det.class_text(cls)
                if shots:
                    det.method.fit_normals([ref_pixels])
                d_score = d_map = 0.0
                for px in pixels:
                    a = theirs(px)
                    ours = det.method(px, text)
                    d_score = max(d_score, (a.pred_score.float().cpu() - ours.scores).abs().max().item())
                    d_map = max(d_map, (a.anomaly_map.float().cpu() - ours.maps).abs().max().item())
                label = "anomalib_compat" if compat else "default (attention within each window)"
                print(f"  {shots}-shot, ours {label:42s}: max |score diff| {d_score:.2e}, max |map diff| {d_map:.2e}")
        # latency, zero-shot, one image at a time
        theirs = anomalib_model(state, words, None)
        win = Detector(backbone, method="winclip", cache_dir=None)
        alfa = Detector(backbone, method="alfa", cache_dir=None)
        wt, at = win.class_text(cls), alfa.class_text(cls)
        px = pixels[0]
        t_anomalib = median_seconds(lambda: theirs(px), args.repeats)
        t_winclip = median_seconds(lambda: win.method(px, wt), args.repeats)
        t_alfa = median_seconds(lambda: alfa.method(px, at), args.repeats)
        print(f"  latency per image: anomalib WinCLIP {t_anomalib * 1000:.0f} ms, ours winclip {t_winclip * 1000:.0f} ms "
              f"({t_winclip / t_anomalib:.2f}x), ours alfa {t_alfa * 1000:.0f} ms ({t_alfa / t_anomalib:.2f}x)")


if __name__ == "__main__":
    main()
