"""The runtime dependencies of chest-ct-triage, and their pins (``constraints.txt``).

``constraints.txt`` beside this file pins every runtime dependency (the four distributions'
``dependencies`` with the ``triton`` and ``postgres`` extras, and everything those pull in;
no torch, no test tools). The container images and ``scripts/setup-venv.sh`` both install
with ``-c requirements/constraints.txt``, so the tests run the versions the images ship.

    python3 requirements/runtime.py deps [--gpu]   # the requirements to install, one per line
    .venv/bin/python requirements/runtime.py freeze  # rewrite the pins from the current venv

To add or change a pin by hand, edit the line (``name==version``) or add one under the
hand-added marker; ``freeze`` keeps that section. ``deps`` needs only the standard library
(it runs in the image before anything is installed).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONSTRAINTS = HERE / "constraints.txt"
#: (folder, extras) installed into the images.
DISTRIBUTIONS = (
    ("kernels", ()),
    ("models", ("triton",)),
    ("dicom_bridge", ()),
    ("server", ("postgres",)),
)
HAND_MARKER = "# -- hand-added pins (kept by `runtime.py freeze`) --"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _name(requirement: str) -> str:
    m = _NAME.match(requirement)
    if m is None:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def direct_requirements(*, gpu: bool = False, build: bool = True) -> list[str]:
    """The four distributions' own requirements (``ct-triage-*`` left out) and, with
    ``build``, their build backend (the images build them without build isolation), sorted."""
    reqs: set[str] = set()
    for folder, extras in DISTRIBUTIONS:
        pyproject = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
        project = pyproject["project"]
        listed = list(project.get("dependencies", []))
        if build:
            listed += pyproject.get("build-system", {}).get("requires", [])
        for extra in extras:
            listed += project.get("optional-dependencies", {})[extra]
        for req in listed:
            name = _name(req)
            if name.startswith("ct-triage-"):
                continue
            if gpu and name == "onnxruntime":
                req = "onnxruntime-gpu"  # the same `onnxruntime` module, with CUDA/TensorRT
            reqs.add(req)
    return sorted(reqs, key=_name)


def freeze() -> str:
    """``constraints.txt`` text: every runtime dependency at its version in this venv.

    Starts from the pyproject files (not the installed metadata, which an editable install
    leaves stale) and follows the installed packages' requirements.
    """
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {k: str(v) for k, v in default_environment().items()}
    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in direct_requirements(build=False)]
    done: set[tuple[str, frozenset[str]]] = set()
    missing: list[str] = []
    while todo:
        req = todo.pop()
        key = (_name(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(req.name)
            continue
        pins[key[0]] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in wanted):
                todo.append(sub)
    if missing:
        raise SystemExit(
            f"not installed here: {', '.join(sorted(set(missing)))} "
            "(run scripts/setup-venv.sh --dev, then freeze again)"
        )
    hand = ""
    if CONSTRAINTS.is_file():
        _, sep, hand = CONSTRAINTS.read_text().partition(HAND_MARKER)
        hand = hand.strip("\n") if sep else ""
    hand_names = {_name(ln) for ln in hand.splitlines() if ln and not ln.startswith("#")}
    lines = [
        "# Pins of every runtime dependency of chest-ct-triage (images and tests install with",
        "# -c requirements/constraints.txt). Generated from the dev venv by",
        "#   .venv/bin/python requirements/runtime.py freeze",
        "# Change a pin by editing its line; pins the venv does not have go below the marker.",
        *(f"{n}=={v}" for n, v in sorted(pins.items()) if n not in hand_names),
        "",
        HAND_MARKER,
        hand,
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deps", help="print the direct runtime requirements")
    d.add_argument("--gpu", action="store_true", help="onnxruntime-gpu instead of onnxruntime")
    sub.add_parser("freeze", help="rewrite constraints.txt from the current environment")
    args = p.parse_args(argv)
    if args.cmd == "deps":
        print("\n".join(direct_requirements(gpu=args.gpu)))
    else:
        CONSTRAINTS.write_text(freeze())
        print(f"wrote {CONSTRAINTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
