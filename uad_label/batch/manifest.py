"""Batch input: a folder (cases found by `uad_label.cases.find_cases`) or a manifest listing one case per row,
so an archive is listed once, not walked by every worker.

A manifest is a CSV (or Parquet, read with pyarrow when it is installed) with a column `id` (or `case`) and one
column per modality, named as `uad_label.cases` names modalities (FLAIR, T1, T1POST, T2, GT; `flair`, `t1w`
... are accepted). Paths are absolute or relative to the manifest's folder; an empty cell means the case lacks
that modality.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..cases import Case, find_cases, modality_of_name
from ..errors import InputError

MANIFEST_SUFFIXES = (".csv", ".parquet")
ID_COLUMNS = ("id", "case", "case_id")


def _rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"manifest: reading {path.name} needs pyarrow (pip install pyarrow); "
                         "or write the manifest as CSV") from None
    return pq.read_table(path).to_pylist()


def read_manifest(path: str | Path) -> list[Case]:
    """The cases of a CSV / Parquet manifest, in its row order.

    Raises:
        InputError: no id column, a column that names no modality, a row without an id or image, a
            duplicate id, or a path that does not exist (row and column named).
    """
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise InputError(f"manifest: {path} has no rows; expected one case per row (id, FLAIR, T1, T2 ...)")
    columns = list(rows[0])
    id_col = next((c for c in columns if c.strip().lower() in ID_COLUMNS), None)
    if id_col is None:
        raise InputError(f"manifest: expected a column named one of {list(ID_COLUMNS)}, received {columns}")
    modality = {}
    for c in columns:
        if c == id_col:
            continue
        m = modality_of_name(c.strip())
        if m is None:
            raise InputError(f"manifest: column {c!r} names no modality; expected FLAIR, T1, T1POST, T2 or GT")
        modality[c] = m
    cases, seen = [], set()
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        case_id = str(row.get(id_col) or "").strip()
        if not case_id:
            raise InputError(f"manifest: row {n} has no {id_col}")
        if case_id in seen:
            raise InputError(f"manifest: id {case_id!r} appears twice (row {n})")
        seen.add(case_id)
        images, gt = {}, None
        for c, m in modality.items():
            value = str(row.get(c) or "").strip()
            if not value:
                continue
            p = Path(value) if Path(value).is_absolute() else path.parent / value
            if not p.exists():
                raise InputError(f"manifest: row {n} ({case_id}), column {c}: {p} does not exist")
            if m == "GT":
                gt = p
            else:
                images[m] = p
        if not images:
            raise InputError(f"manifest: row {n} ({case_id}) lists no image")
        cases.append(Case(case_id, images, gt))
    return cases


def list_cases(source: str | Path) -> list[Case]:
    """Cases of a manifest file (.csv / .parquet) or of a folder (`find_cases`)."""
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() not in MANIFEST_SUFFIXES:
            raise InputError(f"input: expected a folder of cases or a manifest ({', '.join(MANIFEST_SUFFIXES)}), "
                             f"received the file {p}")
        return read_manifest(p)
    return find_cases(p)
