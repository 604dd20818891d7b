"""Reading runs into one table keyed by run id, choosing them, and grouping them by their settings."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from runner import records, rundir, stats

KEY_METRICS = ("test_acc", "test_nll", "test_ece", "test_ece_ts", "test_brier")
AXES = ("pooling", "global_pool", "norm", "loss", "model", "optim", "dataset")
# How a teacher was named (settings, run id, checkpoint) is not what it is: its run id is, kept as teacher_run_id.
TEACHER_NAMING = ("teacher", "teacher.overrides", "teacher.run_id", "teacher.checkpoint", "teacher_test_acc")
# skip_test says a run (a tuning trial's) had no test pass: a fact about the run, not a setting of its method
NOT_CONFIG = (set(records.BOOKKEEPING) | {"seed", "folder", "at_chance", "best_epoch", "skip_test"}
              | set(TEACHER_NAMING) | set(rundir.STAGE_COLUMNS))


class SummaryError(Exception):
    """A usage mistake: printed as one line, exit status 2."""


def run_folders(paths: Iterable[Path]) -> list[Path]:
    """Run folders from results roots (holding ``runs/``) or run folders themselves; a runs.csv table stands for
    itself (read by ``load``)."""
    out: list[Path] = []
    for p in paths:
        if p.suffix == ".csv" and p.is_file():
            out.append(p)
        elif (p / "result.json").exists():
            out.append(p)
        elif (p / "runs").is_dir():
            out += sorted(f for f in (p / "runs").iterdir() if (f / "result.json").exists())
        else:
            raise SummaryError(f"{p}: neither a results root (with runs/) nor a run folder (with result.json)")
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two rows read under one run id are the same record (a copy, or a folder and its runs.csv row): every
    field both have a value for agrees (numbers to 1e-9, as a table's text rounds them)."""
    for k in set(a) & set(b) - {"folder", "at_chance", "log"}:
        x, y = a[k], b[k]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (x, y)):
            continue
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif _text(x) != _text(y):
            return False
    return True


def _keep_once(rows: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    """Each run once, whichever inputs held it (a root given twice, overlapping folders, a folder and its table):
    identical records merge (the one with a run folder is kept, for its logits); two different records under one
    run id are an error naming both."""
    kept: dict[str, tuple[dict[str, Any], str]] = {}
    for row, source in rows:
        rid = str(row.get("run_id"))
        if rid not in kept:
            kept[rid] = (row, source)
            continue
        other, other_source = kept[rid]
        if not _same(row, other):
            raise SummaryError(f"run {rid} is recorded twice with different results: {other_source} and {source}. "
                               "Give only one of them (or rerun it in one folder).")
        if not other.get("folder") and row.get("folder"):
            kept[rid] = (row, source)
    return [row for row, _ in kept.values()]


def _table(path: Path) -> pd.DataFrame:
    """A CSV table written by anyone: UTF-8 with one header row, or a SummaryError that says what it is instead."""
    try:
        return pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SummaryError(f"{path}: not UTF-8 text (byte {e.start}); this runner writes its tables in UTF-8") from None
    except pd.errors.EmptyDataError:
        raise SummaryError(f"{path}: empty; a runs.csv has a header row and a row per run") from None
    except (pd.errors.ParserError, OSError, ValueError) as e:
        raise SummaryError(f"{path}: not a CSV table ({' '.join(str(e).split())[:120]})") from None


def load(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(runs, epochs, metric columns): one row per run id, however many inputs hold it (a corrupt one is reported
    and skipped; two different records under one id are a SummaryError)."""
    rows: list[tuple[dict[str, Any], str]] = []
    epochs, metrics, seen = [], set(), set()
    for folder in folders:
        if folder.suffix == ".csv":  # a runs.csv table (a colleague's, or docs/examples): its rows as they are
            table = _table(folder)
            if not {"run_id", "status", "seed"} <= set(table.columns):
                raise SummaryError(f"{folder}: not a runs.csv written by this runner (needs run_id, status and seed)")
            rows += [(r | {"folder": ""}, f"{folder} (row of {r.get('run_id')})") for r in table.to_dict("records")]
            metrics |= {
                c
                for c in table.columns
                if (c.startswith(("test_", "val_", "ood_", "best_test_", "best_val_")) or c == "temperature")
                and c not in records.BOOKKEEPING
                and pd.api.types.is_numeric_dtype(table[c])
            }
            if (folder.parent / "epochs.csv").is_file():
                try:
                    frame = _table(folder.parent / "epochs.csv")
                except SummaryError as e:  # the curves are a figure, not the statistics: said, and left out
                    rundir.report_corrupt(folder.parent / "epochs.csv", str(e))
                    frame = None
                if frame is not None and {"run_id", "epoch"} <= set(frame.columns):
                    epochs.append(frame)
            continue
        if folder.resolve() in seen:  # one run folder reached twice (a root given twice, or a root and its run)
            continue
        seen.add(folder.resolve())
        record = rundir.read_result(folder)
        if record is None:
            continue
        row = records.row(record) | {"folder": str(folder)}
        metrics |= {k for k, v in row.items() if (k.startswith(("test_", "val_", "ood_", "best_test_", "best_val_"))
                                                   or k == "temperature") and k not in records.BOOKKEEPING
                    and isinstance(v, (int, float, type(None)))}
        rows.append((row, str(folder)))
        frame = records.read_epochs(folder)
        if frame is not None:
            epochs.append(frame.assign(run_id=record["run_id"]))
    if not rows:
        raise SummaryError("no runs found: run a sweep first, e.g. python -m runner -m pooling=max,avg seed=0,1,2")
    runs = pd.DataFrame(_keep_once(rows))
    for c in runs.columns:  # lists (model.widths) as text, so that they can be grouped on
        if runs[c].dtype == object:
            runs[c] = runs[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    runs["at_chance"] = [
        flag is True or flag == 1 if isinstance(flag, (bool, int, float)) and not pd.isna(flag) else _at_chance(r)
        for flag, (_, r) in zip(runs.get("at_chance", [None] * len(runs)), runs.iterrows())
    ]
    epochs_all = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()
    if not epochs_all.empty and {"run_id", "epoch"} <= set(epochs_all.columns):  # each run's epochs once, too
        epochs_all = epochs_all.drop_duplicates(["run_id", "epoch"], keep="first").reset_index(drop=True)
    return runs, epochs_all, sorted(metrics)


def _at_chance(row: pd.Series) -> bool:
    """For runs recorded before ``at_chance`` existed: the same rule, from the dataset's classes and n_test."""
    from datasets import SPECS  # here: only tables from before at_chance need it

    acc, n, name = row.get("test_acc"), row.get("n_test"), row.get("dataset")
    if name not in SPECS or not isinstance(acc, (int, float)) or pd.isna(acc) or pd.isna(n):
        return False
    return stats.at_chance(float(acc), SPECS[name].num_classes, int(n))


def parse_where(items: list[str], columns: Iterable[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or key not in columns:
            raise SummaryError(f"--where {item}: expected column=value[,value...] with a column of runs.csv, "
                               f"e.g. pooling=max,softpool or dataset=cifar10")
        out[key] = values.split(",")
    return out


def select(runs: pd.DataFrame, where: dict[str, list[str]]) -> pd.DataFrame:
    """The runs whose columns have one of the given values; a SummaryError naming the values a column has when
    none of its runs matches (a typo would otherwise read as "no runs")."""
    for key, values in where.items():
        kept = runs[runs[key].map(_text).isin(values)]
        if kept.empty and len(runs):
            have = sorted(set(runs[key].map(_text)))
            raise SummaryError(f"--where {key}={','.join(values)}: no run has that {key}; values: {', '.join(have)}")
        runs = kept
    return runs


def _text(v: Any) -> str:
    """A cell as a user writes it: 3.0 as 3.0, 64 as 64 (not 64.0), missing as 'none'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v)) if not isinstance(v, bool) else str(v)
    return str(v)


def config_columns(runs: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The settings that vary across the runs (a missing value counts as a value), the seed aside."""
    cols = [c for c in runs.columns if c not in NOT_CONFIG and c not in metrics
            and not c.startswith(("train_", "best_"))]
    return [c for c in cols if runs[c].map(_text).nunique() > 1]


def group_key(runs: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One text key per run from typed columns, a missing value kept distinct from every value. An option's
    setting (``pooling.p``) is named only where it varies among the runs of one option; elsewhere the option's
    name says it all."""
    def informative(c: str) -> bool:
        axis = c.split(".")[0]
        if "." not in c or axis not in runs:
            return True
        return bool((runs.groupby(runs[axis].map(_text))[c].agg(lambda v: v.map(_text).nunique()) > 1).any())

    shown = [c for c in columns if informative(c)]
    if not shown:
        return pd.Series("all runs", index=runs.index)
    return runs[shown].apply(lambda r: " ".join(_label_part(c, v) for c, v in r.items() if _label_part(c, v)), axis=1)


def _label_part(column: str, value: Any) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing and "." in column:  # a hyperparameter the option does not have: nothing to say
        return ""
    if column == "teacher_run_id":
        return "" if missing else f"teacher={value}"
    return f"{column}={_text(value)}"


# ---------------------------------------------------------------- the paired comparison

def method_columns(axis: str, columns: list[str]) -> list[str]:
    """The axis, its own hyperparameters, and for a loss the teacher: what defines a method of that axis."""
    return [c for c in columns if c == axis or c.startswith(axis + ".") or (axis == "loss" and c == "teacher_run_id")]


def mixed_devices(ok: pd.DataFrame) -> list[str]:
    """A warning per group whose seeds ran on different device types or autocast settings (the run id holds both,
    so such runs are different experiments), or on different thread counts: their numbers differ for that alone."""
    where = [c for c in ("device_type", "autocast") if c in ok]
    out = []
    for g, group in ok.groupby("group", sort=False):
        kinds = (
            sorted({"/".join(_text(v) for v in row) for row in group[where].itertuples(index=False)}) if where else []
        )
        if len(kinds) > 1:
            out.append(f"warning: {g} mixes runs on {', '.join(kinds)}; compare runs of one device type")
        threads = sorted({int(t) for t in group.get("threads", pd.Series(dtype=float)).dropna()})
        if len(threads) > 1:  # not part of the id, yet it changes the order of floating-point sums, so the numbers
            out.append(f"warning: {g} mixes runs on {', '.join(map(str, threads))} torch threads; the same run on "
                       "another thread count can differ in the last digits (give threads= to compare like with like)")
    return out
