"""The mutation score per module after ``mutmut run``: killed / (generated - equivalent).

Reads mutmut's results (``mutants/**/*.py.meta``) and ``tests/mutation_equivalents.toml``, the
survivors judged equivalent (no test could tell them apart from the original on this machine),
each with its reason. Prints, per module, generated / equivalent / killed (test failure or
timeout) / survived / not checked and the score, then every survivor that is not in the table:
those are the tests still to write. Exit status 1 when a module scores under ``--min``.

    .venv/bin/mutmut run --max-children 2 && .venv/bin/python tests/mutation_score.py --min 90
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILLED = {1, 3, 36, -24, 24, 152, 255}  # mutmut's exit codes of a failing test and of a timeout (SIGXCPU)


def outcome(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    return {0: "survived", 5: "no tests", 33: "no tests"}.get(code, "suspicious")


def read_results(mutants: Path) -> dict[str, dict[str, str]]:
    """module path -> {mutant name -> outcome}."""
    results = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        results[module] = {name: outcome(code) for name, code in codes.items()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--equivalents", type=Path, default=ROOT / "tests" / "mutation_equivalents.toml")
    parser.add_argument("--min", type=float, default=0.0, help="fail when a module scores under this percentage")
    args = parser.parse_args(argv)
    equivalent = tomllib.loads(args.equivalents.read_text())["equivalent"]
    results = read_results(args.mutants)
    print(f"{'module':<42}{'generated':>10}{'equivalent':>11}{'killed':>8}{'survived':>9}{'unchecked':>10}{'score':>8}")
    failing, unexplained = [], []
    for module, outcomes in results.items():
        counts = Counter(outcomes.values())
        equivalents = [n for n in outcomes if n in equivalent and outcomes[n] != "killed"]
        denominator = len(outcomes) - len(equivalents)
        score = 100.0 * counts["killed"] / denominator if denominator else 100.0
        print(
            f"{module:<42}{len(outcomes):>10}{len(equivalents):>11}{counts['killed']:>8}{counts['survived']:>9}"
            f"{counts['not checked']:>10}{score:>7.1f}%"
        )
        unexplained += [n for n, o in outcomes.items() if o not in ("killed", "not checked") and n not in equivalent]
        if score < args.min:
            failing.append(module)
    for name in unexplained:
        print(f"survivor without a reason: {name}")
    if failing:
        print(f"under {args.min:g}%: {', '.join(failing)}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
