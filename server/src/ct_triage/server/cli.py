"""``ct-triage``: the command line. It parses arguments, configures logging and wires steps;
it holds no analysis logic of its own.

Exit codes: 0 success; 2 input declined or invalid (reason on stderr); 1 any other failure.
Every deliberate failure (:class:`~ct_triage.models.errors.TriageError`, e.g. an output
folder that cannot be written or a full disk) is one line on stderr, ``ct-triage: error:
...``; only an unexpected internal error logs a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from ct_triage.models.errors import TriageError
from ct_triage.server.logconfig import configure_logging, job_context
from ct_triage.server.settings import Settings, env_name

logger = logging.getLogger("ct_triage.server.cli")


def _cmd_phantom(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server import commands

    commands.phantom(Path(args.out), seed=args.seed, n_slices=args.slices, severity=args.severity)
    print(f"Synthetic chest CT written to {Path(args.out) / 'dicom'} (truth: truth.npz)")
    return 0


def _cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server import commands

    result = commands.analyze(Path(args.input), Path(args.out), settings)
    print(commands.summary_text(result))
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server import commands

    result = commands.demo(Path(args.out), settings, seed=args.seed)
    print(commands.summary_text(result))
    return 0


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server import commands

    print(commands.evaluate(Path(args.data), Path(args.json), settings))
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from ct_triage.server import commands

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        commands.serve(settings, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server.startup import probe

    healthy, line = probe(settings, timeout_s=args.timeout)
    print(line)
    return 0 if healthy else 1


def _cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server import commands

    outcomes = commands.pull(settings, study_uid=args.study, accession=args.accession)
    worst = 0
    for o in outcomes:
        print(f"study {o.study_uid}: {o.status} ({o.detail})")
        if o.status == "declined":
            worst = max(worst, 2)
        elif o.status == "failed":
            worst = 1
    if not outcomes:
        print("nothing to analyse (no complete CT series retrieved)")
    return worst


def _cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server.batch import cmd_batch

    return cmd_batch(args, settings)


def _cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server.api.auth import cmd_token

    return cmd_token(args, settings)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ct_triage.server.jobs.worker import cmd_worker

    return cmd_worker(args, settings)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ct-triage",
        description="Chest CT triage: lung and pneumonia-lesion quantification. "
        "AI triage aid, NOT for primary diagnosis.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="analyse the embedded sample study (no PACS, no GPU needed)")
    d.add_argument("--out", default="demo-out", help="folder for the sample study and results")
    d.add_argument("--seed", type=int, default=7, help="seed of the synthetic sample study")
    d.set_defaults(func=_cmd_demo)

    ph = sub.add_parser("phantom", help="write a synthetic chest CT series with exact truth")
    ph.add_argument("out", help="output folder (DICOM under OUT/dicom, truth in OUT/truth.npz)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--slices", type=int, default=None, help="number of slices (60-400)")
    ph.add_argument("--severity", choices=["none", "mild", "moderate", "severe"], default=None)
    ph.set_defaults(func=_cmd_phantom)

    a = sub.add_parser("analyze", help="analyse a study: folder of DICOM files or a zip")
    a.add_argument("input", help="folder (any depth) or .zip of DICOM files")
    a.add_argument("--out", required=True, help="result folder (complete results or none)")
    a.set_defaults(func=_cmd_analyze)

    e = sub.add_parser("evaluate", help="score the model on a folder of .npz cases")
    e.add_argument("data", help="folder of .npz cases")
    e.add_argument("--json", required=True, help="where to write the metrics JSON")
    e.set_defaults(func=_cmd_evaluate)
    sv = sub.add_parser(
        "serve", help="run the DICOM listener, workers, delivery and poller (CT_TRIAGE_* settings)"
    )
    sv.set_defaults(func=_cmd_serve)

    he = sub.add_parser(
        "health",
        help="ask the local server's /healthz on the configured port: exit 0 healthy, "
        "1 degraded or not answering (the container health check)",
    )
    he.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    he.set_defaults(func=_cmd_health)

    pl = sub.add_parser("pull", help="retrieve one study from the PACS, analyse it, deliver")
    who = pl.add_mutually_exclusive_group(required=True)
    who.add_argument("--study", help="StudyInstanceUID")
    who.add_argument("--accession", help="AccessionNumber")
    pl.set_defaults(func=_cmd_pull)

    from ct_triage.server.batch import add_batch_arguments
    from ct_triage.server.jobs.worker import add_worker_arguments

    b = sub.add_parser("batch", help="screen many studies: submit, analyse, follow, write a CSV")
    add_batch_arguments(b)
    b.set_defaults(func=_cmd_batch)

    w = sub.add_parser("worker", help="run job workers and delivery until SIGTERM")
    add_worker_arguments(w)
    w.set_defaults(func=_cmd_worker)

    from ct_triage.server.api.auth import add_token_parser

    add_token_parser(sub)
    sub.choices["token"].set_defaults(func=_cmd_token)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{env_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        print(f"ct-triage: configuration error: {problems}", file=sys.stderr)
        return 1
    # `serve` prints nothing else: its log (JSON in the images) goes to stdout, where
    # container runtimes and log shippers expect it.
    configure_logging(
        level=logging.DEBUG if args.verbose else logging.INFO,
        fmt=settings.log_format,
        stream=sys.stdout if args.command == "serve" else None,
    )
    if settings.malloc_tuning:
        from ct_triage.server.tuning import tune_allocator

        tune_allocator()
    job = uuid.uuid4().hex[:12]
    with job_context(job):
        try:
            if settings.extra_ca_certs is not None and args.command != "health":
                from ct_triage.server.startup import install_extra_ca

                install_extra_ca(settings.extra_ca_certs)
            rc: int = args.func(args, settings)
        except TriageError as exc:
            # Logged once, here, at the boundary.
            logger.debug("command failed", exc_info=True)
            kind = "declined" if exc.exit_code == 2 else "error"
            print(f"ct-triage: {kind}: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("ct-triage: interrupted", file=sys.stderr)
            return 130
        except Exception:
            logger.exception("unexpected failure")
            print("ct-triage: internal error (see the log above)", file=sys.stderr)
            return 1
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
