"""Compare two ``ct-triage analyze`` result folders, apart from UIDs, dates and times.

    .venv/bin/python scripts/compare_outputs.py BEFORE AFTER [--all]

Compares ``report.json``, ``seg.dcm`` and ``sr.dcm`` of two runs of the same input (with
``--all``: every ``.dcm`` under the folders too, matched by relative path: ``overlay/``,
``summary.dcm``, ``sr-outlines.dcm``). The issue-20 byte-identity check: a refactoring must
leave these identical apart from what each run makes anew.

* **UIDs** made by a run (a UID of one folder that the other folder never holds) are replaced
  by their order of first appearance, counted over all the files of a folder in the same
  order; so the new SEG's SOP Instance UID may differ between the runs, but the SR must
  reference it at the same place in both. UIDs both folders hold (the source study, the SOP
  classes, the coding schemes) are compared as they are.
* **Dates and times** are ignored: DICOM elements of VR ``DA``, ``TM``, ``DT``; in
  ``report.json`` the values of ``timings_s`` and of keys ending in ``_at`` or holding
  ``time`` or ``date``. So are group lengths (``(0002,0000)``), which follow the lengths of
  the new UIDs.
* **Everything else** must be equal: every DICOM element (file meta, nested sequences and
  pixel data included) and ``report.json`` as text once normalised (key order and the
  ``repr`` of every float included).

Exit 0 when the folders agree, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

REPORT = "report.json"
IGNORED = "<date/time>"
TIME_VRS = frozenset({"DA", "TM", "DT"})


def _is_time_key(key: str) -> bool:
    k = key.lower()
    return k == "timings_s" or k.endswith("_at") or "time" in k or "date" in k


def _is_uid_key(key: str) -> bool:
    return "uid" in key.lower()


def _uid_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [str(v) for v in value if v]
    if isinstance(value, dict):
        return [u for v in value.values() for u in _uid_values(v)]
    return []


def _json_uids(value: Any, key: str = "") -> Iterator[str]:
    if key and _is_uid_key(key):
        yield from _uid_values(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _json_uids(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _json_uids(v, key)


def _dicom_uids(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _dicom_uids(item)
        elif elem.VR == "UI":
            yield from _uid_values(elem.value)


class Folder:
    """One result folder, read once, with its run-made UIDs numbered in order of appearance."""

    def __init__(self, root: Path, dicom_names: list[str]) -> None:
        self.root = root
        self.report: Any = json.loads((root / REPORT).read_text(encoding="utf-8"))
        self.dicom = {n: pydicom.dcmread(root / n) for n in dicom_names if (root / n).is_file()}
        self.labels: dict[str, str] = {}
        self.own: set[str] = set()

    def uids(self) -> set[str]:
        found = set(_json_uids(self.report))
        for ds in self.dicom.values():
            found |= set(_dicom_uids(ds.file_meta)) | set(_dicom_uids(ds))
        return found

    def uid(self, value: str) -> str:
        if value not in self.own:
            return value
        return self.labels.setdefault(value, f"<new UID #{len(self.labels) + 1}>")

    def normal_json(self, value: Any, key: str = "") -> Any:
        if key and _is_time_key(key):
            return IGNORED
        if key and _is_uid_key(key):
            if isinstance(value, str):
                return self.uid(value)
            if isinstance(value, list):
                return [self.uid(v) if isinstance(v, str) else v for v in value]
        if isinstance(value, dict):
            return {k: self.normal_json(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.normal_json(v, key) for v in value]
        return value

    def normal_dicom(self, ds: Dataset, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for elem in ds:
            path = f"{prefix}{elem.tag}"
            if elem.VR == "SQ":
                yield path, f"sequence of {len(elem.value)}"
                for i, item in enumerate(elem.value):
                    yield from self.normal_dicom(item, f"{path}[{i}].")
            elif elem.VR in TIME_VRS or elem.tag.element == 0x0000:  # 0000: group length
                yield path, IGNORED
            elif elem.VR == "UI":
                yield path, [self.uid(u) for u in _uid_values(elem.value)]
            else:
                yield path, elem.value


def _walk(x: Any, y: Any, path: str, out: list[str]) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        if list(x) != list(y) and set(x) == set(y):
            out.append(f"{REPORT} {path or '.'}: key order {list(x)} != {list(y)}")
        for k in [*x, *(k for k in y if k not in x)]:
            _walk(x.get(k, "<absent>"), y.get(k, "<absent>"), f"{path}.{k}", out)
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _walk(u, v, f"{path}[{i}]", out)
    elif json.dumps(x) != json.dumps(y):
        out.append(f"{REPORT} {path or '.'}: {json.dumps(x)[:80]} != {json.dumps(y)[:80]}")


def compare_folders(before: Path, after: Path, *, every_dicom: bool = False) -> list[str]:
    """Every difference between two result folders (empty when they agree)."""
    names = ["seg.dcm", "sr.dcm"]
    if every_dicom:
        names = sorted(
            {p.relative_to(before).as_posix() for p in before.rglob("*.dcm")}
            | {p.relative_to(after).as_posix() for p in after.rglob("*.dcm")}
        )
    out = [
        f"{name}: only in {'AFTER' if (after / name).is_file() else 'BEFORE'}"
        for name in [REPORT, *names]
        if (before / name).is_file() != (after / name).is_file()
    ]
    if not (before / REPORT).is_file() or not (after / REPORT).is_file():
        return out
    a, b = Folder(before, names), Folder(after, names)
    ua, ub = a.uids(), b.uids()
    a.own, b.own = ua - ub, ub - ua

    ra, rb = a.normal_json(a.report), b.normal_json(b.report)
    if json.dumps(ra) != json.dumps(rb):
        _walk(ra, rb, "", out)
        if not out:
            out.append(f"{REPORT}: differs as text after normalisation")
    for name in names:
        if name not in a.dicom or name not in b.dicom:
            continue
        for part in ("file_meta", "data set"):
            xa = a.dicom[name].file_meta if part == "file_meta" else a.dicom[name]
            xb = b.dicom[name].file_meta if part == "file_meta" else b.dicom[name]
            ia, ib = dict(a.normal_dicom(xa)), dict(b.normal_dicom(xb))
            if list(ia) != list(ib) and set(ia) == set(ib):
                out.append(f"{name} {part}: element order differs")
            for path in [*ia, *(p for p in ib if p not in ia)]:
                va, vb = ia.get(path, "<absent>"), ib.get(path, "<absent>")
                if va != vb:
                    out.append(f"{name} {part} {path}: {repr(va)[:70]} != {repr(vb)[:70]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("before", type=Path, help="a result folder of ct-triage analyze")
    parser.add_argument("after", type=Path, help="another result folder of the same input")
    parser.add_argument(
        "--all", action="store_true", help="every .dcm too (overlay, summary, outlines)"
    )
    args = parser.parse_args(argv)
    diffs = compare_folders(args.before, args.after, every_dicom=args.all)
    checked = "report.json and every .dcm" if args.all else "report.json, seg.dcm and sr.dcm"
    for line in diffs:
        print(line)
    if diffs:
        print(f"DIFFERENT: {len(diffs)} difference(s) in {checked} (UIDs, dates, times aside)")
        return 1
    print(f"IDENTICAL: {checked}, apart from UIDs, dates and times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
