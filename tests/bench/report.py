"""Results over runs and the markdown report: the comparison tables, the chunk-size table, the
table of single figures (the index at scale), details."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from tests.bench.measures import Measure, Sample


class Results:
    """Every sample, by server name and measure key, in run order."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)

    def add(self, server: str, samples: dict[str, Sample]) -> None:
        for key, sample in samples.items():
            self._samples[server, key].append(sample)

    def samples(self, server: str, key: str) -> list[Sample]:
        return self._samples.get((server, key), [])

    def figure(self, server: str, measure: Measure) -> float | None:
        """The median over runs (the highest, for peaks)."""
        values = [sample.value for sample in self.samples(server, measure.key)]
        if not values:
            return None
        return max(values) if measure.summary == "max" else statistics.median(values)

    def best(self, servers: Iterable[str], measure: Measure) -> tuple[float, str] | None:
        """The best figure among `servers` for this measure, and whose it is."""
        figures = [(value, name) for name in servers if (value := self.figure(name, measure)) is not None]
        if not figures:
            return None
        pick = max if measure.higher_is_better else min
        return pick(figures, key=lambda figure: figure[0])


def format_value(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio_text(ferry: float, nginx: float, measure: Measure) -> str:
    if nginx == 0:
        return "n/a"
    ratio = ferry / nginx
    if measure.higher_is_better:
        return f"{ratio:.2f}"
    return f"{ratio:.2f}× nginx's (lower is better)"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _nginx_variant(name: str) -> str:
    return name.removeprefix("nginx ").strip()


def comparison_row(
    results: Results, measure: Measure, ferry: str, nginx: list[str], *, absent: str = "n/a"
) -> str:
    """`absent`: the nginx cell when no nginx could take this measure (Ferry's figure stands alone)."""
    ferry_value, best = results.figure(ferry, measure), results.best(nginx, measure)
    if ferry_value is None:
        return _row([measure.title, "n/a", "n/a", "n/a", measure.target.text])
    if best is None:
        return _row(
            [measure.title, format_value(ferry_value, measure.unit), absent, "n/a", measure.target.text]
        )
    nginx_value, winner = best
    ratio = ferry_value / nginx_value if nginx_value else 0.0
    verdict = measure.target.verdict(ferry_value, ratio)
    return _row(
        [
            measure.title,
            format_value(ferry_value, measure.unit),
            f"{format_value(nginx_value, measure.unit)} ({_nginx_variant(winner)})",
            ratio_text(ferry_value, nginx_value, measure),
            f"{measure.target.text} — {verdict}" if verdict else measure.target.text,
        ]
    )


def comparison_table(
    results: Results, measures: list[Measure], ferry: str, nginx: list[str], *, absent: str = "n/a"
) -> str:
    lines = [
        _row(["measure", "Ferry", "nginx (best)", "Ferry/nginx ratio", "target"]),
        _row(["---"] * 5),
    ]
    lines += [comparison_row(results, measure, ferry, nginx, absent=absent) for measure in measures]
    return "\n".join(lines)


def chunk_table(results: Results, measures: list[Measure], ferries: list[str], nginx: list[str]) -> str:
    """One column per Ferry chunk size: its figure and, in brackets, its ratio to the best nginx."""
    lines = [_row(["measure", *ferries, "nginx (best)"]), _row(["---"] * (len(ferries) + 2))]
    for measure in measures:
        best = results.best(nginx, measure)
        cells = [measure.title]
        for ferry in ferries:
            value = results.figure(ferry, measure)
            if value is None or best is None:
                cells.append("n/a")
                continue
            ratio = value / best[0] if best[0] else 0.0
            cells.append(f"{format_value(value, measure.unit)} ({ratio:.2f})")
        cells.append(f"{format_value(best[0], measure.unit)} ({_nginx_variant(best[1])})" if best else "n/a")
        lines.append(_row(cells))
    return "\n".join(lines)


@dataclass(frozen=True)
class Figure:
    """One figure taken once (no nginx counterpart): a row of the index table."""

    label: str
    unit: str
    value: float
    detail: str = ""

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})"


def figure_table(figures: list[Figure]) -> str:
    lines = [_row(["measure", "Ferry", "detail"]), _row(["---"] * 3)]
    lines += [
        _row([figure.title, format_value(figure.value, figure.unit), figure.detail]) for figure in figures
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    """A titled table of its own, with its context and notes as bullet lists."""

    title: str
    table: str
    context: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def markdown(self) -> list[str]:
        parts = [f"## {self.title}", ""]
        if self.context:
            parts += [*(f"- {line}" for line in self.context), ""]
        parts += [self.table, ""]
        if self.notes:
            parts += [*(f"- {note}" for note in self.notes), ""]
        return parts


def details(results: Results, measures: list[Measure], servers: list[str]) -> str:
    """Every run's figure per server, with what wrk and the samplers saw."""
    lines: list[str] = []
    for measure in measures:
        lines.append(f"- {measure.title}")
        for server in servers:
            samples = results.samples(server, measure.key)
            if not samples:
                continue
            values = ", ".join(format_value(sample.value, measure.unit) for sample in samples)
            notes = "; ".join(dict.fromkeys(sample.detail for sample in samples if sample.detail))
            lines.append(f"  - {server}: {values}" + (f" — {notes}" if notes else ""))
    return "\n".join(lines)


def document(
    title: str,
    context: list[str],
    table: str,
    notes: list[str],
    detail: str,
    sections: Iterable[Section] = (),
) -> str:
    parts = [f"# {title}", "", *(f"- {line}" for line in context), "", table, ""]
    if notes:
        parts += [*(f"- {note}" for note in notes), ""]
    for section in sections:
        parts += section.markdown()
    parts += ["## Every run", "", detail, ""]
    return "\n".join(parts)
