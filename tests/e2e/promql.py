"""What of a PromQL expression must return data for a panel or an alert to be live.

An alert expression such as ``up == 0`` returns nothing while all is well, which says
nothing about whether ``up`` exists. So an alert is checked by its operands: the
expression is split at its top-level comparisons and set operators (``and``, ``or``,
``unless``), and every operand that reads a series must return data. Splitting only
at depth 0 keeps ``{status=~"5.."}``, ``[5m]`` and ``by (le)`` whole.
"""

from __future__ import annotations

import re

_SET_OP = re.compile(r"(and|or|unless)\b")
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_READS_A_SERIES = re.compile(r"\b(up|commission_\w+)\b")


def operands(expr: str) -> list[str]:
    """The top-level operands of ``expr`` between comparisons and set operators."""
    parts: list[str] = []
    depth, quote, start, i = 0, "", 0, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            op = next((o for o in _COMPARISONS if expr.startswith(o, i)), None)
            word = _SET_OP.match(expr, i)
            boundary = i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_")
            if op is None and word and boundary:
                op = word.group(1)
            if op is not None:
                parts.append(expr[start:i])
                i += len(op)
                rest = re.match(r"\s*bool\b", expr[i:])  # `> bool 0` compares, too
                i += rest.end() if rest else 0
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [" ".join(p.split()) for p in parts if p.strip()]


def series_reading(expr: str) -> list[str]:
    """The operands of ``expr`` that read a series (not bare numbers or ``time()``)."""
    return [p for p in operands(expr) if _READS_A_SERIES.search(p)]
