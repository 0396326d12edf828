"""Small synthetic data sets shared by the pipeline tests (written with the package's own writers)."""
import numpy as np


def ellipse_set(folder, csv, n=10, size=32, axes=(5, 12), seed=0):
    "`n` binary ellipse images (.npy) of `size`^2 pixels in `folder`, their 12 boundary points (pixels) in `csv`."
    from shape_nb.deepssm import _write_points_csv
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    yy, xx = np.mgrid[0:size, 0:size]
    c, P = size / 2, []
    for i, (a, b) in enumerate(np.random.default_rng(seed).uniform(*axes, (n, 2))):
        np.save(folder / f"e{i}.npy", ((((xx - c) / a) ** 2 + ((yy - c) / b) ** 2) < 1).astype(np.float32))
        P.append(np.stack([c + a * np.cos(t), c + b * np.sin(t)], 1))
    _write_points_csv(csv, [f"e{i}" for i in range(n)], np.stack(P))


def blob_set(labelled, unlabelled, labels_dir, n=9, n_labelled=5, seed=0):
    """`n` 40x44 PNGs of three Gaussian blobs (landmarks 'a', 'b', 'c'), the first `n_labelled` in `labelled` with
    LabelMe files in `labels_dir`, the others in `unlabelled`."""
    from shape_nb.io import write_image, write_labelme
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:44]
    for i in range(n):
        pts = np.array([22, 20]) + np.array([[0, -10], [-10, 8], [10, 8]]) + rng.normal(0, 1, (3, 2))
        img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (1.0 + k) ** 2)) for k, (x, y) in enumerate(pts))
        img = (255 * (img + 0.05 * rng.random(img.shape)) / img.max()).clip(0, 255).astype(np.uint8)
        write_image((labelled if i < n_labelled else unlabelled) / f"im{i}.png", img)
        if i < n_labelled: write_labelme(labels_dir / f"im{i}.json", pts, ["a", "b", "c"], image_shape=(40, 44))
