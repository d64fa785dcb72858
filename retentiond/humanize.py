"""Numbers for people: sizes, ages and aligned tables."""

from __future__ import annotations

from collections.abc import Sequence


def size(nbytes: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def age(seconds: float | None) -> str:
    """93784 -> '1d 2h'; None -> '-'."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    years, rest = divmod(seconds, 365 * 86400)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(years, "y"), (days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{v}{u}" for v, u in parts if v][:2]
    return " ".join(shown) or "0s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        lines.append(
            "  ".join(
                cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
        )
    return "\n".join(lines)
