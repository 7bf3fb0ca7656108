"""Build src/vae_lightning/data/assets/frey_rawface.npz from ../shared/data/frey/frey_rawface.mat.

Usage: python scripts/build_frey_asset.py [path/to/frey_rawface.mat]
The array is checked against the sha256 in ../shared/data/README.md before it is written.
"""

import sys
from pathlib import Path

import numpy as np

from vae_lightning.data.frey import ASSET, FREY_SHA256, frey_sha256, read_frey_mat

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    default = REPO.parent / "shared/data/frey/frey_rawface.mat"
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    ff = read_frey_mat(src)
    if frey_sha256(ff) != FREY_SHA256:
        sys.exit(f"{src}: sha256 {frey_sha256(ff)} is not the expected {FREY_SHA256}.")
    dest = REPO / "src/vae_lightning/data/assets" / ASSET
    np.savez_compressed(dest, ff=ff)
    print(f"wrote {dest} ({dest.stat().st_size} bytes), sha256 {FREY_SHA256} verified")


if __name__ == "__main__":
    main()
