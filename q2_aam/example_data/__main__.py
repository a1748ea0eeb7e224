"""Write a benchmark dataset as QIIME 2 artifacts.

    python -m q2_aam.example_data ecam --output-dir DIR [--split 0]
                                       [--cache-dir DIR] [--force]

Writes into DIR: ``table.qza`` (FeatureTable[Frequency]), ``rep-seqs.qza``
(FeatureData[Sequence], IDs = the sequences), ``tree.qza``
(Phylogeny[Rooted]), ``taxonomy.qza`` (FeatureData[Taxonomy], the DADA2
assignments shipped with the data), ``metadata.tsv`` (QIIME 2 metadata with a ``#q2:types``
row), and for the chosen split ``train-table.qza`` and ``test-table.qza``
(the full table's samples of each side; all features kept, so both sides
share one feature set).  A small ``.q2-aam-example-data.json`` records what
was written; when it matches and every output exists, nothing is redone.
Everything is written in a temporary folder inside DIR and moved into place
only once all of it succeeded.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .mitre import FOLDERS, SDIST_SHA256

OUTPUTS = ("table.qza", "rep-seqs.qza", "tree.qza", "taxonomy.qza", "metadata.tsv",
           "train-table.qza", "test-table.qza")
STAMP = ".q2-aam-example-data.json"
STAMP_VERSION = 2  # 2: taxonomy.qza


def _stamp(name, split):
    return {"stamp_version": STAMP_VERSION, "dataset": name, "split": split,
            "source_sha256": SDIST_SHA256, "outputs": list(OUTPUTS)}


def is_complete(output_dir, name, split):
    output_dir = Path(output_dir)
    if not all((output_dir / f).is_file() for f in OUTPUTS):
        return False
    try:
        stamp = json.loads((output_dir / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp == _stamp(name, split)


def write_metadata(metadata, path):
    """QIIME 2 metadata TSV: ``age_days`` numeric, every other column
    categorical (including ``subject``, even where its IDs look numeric)."""
    import qiime2

    frame = metadata.copy()
    frame.index = frame.index.astype(str)
    frame.index.name = "sample-id"
    for column in frame.columns:
        if column == "age_days":
            frame[column] = frame[column].astype(float)
        else:
            frame[column] = frame[column].astype(object).where(
                frame[column].notna(), None)
            frame[column] = frame[column].map(
                lambda v: v if v is None else str(v))
    md = qiime2.Metadata(frame)
    types = {name: col.type for name, col in md.columns.items()}
    wrong = [c for c, t in types.items()
             if t != ("numeric" if c == "age_days" else "categorical")]
    if wrong:
        raise RuntimeError(f"unexpected metadata column types: {wrong}")
    md.save(str(path))


def write_outputs(dataset, split, directory):
    """Write every output file of ``dataset`` into ``directory``."""
    import qiime2
    import skbio
    from q2_types.feature_data import DNAIterator

    from .splits import split_samples

    directory = Path(directory)
    table = dataset.table
    qiime2.Artifact.import_data("FeatureTable[Frequency]", table).save(
        str(directory / "table.qza"))
    sequences = DNAIterator(
        skbio.DNA(seq, metadata={"id": seq}) for seq in dataset.feature_ids)
    qiime2.Artifact.import_data("FeatureData[Sequence]", sequences).save(
        str(directory / "rep-seqs.qza"))
    qiime2.Artifact.import_data("Phylogeny[Rooted]", dataset.tree).save(
        str(directory / "tree.qza"))
    qiime2.Artifact.import_data("FeatureData[Taxonomy]", dataset.taxonomy).save(
        str(directory / "taxonomy.qza"))
    write_metadata(dataset.metadata, directory / "metadata.tsv")
    train_ids, test_ids = split_samples(dataset.metadata, split)
    for ids, filename in ((train_ids, "train-table.qza"),
                          (test_ids, "test-table.qza")):
        side = table.filter(ids, axis="sample", inplace=False)
        qiime2.Artifact.import_data("FeatureTable[Frequency]", side).save(
            str(directory / filename))
    return train_ids, test_ids


def summary(dataset, split, train_ids, test_ids):
    md = dataset.metadata
    train_subjects = md.loc[train_ids, "subject"].nunique()
    test_subjects = md.loc[test_ids, "subject"].nunique()
    return (f"{dataset.name}: {md.shape[0]} samples, "
            f"{dataset.table.shape[0]} features (ASV sequences), "
            f"{md['subject'].nunique()} subjects; split {split}: "
            f"train {len(train_ids)} samples / {train_subjects} subjects, "
            f"test {len(test_ids)} samples / {test_subjects} subjects")


def run(name, output_dir, split=0, cache_dir=None, force=False,
        out=sys.stdout):
    """Make the outputs; return True if written, False if already there."""
    from .mitre import load_dataset

    output_dir = Path(output_dir)
    if not force and is_complete(output_dir, name, split):
        print(f"{output_dir}: all outputs for {name} split {split} already "
              "exist; nothing to do (use --force to rebuild)", file=out)
        return False
    start = time.monotonic()
    dataset = load_dataset(name, cache_dir=cache_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".tmp-example-data-"))
    try:
        train_ids, test_ids = write_outputs(dataset, split, tmp)
        (tmp / STAMP).write_text(json.dumps(_stamp(name, split), indent=1))
        # Drop the stamp first so an interrupted move is never taken as done.
        (output_dir / STAMP).unlink(missing_ok=True)
        for filename in OUTPUTS + (STAMP,):
            os.replace(tmp / filename, output_dir / filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(summary(dataset, split, train_ids, test_ids), file=out)
    print(f"wrote {', '.join(OUTPUTS)} to {output_dir} "
          f"({time.monotonic() - start:.1f} s)", file=out)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m q2_aam.example_data",
        description="Write a q2-aam benchmark dataset (from the mitre 1.0b1 "
                    "sdist, downloaded and cached on first use) as QIIME 2 "
                    "artifacts.")
    parser.add_argument("dataset", choices=sorted(FOLDERS))
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--split", type=int, default=0,
                        help="subject-grouped split (0-4 in the benchmark; "
                             "default 0)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="download cache (default $Q2_AAM_CACHE or "
                             "~/.cache/q2-aam)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the outputs exist")
    args = parser.parse_args(argv)
    if args.split < 0:
        parser.error("--split must be >= 0")
    run(args.dataset, args.output_dir, split=args.split,
        cache_dir=args.cache_dir, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
