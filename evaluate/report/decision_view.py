"""The decision as the report's figures and pages show it, read from the content of
``compatibility.json``: its ``decision`` object (``rule`` and ``pairs``, the contract the gate reads)
when there is one, else the primary metric's per-cell verdicts under the significance rule."""
from __future__ import annotations

FALLBACK_METRIC = "top1"


def decision_view(data: dict) -> tuple[dict, list[dict]]:
    """(rule, pairs) of a report ``data`` (compatibility.json's content).

    ``rule`` has at least ``metric``, ``tolerance``, ``confidence`` and ``text``; each pair at least
    ``gallery`` and ``query`` (model ids), ``value``, ``reference``, ``difference``, ``low``, ``high``,
    ``verdict`` and ``queries``; pairs of a ``decision`` object also ``recommendation`` and the rest of
    the contract. Without a ``decision`` object the rule is the significance rule (tolerance 0) on
    :data:`FALLBACK_METRIC`, marked ``"fallback": True``, and pairs carry no recommendation.
    """
    if data.get("decision"):
        return data["decision"]["rule"], list(data["decision"]["pairs"])
    models, sig = data["models"], data["significance"]
    rule = {"metric": FALLBACK_METRIC, "tolerance": 0.0, "confidence": sig["level"], "resamples": sig["resamples"],
            "seed": sig["seed"], "text": f"Verdict rule: {sig['rule']}.", "fallback": True}
    pairs = [{"gallery": models[c["gallery"]], "query": models[c["query"]], "value": c["value"],
              "reference": c["old"], "difference": c["difference"], "low": c["interval"][0],
              "high": c["interval"][1], "verdict": c["verdict"], "queries": sig["queries"]}
             for c in sorted(data["criteria"][FALLBACK_METRIC]["cells"], key=lambda c: (c["gallery"], c["query"]))]
    return rule, pairs
