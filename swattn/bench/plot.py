"""Bar charts of benchmark times (matplotlib, the ``plot`` extra: ``pip install -e ".[plot]"``).

- ``python -m swattn.bench decode --plot decode.png`` plots what that run measured (``plot_sections``);
- ``python -m swattn.bench.plot docs/performance.md --heading "H200" --out docs/performance-h200.png`` plots a
  markdown table already written down (the first table under the first heading containing ``--heading``): its first
  column names the workload, every other column a provider, each cell a time in us (the first number in it; empty
  or non-numeric cells are left out). The source file and heading are printed on the chart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

Groups = list[tuple[str, dict[str, float]]]  # (workload, {provider: time in us})


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit('--plot needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label(us: float) -> str:
    return f"{us:,.0f} us" if us >= 100 else f"{us:.3g} us"


def draw(groups: Groups, path: str, title: str, footnote: str = "") -> None:
    """One horizontal bar per (workload, provider), grouped by workload: each provider's time relative to swattn's
    in that workload (1 = swattn, longer = slower; the first provider's when swattn has no time there), labelled
    with the time itself; with a single provider, the times themselves on a log scale. Writes ``path``."""
    if not groups:
        raise ValueError("plot: no timed rows to draw")
    plt = _pyplot()
    providers = list(dict.fromkeys(p for _, times in groups for p in times))
    relative = len(providers) > 1
    height = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.17 * len(groups) * len(providers)))
    colors = plt.get_cmap("tab10")
    widest = 1.0
    for i, provider in enumerate(providers):
        ys, values, labels = [], [], []
        for g, (_, times) in enumerate(groups):
            if provider not in times:
                continue
            base = times.get("swattn", next(iter(times.values()))) if relative else 1.0
            ys.append(g - 0.4 + height * (i + 0.5))
            values.append(times[provider] / base)
            labels.append(_label(times[provider]))
        widest = max([widest] + values)
        bars = ax.barh(ys, values, height=height * 0.9, label=provider, color=colors(i))
        for bar, label in zip(bars, labels):
            x = bar.get_width() + 0.02 if relative else bar.get_width() * 1.05
            ax.text(x, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=7)
    if relative:
        ax.axvline(1.0, color="0.5", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, widest * 1.25)
        ax.set_xlabel("time per call relative to swattn (1 = swattn; longer is slower)")
    else:
        ax.set_xscale("log")
        ax.set_xlim(right=widest * 4)
        ax.set_xlabel(f"{providers[0]}: time per call, us (log scale)")
    ax.set_yticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title if len(title) <= 90 else title[:87] + "...", fontsize=10)
    if relative:
        fig.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 0.03 if footnote else 0.0),
                   ncol=len(providers), frameon=False)
    if footnote:
        fig.text(0.01, 0.005, footnote if len(footnote) <= 160 else footnote[:157] + "...", fontsize=7,
                 color="0.35", va="bottom")
    fig.tight_layout(rect=(0, (0.03 if footnote else 0) + (0.05 if relative else 0), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def groups_from_sections(sections) -> Groups:
    """The timed rows of benchmark ``Section``s, grouped by shape (the section title is prefixed when several)."""
    groups: dict[str, dict[str, float]] = {}
    for section in sections:
        for row in section.rows:
            if row.timing is None or row.status != "ok":
                continue
            name = f"{section.title}: {row.shape}" if len(sections) > 1 else row.shape
            groups.setdefault(name, {})[row.provider] = row.timing.median_us
    return list(groups.items())


def plot_sections(sections, path: str, header: Sequence[str]) -> None:
    title = "swattn benchmark: " + ", ".join(s.title for s in sections)
    draw(groups_from_sections(sections), path, title, footnote=" ".join(line.strip("- ") for line in header)[:200])


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def groups_from_markdown(text: str, heading: str) -> tuple[Groups, str]:
    """The first markdown table under the first heading that contains ``heading`` -> (groups, the heading line)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and heading in line), None)
    if start is None:
        raise ValueError(f"plot: no heading containing {heading!r}")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#") and rows == []:
            continue
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    if len(rows) < 3:
        raise ValueError(f"plot: no table under {lines[start]!r}")
    providers, groups = rows[0][1:], []
    for cells in rows[2:]:
        times = {}
        for provider, cell in zip(providers, cells[1:]):
            match = _NUMBER.search(cell.replace(",", ""))
            if match:
                times[provider] = float(match.group())
        if times:
            groups.append((cells[0], times))
    return groups, lines[start].lstrip("# ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swattn.bench.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("markdown", help="a markdown file holding the table (e.g. docs/performance.md)")
    parser.add_argument("--heading", required=True, help="text of the heading the table sits under")
    parser.add_argument("--out", required=True, metavar="FILE.png")
    parser.add_argument("--title", help="chart title (default: the heading)")
    args = parser.parse_args(argv)
    with open(args.markdown) as f:
        groups, found = groups_from_markdown(f.read(), args.heading)
    draw(groups, args.out, args.title or found, footnote=f"source: {args.markdown}, \"{found}\"")
    print(f"wrote {args.out} ({len(groups)} workloads)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
