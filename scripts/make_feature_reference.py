"""Reference per-nucleus feature values from HistomicsTK itself, for tests/test_features.py.

Run with HistomicsTK's own environment (not wsinuclei's; wsinuclei never imports HistomicsTK):

    bash ../shared/tools/install_histomicstk.sh            # once: ~/.cache/histomicstk-venv
    ~/.cache/histomicstk-venv/bin/python scripts/make_feature_reference.py ../shared/data/monuseg/train \
        tests/data/features/htk_reference.csv

For each crop below of a MoNuSeg training image and its instance labels, the labels are relabelled
1..N in raster order of first appearance (skimage.segmentation.relabel_sequential), the hematoxylin and eosin
channels come from HistomicsTK's colour deconvolution of the raw RGB (stains hematoxylin, eosin, null), and
``compute_nuclei_features`` runs with its defaults (Haralick included). Only the numbers are kept; the images
stay in ../shared.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

#: (image stem, row, column, size): two organs, 320x320 crops with whole and border-touching nuclei
CROPS = [("TCGA-18-5592-01Z-00-DX1", 300, 300, 320), ("TCGA-49-4488-01Z-00-DX1", 500, 200, 320)]


def main(data_dir: str, out_csv: str) -> None:
    warnings.simplefilter("ignore")  # HistomicsTK 1.4.0 uses scikit-image names deprecated in 0.26
    import histomicstk
    import pandas as pd
    from histomicstk.features import compute_nuclei_features
    from histomicstk.preprocessing.color_deconvolution import color_deconvolution, stain_color_map
    from skimage.segmentation import relabel_sequential

    w = np.array([stain_color_map["hematoxylin"], stain_color_map["eosin"], stain_color_map["null"]]).T
    frames = []
    for stem, r, c, size in CROPS:
        rgb = np.array(Image.open(Path(data_dir) / f"{stem}.png").convert("RGB"))[r:r + size, c:c + size]
        labels = np.array(Image.open(Path(data_dir) / f"{stem}_labels.png"))[r:r + size, c:c + size]
        labels = relabel_sequential(labels.astype(np.int64))[0]
        stains = color_deconvolution(rgb, w).Stains
        f = compute_nuclei_features(labels, stains[..., 0].astype(float), stains[..., 1].astype(float))
        f.insert(0, "crop", f"{stem}:{r}:{c}:{size}")
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w") as fh:
        fh.write(f"# HistomicsTK {histomicstk.__version__} compute_nuclei_features; made by "
                 "scripts/make_feature_reference.py\n")
        out.to_csv(fh, index=False, float_format="%.10g")
    print(f"wrote {out_csv}: {len(out)} nuclei x {out.shape[1]} columns")


if __name__ == "__main__":
    main(*sys.argv[1:3])
