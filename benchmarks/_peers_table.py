"""The tables of ``benchmarks/peers_optim.py``: rows per (problem, optimiser), and the winners."""

from __future__ import annotations

import math
import statistics
from typing import Any

COLUMNS = [
    "problem", "optimizer", "setting", "test loss", "test acc", "train loss", "step time ×SGD",
    "time to SGD's loss ×SGD", "steps to SGD's loss", "time to Adam's loss ×Adam", "state MiB",
    "diverged",
]  # fmt: skip
OURS = "Lanczos"  # labels of our optimisers start with this


def _reach(r: dict[str, Any], target: float) -> tuple[float, int | None]:
    """Seconds and steps until the training loss first reached ``target``."""
    if r["diverged"] or r["error"]:
        return math.inf, None
    for s, t, loss in zip(r["steps"], r["seconds"], r["train_loss"], strict=True):
        if loss <= target:
            return t, s
    return math.inf, None


def _mean(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.mean(vals) if vals and len(vals) == len(values) else math.inf


def _cell(values: list[float], fmt: str = ".4g") -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "—"
    mean = statistics.mean(vals)
    spread = f" ± {statistics.stdev(vals):{fmt}}" if len(vals) > 1 else ""
    return f"{mean:{fmt}}{spread}" + (
        f" ({len(vals)}/{len(values)})" if len(vals) < len(values) else ""
    )


def _never(values: list[float], fmt: str) -> str:
    if values and not any(math.isfinite(v) for v in values):
        return "never"
    return _cell(values, fmt)


def _time_to(r: dict[str, Any], base: dict[str, Any] | None) -> float:
    """Time for ``r`` to reach ``base``'s final training loss, over ``base``'s own time."""
    if base is None or base["diverged"] or base["error"]:
        return math.nan
    target = base["train_loss"][-1]
    t, _ = _reach(r, target)
    t_base, _ = _reach(base, target)
    return t / t_base if math.isfinite(t) and t_base > 0 else math.inf


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, optimiser) of the seed runs, ratios to SGD/Adam of the same seed."""
    seeded = [r for r in runs if r["phase"] == "seed"]
    sgd = {(r["problem"], r["seed"]): r for r in seeded if r["optimizer"] == "SGD"}
    adam = {(r["problem"], r["seed"]): r for r in seeded if r["optimizer"] == "Adam"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in seeded:
        groups.setdefault((r["problem"], r["optimizer"]), []).append(r)
    rows = []
    for (prob, label), rs in groups.items():
        step_ratio, to_sgd, to_adam, steps_to = [], [], [], []
        for r in rs:
            base = sgd.get((prob, r["seed"]))
            to_adam.append(_time_to(r, adam.get((prob, r["seed"]))))
            if base is None or base["diverged"]:
                continue
            step_ratio.append(r["step_seconds"] / base["step_seconds"])
            to_sgd.append(_time_to(r, base))
            _, s = _reach(r, base["train_loss"][-1])
            steps_to.append(float(s) if s is not None else math.inf)
        finals = [math.nan if (r["diverged"] or r["error"]) else r["train_loss"][-1] for r in rs]
        rows.append({
            "problem": prob, "optimizer": label, "setting": rs[0]["setting"],
            "test_loss": [r["eval_loss"] for r in rs], "test_acc": [r["eval_acc"] for r in rs],
            "train_loss": finals, "step_time_ratio": step_ratio, "time_to_target_ratio": to_sgd,
            "steps_to_target": steps_to, "time_to_adam_ratio": to_adam,
            "state_mib": [r["state_mib"] for r in rs],
            "diverged": sum(r["diverged"] for r in rs), "seeds": len(rs),
            "errors": sorted({r["error"] for r in rs if r["error"]}),
        })  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table, one line per row."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        setting = ", ".join(f"{k}={v:g}" for k, v in row["setting"].items()) or "defaults"
        cells = [
            row["problem"], f"`{row['optimizer']}`", setting, _cell(row["test_loss"]),
            _cell(row["test_acc"], ".3f"), _cell(row["train_loss"]),
            _cell(row["step_time_ratio"], ".2f"), _never(row["time_to_target_ratio"], ".2f"),
            _never(row["steps_to_target"], ".0f"), _never(row["time_to_adam_ratio"], ".2f"),
            _cell(row["state_mib"], ".2f"),
            f"{row['diverged']}/{row['seeds']}" + (" (error)" if row["errors"] else ""),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    scored = [(r, _mean(r[key])) for r in rows if not r["errors"] and not r["diverged"]]
    scored = [(r, v) for r, v in scored if math.isfinite(v)]
    return min(scored, key=lambda rv: rv[1])[0] if scored else None


def _label(row: dict[str, Any] | None, key: str) -> str:
    return "—" if row is None else f"`{row['optimizer']}` ({_mean(row[key]):.4g})"


def winners(rows: list[dict[str, Any]], default: str) -> list[str]:
    """Per problem: who wins per iteration and per second, and where ``default`` stands."""
    lines = [
        "| problem | lowest train loss (per iteration) | best peer's test loss | "
        f"`{default}` train / test loss | fastest to SGD's loss (×SGD) | "
        f"fastest to Adam's loss (×Adam) | `{default}` to Adam's loss (×Adam) |",
        "|---|---|---|---|---|---|---|",
    ]
    for prob in dict.fromkeys(r["problem"] for r in rows):
        here = [r for r in rows if r["problem"] == prob]
        peers = [r for r in here if not r["optimizer"].startswith(OURS)]
        ours = next((r for r in here if r["optimizer"] == default), None)
        peer_test = _best(peers, "test_loss")
        mine = "—" if ours is None else (
            f"{_mean(ours['train_loss']):.4g} / {_mean(ours['test_loss']):.4g}"
        )  # fmt: skip
        to_adam = "—" if ours is None else _never(ours["time_to_adam_ratio"], ".2f")
        lines.append(
            f"| {prob} | {_label(_best(here, 'train_loss'), 'train_loss')} | "
            f"{_label(peer_test, 'test_loss')} | {mine} | "
            f"{_label(_best(here, 'time_to_target_ratio'), 'time_to_target_ratio')} | "
            f"{_label(_best(here, 'time_to_adam_ratio'), 'time_to_adam_ratio')} | {to_adam} |"
        )
    return lines
