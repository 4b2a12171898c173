"""``mlip benchmark {3bpa,rmd17-aspirin,rmd17-ethanol}``: train with a documented config, score
the official test sets and print our errors beside the published ones (MACE paper, Batatia et
al., NeurIPS 2022, Tables 1 and 2).

``--budget MINUTES`` trains for a fixed wall-clock time (for CPUs), so accuracy per unit of
compute can be set beside a peer trained for the same time. The schedule (cosine, stage two)
then runs over the budget instead of the config's epochs, so the run ends annealed
(``train.schedule_follows_budget``). Results of a budget run are labelled as such everywhere
they are written.
"""
import argparse
import json
import os
import time
from typing import Dict, List

from mlip.errors import InputError
from mlip.examples import example_path

# a source checkout: the folder above the package holds pyproject.toml (an installed mlip has none)
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# published test errors: (metric, energy meV, forces meV/A) per model and test set
PUBLISHED: Dict[str, Dict[str, Dict[str, tuple]]] = {
    "3bpa": {
        "test_300K": {"MACE": (3.0, 8.8), "NequIP": (3.3, 10.8), "Allegro": (3.84, 12.98)},
        "test_600K": {"MACE": (9.7, 21.8), "NequIP": (11.2, 26.4), "Allegro": (12.07, 29.17)},
    },
    "rmd17-aspirin": {"rmd17_aspirin_test_01": {"MACE": (2.2, 6.6), "NequIP": (2.3, 8.2), "Allegro": (2.3, 7.3)}},
    "rmd17-ethanol": {"rmd17_ethanol_test_01": {"MACE": (0.4, 2.1), "NequIP": (0.4, 2.8), "Allegro": (0.4, 2.1)}},
}
METRIC = {"3bpa": "rmse", "rmd17-aspirin": "mae", "rmd17-ethanol": "mae"}
CONFIGS = {"3bpa": "3bpa.yaml", "rmd17-aspirin": "rmd17_aspirin.yaml", "rmd17-ethanol": "rmd17_ethanol.yaml"}
DATA_SUBDIR = {"3bpa": "3bpa", "rmd17-aspirin": "rmd17", "rmd17-ethanol": "rmd17"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(CONFIGS), help="benchmark set")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="train for this many wall-clock minutes; the schedule and stage two run over them")
    p.add_argument("--data-root", default=None,
                   help="folder holding 3bpa/ and rmd17/ (default in a source checkout: ../shared/data next to "
                        "it; required for an installed mlip)")
    p.add_argument("--architecture", default=None,
                   help="model family, a registered architecture such as nequip or mace (default: the "
                        "config's; an unknown name is reported with the available ones)")
    p.add_argument("--output-dir", default=None, help="run directory (default: runs/benchmark_NAME[_budgetM])")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config overrides, as for mlip train")


def build_config(args) -> dict:
    from mlip.train.config import load_config

    config_path = example_path("configs", CONFIGS[args.name])  # shipped in the package (mlip/examples)
    data_root = os.path.abspath(os.path.join(default_data_root() if args.data_root is None else args.data_root,
                                             DATA_SUBDIR[args.name]))
    if not os.path.isdir(data_root):
        raise InputError(f"benchmark data not found (give --data-root, the folder holding "
                         f"{DATA_SUBDIR[args.name]}/)", data_root)
    tag = f"benchmark_{args.name}" + (f"_budget{args.budget:g}min" if args.budget else "")
    overrides: List[str] = [f"data.root={data_root}", f"output_dir={args.output_dir or os.path.join('runs', tag)}"]
    if args.architecture:
        overrides.append(f"model.architecture={args.architecture}")
    if args.budget:
        overrides.append(f"train.max_time_minutes={args.budget}")
    overrides += [item for group in args.overrides for item in group]
    return load_config(config_path, overrides)


def default_data_root() -> str:
    """``--data-root`` when not given: ``../shared/data`` beside a source checkout. An installed mlip
    has no such place to guess (the folder above site-packages means nothing), so there the
    option is required, and its absence is one line saying so."""
    if os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml")):
        return os.path.join(_CHECKOUT, "..", "shared", "data")
    raise InputError("give --data-root, the folder holding 3bpa/ and rmd17/ (the benchmark data sets are "
                     "not shipped with mlip)")


def comparison_table(name: str, results: Dict[str, Dict[str, float]], budget) -> str:
    metric = METRIC[name]
    kind = f"budget run ({budget:g} min)" if budget else "full run"
    lines = [f"{name}: test {metric.upper()}, energy meV (per structure) / forces meV/A   [mlip: {kind}]",
             f"{'test set':<24}{'mlip':>16}" + "".join(f"{m:>16}" for m in ("MACE", "NequIP", "Allegro"))]
    for test_set, published in PUBLISHED[name].items():
        ours = results.get(test_set)
        cell = (f"{ours[f'energy_total_{metric}'] * 1e3:.1f} / {ours[f'forces_{metric}'] * 1e3:.1f}"
                if ours else "not run")
        lines.append(f"{test_set:<24}{cell:>16}" + "".join(f"{e:>9.1f} / {f:<4.1f}" for e, f in published.values()))
    lines.append("published: Batatia et al., MACE, NeurIPS 2022 (Tables 1 and 2)")
    return "\n".join(lines)


def run(args) -> int:
    from mlip.nn.build import DEFAULT_ARCHITECTURE
    from mlip.train.trainer import train

    cfg = build_config(args)
    t0 = time.time()
    out = train(cfg)
    minutes = (time.time() - t0) / 60
    table = comparison_table(args.name, out["results"], args.budget)
    print()
    print(table)
    summary = {"benchmark": args.name, "budget_minutes": args.budget, "wall_minutes": round(minutes, 2),
               "architecture": cfg["model"].get("architecture", DEFAULT_ARCHITECTURE), "results": out["results"],
               "published": {k: {m: list(v) for m, v in d.items()} for k, d in PUBLISHED[args.name].items()},
               "run_dir": out["run_dir"], "config": cfg}
    with open(os.path.join(out["run_dir"], "benchmark.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=str)
    with open(os.path.join(out["run_dir"], "benchmark.txt"), "w") as fh:
        fh.write(table + "\n")
    print(f"\nwritten: {out['run_dir']}/benchmark.json, benchmark.txt, learning_curve.png, test/ (parity plots)")
    return 0
