"""Bundles: one ONNX file for several tasks of one training run, which share the frozen backbone.

A bundle's graph takes ``image`` [N, 3, S, S] and gives ``embedding`` [N, T, D], ``prompt_index``
[N, T] (or [N, T, top_k]) and ``query`` [N, D] (see :mod:`dpcompat.common.contract`). Its metadata
is a single-task file's, less ``task``/``checkpoint``/``checkpoint_sha256``, plus ``bundle_tasks``:
those three fields for every task, in output order. :class:`BundleInfo` turns that back into what
each task's own single-task file would say.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...common.contract import BUNDLE_OUTPUTS, BUNDLE_TASKS_KEY, EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT, QUERY_OUTPUT
from ...common.errors import InputError, shown
from .graph import check_inputs
from .metadata import ModelInfo
from .protobuf import MODEL_PROPS, TooLarge, length_fields

TASK_FIELDS = ("task", "checkpoint", "checkpoint_sha256")
MAX_TASKS = 1024  # tasks one bundle may list (its metadata is parsed before the graph is checked)
MAX_METADATA_BYTES = 16 * 2**20  # all metadata_props of a file together (a real export's: a few KiB)
BACKBONE_ID = "backbone"  # store id suffix of the ``query`` output's sets: the frozen backbone as a model


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle says about itself: per task, in output order, the metadata its single-task file carries."""

    tasks: tuple[ModelInfo, ...]

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("a bundle holds at least one task")
        numbers = [t.task for t in self.tasks]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"task numbers {numbers} repeat")
        common = self.tasks[0]
        for t in self.tasks[1:]:
            differ = [f.name for f in fields(ModelInfo) if f.name not in TASK_FIELDS + ("versions",)
                      and getattr(t, f.name) != getattr(common, f.name)]
            if differ:
                raise ValueError(f"task {t.task}'s {', '.join(differ)} differ from task {common.task}'s")

    @property
    def common(self) -> ModelInfo:
        """The fields every task shares (read ``task``, ``checkpoint`` ... from :attr:`tasks`)."""
        return self.tasks[0]

    @property
    def task_numbers(self) -> list[int]:
        return [t.task for t in self.tasks]

    def to_props(self) -> dict[str, str]:
        props = {k: v for k, v in self.common.to_props().items() if k not in TASK_FIELDS}
        props[BUNDLE_TASKS_KEY] = json.dumps([{k: getattr(t, k) for k in TASK_FIELDS} for t in self.tasks])
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "BundleInfo":
        """Parse a bundle's ``metadata_props``; ``source`` (the file) is named in any error."""
        try:
            entries = json.loads(props[BUNDLE_TASKS_KEY])
            if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_TASKS:
                raise ValueError(f"expected a list of 1 to {MAX_TASKS} tasks")
            per_task = [{k: str(e[k]) for k in TASK_FIELDS} for e in entries]
        except KeyError as e:
            raise InputError(f"{source}: not a dpcompat bundle (metadata lacks {e})") from None
        except RecursionError:
            raise InputError(f"{source}: malformed {BUNDLE_TASKS_KEY} metadata (nested too deeply)") from None
        except (ValueError, TypeError) as e:
            raise InputError(f"{source}: malformed {BUNDLE_TASKS_KEY} metadata ({str(e)[:200]})") from None
        tasks = tuple(ModelInfo.from_props({**props, **fields}, source) for fields in per_task)
        try:
            return cls(tasks)
        except ValueError as e:
            raise InputError(f"{source}: malformed bundle metadata ({e})") from None


def read_props(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read from its protobuf without loading the graph: cheap enough
    to tell a bundle from a single-task file before opening a session (no onnx package needed). Every
    declared length is checked against the bytes left, and all of them together against
    MAX_METADATA_BYTES, before anything is read."""
    where = shown(path)
    try:
        with open(path, "rb") as f:
            entries = length_fields(f, os.fstat(f.fileno()).st_size, (MODEL_PROPS,),
                                    limit=MAX_METADATA_BYTES).get(MODEL_PROPS, [])
        props = {}
        for raw in entries:
            pair = {n: v[-1].decode() for n, v in length_fields(io.BytesIO(raw), len(raw), (1, 2)).items()}
            props[pair.get(1, "")] = pair.get(2, "")
    except FileNotFoundError:
        raise InputError(f"{where}: no such ONNX file") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror or e})") from None
    except TooLarge:
        raise InputError(f"{where}: its metadata declares more than {MAX_METADATA_BYTES:,} bytes (a dpcompat "
                         "export's takes a few KiB); refused unread") from None
    except (EOFError, ValueError, UnicodeDecodeError):
        raise InputError(f"{where}: not an ONNX file (truncated or corrupt protobuf)") from None
    return props


def is_bundle(path: str | Path) -> bool:
    """Whether the ONNX file at ``path`` is a bundle (its metadata lists ``bundle_tasks``)."""
    return BUNDLE_TASKS_KEY in read_props(path)


def bundle_info(session: ort.InferenceSession, path: str | Path) -> BundleInfo:
    """The bundle's metadata, after checking the session's declared inputs and outputs against the
    bundle contract and the metadata's sizes."""
    info = BundleInfo.from_props(session.get_modelmeta().custom_metadata_map, shown(path))
    check_inputs(session, path)
    image = session.get_inputs()[0]
    c = info.common
    outputs = {o.name: o for o in session.get_outputs()}
    t, dim, k = len(info.tasks), c.embedding_dim, c.top_k
    expected = {EMBEDDING_OUTPUT: [t, dim], PROMPT_INDEX_OUTPUT: [t] + ([k] if k > 1 else []), QUERY_OUTPUT: [dim]}
    for spec in BUNDLE_OUTPUTS:
        got = outputs.get(spec.name)
        want_type = "tensor(float)" if spec.dtype == "float32" else "tensor(int64)"
        if got is None or got.type != want_type or list(got.shape[1:]) != expected[spec.name]:
            shape = None if got is None else f"{got.type} {got.shape}"
            raise InputError(f"{path}: bundle output '{spec.name}' is {shape}, expected {spec.dtype} "
                             f"[N, {', '.join(map(str, expected[spec.name]))}] for {t} tasks")
    c.check_graph(image.shape, outputs[QUERY_OUTPUT].shape, str(path))
    return info


def bundle_set_ids(model_id: str, info: BundleInfo) -> list[str]:
    """Store ids of a bundle's sets, in evaluation order: ``<model_id>.backbone`` (the frozen backbone,
    the oldest model), then ``<model_id>.task<t>`` for every task in output order."""
    return [f"{model_id}.{BACKBONE_ID}"] + [f"{model_id}.task{t}" for t in info.task_numbers]


def task_outputs(outputs: dict[str, np.ndarray], position: int) -> tuple[np.ndarray, np.ndarray]:
    """(embedding [N, D], prompt_index [N] or [N, top_k]) of the task at ``position`` in a bundle's
    outputs: exactly what that task's single-task file gives."""
    return outputs[EMBEDDING_OUTPUT][:, position], outputs[PROMPT_INDEX_OUTPUT][:, position]
