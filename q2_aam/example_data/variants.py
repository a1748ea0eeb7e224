"""Tables as another denoising run, another trimming or another study would give them.

The "new ASVs" benchmark (``benchmarks/new_asvs.py``) asks how a model trained on one
table predicts samples whose ASVs it never saw, but that are the same organisms:

* :func:`redenoise`: a share of the table's features replaced by a variant of their own
  sequence with a few random substitutions, as a second denoising run or another study
  calls a nearby representative sequence;
* :func:`retrim`: every sequence cut at other positions, as another trimming (a shifted
  primer, a shorter read) gives;
* :func:`common_region`: ECAM and karelia (two studies, two amplicon lengths) cut to the
  region both cover, in one table with one phylogeny, for transfer between studies.

Features whose new sequences coincide are merged (their counts summed), as denoising
would report them. Nothing here imports torch or QIIME 2.
"""
from __future__ import annotations

import numpy as np

BASES = "ACGT"
#: Where each study's sequences sit in the region both cover: ECAM's 137 nt are
#: karelia's positions 2-138 (checked by :func:`common_region`).
COMMON_REGION = {"ecam": (0, 137), "karelia": (2, 139)}


def substitute(sequence: str, n: int, rng: np.random.Generator) -> str:
    """``sequence`` with ``n`` substitutions at distinct random positions, each to another
    of A, C, G, T."""
    letters = list(sequence)
    for position in rng.choice(len(letters), size=n, replace=False):
        letters[position] = rng.choice([b for b in BASES if b != letters[position].upper()])
    return "".join(letters)


def relabel(table, new_ids):
    """``table`` (a ``biom.Table`` whose feature IDs are sequences) with feature ``i``
    renamed ``new_ids[i]``; features that get one name are merged (counts summed), in the
    order each name first appears."""
    import biom
    import scipy.sparse as sp
    names, index = np.unique(np.asarray(new_ids, dtype=object), return_inverse=True)
    first = np.full(len(names), len(new_ids))
    np.minimum.at(first, index, np.arange(len(new_ids)))
    order = np.argsort(first, kind="stable")
    place = np.empty(len(names), dtype=np.int64)
    place[order] = np.arange(len(names))
    merge = sp.csr_matrix((np.ones(len(new_ids)), (place[index], np.arange(len(new_ids)))),
                          shape=(len(names), len(new_ids)))
    data = merge @ table.matrix_data
    return biom.Table(sp.csr_matrix(data), observation_ids=list(names[order]),
                      sample_ids=list(table.ids()))


def redenoise(table, share: float, substitutions: int, seed: int):
    """``table`` with ``share`` of its features (those with reads, chosen at random)
    replaced by a variant of their sequence with ``substitutions`` substitutions; returns
    the new table and how many features were replaced."""
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in table.ids(axis="observation")]
    held = np.flatnonzero(np.asarray(table.matrix_data.sum(axis=1)).ravel() > 0)
    chosen = rng.choice(held, size=int(round(share * len(held))), replace=False)
    new_ids = list(ids)
    for i in np.sort(chosen):
        new_ids[i] = substitute(ids[i], substitutions, rng)
    return relabel(table, new_ids), len(chosen)


def retrim(table, start: int = 0, stop: int | None = None):
    """``table`` with every feature's sequence cut to ``sequence[start:stop]``."""
    return relabel(table, [str(i)[start:stop] for i in table.ids(axis="observation")])


def common_region(cache_dir=None):
    """ECAM and karelia cut to the 16S region both cover (``COMMON_REGION``), as one
    ``Dataset`` named ``"ecam+karelia"``: the table of every sample of both (features that
    the cut makes identical are merged), their metadata with a ``study`` column, and one
    tree of all features, each ASV grafted at its own study's placement on the reference
    tree that both studies' placements share (ECAM's where both place one)."""
    import pandas as pd
    from .mitre import FOLDERS, Dataset, DataError, fetch_mitre, load_dataset, read_fasta
    from .tree import placement_tree
    tables, metadata, keys = [], [], []
    folder = fetch_mitre(cache_dir)
    for name, (start, stop) in COMMON_REGION.items():
        data = load_dataset(name, cache_dir, build_tree=False)
        short = [s for s in data.feature_ids if len(s) < stop]
        if short:
            raise DataError(f"{name}: {len(short)} sequences end before position {stop}")
        tables.append(retrim(data.table, start, stop))
        metadata.append(data.metadata.assign(study=name))
        keys.append((folder / FOLDERS[name] / "placement.jplace",
                     {query: sequence[start:stop] for query, sequence in
                      read_fasta(folder / FOLDERS[name] / "sequence_key.fa").items()}))
    shared = set(tables[0].ids()) & set(tables[1].ids())
    if shared:
        raise DataError(f"sample IDs in both studies: {sorted(shared)[:3]}")
    table = tables[0].merge(tables[1])
    features = [str(i) for i in table.ids(axis="observation")]
    (first, first_names), *rest = keys
    tree, info = placement_tree(first, first_names, features, more=rest)
    both = pd.concat(metadata)
    both = both.loc[[str(i) for i in table.ids()]]
    return Dataset(name="ecam+karelia", table=table, metadata=both, tree=tree,
                   info={"tree": info, "region": COMMON_REGION})
