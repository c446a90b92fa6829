"""Every speed target of geohf in one table: the measured figure, the goal, met or not.

    python benchmarks/summary.py [--run] [--bench runs/bench] [--docs docs/benchmarks.md]

Reads what the benchmark scripts wrote (``throughput/throughput.json``, ``labelling/labelling.json``,
``build/build.json`` under ``--bench``); ``--run`` runs them first (throughput, labelling at
10k/100k/1M, dataset build at 1 process). Prints the table, writes ``summary.json`` and, with
``--docs``, replaces the table between the ``<!-- summary -->`` markers of that Markdown file, so a
later change that regresses a figure shows up as a ``MISSED`` row in the diff.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- summary -->", "<!-- /summary -->"
RUNS = {
    "throughput": ["throughput.py"],
    "labelling": ["labelling.py", "--sizes", "10000", "100000", "1000000"],
    "build": ["dataset_build.py", "--num-proc", "1"],
}


@dataclass
class Row:
    figure: str
    measured: str
    goal: str
    met: bool | None  # None: not measured

    def cells(self) -> list[str]:
        state = "-" if self.met is None else ("met" if self.met else "MISSED")
        return [self.figure, self.measured, self.goal, state]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def throughput_rows(results: dict | None) -> list[Row]:
    if results is None:
        return [Row("predict / pipeline / Trainer vs raw, decode + preprocess", "not measured", "", None)]
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import figure_rows  # the script's own reading of its results

    return [
        Row(figure, f"{value} (ratio {ratio})", goal, met) for figure, value, goal, ratio, met in figure_rows(results)
    ]


def labelling_rows(results: dict | None) -> list[Row]:
    if results is None:
        return [Row("labelling and cell fitting", "not measured", "", None)]
    rows = []
    labelling = {int(n): v for n, v in results.get("labelling", {}).items() if n.isdigit()}
    for n, goal in ((1_000_000, 4.0), (10_000, 1.0)):
        if n in labelling:
            r = labelling[n]
            rows.append(
                Row(
                    f"polygon-exact labelling / reverse_geocoder pts/s, {n:,} land points",
                    f"{r['geohf_points_s']:,.0f} / {r['reverse_geocoder_points_s']:,.0f} (ratio {r['ratio']:.2f})",
                    f">= {goal:g}",
                    r["ratio"] >= goal,
                )
            )
    agreement = results.get("grid_agreement")
    if agreement:
        same, n = agreement["same_polygon_as_tiled"], agreement["points"]
        rows.append(Row("label grid = point-in-polygon", f"{same:,} of {n:,} points", "all", same == n))
    for kind, sizes in results.get("cells", {}).items():
        row = sizes.get("100000")
        if row:
            rows.append(
                Row(f"{kind} cell fitting, 100k points", f"{row['seconds']:.2f} s", "<= 3 s", row["seconds"] <= 3)
            )
    return rows


def build_rows(results: dict | None) -> list[Row]:
    key = "lost-and-found (num_proc=1)"
    if results is None or key not in results:
        return [Row("geohf dataset build, lost-and-found, 1 proc", "not measured", ">= 150 img/s", None)]
    r = results[key]
    measured = (
        f"{r['images_per_s']:.0f} img/s ({r['images_per_cpu_s']:.0f} per CPU-second), peak {r['peak_rss_mb']:.0f} MB"
    )
    return [Row("geohf dataset build, lost-and-found 320x180 PNG+JSON, all filters, 1 proc", measured, ">= 150 img/s",
                r["images_per_s"] >= 150)]  # fmt: skip


def markdown(rows: list[Row]) -> str:
    lines = ["| figure | measured | goal | |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", default=str(ROOT / "runs" / "bench"), help="where the benchmarks write")
    parser.add_argument("--run", action="store_true", help="run the benchmarks first")
    parser.add_argument("--docs", default=None, help="Markdown file whose summary table to replace")
    args = parser.parse_args(argv)
    bench = Path(args.bench)
    if args.run:
        for name, cmd in RUNS.items():
            out = ["--output", str(bench / name)]
            subprocess.run([sys.executable, str(Path(__file__).parent / cmd[0]), *cmd[1:], *out], check=True)
    rows = (
        throughput_rows(_load(bench / "throughput" / "throughput.json"))
        + labelling_rows(_load(bench / "labelling" / "labelling.json"))
        + build_rows(_load(bench / "build" / "build.json"))
    )
    table = markdown(rows)
    print(table)
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "summary.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if args.docs:
        docs = Path(args.docs)
        text = docs.read_text()
        if BEGIN not in text:
            raise SystemExit(f"{docs} has no {BEGIN} ... {END} markers to put the table between")
        head, rest = text.split(BEGIN, 1)
        docs.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    return rows


if __name__ == "__main__":
    main()
