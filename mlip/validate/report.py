"""The table of ``mlip validate``: property, model value, reference value, relative error, verdict.

Each :class:`Row` is one comparison or one check. Its ``status`` is

* ``PASS`` / ``FAIL``: a reference value and |model - reference| / |reference| within / beyond
  the tolerance, or a check with a criterion of its own (MD stability, imaginary phonon modes,
  a relaxation that converged);
* ``INFO``: a model value with nothing to compare it with (a structure of ``--structures``);
* ``SKIP``: a check that could not run (the note says why);
* ``ERROR``: the computation itself failed (the note says how); counted as a failure.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, List, Optional, Sequence, Union

Value = Union[float, str, None]


@dataclass
class Row:
    system: str
    property: str
    model: Value
    reference: Value = None
    unit: str = ""
    rel_error: Optional[float] = None
    tolerance: Optional[float] = None
    status: str = "INFO"
    note: str = ""
    source: str = ""


def compare(system: str, name: str, model: float, reference: float, unit: str, tolerance: float,
            source: str = "", note: str = "") -> Row:
    """A row comparing ``model`` with ``reference`` (same unit) at a relative ``tolerance``: the
    error is |model - reference| / |reference| (absolute when the reference is 0)."""
    if model is None or not math.isfinite(model):
        return Row(system, name, model, reference, unit, None, tolerance, "FAIL", note or "no model value", source)
    denom = abs(reference) if reference != 0 else 1.0
    err = abs(model - reference) / denom
    return Row(system, name, float(model), float(reference), unit, err, tolerance,
               "PASS" if err <= tolerance else "FAIL", note, source)


def _fmt(v: Value) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"
    return f"{v:.3e}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table; the last line counts the verdicts."""
    head = (f"{'system':<16} {'property':<30} {'model':>12} {'reference':>12} {'unit':<10} "
            f"{'rel.err':>8} {'tol':>6}  result  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        err = "-" if r.rel_error is None else f"{100 * r.rel_error:.1f}%"
        tol = "-" if r.tolerance is None else f"{100 * r.tolerance:.0f}%"
        lines.append(f"{r.system[:16]:<16} {r.property[:30]:<30} {_fmt(r.model):>12} {_fmt(r.reference):>12} "
                     f"{r.unit[:10]:<10} {err:>8} {tol:>6}  {r.status:<6}  {r.note}")
    lines.append("-" * len(head))
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("PASS", "FAIL", "ERROR", "INFO", "SKIP")}
    # deliberately not "N passed, N failed": that line is read as a test runner's summary elsewhere
    lines.append("mlip validate: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                 + ("" if counts["FAIL"] + counts["ERROR"] else " -- no check failed"))
    return "\n".join(lines)


def failed(rows: Sequence[Row]) -> bool:
    return any(r.status in ("FAIL", "ERROR") for r in rows)


def sources(rows: Sequence[Row]) -> List[str]:
    """The distinct ``source`` texts of the rows, in order of first appearance."""
    seen: List[str] = []
    for r in rows:
        if r.source and r.source not in seen:
            seen.append(r.source)
    return seen


def write_json(rows: Sequence[Row], path: str, extra: Optional[dict] = None) -> str:
    """The rows (and ``extra``) as JSON; NaN and inf become null."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    data = {"rows": [{k: clean(v) for k, v in asdict(r).items()} for r in rows]}
    if extra:
        data.update(extra)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    return path
