"""The student input pipeline: batch composition, views, targets, sharding."""

import os

import numpy as np
import pytest
import tensorflow as tf

from nst.data import input_pipeline as ip
from nst.data import preprocess, readers, schema, writers

K = 4


def _jpeg(value, size=32):
    # A flat image survives JPEG exactly, so rows can be identified by pixel value.
    return tf.io.encode_jpeg(tf.fill([size, size, 3], tf.constant(value, tf.uint8)),
                             quality=100).numpy()


def _probs(i):
    p = np.full(K, 0.1, np.float32)
    p[i % K] = 0.7
    return p


@pytest.fixture()
def data_dir(tmp_path):
    """Labeled images have pixel value 10*label; unlabeled image j has value 100+j
    and a pseudo label j % K."""
    lab = [schema.encode_labeled(_jpeg(10 * (i % K)), i % K, image_id=f"lab-{i}")
           for i in range(24)]
    writers.write_shards(lab, str(tmp_path), "train", 3)
    unl = [schema.encode_unlabeled(_jpeg(100 + j), probabilities=_probs(j),
                                   image_id=f"unl-{j}") for j in range(40)]
    writers.write_shards(unl, str(tmp_path / "unlabeled"), "extra", 4)
    raw = [schema.encode_unlabeled(_jpeg(100 + j), image_id=f"raw-{j}") for j in range(40)]
    writers.write_shards(raw, str(tmp_path / "raw"), "extra", 4)
    dev = [schema.encode_labeled(_jpeg(10 * (i % K)), i % K) for i in range(10)]
    writers.write_shards(dev, str(tmp_path), "dev", 2)
    return tmp_path


SMALL = ip.ViewConfig(image_size=32, small_image=True, remove_aug=True)


@pytest.mark.parametrize("b,r,p,u", [(128, 5, 1.0, 640), (3, 1, 0.5, 2), (8, 0, 1.0, 0),
                                     (128, 0.1, 1.0, 13), (10, 3, 0.1, 3)])
def test_unlabeled_batch_size_is_ceil_b_p_r(b, r, p, u):
    assert ip.unlabeled_batch_size(b, r, p) == u


def test_student_batch_labeled_rows_first_with_stored_targets(data_dir):
    ds = ip.student_train_dataset(str(data_dir / "train*"), str(data_dir / "unlabeled/extra*"),
                                  K, 4, SMALL, unlabel_ratio=1.5, seed=3)
    batch = next(iter(ds))
    assert batch["image"].shape == (4 + 6, 32, 32, 3)
    assert batch["label"].shape == (10,) and batch["label"].dtype == tf.int32
    assert batch["unl_probs"].shape == (6, K)
    assert "teacher_image" not in batch
    values = batch["image"].numpy()[:, 0, 0, 0]
    labels = batch["label"].numpy()
    np.testing.assert_allclose(values[:4], 10 * labels[:4], atol=1)  # labeled rows
    unl_ids = np.round(values[4:] - 100).astype(int)
    assert (unl_ids >= 0).all() and (unl_ids < 40).all()
    # The stored targets travel with their own image.
    np.testing.assert_array_equal(labels[4:], unl_ids % K)
    np.testing.assert_allclose(batch["unl_probs"].numpy(), [_probs(j) for j in unl_ids])


def test_online_teacher_gets_clean_views_of_unlabeled_rows_only(data_dir):
    noisy = ip.ViewConfig(image_size=32, small_image=True, augment_name="v1",
                          randaug_mag=10)
    teacher = ip.ViewConfig(image_size=32, small_image=True)
    ds = ip.student_train_dataset(str(data_dir / "train*"), str(data_dir / "raw/extra*"), K, 4,
                                  noisy, unlabel_ratio=2, teacher_view=teacher, seed=0)
    batch = next(iter(ds))
    assert batch["teacher_image"].shape == (8, 32, 32, 3)
    assert "unl_probs" not in batch
    # Raw records (no stored probabilities) are fine with an online teacher: label -1.
    np.testing.assert_array_equal(batch["label"].numpy()[4:], -1)
    teacher_values = batch["teacher_image"].numpy()
    # Clean views are the flat source images.
    assert np.all(teacher_values.std(axis=(1, 2, 3)) < 1e-3)
    assert np.all(teacher_values[:, 0, 0, 0] >= 99)


def test_teacher_view_at_its_own_resolution(data_dir):
    student = ip.ViewConfig(image_size=24)
    teacher = ip.ViewConfig(image_size=40)
    ds = ip.student_train_dataset(str(data_dir / "train*"), str(data_dir / "raw/extra*"), K, 2,
                                  student, unlabel_ratio=1, teacher_view=teacher, seed=0)
    batch = next(iter(ds))
    assert batch["image"].shape == (4, 24, 24, 3)
    assert batch["teacher_image"].shape == (2, 40, 40, 3)


def test_stored_labels_required_but_missing_names_the_file(data_dir):
    ds = ip.student_train_dataset(str(data_dir / "train*"), str(data_dir / "raw/extra*"), K, 4,
                                  SMALL, unlabel_ratio=1, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="extra-0000"):
        next(iter(ds))


def test_unlabel_ratio_zero_is_supervised(data_dir):
    ds = ip.student_train_dataset(str(data_dir / "train*"), None, K, 5, SMALL, seed=0)
    batch = next(iter(ds))
    assert set(batch) == {"image", "label"} and batch["image"].shape[0] == 5


def test_same_seed_same_stream_other_seed_differs(data_dir):
    view = ip.ViewConfig(image_size=32, small_image=True, augment_name="v1", randaug_mag=9)

    def first_batches(seed):
        ds = ip.student_train_dataset(str(data_dir / "train*"),
                                      str(data_dir / "unlabeled/extra*"), K, 4, view,
                                      unlabel_ratio=1, seed=seed)
        return [b["image"].numpy() for b in ds.take(3)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_per_replica_batches_under_mirrored_strategy(data_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    global_batch = 8

    def dataset_fn(context):
        b = context.get_per_replica_batch_size(global_batch)
        return ip.student_train_dataset(str(data_dir / "train*"),
                                        str(data_dir / "unlabeled/extra*"), K, b, SMALL,
                                        unlabel_ratio=1.5, input_context=context, seed=0)

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    batch = next(iter(dist))
    per_replica = strategy.experimental_local_results(batch["image"])
    # B = 4 per replica, U = ceil(4 * 1.5) = 6 per replica.
    assert [t.shape[0] for t in per_replica] == [10, 10]
    assert [t.shape[0] for t in strategy.experimental_local_results(batch["unl_probs"])] == [6, 6]


def test_eval_dataset_sees_every_image_once_with_partial_last_batch(data_dir):
    ds = ip.eval_dataset(str(data_dir / "dev*"), K, 4, SMALL)
    batches = list(ds.as_numpy_iterator())
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    labels = np.concatenate([b["label"] for b in batches])
    values = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
    np.testing.assert_allclose(values, 10 * labels, atol=1)
    assert sorted(labels.tolist()) == sorted([i % K for i in range(10)])


def test_corrupt_image_names_the_file_or_is_skipped_and_counted(tmp_path):
    good = [schema.encode_labeled(_jpeg(10), 1) for _ in range(5)]
    bad = schema.encode_labeled(b"\xff\xd8 this is not a jpeg", 1)
    writers.write_records(str(tmp_path / "train-00000-of-00001"), good[:2] + [bad] + good[2:])
    ds = ip.eval_dataset(str(tmp_path / "train*"), K, 2, SMALL)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"train-00000-of-00001"):
        list(ds)
    skipped = readers.SkippedRecords()
    ds = ip.eval_dataset(str(tmp_path / "train*"), K, 2, SMALL, skip_corrupt=True,
                         skipped=skipped)
    assert sum(len(b["label"]) for b in ds.as_numpy_iterator()) == 5
    assert skipped.count == 1 and skipped.first[0][1] == 2


def test_imagenet_style_views_and_randaugment_shapes(tmp_path):
    rng = np.random.default_rng(0)
    recs = [schema.encode_labeled(tf.io.encode_jpeg(
        rng.integers(0, 256, (50, 60, 3)).astype(np.uint8)).numpy(), i % K) for i in range(8)]
    writers.write_records(str(tmp_path / "train-00000-of-00001"), recs)
    view = ip.ViewConfig(image_size=24, augment_name="v1", randaug_mag=15)
    batch = next(iter(ip.labeled_train_dataset(str(tmp_path / "train*"), K, 4, view, seed=0)))
    assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == tf.float32
    assert batch["image"].numpy().max() <= 255.0 and batch["image"].numpy().min() >= 0.0


def test_start_batch_resumes_the_exact_stream(data_dir):
    view = ip.ViewConfig(image_size=32, small_image=True, augment_name="v1", randaug_mag=9)

    def batches(start, n):
        ds = ip.student_train_dataset(str(data_dir / "train*"),
                                      str(data_dir / "unlabeled/extra*"), K, 4, view,
                                      unlabel_ratio=1, seed=5, start_batch=start)
        return [b for b in ds.take(n).as_numpy_iterator()]

    full, resumed = batches(0, 9), batches(7, 2)  # crosses an epoch of the 24 labeled images
    for a, b in zip(full[7:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
