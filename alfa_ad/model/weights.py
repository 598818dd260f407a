"""Where pretrained weights live, whether they are here, and fetching them.

``load_backbone`` asks :func:`locate` for a local file before it builds a model,
so an offline machine fails in a few seconds with one line (never minutes of hub
retries), and weights already cached load with no network at all.  Files are looked
for, in order, in the Hugging Face cache (``$HF_HUB_CACHE``/``$HF_HOME``; the
``.safetensors`` variant first, as open_clip does) and in open_clip's URL cache
(``~/.cache/clip``).  ``alfa-ad weights download`` writes a portable
``<model>__<tag>.safetensors`` plus a JSON manifest for ``--checkpoint``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .._version import __version__

OPEN_CLIP_URL_CACHE = Path("~/.cache/clip").expanduser()
MANIFEST_SUFFIX = ".json"


class WeightsUnavailableError(RuntimeError):
    """The requested CLIP weights cannot be obtained (message: one line)."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from; every output carries :attr:`label`."""

    model_name: str
    source: str  # "pretrained" | "checkpoint" | "random" | "planted" | "mini" | "custom"
    detail: str = ""
    file: str | None = None  # the weights file used (pretrained and checkpoint)
    sha256: str | None = None  # its SHA-256

    @property
    def meaningful(self) -> bool:
        """True for trained weights (pretrained tag or a checkpoint file)."""
        return self.source in ("pretrained", "checkpoint")

    @property
    def label(self) -> str:
        if self.source == "random":
            return f"random weights ({self.model_name}, {self.detail}) - scores are not meaningful"
        if self.source == "planted":
            return f"planted weights (hand-constructed test model, {self.detail}) - not a real CLIP"
        if self.source == "mini":  # alfa_ad/model/mini.py
            return f"mini-CLIP (trained here on synthetic scenes) - not a real CLIP [{self.model_name}, {self.detail}]"
        if self.source == "custom":
            return f"custom weights ({self.model_name}{', ' + self.detail if self.detail else ''})"
        return f"{self.source} weights {self.model_name} ({self.detail})"

    def as_dict(self) -> dict:
        out = {"model": self.model_name, "source": self.source, "detail": self.detail, "label": self.label}
        if self.file is not None:
            out.update(file=self.file, sha256=self.sha256)
        return out


@dataclass(frozen=True)
class PretrainedRef:
    """One open_clip (model, tag) and where open_clip would download it from."""

    model: str
    tag: str
    hf_repo: str = ""
    hf_filename: str = ""
    url: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def hf_candidates(self) -> list[str]:
        """File names to look for in the hub repo: the safetensors variant first."""
        name = self.hf_filename or "open_clip_pytorch_model.bin"
        stem, ext = os.path.splitext(name)
        return ([f"{stem}.safetensors"] if ext in (".bin", ".pth", ".pt") else []) + [name]


KNOWN_REFS_FILE = Path(__file__).with_name("pretrained_refs.json")


def _ref_from_cfg(model: str, tag: str, cfg: dict) -> PretrainedRef:
    repo, filename = os.path.split(cfg.get("hf_hub", "") or "")
    return PretrainedRef(model, tag, repo, filename, cfg.get("url", "") or "",
                         tuple(cfg["mean"]) if cfg.get("mean") else None, tuple(cfg["std"]) if cfg.get("std") else None)


def known_ref(model: str, tag: str) -> PretrainedRef | None:
    """``model``/``tag`` from the copy of open_clip's records shipped with alfa-ad, or ``None``.

    Looking up the default weights this way needs no ``import open_clip`` (seconds on a
    small CPU), so a missing-weights error comes out before the model code loads.
    """
    try:
        entry = json.loads(KNOWN_REFS_FILE.read_text(encoding="utf-8")).get(f"{model}/{tag}")
    except (OSError, ValueError):
        return None
    return _ref_from_cfg(model, tag, entry) if isinstance(entry, dict) else None


def require_pretrained(model: str | None, tag: str, weights: str = "pretrained", checkpoint: object = None) -> None:
    """For pretrained weights of a model in the shipped records: find them (or download them when
    the hub is reachable) or raise the one-line :class:`WeightsUnavailableError`, before torch
    and the model code load.  Anything else is checked when the model is built."""
    from .names import DEFAULT_MODEL

    if weights != "pretrained" or checkpoint is not None:
        return
    ref = known_ref(model or DEFAULT_MODEL, tag)
    if ref is not None:
        fetch(ref)


def pretrained_ref(model: str, tag: str) -> PretrainedRef:
    """open_clip's record of ``model``/``tag``; ``ValueError`` naming the known tags."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == model]
        known = f"known tags for {model}: {', '.join(tags)}" if tags else f"open_clip has no pretrained tags for {model}"
        raise ValueError(f"unknown pretrained tag {tag!r} for {model}; {known}")
    return _ref_from_cfg(model, tag, cfg)


def _hf_cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def locate(ref: PretrainedRef) -> Path | None:
    """A local file with these weights, or ``None``; makes no network request."""
    if ref.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for name in ref.hf_candidates:
                found = try_to_load_from_cache(ref.hf_repo, name, cache_dir=_hf_cache_dir())
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    if ref.url:
        candidate = OPEN_CLIP_URL_CACHE / os.path.basename(urlparse(ref.url).path)
        if candidate.is_file():
            return candidate
    return None


def offline() -> bool:
    """``$HF_HUB_OFFLINE`` (or ``$ALFA_AD_OFFLINE``) says not to use the network."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "ALFA_AD_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout``."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def fix_hint(model: str, tag: str) -> str:
    return (f"Fix: run `alfa-ad weights download --model {model} --pretrained {tag} --to DIR` on a connected "
            "machine and pass --checkpoint DIR/<file>.safetensors here; or run once with internet access so the "
            "weights are cached; or use --weights random for a smoke test (scores are then meaningless).")


@contextlib.contextmanager
def _quiet():
    """Silence the hub's and open_clip's warnings, logs and progress bars while fetching."""
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "open_clip", "urllib3", "filelock")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    old = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)
        if old is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = old


def fetch(ref: PretrainedRef, *, quiet: bool = True) -> Path:
    """A local file with the weights: the cached one, else downloaded into the usual caches.

    Raises :class:`WeightsUnavailableError` (one line, with the fixes) when offline,
    when the hub cannot be reached, or when the download fails.
    """
    found = locate(ref)
    if found is not None:
        return found
    where = f"pretrained weights {ref.model}/{ref.tag}"
    if offline():
        raise WeightsUnavailableError(f"{where} are not cached on this machine and HF_HUB_OFFLINE is set. "
                                      + fix_hint(ref.model, ref.tag))
    if not hub_reachable():
        raise WeightsUnavailableError(f"{where} are not cached on this machine and the Hugging Face hub cannot be "
                                      "reached (no network?). " + fix_hint(ref.model, ref.tag))
    ctx = _quiet() if quiet else contextlib.nullcontext()
    errors = []
    with ctx:
        if ref.hf_repo:
            from huggingface_hub import hf_hub_download

            for name in ref.hf_candidates:
                try:
                    return Path(hf_hub_download(ref.hf_repo, name, cache_dir=_hf_cache_dir()))
                except Exception as exc:  # noqa: BLE001 - try the next candidate, report all
                    errors.append(f"{name}: {type(exc).__name__}")
        if ref.url:
            import open_clip

            try:
                return Path(open_clip.download_pretrained_from_url(ref.url, cache_dir=str(OPEN_CLIP_URL_CACHE)))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{ref.url}: {type(exc).__name__}")
    raise WeightsUnavailableError(f"{where}: download failed ({'; '.join(errors) or 'no source'}). "
                                  + fix_hint(ref.model, ref.tag))


def sha256_file(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) in ``cache_dir`` when given."""
    p = Path(path)
    st = p.stat()
    key = f"sha256|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    store = None
    if cache_dir is not None:
        import diskcache

        store = diskcache.Cache(str(Path(cache_dir) / "file-hashes"))
        hit = store.get(key)
        if hit is not None:
            store.close()
            return hit
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if store is not None:
        store.set(key, digest)
        store.close()
    return digest


def manifest_path(checkpoint: str | os.PathLike[str]) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def read_manifest(checkpoint: str | os.PathLike[str]) -> dict | None:
    """The manifest ``alfa-ad weights download`` wrote beside ``checkpoint``, if any."""
    path = manifest_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(f"{path}: unreadable weights manifest ({exc})") from None
    return data if isinstance(data, dict) else None


def export_safetensors(source: str | os.PathLike[str], model: str, tag: str, folder: str | os.PathLike[str],
                       ref: PretrainedRef | None = None) -> Path:
    """Write ``folder/<model>__<tag>.safetensors`` (the state dict of ``source``, read with
    ``weights_only=True``) and its JSON manifest; returns the weights file's path."""
    from datetime import datetime, timezone

    from open_clip.factory import load_state_dict
    from safetensors.torch import save_file

    from ..io.atomic import atomic_write_text

    state = load_state_dict(str(source), weights_only=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items() if hasattr(v, "detach")}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{model}__{tag}.safetensors"
    partial = target.with_name(f".{target.name}.partial")
    try:
        save_file(tensors, str(partial), metadata={"model": model, "pretrained": tag})
        os.replace(partial, target)  # a reader never sees half a file
    finally:
        partial.unlink(missing_ok=True)
    manifest = {"model": model, "pretrained": tag, "file": target.name, "sha256": sha256_file(target),
                "bytes": target.stat().st_size, "source": str(source),
                "mean": list(ref.mean) if ref and ref.mean else None, "std": list(ref.std) if ref and ref.std else None,
                "written_by": f"alfa-ad {__version__} weights download",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(manifest_path(target), json.dumps(manifest, indent=1) + "\n")
    return target


def cache_folders() -> dict[str, Path]:
    """The folders where weights may be cached (for ``weights list`` and ``doctor``)."""
    try:
        from huggingface_hub import constants

        hub = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        hub = Path("~/.cache/huggingface/hub").expanduser()
    return {"huggingface hub": hub, "open_clip url cache": OPEN_CLIP_URL_CACHE}


def folder_size(path: Path) -> int:
    """Total bytes of the files below ``path`` (0 when absent)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
