"""What a model is, without torch: the parameter layout of a DualPrompt ViT restated from its
architecture, parameter groups (frozen backbone against trained prompts and head), a per-layer table,
FLOPs per image, and for an ONNX export its metadata, inputs and outputs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ...common.errors import InputError
from ...common.tables import format_table
from .session import create_session, model_info

GROUPS = ("backbone", "prompt", "head")
TRAINED_GROUPS = ("prompt", "head")  # DualPrompt freezes the backbone and trains prompts, keys and head


def group_of(name: str) -> str:
    """'prompt' (g-prompt, e-prompt pool and keys), 'head', or 'backbone' for a reference-layout parameter name."""
    if name.startswith(("g_prompt", "e_prompt.")):
        return "prompt"
    return "head" if name.startswith("head.") else "backbone"


def parameter_shapes(arch: dict, *, head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape in the public reference's layout, from the architecture alone.

    ``arch``: img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, pool_size, prompt_length,
    g_prompt_length, g_prompt_layers, e_prompt_layers and (with ``head``) num_classes.
    """
    d, p, heads = arch["embed_dim"], arch["patch_size"], arch["num_heads"]
    hidden = int(d * arch["mlp_ratio"])
    tokens = (arch["img_size"] // p) ** 2 + 1
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, tokens, d),
              "g_prompt": (len(arch["g_prompt_layers"]), 2, arch["g_prompt_length"], heads, d // heads),
              "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
              "e_prompt.prompt": (len(arch["e_prompt_layers"]), 2, arch["pool_size"], arch["prompt_length"], heads,
                                  d // heads),
              "e_prompt.prompt_key": (arch["pool_size"], d)}
    for i in range(arch["depth"]):
        for part, out, inp in (("attn.qkv", 3 * d, d), ("attn.proj", d, d), ("mlp.fc1", hidden, d), ("mlp.fc2", d, hidden)):
            shapes[f"blocks.{i}.{part}.weight"], shapes[f"blocks.{i}.{part}.bias"] = (out, inp), (out,)
        for norm in ("norm1", "norm2"):
            shapes[f"blocks.{i}.{norm}.weight"] = shapes[f"blocks.{i}.{norm}.bias"] = (d,)
    shapes["norm.weight"] = shapes["norm.bias"] = (d,)
    if head:
        shapes["head.weight"], shapes["head.bias"] = (arch["num_classes"], d), (arch["num_classes"],)
    return shapes


def parameter_groups(counts: dict[str, int]) -> dict[str, int]:
    """Parameter counts per group, trainable (prompts and head) and frozen (backbone), and total."""
    groups = {g: sum(n for name, n in counts.items() if group_of(name) == g) for g in GROUPS}
    trainable = sum(groups[g] for g in TRAINED_GROUPS)
    return {**groups, "trainable": trainable, "frozen": groups["backbone"], "total": sum(groups.values())}


def layer_rows(arch: dict, *, pool: str, head: bool) -> list[dict]:
    """Per-layer table for one image: the module, its output shape, parameters, trained or frozen.

    The backbone runs twice per image with the same weights (unprompted query pass, prompted pass);
    the rows describe the prompted pass. With ``pool`` 'cls' the last block computes the [CLS] token only.
    """
    shapes = parameter_shapes(arch, head=head)
    d, tokens = arch["embed_dim"], (arch["img_size"] // arch["patch_size"]) ** 2 + 1
    last = [1, 1, d] if pool == "cls" else [1, tokens, d]

    def row(layer, kind, output, prefix):
        n = sum(math.prod(s) for name, s in shapes.items() if name == layer or name.startswith(prefix))
        return {"layer": layer, "type": kind, "output_shape": output, "params": n,
                "trainable": group_of(prefix) in TRAINED_GROUPS}

    rows = [row("patch_embed", "PatchEmbed", [1, tokens - 1, d], "patch_embed."),
            row("cls_token", "Parameter", [1, 1, d], "cls_token"), row("pos_embed", "Parameter", [1, tokens, d], "pos_embed"),
            row("g_prompt", f"Prompt (layers {list(arch['g_prompt_layers'])})", None, "g_prompt"),
            row("e_prompt", f"PromptPool (layers {list(arch['e_prompt_layers'])})", None, "e_prompt.")]
    rows += [row(f"blocks.{i}", "Block", last if i == arch["depth"] - 1 else [1, tokens, d], f"blocks.{i}.")
             for i in range(arch["depth"])]
    rows.append(row("norm", "LayerNorm", last, "norm."))
    if head:
        rows.append(row("head", "Linear", [1, arch["num_classes"]], "head."))
    return rows


def _initializers(path: Path) -> Optional[dict]:
    """Tensor count and elements of the file's initializers (after export merged equal ones), when the
    onnx package is installed; None otherwise."""
    try:
        import onnx
    except ImportError:
        return None
    proto = onnx.load(str(path), load_external_data=False)
    return {"tensors": len(proto.graph.initializer),
            "elements": sum(math.prod(t.dims) for t in proto.graph.initializer)}


def inspect_onnx(path: str | Path) -> dict:
    """Metadata, inputs/outputs, architecture, per-layer table, parameter groups and FLOPs of an export."""
    path = Path(path)
    session, _ = create_session(path, "cpu")
    info = model_info(session, path)
    arch = info.architecture
    if not arch:
        raise InputError(f"{path}: its metadata has no architecture (an older export); re-export it to inspect")
    counts = {name: math.prod(s) for name, s in parameter_shapes(arch, head=False).items()}
    io = [{"role": role, "name": t.name, "type": t.type, "shape": t.shape}
          for role, ts in (("input", session.get_inputs()), ("output", session.get_outputs())) for t in ts]
    return {"source": "onnx", "path": str(path), "file_bytes": path.stat().st_size, "architecture": arch,
            "metadata": dict(session.get_modelmeta().custom_metadata_map), "inputs_outputs": io,
            "layers": layer_rows(arch, pool=info.pool, head=False), "parameters": parameter_groups(counts),
            "flops_per_image": {info.pool: dualprompt_flops(arch, info.pool)}, "initializers": _initializers(path),
            "notes": ["no classifier head in an export; the backbone runs twice per image (query pass, prompted "
                      "pass) with shared weights, both counted in FLOPs"]}


def format_inspection(report: dict) -> str:
    """An :func:`inspect_onnx` (or checkpoint) report as text for the terminal."""
    a, p = report["architecture"], report["parameters"]
    lines = [f"{report['path']} ({report['source']}): {a['model']}, {a['img_size']}px, patch {a['patch_size']}, "
             f"dim {a['embed_dim']}, depth {a['depth']}, heads {a['num_heads']}; g-prompt layers "
             f"{list(a['g_prompt_layers'])} x {a['g_prompt_length']}, e-prompt pool {a['pool_size']} x "
             f"{a['prompt_length']} at layers {list(a['e_prompt_layers'])}, top-{a['top_k']}", ""]
    if report.get("table"):
        lines += [report["table"], ""]
    else:
        rows = [{**r, "output_shape": str(r["output_shape"] or "-"), "trainable": str(r["trainable"])}
                for r in report["layers"]]
        lines += [format_table(rows, [("layer", "layer", "s"), ("type", "type", "s"), ("output_shape", "output", "s"),
                                      ("params", "params", ",d"), ("trainable", "trainable", "s")]), ""]
    lines.append(f"parameters: backbone {p['backbone']:,} (frozen), prompts {p['prompt']:,}, head {p['head']:,}; "
                 f"trainable {p['trainable']:,} of {p['total']:,} ({p['trainable'] / p['total']:.2%})")
    lines += [f"FLOPs per image (pool {pool}): {f / 1e9:.4g} GFLOP" for pool, f in report["flops_per_image"].items()]
    if report.get("inputs_outputs"):
        lines += [f"{t['role']:<6} {t['name']}: {t['type']} {t['shape']}" for t in report["inputs_outputs"]]
    if report.get("metadata"):
        lines += ["metadata:"] + [f"  {k}: {v}" for k, v in sorted(report["metadata"].items())]
    if report.get("initializers"):
        i = report["initializers"]
        lines.append(f"initializers: {i['tensors']} tensors, {i['elements']:,} elements (equal weights stored once)")
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def dualprompt_flops(arch: dict, pool: str = "cls") -> float:
    """FLOPs (2 per multiply-add) per image of the exported graph's two passes.

    ``arch`` is an export's ``architecture`` metadata (img_size, patch_size, embed_dim, depth,
    mlp_ratio, g_prompt_length, g_prompt_layers, prompt_length, top_k, e_prompt_layers). As in the
    graph, the last block of the query pass (and of the prompted pass when ``pool`` is 'cls')
    computes keys and values for every token but everything else for the [CLS] token only.
    """
    patches = (arch["img_size"] // arch["patch_size"]) ** 2
    n, d, hidden = patches + 1, arch["embed_dim"], int(arch["embed_dim"] * arch["mlp_ratio"])
    prefix = {i: arch["g_prompt_length"] for i in arch["g_prompt_layers"]}
    prefix.update({i: arch["prompt_length"] * arch["top_k"] for i in arch["e_prompt_layers"]})
    total = 0.0
    for prefixes, cls_only in (({}, True), (prefix, pool == "cls")):
        total += 2.0 * patches * 3 * arch["patch_size"] ** 2 * d
        for i in range(arch["depth"]):
            keys = n + prefixes.get(i, 0)
            rows = 1 if cls_only and i == arch["depth"] - 1 else n  # tokens past the key/value projection
            total += 2.0 * n * d * 2 * d + 2.0 * rows * d * (d + d + 2 * hidden) + 4.0 * rows * keys * d
    return total
