"""Write a tabular regression problem with natural clients: train.csv and test.csv (or .parquet).

Each row is one reading of a site (a shop, a sensor, a hospital): six numeric features and a
numeric target. All sites share one nonlinear relation, and each site adds its own linear
term and offset, so the sites' feature/target relations differ (non-IID by site, as
natural federated data are) and the sites hold different numbers of rows. Columns:
``site`` (the natural client), ``x0`` .. ``x5``, ``target``. Seeded: the same arguments
write the same bytes.

    python examples/tabular_regression/make_data.py --out data/tabular
    fedsim run examples/tabular_regression/config.yaml
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

FEATURES = tuple(f"x{i}" for i in range(6))
TEST_SHARE = 0.2  # of each site's rows


def make_rows(sites: int, rows_per_site: int, seed: int) -> dict[str, np.ndarray]:
    """Columns of the whole table: site (n,) str, x0..x5 (n,) float32, target (n,) float32,
    and split (n,) bool, True for the test rows (a fifth of each site's)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(rows_per_site // 2, 2 * rows_per_site, sites)  # sites differ in size
    site = np.repeat(np.arange(sites), counts)
    site_shift = rng.normal(0.0, 1.0, (sites, len(FEATURES)))  # each site sees its own inputs
    x = site_shift[site] + rng.normal(0.0, 1.0, (len(site), len(FEATURES)))
    shared = 2.0 * np.sin(x[:, 0]) + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] ** 2
    site_weights = rng.normal(0.0, 0.5, (sites, len(FEATURES)))  # each site's own linear effect
    site_offset = rng.normal(0.0, 1.0, sites)
    local = np.einsum("nd,nd->n", x, site_weights[site]) + site_offset[site]
    target = shared + local + rng.normal(0.0, 0.3, len(site))
    columns = {"site": np.array([f"site-{s:03d}" for s in site])}
    columns.update({name: x[:, j].astype(np.float32) for j, name in enumerate(FEATURES)})
    columns["target"] = target.astype(np.float32)
    columns["split"] = rng.random(len(site)) < TEST_SHARE
    return columns


def write(out: Path, columns: dict[str, np.ndarray], fmt: str) -> list[Path]:
    """train.<fmt> and test.<fmt> in out; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    names = ["site", *FEATURES, "target"]
    paths = []
    for split, rows in (("train", ~columns["split"]), ("test", columns["split"])):
        path = out / f"{split}.{fmt}"
        table = {name: columns[name][rows] for name in names}
        if fmt == "csv":
            with path.open("w", newline="", encoding="utf-8") as stream:
                writer = csv.writer(stream)
                writer.writerow(names)
                # 9 significant digits give back every float32 exactly, in half repr's bytes.
                floats = {name: [f"{v:.9g}" for v in table[name]] for name in names[1:]}
                writer.writerows(zip(table["site"], *(floats[name] for name in names[1:]), strict=True))
        else:
            import pyarrow as pa  # only for parquet: pip install 'fedsim[data]'
            import pyarrow.parquet as pq

            pq.write_table(pa.table(table), path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/tabular"), help="folder to write into")
    parser.add_argument("--sites", type=int, default=50, help="natural clients")
    parser.add_argument("--rows", type=int, default=200, help="typical rows per site (each has 1/2x to 2x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    args = parser.parse_args(argv)
    for path in write(args.out, make_rows(args.sites, args.rows, args.seed), args.format):
        print(path)


if __name__ == "__main__":
    main()
