"""Compare two runs' QIIME 2 outputs (e.g. ``make demo`` before and after a refactoring).

    python scripts/compare_outputs.py DIR_BEFORE DIR_AFTER

For every ``.qza`` and ``.qzv`` in both folders, the files under ``data/`` (what the
artifact holds; its UUID, provenance and timestamps always differ) are compared byte for
byte. What records time (each epoch's ``seconds`` and ``samples_per_second``, each step's
seconds) can only differ between two runs: it is left out of a model's ``config.json`` and
of a training history's table and page; so are the date and the random ids matplotlib
writes into an SVG figure (and a raster inside one is compared by its pixels); ``RANDOM``
lists files that differ between any two runs. Each file that differs in these alone is
said. Exits 1 if anything else differs.
"""
import json
import re
import sys
import zipfile
from pathlib import Path

TIMING_KEYS = ("seconds", "samples_per_second")
#: Files that differ between any two runs on the same inputs: q2-sample-classifier's
#: scatterplot draws a bootstrapped confidence band (seen: two runs on one predictions file).
RANDOM = {("scatterplot.qzv", "predictions.pdf"), ("scatterplot.qzv", "predictions.png")}


def payload(path: Path) -> dict:
    """``{relative path under data/: bytes}`` of an artifact or visualization."""
    with zipfile.ZipFile(path) as archive:
        return {name.split("/data/", 1)[1]: archive.read(name) for name in archive.namelist()
                if "/data/" in name and not name.endswith("/")}


def pixels(encoded: str) -> str:
    """A digest of a base64 PNG's pixels."""
    import base64
    import hashlib
    import io
    from PIL import Image
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    return "pixels:" + hashlib.sha256(image.tobytes() + str(image.size).encode()).hexdigest()


def without_timing(name: str, content: bytes) -> bytes:
    """``content`` with what records time left out (see the module's docstring)."""
    if name.endswith("config.json"):
        config = json.loads(content)
        training = config.get("training", {})
        for row in training.get("history", []):
            for key in TIMING_KEYS:
                row.pop(key, None)
        training["steps"] = [name for name, _ in training.get("steps", [])]
        return json.dumps(config, sort_keys=True).encode()
    if name == "history.tsv":  # each epoch's times are columns
        rows = [line.split(b"\t") for line in content.split(b"\n")]
        drop = {i for i, column in enumerate(rows[0]) if column.decode() in TIMING_KEYS}
        return b"\n".join(b"\t".join(v for i, v in enumerate(row) if i not in drop)
                          for row in rows)
    if name.endswith(".svg"):  # matplotlib writes the date and draws random ids
        text = re.sub(r"<dc:date>[^<]*</dc:date>", "", content.decode())
        ids: dict = {}
        text = re.sub(r"\b(?:[mp]|image)[0-9a-f]{10}\b",
                      lambda m: ids.setdefault(m.group(0), f"id{len(ids)}"), text)
        # an embedded raster (a heatmap) is compared by its pixels: the same pixels were
        # seen encoded into different PNG bytes
        return re.sub(r"base64,([A-Za-z0-9+/=\s]+)", lambda m: pixels(m.group(1)), text).encode()
    if name == "index.html":  # a training history's times per step and per epoch
        text = re.sub(r"Time per step:[^<]*", "", content.decode())
        rows = r"<tr>\s*<t[dh]>(seconds per epoch|training samples per second)</t[dh]>.*?</tr>"
        return re.sub(rows, "", text, flags=re.S).encode()
    return content


def compare(before: Path, after: Path) -> int:
    differences = 0
    names = sorted({p.name for p in before.glob("*.qz[av]")} | {p.name for p in
                                                                 after.glob("*.qz[av]")})
    for name in names:
        if not (before / name).exists() or not (after / name).exists():
            print(f"{name}: only in {'after' if (after / name).exists() else 'before'}")
            differences += 1
            continue
        old, new = payload(before / name), payload(after / name)
        for file in sorted(set(old) | set(new)):
            if file not in old or file not in new:
                print(f"{name}: {file} only in {'after' if file in new else 'before'}")
                differences += 1
            elif old[file] != new[file]:
                if without_timing(file, old[file]) == without_timing(file, new[file]):
                    print(f"{name}: {file} differs only in what changes from run to run")
                elif (name, file) in RANDOM:
                    print(f"{name}: {file} differs (it does between any two runs)")
                else:
                    print(f"{name}: {file} DIFFERS")
                    differences += 1
        print(f"{name}: {len(old)} files compared")
    print(f"{differences} difference(s)" if differences
          else "identical (apart from what changes from run to run)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
