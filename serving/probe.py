"""`python -m serving.probe live|ready`: exits 0 when the server answers 200 on /live or /ping
(a container HEALTHCHECK or Kubernetes exec probe in an image without curl)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

PATHS = {"live": "/live", "ready": "/ping"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.probe")
    parser.add_argument("kind", choices=sorted(PATHS))
    parser.add_argument("--url", default="http://127.0.0.1:8080",
                        help="the inference API (default http://127.0.0.1:8080)")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"),
                        help="the server's key_file.json, read for `ready` when token "
                             "authorization is on (default: ./key_file.json)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    request = urllib.request.Request(args.url.rstrip("/") + PATHS[args.kind])
    key = _inference_key(args.key_file) if args.kind == "ready" else None
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        print(f"{args.kind}: no answer from {args.url}: {e}", file=sys.stderr)
        return 1
    print(f"{args.kind}: {status} {body.decode('utf-8', 'replace').strip()}")
    return 0 if status == 200 else 1


def _inference_key(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["inference"]["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
