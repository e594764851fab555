"""The ONNX contract, declared once and torch-free: what an export takes and gives, and the choices
that shape it. The exporter, ``ModelInfo``, the CLI's choice lists and the tests all read this.

  ``image``        float32 [batch, 3, S, S], RGB pixels in [0, 1] after the metadata's preprocessing
  ``embedding``    float32 [batch, D]
  ``prompt_index`` int64 [batch] (top_k = 1) or [batch, top_k]

A bundle (one file for T tasks sharing one frozen backbone) takes the same ``image`` and gives

  ``embedding``    float32 [batch, T, D], task t's embedding at position t (tasks in metadata order)
  ``prompt_index`` int64 [batch, T] (top_k = 1) or [batch, T, top_k]
  ``query``        float32 [batch, D], the frozen backbone's own unprompted [CLS] after the final norm
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

FORMAT_VERSION = "1"
BATCH_AXIS = "batch"  # the one dynamic axis, dimension 0 of every input and output


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and rank (with top_k > 1 an index gains a rank)."""

    name: str
    dtype: str  # numpy dtype name
    rank: int


IMAGE = TensorSpec("image", "float32", 4)
EMBEDDING = TensorSpec("embedding", "float32", 2)
PROMPT_INDEX = TensorSpec("prompt_index", "int64", 1)
INPUTS = (IMAGE,)
OUTPUTS = (EMBEDDING, PROMPT_INDEX)

INPUT_NAME, EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT = IMAGE.name, EMBEDDING.name, PROMPT_INDEX.name

# A bundle's outputs: the per-task ones gain a task axis (dimension 1, static), ``query`` is the backbone's.
BUNDLE_EMBEDDING = TensorSpec(EMBEDDING.name, "float32", 3)
BUNDLE_PROMPT_INDEX = TensorSpec(PROMPT_INDEX.name, "int64", 2)
QUERY = TensorSpec("query", "float32", 2)
BUNDLE_OUTPUTS = (BUNDLE_EMBEDDING, BUNDLE_PROMPT_INDEX, QUERY)
QUERY_OUTPUT = QUERY.name
BUNDLE_TASKS_KEY = "bundle_tasks"  # metadata: JSON [{task, checkpoint, checkpoint_sha256}, ...] in output order

SELECTIONS = ("per-sample", "batchwise")  # per-sample: batch-invariant; batchwise: the reference's inference
POOLS = ("cls", "mean")  # [CLS] after the final norm; mean of all tokens (the original study's report)
# per-sample: each sample's own (key, value) prompt pair; reference: the public reference's gather, which
# reshapes without a permute, so the key/value roles depend on the batch position
GATHERS = ("per-sample", "reference")
# cls: the frozen backbone's [CLS] after the final norm (the paper); notebook: the element-wise max over the
# embedded tokens before the first block (what the original study's notebook ran)
QUERIES = ("cls", "notebook")
# training's feature distillation: the original study's cosine term, or BCT's influence loss
DISTILL_KINDS = ("cosine", "bct")
# compatibility adapters (evaluate/adapt): orthogonal Procrustes, ridge least squares without and with a bias;
# query: the new model's queries mapped into the old model's space; gallery: the old gallery mapped into the new's
ADAPTER_KINDS = ("orthogonal", "linear", "affine")
ADAPTER_DIRECTIONS = ("query", "gallery")
PRECISIONS = ("fp32", "fp16")  # traced by the exporter
QUANTIZED_PRECISIONS = ("int8",)  # onnxruntime static quantisation of an fp32 export (export/quantize.py)
FILE_PRECISIONS = PRECISIONS + QUANTIZED_PRECISIONS  # what an export's metadata may say
DEFAULT_OPSET = 20  # onnxruntime >= 1.17; its Gelu op is what onnxruntime fuses with the bias (18 spells it with Erf)
MIN_OPSET = 18  # the dynamo exporter's lowest (the newest is the installed onnx's)
PROVIDERS = ("auto", "cuda", "tensorrt", "cpu")
GPU_PROVIDERS = ("cuda", "tensorrt")  # these two take a device id: cuda:1, tensorrt:0


def parse_provider(value: str) -> tuple[str, int | None]:
    """``'cuda:1'`` -> ``('cuda', 1)``, ``'cpu'`` -> ``('cpu', None)``; InputError for anything else.

    A device id (the CUDA device index, as the driver and ``CUDA_VISIBLE_DEVICES`` number them) is
    allowed after ``cuda`` and ``tensorrt`` only.
    """
    name, sep, device = value.partition(":")
    if name not in PROVIDERS or (sep and name not in GPU_PROVIDERS):
        raise InputError(f"--provider {value!r}: expected one of {', '.join(PROVIDERS)}, or cuda:N / tensorrt:N "
                         "for the GPU with index N")
    if not sep:
        return name, None
    if not device.isdigit():
        raise InputError(f"--provider {value!r}: the device id after ':' must be a GPU index 0, 1, ...")
    return name, int(device)


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # Pillow's resampling filters

# Bounds on what an export's metadata may ask of preprocessing, so no file can make it allocate
# gigabytes: the model input is at most 1024 x 1024 (12 MiB of float32 per image), the shorter side
# is resized to at most 2048 pixels, and no image, decoded or resized, may exceed MAX_IMAGE_PIXELS.
MAX_INPUT_SIZE = 1024
MAX_RESIZE = 2048
MAX_IMAGE_PIXELS = 50_000_000  # width x height, any aspect ratio: 150 MB as 8-bit RGB
# A file above this is refused unread: no image within MAX_IMAGE_PIXELS is larger, even uncompressed 16-bit RGBA.
MAX_IMAGE_FILE_BYTES = 8 * MAX_IMAGE_PIXELS
MAX_EMBEDDING_DIM = 65_536


def check_choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; else :class:`InputError` naming ``option`` and the choices."""
    if value not in allowed:
        raise InputError(f"{option} {value!r}: expected one of {', '.join(allowed)}")
    return value
