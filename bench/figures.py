"""A benchmark figure beside its bound and target, and the table they print as."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.table import Table


@dataclass
class Figure:
    size: str  # the data size it was measured at ("1m", "10m"), or "-" where size does not matter
    name: str
    value: float
    unit: str
    bound: float | None  # the same work with nothing of Nudge around it, measured in the same run
    bound_is: str
    target: float | None = None
    higher_is_better: bool = False
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        """How far from the bound: figure / bound for times, bound / figure for rates (>= 1 is slower)."""
        if not self.bound or not self.value:
            return None
        return self.bound / self.value if self.higher_is_better else self.value / self.bound

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def as_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "s":
        return f"{value:,.1f} s"
    return f"{value:,.0f} {unit}"


def table(figures: list[Figure]) -> Table:
    out = Table(title="make bench", show_lines=False)
    for column in ("size", "figure", "measured", "lower bound", "bound is", "ratio", "target", "met"):
        out.add_column(column, justify="right" if column in ("measured", "lower bound", "ratio", "target") else "left")
    for figure in figures:
        target = "" if figure.target is None else ("≥ " if figure.higher_is_better else "≤ ") + _number(figure.target, figure.unit)
        out.add_row(
            figure.size, figure.name, _number(figure.value, figure.unit), _number(figure.bound, figure.unit),
            figure.bound_is, "" if figure.ratio is None else f"{figure.ratio:.2f}×", target,
            {True: "yes", False: "NO", None: ""}[figure.met],
        )
    return out


def markdown(figures: list[Figure]) -> str:
    """The same table as Markdown, as the README shows it."""
    lines = ["| size | figure | measured | lower bound (same run) | ratio | target | met |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for figure in figures:
        bound = f"{_number(figure.bound, figure.unit)} ({figure.bound_is})" if figure.bound is not None else ""
        target = "" if figure.target is None else ("≥ " if figure.higher_is_better else "≤ ") + _number(figure.target, figure.unit)
        ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}×"
        met = {True: "yes", False: "**no**", None: ""}[figure.met]
        lines.append(f"| {figure.size} | {figure.name} | {_number(figure.value, figure.unit)} | {bound} | {ratio} | {target} | {met} |")
    return "\n".join(lines)
