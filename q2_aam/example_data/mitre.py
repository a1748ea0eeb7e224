"""Benchmark datasets from the ``mitre==1.0b1`` source distribution.

The sdist (GPLv3) ships re-processed public 16S studies whose feature IDs are
the ASV sequences.  Nothing from it is committed to this project: it is
downloaded from PyPI with pip into a local cache, its sha256 is checked, and
only the two benchmark folders are extracted.

``load_dataset`` applies the benchmark protocol of ``design/data.md``:

* ecam (folder ``bokulich``): only the samples listed in
  ``sample_metadata.csv``; these are the infant samples (the table also holds
  ``.r`` technical replicates and ``.M`` maternal samples, which the metadata
  leaves out: this is checked).
* karelia: every sample of the table with a metadata row.
* Then drop samples with fewer than 1,000 reads, then features absent from all
  remaining samples.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import biom
import numpy as np
import pandas as pd
import scipy.sparse

from ..core.bundle import sha256_of

SDIST_VERSION = "1.0b1"
SDIST_NAME = f"mitre-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = (
    "358fbd057f95068b2f6372af424a71fee16d6a5eb780201de6958bc2ec201dcf")
SDIST_ROOT = f"mitre-{SDIST_VERSION}"
EXAMPLE_DATA = PurePosixPath(SDIST_ROOT, "mitre", "example_data")

#: benchmark name -> folder inside ``mitre/example_data``
FOLDERS = {"ecam": "bokulich", "karelia": "karelia"}

#: benchmark name -> column holding the subject ID in ``subject_data.csv``
SUBJECT_ID_COLUMNS = {"ecam": "host_subject_id", "karelia": "subjectID"}

#: benchmark name -> categorical per-subject columns kept in the metadata
CATEGORICAL_COLUMNS = {
    "ecam": ["delivery", "sex", "diet", "mom_prenatal_abx"],
    "karelia": ["country", "delivery", "gender", "abx_first_year"],
}

MIN_READS = 1000

#: benchmark name -> (samples, features) after the protocol's filtering
EXPECTED_SHAPES = {"ecam": (897, 3155), "karelia": (1761, 4440)}

_PIP_CONSTRAINT = "setuptools<70\n"


class ChecksumError(RuntimeError):
    """The downloaded or cached sdist does not have the expected sha256."""


class DataError(RuntimeError):
    """The extracted files do not look as the benchmark protocol expects."""


def _log(message):
    print(f"[q2-aam example data] {message}", file=sys.stderr, flush=True)


def default_cache_dir():
    """``$Q2_AAM_CACHE`` if set, else ``~/.cache/q2-aam``."""
    env = os.environ.get("Q2_AAM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "q2-aam"


def _resolve_cache(cache_dir):
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def verify_sha256(path, expected=SDIST_SHA256):
    """Raise :class:`ChecksumError` unless ``path`` has digest ``expected``."""
    found = sha256_of(path)
    if found != expected:
        raise ChecksumError(
            f"sha256 mismatch for {path}: expected {expected}, found {found}. "
            "Refusing to use this file.")
    return found


def _pip_python():
    # Debian's pip (system python) builds the sdist's metadata with the
    # system setuptools, which still has pkg_resources; fall back to ours.
    system = Path("/usr/bin/python3")
    return str(system) if system.exists() else sys.executable


def _pip_download(dest_dir):
    """Download the sdist into ``dest_dir`` with pip; return the file path."""
    dest_dir = Path(dest_dir)
    constraint = dest_dir / "constraints.txt"
    constraint.write_text(_PIP_CONSTRAINT)
    download_dir = dest_dir / "download"
    cmd = [_pip_python(), "-m", "pip", "download", "--no-deps",
           "--no-binary", "mitre", f"mitre=={SDIST_VERSION}",
           "-d", str(download_dir)]
    env = dict(os.environ, PIP_CONSTRAINT=str(constraint),
               PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    target = download_dir / SDIST_NAME
    if proc.returncode != 0 or not target.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise RuntimeError(
            f"pip could not download mitre=={SDIST_VERSION} "
            f"(exit status {proc.returncode}); command: {' '.join(cmd)}\n"
            f"{tail}")
    return target


def fetch_sdist(cache_dir=None, downloader=None):
    """Return the path of the verified ``mitre-1.0b1.tar.gz`` in the cache.

    A cached file with the wrong digest is not trusted: it is downloaded
    again.  A download with the wrong digest raises :class:`ChecksumError` and
    leaves nothing in the cache.  ``downloader(tmpdir) -> path`` replaces the
    pip download (for tests).
    """
    cache = _resolve_cache(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / SDIST_NAME
    if target.is_file():
        found = sha256_of(target)
        if found == SDIST_SHA256:
            return target
        _log(f"cached {target} has sha256 {found}, expected {SDIST_SHA256}; "
             "downloading it again")
    downloader = downloader or _pip_download
    _log(f"downloading {SDIST_NAME} from PyPI with pip into {cache} ...")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        path = Path(downloader(Path(tmp)))
        verify_sha256(path)
        # Same file system as the cache: the rename is atomic.
        os.replace(path, target)
    _log(f"downloaded and verified {SDIST_NAME} "
         f"({time.monotonic() - start:.1f} s)")
    return target


def _example_dir(cache):
    return cache.joinpath(*EXAMPLE_DATA.parts)


def _is_complete(example_dir):
    return all((example_dir / folder / "abundance.csv").is_file()
               for folder in FOLDERS.values())


def _extract(tarball, cache):
    """Extract the benchmark folders of ``tarball`` into ``cache``."""
    prefixes = [EXAMPLE_DATA / folder for folder in FOLDERS.values()]
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    try:
        n_files = 0
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if not any(name == p or p in name.parents for p in prefixes):
                    continue
                if name.is_absolute() or ".." in name.parts:
                    raise DataError(f"unsafe path in {tarball}: {member.name}")
                dest = tmp.joinpath(*name.parts)
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, \
                            open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    n_files += 1
                # links and special files are not needed and are skipped
        if not _is_complete(_example_dir(tmp)):
            raise DataError(f"{tarball} lacks the expected example data")
        final = cache / SDIST_ROOT
        if final.exists():
            # Only a complete tree is ever renamed into place, so an existing
            # one that is incomplete was damaged by hand: replace it.
            shutil.rmtree(final)
        try:
            os.rename(tmp / SDIST_ROOT, final)
        except OSError:
            # Another process finished first.
            if not _is_complete(_example_dir(cache)):
                raise
        return n_files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_mitre(cache_dir=None, downloader=None):
    """Download (once), verify and extract the benchmark data.

    Returns the ``.../mitre-1.0b1/mitre/example_data`` directory, which holds
    the ``bokulich`` (ecam) and ``karelia`` folders.
    """
    cache = _resolve_cache(cache_dir)
    example_dir = _example_dir(cache)
    if _is_complete(example_dir):
        return example_dir
    tarball = fetch_sdist(cache, downloader=downloader)
    verify_sha256(tarball)
    _log(f"extracting {', '.join(FOLDERS.values())} into {cache / SDIST_ROOT}")
    n_files = _extract(tarball, cache)
    _log(f"extracted {n_files} files")
    return example_dir


# --------------------------------------------------------------------------
# Loading


@dataclass
class Dataset:
    """One benchmark dataset after the protocol's filtering.

    ``table``: biom.Table, observations are the ASV sequences (uppercase, in
    ``abundance.csv`` order), samples the sample IDs (str, sorted).
    ``metadata``: DataFrame indexed by ``sample-id`` in the table's order,
    with ``age_days`` (float), ``subject`` (str) and the categorical columns.
    ``tree``: rooted skbio.TreeNode whose tips are exactly the table's
    feature IDs.
    ``info``: counts recorded while loading (what was dropped, placements).
    ``taxonomy``: see the field.
    """

    name: str
    table: biom.Table
    metadata: pd.DataFrame
    tree: object
    info: dict = field(default_factory=dict)
    #: ``Taxon`` per feature ID (QIIME 2's FeatureData[Taxonomy] layout), from the DADA2
    #: assignments the source ships in ``dada2_placements.csv``.
    taxonomy: pd.DataFrame | None = None

    @property
    def sample_ids(self):
        return list(self.table.ids(axis="sample"))

    @property
    def feature_ids(self):
        return list(self.table.ids(axis="observation"))

    @property
    def categorical_columns(self):
        return list(CATEGORICAL_COLUMNS[self.name])


def read_abundance(path):
    """``abundance.csv`` as a samples x features int64 DataFrame (str IDs)."""
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    features = [h.strip().upper() for h in header[1:]]
    frame = pd.read_csv(path, header=0, index_col=0, converters={0: str})
    if frame.shape[1] != len(features):
        raise DataError(f"{path}: header and rows disagree")
    frame.columns = features
    frame.index = frame.index.astype(str)
    frame.index.name = None
    if not frame.columns.is_unique:
        raise DataError(f"{path}: repeated feature sequences")
    if not frame.index.is_unique:
        raise DataError(f"{path}: repeated sample IDs")
    if not all(np.issubdtype(t, np.integer) for t in frame.dtypes.unique()):
        raise DataError(f"{path}: counts are not all integers")
    values = frame.to_numpy(dtype=np.int64)
    if (values < 0).any():
        raise DataError(f"{path}: negative counts")
    return pd.DataFrame(values, index=frame.index, columns=frame.columns)


def read_sample_metadata(path):
    """``sample_metadata.csv`` (no header: sample, subject, day) by sample ID.

    Rows without a sample ID are dropped; repeated rows must agree.
    Returns (DataFrame with columns subject, age_days; number of rows dropped
    for lacking an ID; number of exact duplicate rows dropped).
    """
    frame = pd.read_csv(path, header=None, dtype=str,
                        names=["sample", "subject", "age_days"])
    for col in frame.columns:
        frame[col] = frame[col].str.strip()
    no_id = frame["sample"].isna() | (frame["sample"] == "")
    frame = frame.loc[~no_id]
    dedup = frame.drop_duplicates()
    if not dedup["sample"].is_unique:
        conflicting = dedup.loc[dedup["sample"].duplicated(), "sample"]
        raise DataError(f"{path}: conflicting rows for samples "
                        f"{sorted(conflicting)[:5]}")
    out = dedup.set_index("sample")
    out.index.name = None
    out["age_days"] = out["age_days"].astype(float)
    return out, int(no_id.sum()), len(frame) - len(dedup)


#: Ranks of ``dada2_placements.csv`` and their QIIME 2 (Greengenes-style) prefixes.
RANKS = (("Kingdom", "k"), ("Phylum", "p"), ("Class", "c"), ("Order", "o"),
         ("Family", "f"), ("Genus", "g"), ("Species", "s"))


def read_taxonomy(path, feature_ids):
    """DADA2's taxonomy in ``dada2_placements.csv`` (one row per ASV sequence) as a
    DataFrame with a ``Taxon`` column ('k__Bacteria; p__Firmicutes; ...', down to the
    deepest assigned rank) indexed by ``Feature ID``, for ``feature_ids`` in order."""
    frame = pd.read_csv(path, index_col=0, dtype=str)
    frame.index = frame.index.str.upper()
    missing = [f for f in feature_ids if f not in frame.index]
    if missing:
        raise DataError(f"{path}: {len(missing)} ASVs have no taxonomy row")
    taxa = []
    for _, row in frame.loc[list(feature_ids)].iterrows():
        parts = []
        for rank, prefix in RANKS:
            value = row.get(rank)
            if not isinstance(value, str) or not value or value == "NA":
                break
            parts.append(f"{prefix}__{value}")
        taxa.append("; ".join(parts) or "Unassigned")
    return pd.DataFrame({"Taxon": taxa}, index=pd.Index(list(feature_ids), name="Feature ID"))


def read_fasta(path):
    """``sequence_key.fa`` as {name: uppercase sequence} (the whole header line is the
    name, read with scikit-bio's FASTA reader)."""
    import skbio
    records = {}
    for record in skbio.io.read(str(path), format="fasta", constructor=skbio.Sequence):
        name = record.metadata["id"]
        if record.metadata["description"]:
            name += " " + record.metadata["description"]
        records[name] = str(record).upper()
    return records


def _ecam_checks(table_ids, metadata_ids, info):
    """ecam: the metadata must be the table minus ``.r`` and ``.M`` samples."""
    replicates = {s for s in table_ids if s.endswith(".r")}
    maternal = {s for s in table_ids if ".M" in s and s not in replicates}
    listed = set(metadata_ids)
    if listed & (replicates | maternal):
        raise DataError("ecam metadata lists replicate or maternal samples")
    not_listed = set(table_ids) - listed
    if not_listed != replicates | maternal:
        odd = sorted(not_listed - replicates - maternal)[:5]
        raise DataError(f"ecam: table samples missing from the metadata that "
                        f"are neither .r nor .M: {odd}")
    info["excluded_replicates"] = len(replicates)
    info["excluded_maternal"] = len(maternal)


def _sample_metadata(name, folder, sample_md, sample_ids, info):
    """Age, subject and the subject's categorical columns of each kept sample."""
    subject_col = SUBJECT_ID_COLUMNS[name]
    subjects = pd.read_csv(folder / "subject_data.csv", dtype=str)
    subjects[subject_col] = subjects[subject_col].str.strip()
    if not subjects[subject_col].is_unique:
        raise DataError(f"{name}: repeated subjects in subject_data.csv")
    subjects = subjects.set_index(subject_col)
    categorical = CATEGORICAL_COLUMNS[name]

    md = sample_md.loc[sample_ids, ["subject", "age_days"]].copy()
    missing_subjects = set(md["subject"]) - set(subjects.index)
    if missing_subjects:
        raise DataError(f"{name}: subjects without subject data: "
                        f"{sorted(missing_subjects)[:5]}")
    per_subject = subjects.loc[md["subject"], categorical]
    per_subject.index = md.index
    metadata = pd.concat([md[["age_days", "subject"]], per_subject], axis=1)
    metadata.index = pd.Index(metadata.index.astype(str), name="sample-id")
    metadata["age_days"] = metadata["age_days"].astype(float)
    metadata["subject"] = metadata["subject"].astype(str)
    if metadata["age_days"].isna().any():
        raise DataError(f"{name}: samples without an age")
    info["subjects"] = int(metadata["subject"].nunique())
    info["missing_values"] = {c: int(metadata[c].isna().sum())
                              for c in categorical if metadata[c].isna().any()}
    return metadata


def _filtered_counts(name, folder, info):
    """The counts of the protocol's samples (with metadata, sorted, enough reads)
    and features (present in them), with the sample metadata as read."""
    counts = read_abundance(folder / "abundance.csv")
    info["raw_samples"], info["raw_features"] = counts.shape
    sample_md, no_id, dups = read_sample_metadata(
        folder / "sample_metadata.csv")
    info["metadata_rows_without_sample_id"] = no_id
    info["metadata_duplicate_rows"] = dups

    table_ids = list(counts.index)
    if name == "ecam":
        _ecam_checks(table_ids, sample_md.index, info)
    # Samples in sorted ID order: the random forest's bootstrap depends on
    # the sample order, and data.md's baseline numbers were measured with
    # sorted IDs (abundance.csv of ecam is not sorted).
    keep = sorted(s for s in table_ids if s in sample_md.index)
    info["samples_with_metadata"] = len(keep)
    info["metadata_rows_not_in_table"] = int(
        (~sample_md.index.isin(counts.index)).sum())
    counts = counts.loc[keep]

    depth = counts.sum(axis=1)
    low = depth < MIN_READS
    info["dropped_low_depth"] = int(low.sum())
    counts = counts.loc[~low]
    present = counts.sum(axis=0) > 0
    info["dropped_absent_features"] = int((~present).sum())
    counts = counts.loc[:, present]
    return counts, sample_md


def _check_shape(name, table):
    """Raise :class:`DataError` unless ``table`` has the protocol's shape."""
    shape = EXPECTED_SHAPES[name]
    if (table.shape[1], table.shape[0]) != shape:
        raise DataError(f"{name}: got {table.shape[1]} samples x "
                        f"{table.shape[0]} features, the protocol gives "
                        f"{shape[0]} x {shape[1]}")


def _dataset_tree(name, folder, features, info):
    """The placement tree of ``features``; its counts go into ``info``."""
    from .tree import placement_tree

    start = time.monotonic()
    key = read_fasta(folder / "sequence_key.fa")
    tree, tree_info = placement_tree(folder / "placement.jplace", key,
                                     features)
    info["tree"] = tree_info
    info["tree_seconds"] = round(time.monotonic() - start, 3)
    if tree_info["unplaced"]:
        _log(f"{name}: {tree_info['unplaced']} ASVs had no placement and "
             "were attached to the root")
    return tree


def load_dataset(name, cache_dir=None, build_tree=True):
    """Load benchmark dataset ``name`` ("ecam" or "karelia")."""
    if name not in FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; choose from "
                         f"{sorted(FOLDERS)}")
    folder = fetch_mitre(cache_dir) / FOLDERS[name]
    info = {"source": f"mitre=={SDIST_VERSION} "
                      f"mitre/example_data/{FOLDERS[name]}",
            "source_sha256": SDIST_SHA256}
    start = time.monotonic()

    counts, sample_md = _filtered_counts(name, folder, info)
    metadata = _sample_metadata(name, folder, sample_md, counts.index, info)

    data = scipy.sparse.csr_matrix(counts.to_numpy().T)
    table = biom.Table(data, observation_ids=list(counts.columns),
                       sample_ids=list(counts.index))
    info["load_seconds"] = round(time.monotonic() - start, 3)
    _check_shape(name, table)

    tree = None
    if build_tree:
        tree = _dataset_tree(name, folder, list(counts.columns), info)
    taxonomy = read_taxonomy(folder / "dada2_placements.csv", list(counts.columns))
    return Dataset(name=name, table=table, metadata=metadata, tree=tree,
                   info=info, taxonomy=taxonomy)


def describe(dataset):
    """A short JSON-able summary of a dataset."""
    return json.loads(json.dumps({
        "name": dataset.name,
        "samples": dataset.table.shape[1],
        "features": dataset.table.shape[0],
        "subjects": int(dataset.metadata["subject"].nunique()),
        **{k: v for k, v in dataset.info.items() if k != "tree"},
    }, default=str))
