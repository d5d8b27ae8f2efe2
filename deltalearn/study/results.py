"""The study's results as typed objects: tables, sweeps and summaries read from the files it writes.

:func:`deltalearn.study.reproduce_table` and ``reproduce_sweep`` write JSON (and CSV) files; this
module is the one place that reads them. A table becomes a :class:`GameTable` of
:class:`VariantResult` rows, each with its scores and a :class:`~deltalearn.core.MultiplicationReport`;
a sweep becomes a DataFrame whose threshold is decoded (``None``, one number, or a tuple with one
number per layer), and :func:`sweep_cell` finds one of its cells. Chapters and tests read these, so
no reader indexes the JSON or re-parses a threshold by hand.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.counting import LayerCount, MultiplicationReport, count_weights
from ..store.agents import agent_names, agent_record, load_agent
from .pruned_agents import agent_at
from .settings import SIX_GAMES
from .shipped import SHIPPED_SETS, shipped_set
from .stats import PairedDifference, paired_difference

__all__ = ["Threshold", "VariantResult", "GameTable", "load_table", "load_tables", "load_sweep", "sweep_cell",
           "load_summary", "agent_scores", "summary_row", "layer_shares", "six_game_summary"]

Threshold = float | tuple[float, ...] | None
"""A delta threshold as results hold it: ``None`` (no delta network), one number for every layer,
or a tuple with one number per weight layer."""

PathLike = str | os.PathLike


def _threshold(value: Any) -> Threshold:
    """Decode a threshold as the result files write it (JSON null, a number, or a list)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        return tuple(float(x) for x in value)
    if isinstance(value, (int, float)):
        return float(value)
    raise ValueError(f"a threshold is null, a number or a list of numbers, got {value!r}")


@dataclass(frozen=True)
class VariantResult:
    """One variant of a table (``dense``, ``pruned``, ``delta``, ``pruned+delta``, ``pruned one-shot``):
    its scores on the table's episodes and the multiplications counted over every decision."""

    name: str
    env: str
    sparsity: float
    threshold: Threshold
    seed: int
    epsilon: float
    scores: tuple[float, ...]
    lengths: tuple[int, ...]
    mean_score: float
    std_score: float
    """Population standard deviation of the scores (``np.std``), as evaluations report it."""
    hns: float | None
    """Human-normalised mean score; ``None`` for a game without reference scores (CartPole)."""
    report: MultiplicationReport
    """Dense and significant multiplications per layer, summed over all :attr:`steps` decisions."""

    @property
    def episodes(self) -> int:
        return len(self.scores)

    @property
    def steps(self) -> int:
        """Decisions taken over all episodes (the report's sums are over these)."""
        return self.report.steps

    @property
    def reduction(self) -> float:
        """All products over significant ones, summed over every decision."""
        return self.report.reduction

    def per_decision(self, kind: str = "significant") -> dict[str, float]:
        """Per layer, ``significant`` (or ``dense``) multiplications per decision."""
        if kind not in ("significant", "dense"):
            raise ValueError(f"kind must be 'significant' or 'dense', got {kind!r}")
        return {l.name: getattr(l, kind) / self.steps for l in self.report.layers}

    @property
    def significant_per_decision(self) -> float:
        return self.report.total_significant / self.steps

    @property
    def dense_per_decision(self) -> float:
        return self.report.total_dense / self.steps

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> VariantResult:
        """Read one variant as :func:`deltalearn.study.reproduce_table` writes it."""
        layers = [LayerCount(l["name"], int(l["dense"]), int(l["significant"])) for l in d["layers"]]
        report = MultiplicationReport(layers, steps=int(d["steps"]), label=f"{d['env']} {name}")
        for key in ("total_dense", "total_significant"):
            if key in d and d[key] != getattr(report, key):
                raise ValueError(f"{d['env']} {name}: {key} {d[key]} is not the sum of its layers "
                                 f"({getattr(report, key)}); the file is inconsistent")
        return cls(name, d["env"], float(d["sparsity"]), _threshold(d["threshold"]), int(d["seed"]),
                   float(d["epsilon"]), tuple(float(s) for s in d["scores"]), tuple(int(n) for n in d["lengths"]),
                   float(d["mean_score"]), float(d["std_score"]), d.get("hns"), report)


@dataclass(frozen=True)
class GameTable:
    """One game's table: its variants played on the same seeded episodes (a paired comparison)."""

    env: str
    sparsity: float
    threshold: float | tuple[float, ...]
    episodes: int
    seed: int
    fine_tuned: bool
    """Whether the pruned variants used a distilled pruned agent (else the dense one pruned one-shot)."""
    pruned_from: str | None
    """The shipped pruned agent the pruned variants used, if any."""
    pruned_weights_reduction: float | None
    """Weights-only reduction of the pruned network (``None`` in tables written before it was kept)."""
    variants: dict[str, VariantResult]
    max_steps: int | None = None

    def variant(self, name: str) -> VariantResult:
        """The variant called ``name``, with an error listing the table's variants."""
        if name not in self.variants:
            raise KeyError(f"{self.env}'s table has no variant {name!r}; it has {', '.join(self.variants)}")
        return self.variants[name]

    def compare(self, variant: str = "pruned+delta", base: str = "dense", level: float = 0.95) -> PairedDifference:
        """``variant``'s scores minus ``base``'s, episode by episode (:func:`paired_difference`)."""
        return paired_difference(self.variant(base).scores, self.variant(variant).scores, level)

    def reduction_vs_significant(self, variant: str, reference: str = "dense") -> float:
        """How many times fewer significant products per decision ``variant`` does than ``reference``:
        the saving against the dense network's own significant products (its ReLU zeros already
        skipped), where :attr:`VariantResult.reduction` is against all products."""
        return self.variant(reference).significant_per_decision / self.variant(variant).significant_per_decision

    def layer_shares(self, variant: str = "delta", reference: str = "dense") -> dict[str, float]:
        """:func:`layer_shares` of this table."""
        return layer_shares(self, variant, reference)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GameTable:
        """Read a table as :func:`deltalearn.study.reproduce_table` writes it."""
        variants = {name: VariantResult.from_dict(name, v) for name, v in d["variants"].items()}
        threshold = _threshold(d["threshold"])
        if threshold is None:
            raise ValueError(f"{d['env']}'s table has no delta threshold; a table needs one")
        return cls(d["env"], float(d["sparsity"]), threshold, int(d["episodes"]), int(d.get("seed", 0)),
                   bool(d["fine_tuned"]), d.get("pruned_from"), d.get("pruned_weights_reduction"), variants,
                   d.get("max_steps"))


def _result_path(env: PathLike, root: PathLike, kind: str) -> Path:
    """``<root>/<env>_<kind>.json``, or ``env`` itself when it is a path to a JSON file."""
    if str(env).endswith(".json"):
        path = Path(env)
    else:
        path = shipped_set(root) / f"{env}_{kind}.json"
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} for the {kind}; root is a shipped set "
                                f"({', '.join(map(repr, SHIPPED_SETS))}) or an existing folder")
    if not path.exists():
        there = sorted(p.name for p in path.parent.glob(f"*_{kind}.json"))
        raise FileNotFoundError(f"no {kind} at {path}; {path.parent} holds " + (", ".join(there) or f"no {kind}s"))
    return path


def load_table(env: PathLike, root: PathLike = "heldout") -> GameTable:
    """``env``'s table (``<env>_table.json``) in ``root``, or the table at path ``env`` (a ``.json`` file).

    ``root`` is a shipped set (``"heldout"``, the reported tables on 30 held-out episodes, or
    ``"reproduce"``, the tables that chose the settings on seeds 0-9) or a folder path, e.g. the
    ``--out`` of ``deltalearn reproduce``.
    """
    return GameTable.from_dict(json.loads(_result_path(env, root, "table").read_text()))


def load_tables(root: PathLike = "heldout") -> dict[str, GameTable]:
    """Every table in ``root`` (a shipped set or a folder, as in :func:`load_table`): the paper's six
    games in :data:`SIX_GAMES` order, then any other."""
    folder = shipped_set(root)
    found = {p.name[: -len("_table.json")] for p in folder.glob("*_table.json")}
    order = [g for g in SIX_GAMES if g in found] + sorted(found - set(SIX_GAMES))
    return {g: load_table(g, folder) for g in order}


def load_sweep(env: PathLike, root: PathLike = "reproduce") -> pd.DataFrame:
    """``env``'s sweep (``<env>_sweep.json``) in ``root``, or the sweep at path ``env``, one row a cell.

    ``root`` is a shipped set (``"reproduce"``, where the sweeps ship) or a folder path.
    ``threshold`` is decoded: ``None`` (no delta network), a float, or a tuple with one number per
    layer. Two columns make rows easy to select and sort: ``per_layer`` (the threshold is a tuple)
    and ``first_layer_threshold`` (the threshold on the network's input, NaN with no delta network).
    ``attrs["env"]`` names the game. :func:`sweep_cell` finds one cell.
    """
    path = _result_path(env, root, "sweep")
    df = pd.DataFrame(json.loads(path.read_text()))
    df["threshold"] = pd.Series([_threshold(t) for t in df["threshold"]], index=df.index, dtype=object)
    df["per_layer"] = [isinstance(t, tuple) for t in df["threshold"]]
    df["first_layer_threshold"] = [np.nan if t is None else (t[0] if isinstance(t, tuple) else t)
                                   for t in df["threshold"]]
    df.attrs["env"] = path.name[: -len("_sweep.json")]
    first = ["sparsity", "threshold", "per_layer", "first_layer_threshold"]
    return df[first + [c for c in df if c not in first]]


def _same_threshold(a: Threshold, b: Threshold) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, tuple) != isinstance(b, tuple):
        return False
    return bool(np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-9, atol=0))


def sweep_cell(sweep: pd.DataFrame, sparsity: float, threshold: Threshold | Sequence[float]) -> pd.Series:
    """The row of ``sweep`` (from :func:`load_sweep`) at ``sparsity`` and ``threshold``.

    ``threshold`` is ``None`` (no delta network), one number (the same for every layer) or one
    number per layer; a uniform threshold does not match a per-layer one. Raises ``KeyError``
    naming the sweep's sparsities and thresholds when the cell is not in it.
    """
    want = _threshold(threshold)
    hit = [i for i, (s, t) in enumerate(zip(sweep["sparsity"], sweep["threshold"]))
           if np.isclose(s, sparsity, rtol=0, atol=1e-9) and _same_threshold(t, want)]
    if len(hit) != 1:
        name = f"{sweep.attrs['env']}'s" if "env" in sweep.attrs else "the"
        sparsities = ", ".join(f"{s:g}" for s in sorted(set(sweep["sparsity"])))
        thresholds = ", ".join(dict.fromkeys(str(t) for t in sweep["threshold"]))
        what = "no cell" if not hit else f"{len(hit)} cells"
        raise KeyError(f"{name} sweep has {what} at sparsity {sparsity:g}, threshold {want}; "
                       f"its sparsities are {sparsities} and its thresholds {thresholds}")
    return sweep.iloc[hit[0]]


def summary_row(table: GameTable, pruned_weights: float | None = None) -> dict[str, Any]:
    """One game's line of the six-game summary.

    Reductions are given against two baselines, per decision: ``pruning``, ``delta`` and ``both``
    against all the dense network's products (the paper's "unoptimized network"), and
    ``*_vs_significant`` against the dense network's own significant products (its ReLU zeros
    already skipped), which is what the optimisation itself saves. ``pruned_weights`` is the pruned
    network's weights-only reduction, the count the paper's pruning range appears to use. The score
    comparison is paired (the variants played the same seeded episodes), with a 95% t interval.
    """
    dense, opt = table.variant("dense"), table.variant("pruned+delta")
    cmp = table.compare() if dense.episodes > 1 else None
    nan = float("nan")
    return {
        "game": table.env, "episodes": dense.episodes, "seed": table.seed,
        "dense_per_decision": dense.dense_per_decision,
        "dense_significant_per_decision": dense.significant_per_decision,
        "sparsity": table.sparsity, "threshold": table.threshold,
        "pruning_weights": pruned_weights, "pruning": table.variant("pruned").reduction,
        "delta": table.variant("delta").reduction, "both": opt.reduction,
        **{f"{name}_vs_significant": table.reduction_vs_significant(k)
           for name, k in (("pruning", "pruned"), ("delta", "delta"), ("both", "pruned+delta"))},
        "dense_mean": dense.mean_score, "dense_std": dense.std_score, "dense_hns": dense.hns,
        "optimized_mean": opt.mean_score, "optimized_std": opt.std_score, "optimized_hns": opt.hns,
        "paired_difference": cmp.mean_difference if cmp else float(np.mean(np.subtract(opt.scores, dense.scores))),
        "paired_se": cmp.paired_se if cmp else nan, "unpaired_se": cmp.unpaired_se if cmp else nan,
        "ci95_low": cmp.ci_low if cmp else nan, "ci95_high": cmp.ci_high if cmp else nan,
        "verdict": cmp.verdict if cmp else "too few episodes",
        "largest_unseen_loss": cmp.largest_unseen_loss if cmp else nan,
    }


SUMMARY_COLUMNS: tuple[str, ...] = (
    "game", "episodes", "seed", "dense_per_decision", "dense_significant_per_decision", "sparsity", "threshold",
    "pruning_weights", "pruning", "delta", "both", "pruning_vs_significant", "delta_vs_significant",
    "both_vs_significant", "dense_mean", "dense_std", "dense_hns", "optimized_mean", "optimized_std",
    "optimized_hns", "paired_difference", "paired_se", "unpaired_se", "ci95_low", "ci95_high", "verdict",
    "largest_unseen_loss")
"""The summary's columns, in :func:`summary_row`'s order."""


def layer_shares(table: GameTable, variant: str = "delta", reference: str = "dense") -> dict[str, float]:
    """Per layer, one variant's significant products per decision as a share of another's.

    Per decision, not per total: the variants play the same seeds, but a different policy can make
    its episodes longer or shorter, and totals would mix that into the share.
    """
    a, b = table.variant(variant), table.variant(reference)
    return {la.name: (la.significant / a.steps) / (lb.significant / b.steps) if lb.significant else float("nan")
            for la, lb in zip(a.report.layers, b.report.layers)}


def _pruned_weights(table: GameTable) -> float:
    """The pruned network's weights-only reduction, from the table or else from the agent it names."""
    if table.pruned_weights_reduction is not None:
        return table.pruned_weights_reduction
    if table.pruned_from in agent_names():
        return count_weights(load_agent(table.pruned_from)).reduction
    return count_weights(agent_at(table.env, table.sparsity, one_shot=True).net).reduction


def six_game_summary(directory: PathLike) -> list[dict[str, Any]]:
    """:func:`summary_row` for each of :data:`SIX_GAMES` whose table is in ``directory``, in order.

    A table written before tables recorded ``pruned_weights_reduction`` gets it from the shipped
    pruned agent it names (or, failing that, from the dense agent pruned one-shot).
    """
    tables = load_tables(Path(directory))  # a folder that was written, never a shipped set's name
    return [summary_row(t, _pruned_weights(t)) for g, t in tables.items() if g in SIX_GAMES]


def load_summary(root: PathLike = "heldout") -> pd.DataFrame:
    """The summary (``summary.json``) in ``root``, one row per game, thresholds decoded.

    ``root`` is a shipped set (``"heldout"``, the reported one, or ``"reproduce"``) or a folder path.
    """
    path = shipped_set(root) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"no summary at {path}; 'deltalearn reproduce' writes one beside the tables")
    df = pd.DataFrame(json.loads(path.read_text()))
    df["threshold"] = pd.Series([_threshold(t) for t in df["threshold"]], index=df.index, dtype=object)
    return df[[c for c in SUMMARY_COLUMNS if c in df] + [c for c in df if c not in SUMMARY_COLUMNS]]


def agent_scores(name: str, evaluation: str = "evaluation") -> tuple[float, ...]:
    """The per-episode scores of a shipped agent's recorded evaluation, in seed order.

    ``evaluation`` names the manifest record: ``evaluation`` (the ten choosing episodes, seeds 0-9)
    or ``heldout_evaluation`` (the held-out ones). Agents evaluated on the same seeds pair up, episode
    by episode, in :func:`paired_difference`.
    """
    rec = agent_record(name)
    records = [k for k, v in rec.items() if isinstance(v, dict) and "scores" in v]
    if evaluation not in records:
        raise KeyError(f"agent {name!r} records no evaluation {evaluation!r}; "
                       f"it records {', '.join(records) or 'none'}")
    return tuple(float(x) for x in rec[evaluation]["scores"])
