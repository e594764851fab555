"""The decision as the report's figures and pages show it, read from the content of
``compatibility.json``: its ``decision`` object (``rule`` and ``pairs``, the contract the gate reads;
:meth:`evaluate.metrics.decision.Decision.to_dict`)."""
from __future__ import annotations


def decision_view(data: dict) -> tuple[dict, list[dict]]:
    """(rule, pairs) of a report ``data`` (compatibility.json's content).

    ``rule`` has at least ``metric``, ``tolerance``, ``confidence`` and ``text``; each pair ``gallery``
    and ``query`` (model ids), ``value``, ``reference``, ``difference``, ``low``, ``high``, ``verdict``,
    ``recommendation``, ``queries`` and the rest of the contract.
    """
    return data["decision"]["rule"], list(data["decision"]["pairs"])
