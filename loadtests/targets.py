"""The issue's targets as data: each measured value is stated next to its target as PASS or MISS with the margin, never asserted."""

from __future__ import annotations

__all__ = ["check", "format_check"]

_OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: abs(v - t) < 1e-9}


def check(name: str, value: float, op: str, target: float, unit: str = "", applies: bool = True,
          note: str = "") -> dict:
    """`{"name", "value", "op", "target", "status": PASS|MISS|n/a, "margin", "unit", "note"}`.

    The margin is the headroom relative to the target (positive when met): `value/target - 1`
    for `>=`, `1 - value/target` for `<=`, and `value - target` for `==`.
    """
    if op == "==":
        margin = value - target
    elif op == ">=":
        margin = value / target - 1
    else:
        margin = 1 - value / target
    status = ("PASS" if _OPS[op](value, target) else "MISS") if applies else "n/a"
    return {"name": name, "value": value, "op": op, "target": target, "status": status,
            "margin": margin, "unit": unit, "note": note}


def format_check(c: dict) -> str:
    margin = f"{c['margin']:+.4f}" if c["op"] == "==" else f"{c['margin']:+.1%}"
    value = f"{c['value']:.4f}" if c["op"] == "==" else f"{c['value']:.4g}"
    text = (f"{c['status']:4}  {c['name']}: {value}{c['unit']} (target {c['op']} "
            f"{c['target']:.4g}{c['unit']}, margin {margin})")
    return text + (f"  [{c['note']}]" if c["note"] else "")
