"""Write the seed corpora of the atheris harnesses (fuzz/corpus/<harness>/), from real archives
made by torch-model-archiver, real frames made by the IPC encoder and real HTTP bodies.

    python fuzz/make_corpus.py [folder]      # default: fuzz/corpus
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from serving.workers.ipc import Kind, encode

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
HANDLER = "def handle(data, context):\n    return [{'ok': True} for _ in data or []]\n"


def archives(out: Path) -> None:
    """Real .mar (zip) and .tar.gz archives, and the shapes the reader must refuse."""
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "handler.py").write_text(HANDLER)
        (work / "model-config.yaml").write_text("batchSize: 2\n")
        for fmt, suffix in (("default", ".mar"), ("tgz", ".tar.gz")):
            subprocess.run([str(archiver), "--model-name", "seed", "--version", "1.0",
                            "--handler", str(work / "handler.py"), "--config-file",
                            str(work / "model-config.yaml"), "--export-path", str(work),
                            "--archive-format", fmt, "-f"], check=True, cwd=work,
                           capture_output=True)
            shutil.copy(work / f"seed{suffix}", out / f"real{suffix}")
    manifest = json.dumps({"runtime": "python", "model": {"modelName": "m", "handler": "h.py"}})
    zips = {"zip-escape.mar": [("../escape.txt", b"x")],
            "zip-absolute.mar": [("/tmp/abs.txt", b"x")],
            "zip-plain.mar": [("MAR-INF/MANIFEST.json", manifest.encode()), ("h.py", b"")]}
    for name, entries in zips.items():
        with zipfile.ZipFile(out / name, "w") as zf:
            for entry, content in entries:
                zf.writestr(entry, content)
    with zipfile.ZipFile(out / "zip-symlink.mar", "w") as zf:
        link = zipfile.ZipInfo("up")
        link.external_attr = (0o120777 << 16)  # a symlink, as `zip --symlinks` stores it
        zf.writestr(link, "../..")
        zf.writestr("up/x", b"x")
    members = [("sym", tarfile.SYMTYPE, "../outside"), ("hard", tarfile.LNKTYPE, "../x"),
               ("fifo", tarfile.FIFOTYPE, ""), ("../dotdot", tarfile.REGTYPE, "")]
    for name, kind, target in members:
        with tarfile.open(out / f"tar-{name.strip('./')}.tar.gz", "w:gz") as tf:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)


def frames(out: Path) -> None:
    """Every message kind as the encoder writes it, the first byte being the chunk size."""
    for kind in Kind:
        blobs = [b"abc", b""] if kind in (Kind.PREDICT, Kind.RESULT, Kind.STREAM) else []
        meta = {"ids": ["r1", "r2"], "ok": True, "error": {"code": 503, "message": "m"}}
        wire = b"".join(bytes(b) for b in encode(kind, meta, blobs))
        (out / f"{kind.name.lower()}.bin").write_bytes(bytes([7]) + wire)


def bodies(out: Path) -> None:
    """Real bodies in bodies_fuzz.layout: type, suffix, limit, declared, chunk size, body."""
    boundary = "XyZ"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; "
                 f"filename=\"a.bin\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n"
                 f"--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n"
                 f"hello\r\n--{boundary}--\r\n").encode("latin-1")
    seeds = {"multipart": (0, boundary, multipart), "urlencoded": (1, "", b"a=1&b=%ff&c"),
             "json": (2, "", b'{"instances": [[1, 2], {"x": null}], "text": "\\u00e9"}'),
             "text": (3, "utf-8", "caf\u00e9".encode()), "octets": (4, "", bytes(range(64))),
             "multipart-quoted": (5, boundary + '"', multipart)}
    for name, (kind, suffix, body) in seeds.items():
        head = bytes([kind, len(suffix)]) + suffix.encode() + (4096).to_bytes(2, "big")
        (out / f"{name}.bin").write_bytes(head + bytes([0, 100]) + body)


def oip(out: Path) -> None:
    """OIP requests in oip_fuzz.layout: metadata choice, header length, header, binary."""
    import json

    import numpy as np

    fp32 = np.arange(4, dtype="<f4").tobytes()
    text = (5).to_bytes(4, "little") + b"hello"
    seeds = {
        "json": (0, {"id": "a", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64",
                                            "data": [[1, 2], [3, 4]]}]}, b""),
        "binary": (2, {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 16}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, fp32),
        "bytes": (3, {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": 9}}],
                      "parameters": {"binary_data_output": True}}, text),
        "mixed": (1, {"inputs": [{"name": "b", "shape": [3], "datatype": "BOOL",
                                  "data": [True, False, True]},
                                 {"name": "h", "shape": [1], "datatype": "BF16",
                                  "parameters": {"binary_data_size": 2}}]}, b"\x80\x3f"),
    }
    for name, (choice, header, binary) in seeds.items():
        head = json.dumps(header).encode()
        (out / f"{name}.bin").write_bytes(bytes([choice]) + len(head).to_bytes(2, "big")
                                          + head + binary)


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    for name, make in (("archive", archives), ("ipc", frames), ("bodies", bodies),
                       ("oip", oip)):
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        make(folder)
        print(f"{folder}: {len(list(folder.iterdir()))} seeds")


if __name__ == "__main__":
    main()
