"""Small public graph datasets in their published layouts, written for tests (nothing is
downloaded): a TUDataset folder with its quirks, and molecule–text files (a
``smiles,text,label`` CSV of property classes, ChEBI-20's tab-separated layout).

    python -m tests.public_graph_fixtures molecules OUT.csv [--per-class N] [--bad] [--parity 0|1]
    python -m tests.public_graph_fixtures tudataset DIR/NAME
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

# --- TUDataset ------------------------------------------------------------------------------


def write_tudataset(folder: Path, name: str = "TOY", per_class: int = 8, lone_node_last: bool = False) -> Path:
    """A TUDataset as the published zip unpacks, in ``folder`` (``DIR/NAME``, or PyG's
    ``DIR/NAME/raw``): ``2 * per_class`` graphs alternating between rings (graph label -1)
    and stars (label 1) of 4, 4, 5, 5, ... nodes. The quirks of the real files: node ids
    in ``NAME_A.txt`` are global and 1-based, written ``"i, j"``, every edge in both
    directions; graph labels -1/1 (MUTAG's old labels); node labels 1-3 (shifted to 0 by
    PyG, then one-hot: ring nodes 1, star centres 3, leaves 2); edge labels (ring 0, star
    1); one continuous node attribute (the degree / 2), left out by default as PyG does.
    ``lone_node_last``: one more graph (label -1), a single node without edges, last (as
    some datasets end; PyG's reader drops such trailing graphs)."""
    folder.mkdir(parents=True, exist_ok=True)
    edges, indicator, graph_labels, node_labels, edge_labels, attributes = [], [], [], [], [], []
    offset = 0
    for g in range(2 * per_class):
        n = 4 + g // 2
        ring = g % 2 == 0
        pairs = [(i, (i + 1) % n) for i in range(n)] if ring else [(0, i) for i in range(1, n)]
        for u, v in pairs:
            for a, b in ((u, v), (v, u)):
                edges.append(f"{offset + a + 1}, {offset + b + 1}")
                edge_labels.append("0" if ring else "1")
        indicator += [str(g + 1)] * n
        graph_labels.append("-1" if ring else "1")
        node_labels += ["1"] * n if ring else ["3"] + ["2"] * (n - 1)
        degrees = [2] * n if ring else [n - 1] + [1] * (n - 1)
        attributes += [f"{d / 2:.1f}" for d in degrees]
        offset += n
    if lone_node_last:
        indicator.append(str(2 * per_class + 1))
        graph_labels.append("-1")
        node_labels.append("1")
        attributes.append("0.0")
    for part, lines in (("A", edges), ("graph_indicator", indicator), ("graph_labels", graph_labels),
                        ("node_labels", node_labels), ("edge_labels", edge_labels), ("node_attributes", attributes)):
        (folder / f"{name}_{part}.txt").write_text("\n".join(lines) + "\n")
    (folder / "README.txt").write_text(f"{name}: a toy TUDataset (rings vs stars) written by the tests\n")
    return folder


# --- molecules --------------------------------------------------------------------------------

# property class -> (SMILES of a molecule with n carbons in its chain, description templates)
MOLECULE_CLASSES: dict[str, tuple] = {
    "alcohol": (lambda n, b: _chain(n, b) + "O", ("an alcohol with {n} carbons", "a {n}-carbon alcohol, a chain ending in a hydroxyl group")),
    "carboxylic acid": (lambda n, b: _chain(n - 1, b) + "C(=O)O", ("a carboxylic acid with {n} carbons", "a {n}-carbon carboxylic acid")),
    "amine": (lambda n, b: _chain(n, b) + "N", ("an amine with {n} carbons", "a {n}-carbon amine, a chain ending in an amino group")),
    "halide": (lambda n, b: _chain(n, b) + "Cl", ("a halide with {n} carbons", "a {n}-carbon alkyl halide, a chain ending in chlorine")),
    "aromatic": (lambda n, b: "c1ccccc1" + _chain(n - 6, b), ("an aromatic compound with {n} carbons", "a {n}-carbon aromatic, a benzene ring with a side chain")),
}
# SMILES RDKit rejects, each for another reason: five bonds on a carbon, an unclosed ring,
# an aromatic ring that cannot be kekulized, not SMILES at all
BAD_SMILES = ["CC(C)(C)(C)(C)C", "C1CCCC", "c1cccc1", "not a molecule"]


def _chain(n: int, branch: bool) -> str:
    """An alkyl chain of ``n`` carbons (none for n <= 0), with a methyl branch if asked."""
    if n <= 0:
        return ""
    if branch and n >= 3:
        return "CC(C)" + "C" * (n - 3)
    return "C" * n


def molecule_rows(per_class: int = 20, seed: int = 0, parity: int | None = None) -> list[dict[str, str]]:
    """``per_class`` molecules of each property class with 1-12 carbons (acids 2-13,
    aromatics 7-18), some branched, each with a description that names its class and
    carbon count. ``parity`` 0 or 1: only even or odd carbon counts (disjoint molecules
    for a held-out evaluation set)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, (smiles_of, templates) in MOLECULE_CLASSES.items():
        low = 7 if label == "aromatic" else (2 if label == "carboxylic acid" else 1)
        counts = [n for n in range(low, low + 12) if parity is None or n % 2 == parity]
        for i in range(per_class):
            n = int(rng.choice(counts))
            smiles = smiles_of(n, bool(rng.integers(2)))
            rows.append({"smiles": smiles, "text": templates[i % len(templates)].format(n=n), "label": label})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_molecule_csv(path: Path, per_class: int = 20, bad: bool = False, seed: int = 0, parity: int | None = None) -> Path:
    """The property-class fixture as a ``smiles,text,label`` CSV; ``bad`` adds a row for
    each of ``BAD_SMILES`` (described as an alcohol, so only RDKit can tell)."""
    rows = molecule_rows(per_class, seed, parity)
    if bad:
        for i, smiles in enumerate(BAD_SMILES):
            rows.insert(3 * i + 1, {"smiles": smiles, "text": "an alcohol with 5 carbons", "label": "alcohol"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["smiles", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_chebi20(path: Path) -> Path:
    """ChEBI-20's layout (``train.txt``): tab-separated ``CID``, ``SMILES``,
    ``description``, no quoting, so a description holds quotes and commas as they are;
    the third row's SMILES is one RDKit rejects."""
    rows = [
        ("702", "CCO", 'The molecule is a primary alcohol that is ethane in which one hydrogen is replaced by a hydroxy group. '
                       'It has a role as an "antiseptic", a solvent and a fuel.'),
        ("176", "CC(=O)O", "The molecule is a simple monocarboxylic acid containing two carbons. It is a conjugate acid of an acetate."),
        ("9999", "C1CC", "A ring that never closes, as a broken record might hold."),
        ("241", "c1ccccc1", 'The molecule is a six-carbon aromatic annulene in which each carbon atom donates an electron; "benzene".'),
        ("6324", "CC", "The molecule is an alkane containing two carbons, a gas, a fuel, and a refrigerant."),
        ("6344", "CCCl", "The molecule is a member of the class of chloroethanes, ethane substituted by one chloro group."),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("CID\tSMILES\tdescription\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("molecules", "chebi20", "tudataset"))
    parser.add_argument("output")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--bad", action="store_true", help="molecules: add SMILES that RDKit rejects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parity", type=int, choices=(0, 1), default=None, help="molecules: even (0) or odd (1) carbon counts only")
    args = parser.parse_args()
    output = Path(args.output)
    if args.what == "molecules":
        print(write_molecule_csv(output, args.per_class, args.bad, args.seed, args.parity))
    elif args.what == "chebi20":
        print(write_chebi20(output))
    else:
        print(write_tudataset(output, output.name, args.per_class))


if __name__ == "__main__":
    main()
