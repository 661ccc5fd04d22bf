"""Command line: ``python -m secondlook_client [--url URL] [--token TOKEN] COMMAND ...``.

URL and token default to $SECONDLOOK_URL and $SECONDLOOK_TOKEN.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import requests

from secondlook_client.client import RESULT_COLUMNS, ApiError, SecondLookClient


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m secondlook_client", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("SECONDLOOK_URL", "http://127.0.0.1:8000"),
                    help="server address (default $SECONDLOOK_URL or http://127.0.0.1:8000)")
    ap.add_argument("--token", default=os.environ.get("SECONDLOOK_TOKEN", ""),
                    help="API token (default $SECONDLOOK_TOKEN)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("whoami", help="the token's user, roles and clinic")
    up = sub.add_parser("upload", help="upload image files to a lesion")
    up.add_argument("--lesion", type=int, required=True)
    up.add_argument("--kind", choices=["dermoscopic", "clinical"], default="dermoscopic")
    up.add_argument("files", nargs="+", type=Path)
    res = sub.add_parser("results", help="scores of every image of a case (table or CSV)")
    res.add_argument("--case", type=int, required=True)
    res.add_argument("--csv", type=Path, default=None, help="write the rows to this CSV file")
    res.add_argument("--wait", type=float, default=0.0, help="seconds to wait for scoring to finish")
    fh = sub.add_parser("fhir", help="the case as a FHIR R4 Bundle (JSON)")
    fh.add_argument("--case", type=int, required=True)
    fh.add_argument("--out", type=Path, default=None)
    sub.add_parser("queue", help="the review queue (dermatologists)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [p for p in getattr(args, "files", []) if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    try:
        client = SecondLookClient(args.url, args.token)
        return _run(client, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:  # refused, unreachable, timed out: one line, no traceback
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: no answer from {args.url} ({type(exc).__name__}): {reason}", file=sys.stderr)
        return 1


def _run(client: SecondLookClient, args) -> int:
    if args.command == "whoami":
        print(json.dumps(client.me(), indent=2))
    elif args.command == "upload":
        outcome = client.upload(lesion=args.lesion, paths=args.files, kind=args.kind)
        for item in outcome["accepted"]:
            print(f"accepted   {item['name']} -> image {item['image']}")
        for item in outcome["duplicates"]:
            print(f"duplicate  {item['name']} (already image {item['image']})")
        for item in outcome["rejected"]:
            print(f"rejected   {item['name']}: {item['error']}")
        for item in outcome.get("notes", []):
            print(f"note       {item['name']}: {item['note']}")
        if outcome.get("scoring_unavailable"):
            print(outcome["scoring_unavailable"])
        return 0 if outcome["accepted"] or not outcome["rejected"] else 1
    elif args.command == "results":
        rows = client.results(case=args.case, wait=args.wait)
        if args.csv:
            with args.csv.open("w", newline="") as handle:
                # None (no finished score: flagged, assessable, scores) is written as an empty cell
                writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            print(f"{len(rows)} row(s) written to {args.csv}")
        else:
            for row in rows:
                mel = "-" if row["melanoma_probability"] is None else f"{row['melanoma_probability']:.3f}"
                print(f"image {row['image']:>6}  lesion {row['lesion']:>5}  {row['status']:<8}  melanoma {mel:>6}  "
                      f"{'FLAGGED' if row['flagged'] else ''}{'' if row['assessable'] in (True, None) else ' cannot assess'}")
    elif args.command == "fhir":
        text = json.dumps(client.fhir(case=args.case), indent=2)
        if args.out:
            args.out.write_text(text)
            print(f"FHIR Bundle written to {args.out}")
        else:
            print(text)
    elif args.command == "queue":
        for row in client.queue():
            top = row["top_melanoma_probability"]
            score = "      —" if top is None else f"{top:.3f}"
            assess = "  model could not assess" if row.get("cannot_assess") else ""
            print(f"case {row['id']:>6}  {row['patient_identifier']:<16} melanoma {score}{assess}"
                  f"  {'claimed by ' + row['claimed_by'] if row['claimed_by'] else 'unclaimed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
