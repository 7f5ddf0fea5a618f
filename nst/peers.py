"""Classical peers of Noisy Student, fitted on exactly the splits a pipeline run used.

What a user would run instead of a deep semi-supervised method, on the same labeled,
unlabeled and test records (`nst.data.schema` files, e.g. `<run_dir>/data`):

  logistic_regression  scikit-learn `LogisticRegression` on the labeled images
  rbf_svc              `SVC(kernel="rbf")` on the labeled images
  label_spreading      `LabelSpreading(kernel="knn")` over labeled + unlabeled images
                       (transductive: it also uses the unlabeled split), on the first
                       `pca_components` principal components of all train-side images

Features are the raw gray pixels scaled to 0..1 (channel 0 of the stored RGB; the
`crop` border that a padded data set added is removed first). Each peer's one
hyper-parameter is chosen on the dev split from a small grid (`GRIDS`), then it is
scored on test: the peers get model selection that the network stages do not, so the
comparison does not flatter Noisy Student.
"""

import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from nst.data import readers, schema

PEERS = ("logistic_regression", "rbf_svc", "label_spreading")
GRIDS = {"logistic_regression": ("C", (0.01, 0.1, 1.0, 10.0)),
         "rbf_svc": ("C", (1.0, 10.0, 100.0)),
         "label_spreading": ("n_neighbors", (7, 15))}
NAMES = {"logistic_regression": "LogisticRegression (labeled only)",
         "rbf_svc": "RBF SVC (labeled only)",
         "label_spreading": "LabelSpreading, kNN on PCA (labeled + unlabeled)"}


def load_split(pattern: str, record_format: schema.RecordFormat, num_classes: int,
               crop: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """-> (float32 [N, D] gray pixels in 0..1, int64 [N] labels; the true label for
    unlabeled records, -1 where none is stored)."""
    images, labels = [], []
    for record in readers.read_examples(pattern, record_format,
                                        num_classes).as_numpy_iterator():
        image = tf.io.decode_image(record["image"], channels=3).numpy()[..., 0]
        if crop:
            image = image[crop:-crop, crop:-crop]
        images.append(image.reshape(-1))
        labels.append(record["true_label"] if record_format is schema.UNLABELED
                      else record["label"])
    if not images:
        raise ValueError(f"{pattern}: no records")
    return np.stack(images).astype(np.float32) / 255.0, np.asarray(labels, np.int64)


def load_run_data(data_dir: str, num_classes: int, crop: int = 0,
                  unlabeled_pattern: str = "unlabeled/extra-*") -> Dict[str, Tuple]:
    """{"train", "dev", "test", "unlabeled": (x, y)} of a pipeline data directory."""
    paths = {"train": ("train-*", schema.LABELED), "dev": ("dev-*", schema.LABELED),
             "test": ("test-*", schema.LABELED),
             "unlabeled": (unlabeled_pattern, schema.UNLABELED)}
    return {split: load_split(f"{data_dir.rstrip('/')}/{pattern}", fmt, num_classes, crop)
            for split, (pattern, fmt) in paths.items()}


def _model(name: str, value, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import LabelSpreading
    from sklearn.svm import SVC
    if name == "logistic_regression":
        return LogisticRegression(C=value, max_iter=2000)
    if name == "rbf_svc":
        return SVC(C=value, kernel="rbf", gamma="scale", random_state=seed)
    if name == "label_spreading":
        return LabelSpreading(kernel="knn", n_neighbors=value, alpha=0.2, max_iter=100)
    raise ValueError(f"unknown peer {name!r}; peers are {PEERS}")


def fit_peer(name: str, data: Dict[str, Tuple], seed: int = 0,
             pca_components: int = 50) -> Dict:
    """Fits one peer (value chosen on dev), returns {"test": acc, "dev": acc, "param":
    {name: value}, "seconds": float}. Accuracies are fractions 0..1."""
    start = time.time()
    (x_train, y_train), (x_dev, y_dev), (x_test, y_test) = (
        data["train"], data["dev"], data["test"])
    transform = None
    if name == "label_spreading":
        from sklearn.decomposition import PCA
        x_unlabeled = data["unlabeled"][0]
        pca = PCA(n_components=min(pca_components, x_train.shape[1]), random_state=seed)
        pca.fit(np.concatenate([x_train, x_unlabeled]))
        transform = pca.transform
        x_fit = transform(np.concatenate([x_train, x_unlabeled]))
        y_fit = np.concatenate([y_train, np.full(len(x_unlabeled), -1, np.int64)])
    else:
        x_fit, y_fit = x_train, y_train

    def features(x):
        return transform(x) if transform is not None else x

    param, values = GRIDS[name]
    best: Optional[Tuple[float, object, object]] = None
    for value in values:
        model = _model(name, value, seed).fit(x_fit, y_fit)
        dev = float(np.mean(model.predict(features(x_dev)) == y_dev))
        if best is None or dev > best[0]:
            best = (dev, value, model)
    dev, value, model = best
    test = float(np.mean(model.predict(features(x_test)) == y_test))
    return {"test": test, "dev": dev, "param": {param: value},
            "seconds": time.time() - start}


def fit_peers(data: Dict[str, Tuple], peers: Sequence[str] = PEERS, seed: int = 0,
              pca_components: int = 50) -> Dict[str, Dict]:
    """{peer: fit_peer(...)} for each of `peers`."""
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise ValueError(f"unknown peers {unknown}; peers are {list(PEERS)}")
    return {name: fit_peer(name, data, seed, pca_components) for name in peers}
