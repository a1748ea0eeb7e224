"""A rooted ASV tree from pplacer placements (jplace, version 3).

Each ASV is grafted onto the reference tree at its best placement (highest
``like_weight_ratio``; ties go to the higher ``likelihood``, then to the
placement listed first): a new node is inserted on edge ``edge_num`` at
``distal_length`` above the edge's lower (distal) end, and the ASV hangs from
it on a branch of ``pendant_length``.  Then every reference tip is pruned and
the internal nodes left with a single child are collapsed, adding their branch
lengths together.

The work is done on flat arrays; only the pruned tree becomes an
``skbio.TreeNode``.
"""

import json
import re

import numpy as np
import skbio

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<open>\()
      | (?P<close>\))
      | (?P<comma>,)
      | (?P<end>;)
      | :(?P<length>[^(),;:{}\[\]\s]+)
      | \{(?P<edge>\d+)\}
      | \[(?P<comment>[^\]]*)\]
      | '(?P<quoted>(?:[^']|'')*)'
      | (?P<label>[^(),;:{}\[\]'\s]+)
    )""", re.VERBOSE)


class JplaceError(ValueError):
    pass


class _Tree:
    """A tree as flat lists: parent, children, length, name, per node."""

    def __init__(self):
        self.parent = []
        self.children = []
        self.length = []
        self.name = []
        self.root = 0

    def add(self, parent, length=None, name=None):
        node = len(self.parent)
        self.parent.append(parent)
        self.children.append([])
        self.length.append(length)
        self.name.append(name)
        if parent >= 0:
            self.children[parent].append(node)
        return node


def parse_edge_numbered_newick(text):
    """Parse a jplace tree: Newick with ``{N}`` edge numbers.

    Returns ``(tree, edge_to_node)`` where ``edge_to_node[N]`` is the node
    below edge ``N``.
    """
    tree = _Tree()
    current = tree.add(-1)
    edge_to_node = {}
    pos, size, done = 0, len(text), False
    while pos < size:
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos:].strip() == "":
                break
            near = text[pos:pos + 40]
            raise JplaceError(f"cannot parse the tree near {near!r}")
        pos = match.end()
        kind = match.lastgroup
        if done:
            raise JplaceError("text after the final ';' of the tree")
        if kind == "open":
            current = tree.add(current)
        elif kind == "comma":
            parent = tree.parent[current]
            if parent < 0:
                raise JplaceError("',' outside parentheses")
            current = tree.add(parent)
        elif kind == "close":
            current = tree.parent[current]
            if current < 0:
                raise JplaceError("unbalanced ')'")
        elif kind == "end":
            if current != tree.root:
                raise JplaceError("unbalanced '(' before ';'")
            done = True
        elif kind == "length":
            tree.length[current] = float(match.group("length"))
        elif kind == "edge":
            edge = int(match.group("edge"))
            if edge in edge_to_node:
                raise JplaceError(f"edge number {edge} used twice")
            edge_to_node[edge] = current
        elif kind == "quoted":
            tree.name[current] = match.group("quoted").replace("''", "'")
        elif kind == "label":
            tree.name[current] = match.group("label")
        # comments are ignored
    if not done:
        raise JplaceError("the tree does not end with ';'")
    return tree, edge_to_node


def best_placements(jplace):
    """{query name: (edge_num, distal_length, pendant_length, lwr)}.

    Also returns the number of queries whose best ``like_weight_ratio`` was
    tied.
    """
    fields = jplace["fields"]
    try:
        i_edge = fields.index("edge_num")
        i_lwr = fields.index("like_weight_ratio")
        i_distal = fields.index("distal_length")
        i_pendant = fields.index("pendant_length")
    except ValueError as err:
        raise JplaceError(f"jplace lacks a needed field: {err}") from None
    i_lik = fields.index("likelihood") if "likelihood" in fields else None
    best, ties = {}, 0
    for entry in jplace["placements"]:
        rows = entry["p"]
        if not rows:
            continue

        def rank(i):
            row = rows[i]
            lik = row[i_lik] if i_lik is not None else 0.0
            return (row[i_lwr], lik, -i)

        order = sorted(range(len(rows)), key=rank, reverse=True)
        top = rows[order[0]]
        if len(rows) > 1 and rows[order[1]][i_lwr] == top[i_lwr]:
            ties += 1
        chosen = (int(top[i_edge]), float(top[i_distal]),
                  float(top[i_pendant]), float(top[i_lwr]))
        names = [n[0] for n in entry.get("nm", [])] + list(entry.get("n", []))
        for name in names:
            if name in best:
                raise JplaceError(f"query {name!r} placed twice")
            best[name] = chosen
    return best, ties


def _graft(tree, edge_to_node, placements):
    """Insert ``placements`` = [(tip name, edge, distal, pendant)] in place.

    Returns (tip node ids, number of distal lengths clamped to the edge).
    """
    by_node = {}
    for name, edge, distal, pendant in placements:
        if edge not in edge_to_node:
            raise JplaceError(f"placement on unknown edge {edge}")
        by_node.setdefault(edge_to_node[edge], []).append(
            (name, distal, pendant))
    tips, clamped = [], 0
    for below, items in by_node.items():
        above = tree.parent[below]
        edge_length = tree.length[below]
        if above >= 0 and edge_length is None:
            edge_length = 0.0
        points = {}
        for name, distal, pendant in items:
            d = max(distal, 0.0)
            if edge_length is not None:
                d = min(d, edge_length)
            if d != distal:
                clamped += 1
            points.setdefault(d, []).append((name, pendant))
        # Build the chain of attachment points from the distal end upwards.
        chain_top, position = below, 0.0
        for d in sorted(points):
            node = tree.add(-1)
            tree.parent[chain_top] = node
            tree.children[node].append(chain_top)
            tree.length[chain_top] = d - position
            chain_top, position = node, d
            for name, pendant in points[d]:
                tips.append(tree.add(node, length=max(pendant, 0.0),
                                     name=name))
                if pendant < 0:
                    clamped += 1
        tree.parent[chain_top] = above
        if above >= 0:
            tree.length[chain_top] = edge_length - position
            siblings = tree.children[above]
            siblings[siblings.index(below)] = chain_top
        else:
            # The placement was on the root edge: the chain grows above the
            # old root, and its top becomes the root.
            tree.length[chain_top] = None
            tree.root = chain_top
    return tips, clamped


def _prune_to_treenode(tree, tips):
    """skbio.TreeNode of the subtree spanning ``tips``; unary nodes are
    collapsed (their branch lengths added to their child's)."""
    keep = np.zeros(len(tree.parent), dtype=bool)
    for tip in tips:
        node = tip
        while node >= 0 and not keep[node]:
            keep[node] = True
            node = tree.parent[node]
    tip_set = set(tips)
    built = {}
    # Iterative post-order over the kept nodes.
    stack = [(tree.root, False)]
    while stack:
        node, expanded = stack.pop()
        kids = [c for c in tree.children[node] if keep[c]]
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in kids)
            continue
        length = tree.length[node]
        if node in tip_set:
            if kids:
                raise JplaceError("a grafted tip has children")
            built[node] = skbio.TreeNode(name=tree.name[node], length=length)
            continue
        outputs = [built.pop(c) for c in kids]
        if len(outputs) == 1:
            only = outputs[0]
            if length is not None:
                only.length = (only.length or 0.0) + length
            else:
                only.length = None
            built[node] = only
        else:
            built[node] = skbio.TreeNode(length=length, children=outputs)
    root = built.pop(tree.root)
    root.length = None
    if root.is_tip():
        root = skbio.TreeNode(children=[root])
    return root


def _bifurcate_root(root):
    """Make the root binary, as skbio and QIIME 2 expect of a rooted tree.

    The reference tree is unrooted (its top node has three children).  The
    child on the longest branch stays alone as the outgroup; the others are
    grouped under a new node on a zero-length branch, so the root stays where
    it was and no distance changes.
    """
    if len(root.children) <= 2:
        return root
    kids = list(root.children)
    outgroup = max(kids, key=lambda n: n.length or 0.0)
    rest = [k for k in kids if k is not outgroup]
    for kid in rest:
        root.remove(kid)
    root.append(skbio.TreeNode(length=0.0, children=rest))
    return root


def _mean_tip_depth(root):
    depths, total, count = {id(root): 0.0}, 0.0, 0
    for node in root.preorder(include_self=False):
        depth = depths[id(node.parent)] + (node.length or 0.0)
        depths[id(node)] = depth
        if node.is_tip():
            total += depth
            count += 1
    return total / count if count else 1.0


def _chosen_placements(best, name_to_feature, wanted):
    """{feature: (edge, distal, pendant)} from one file's best placements, for the
    ``wanted`` features; two queries mapping to one feature are an error."""
    chosen = {}
    for name, (edge, distal, pendant, _lwr) in best.items():
        feature = name_to_feature.get(name)
        if feature is None or feature not in wanted:
            continue
        if feature in chosen:
            raise JplaceError(f"two queries map to feature {feature[:20]}...")
        chosen[feature] = (edge, distal, pendant)
    return chosen


def _add_more_placements(chosen, jplace, jplace_path, more, wanted):
    """Add to ``chosen`` the placements of the ``more`` files for wanted features
    not placed yet; they must share ``jplace``'s reference tree.  Returns their
    number of tied best placements."""
    ties = 0
    for path, names in more:
        with open(path) as fh:
            other = json.load(fh)
        if other["tree"] != jplace["tree"]:
            raise JplaceError(f"{path} places its queries on another reference tree than "
                              f"{jplace_path}")
        other_best, other_ties = best_placements(other)
        ties += other_ties
        for name in sorted(other_best):
            feature = names.get(name)
            if feature in wanted and feature not in chosen:
                chosen[feature] = other_best[name][:3]
    return ties


def _placed_root(tree, edge_to_node, chosen, placed, unplaced, info):
    """The tree of the ``placed`` features grafted and pruned, with the
    ``unplaced`` ones on the root (as long as the mean tip depth); before
    the root is made binary."""
    if not placed:
        root = skbio.TreeNode()
        depth = 1.0
    else:
        tips, clamped = _graft(tree, edge_to_node,
                               [(f,) + chosen[f] for f in placed])
        info["clamped_lengths"] = clamped
        root = _prune_to_treenode(tree, tips)
        depth = _mean_tip_depth(root)
    for feature in unplaced:
        root.append(skbio.TreeNode(name=feature, length=depth))
    info["unplaced_branch_length"] = depth if unplaced else None
    info["root_children_before_resolving"] = len(root.children)
    return root


def placement_tree(jplace_path, name_to_feature, features, more=()):
    """The rooted tree of ``features`` from a jplace file.

    ``name_to_feature`` maps jplace query names to feature IDs (here the
    ``sqN;size=..;`` names of ``sequence_key.fa`` to sequences).  Features
    without a placement are attached to the root on a branch as long as the
    mean root-to-tip distance of the placed ones (a lineage of their own), and
    counted in the returned info.

    ``more``: further ``(jplace_path, name_to_feature)`` pairs, placed on the
    same reference tree (e.g. another study's ASVs, for one tree of both); a
    feature placed by an earlier file, or by an earlier query of the same
    file, keeps that placement.

    Returns (skbio.TreeNode, info dict).
    """
    features = list(features)
    wanted = set(features)
    if len(wanted) != len(features):
        raise ValueError("repeated feature IDs")
    if not features:
        raise ValueError("no features")
    with open(jplace_path) as fh:
        jplace = json.load(fh)
    tree, edge_to_node = parse_edge_numbered_newick(jplace["tree"])
    n_reference_tips = sum(1 for kids in tree.children if not kids)
    best, ties = best_placements(jplace)

    chosen = _chosen_placements(best, name_to_feature, wanted)
    ties += _add_more_placements(chosen, jplace, jplace_path, more, wanted)
    placed = [f for f in features if f in chosen]
    unplaced = [f for f in features if f not in chosen]
    info = {"reference_tips": n_reference_tips, "placed": len(placed),
            "unplaced": len(unplaced), "tied_best_placements": ties}
    root = _placed_root(tree, edge_to_node, chosen, placed, unplaced, info)
    root = _bifurcate_root(root)
    validate_tree(root, features)
    info["tips"] = len(features)
    return root, info


def validate_tree(root, features):
    """Tips are exactly ``features``; every non-root branch length >= 0;
    the root is binary (unless there is a single tip)."""
    names = [t.name for t in root.tips()]
    if len(names) != len(set(names)):
        raise JplaceError("repeated tip names")
    if set(names) != set(features):
        raise JplaceError("the tips are not the feature set")
    if len(names) > 1 and len(root.children) != 2:
        raise JplaceError("the root is not binary")
    for node in root.preorder(include_self=False):
        if node.length is None or not np.isfinite(node.length) \
                or node.length < 0:
            raise JplaceError(f"bad branch length {node.length!r}")
    return True
