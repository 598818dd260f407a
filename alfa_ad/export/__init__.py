"""``alfa-ad export``: what runs per image, as an ONNX or OpenVINO file with a manifest.

The exported graph is ALFA's per-image model: the image encoder and the scoring head
(:class:`~alfa_ad.methods.alfa_head.AlfaHead`: prompt adaptation, the aligner's local
embeddings, window maps, upsampling, Gaussian smoothing, eq. 12).  The class's prompt
embeddings are graph *inputs* (``normal (N+, D)``, ``abnormal (N-, D)``), so one file
serves every class and prompt set; the embeddings of the classes named at export time are
stored beside it (``texts.npz``) so a deployment can score without the text tower.
The manifest (``manifest.json``) records what the file computes (model, weights identity,
method, aligner, scales, options, input size and normalisation), how it was written
(format, precision, opset, library versions) and the classes with their prompts.

Backends that run it are in :mod:`alfa_ad.backends` (``alfa-ad run --backend``).
"""

from .graphs import identity  # noqa: F401
from .manifest import MANIFEST, Manifest, load_manifest  # noqa: F401
from .writer import EXPORT_FORMATS, PRECISIONS, cached_export, export_detector  # noqa: F401
