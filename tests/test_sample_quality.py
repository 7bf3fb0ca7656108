"""Sample quality: FID of a set against itself is 0, against a shifted copy it grows with the shift
(a mean shift c of the features: exactly |c|^2), and it equals both the closed form and
torchmetrics run on the images with the same features; KID is the unbiased MMD of the cubic
kernel; precision and recall on known geometries; the feature classifier trains, is saved and
read back, and bad files are refused; Inception without torch-fidelity is refused in one line;
vae-eval writes the scores into eval.json."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from compose import REPO, run_eval
from test_disentanglement import trained

from vae_lightning import sample_quality as sq
from vae_lightning.data.idx import write_idx
from vae_lightning.errors import ConfigError, DataError


def synthetic(n, seed=0, size=28):
    """Labelled images: class c is a bright 6x6 square at one of ten places, on faint noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, size, size, generator=g) * 0.2
    for i, c in enumerate(y.tolist()):
        row, col = 3 + 12 * (c // 5), 2 + 5 * (c % 5)
        x[i, 0, row:row + 6, col:col + 6] = 0.9
    return x, y


@pytest.fixture(scope="module")
def classifier():
    x, y = synthetic(2000)
    return sq.train_classifier(x, y, epochs=3, batch_size=64, lr=3e-3, width=8, num_features=32)


def test_the_classifier_learns_its_classes(classifier):
    x, y = synthetic(500, seed=1)
    assert sq.accuracy(classifier, x, y) > 0.95
    assert sq.features(classifier, x).shape == (500, 32)


def test_fid_of_a_set_against_itself_is_zero_and_a_mean_shift_is_its_square_norm():
    torch.manual_seed(0)
    real = torch.randn(3000, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    assert sq.fid(real, real) == pytest.approx(0.0, abs=1e-6)
    for size in (0.1, 0.5, 2.0):
        shift = size * torch.ones(8, dtype=torch.float64)
        assert sq.fid(real, real + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_is_the_closed_form():
    torch.manual_seed(1)
    a = torch.randn(2000, 6, dtype=torch.float64)
    scale = torch.diag(torch.linspace(0.5, 2, 6, dtype=torch.float64))
    b = torch.randn(2000, 6, dtype=torch.float64) @ scale + 0.3
    m1, m2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert sq.fid(a, b) == pytest.approx(expected, rel=1e-8)


def test_fid_of_gaussian_samples_approaches_the_frechet_distance_of_their_populations():
    """N(0, I) against N(m, diag(s^2)): d^2 = |m|^2 + sum_i (1 + s_i^2 - 2 s_i) =
    |m|^2 + |1 - s|^2. With 40,000 draws in 4 dimensions the sample estimate is within a few
    hundredths (its bias and spread are O(d / n) and O(1 / sqrt(n)))."""
    g = torch.Generator().manual_seed(4)
    m = torch.tensor([1.0, -0.5, 0.0, 0.25], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    real = torch.randn(40000, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(40000, 4, generator=g, dtype=torch.float64) * s + m
    population = float(m @ m + ((1 - s) ** 2).sum())
    assert population == pytest.approx(2.8125)
    assert sq.fid(real, fake) == pytest.approx(population, abs=0.03)
    same = torch.randn(40000, 4, generator=g, dtype=torch.float64)
    assert 0 <= sq.fid(real, same) < 0.01  # two draws of one population


def test_fid_grows_with_the_shift_of_the_images_and_is_torchmetrics_own(classifier):
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, _ = synthetic(1000, seed=2)
    real = sq.features(classifier, x)
    found = [sq.fid(real, sq.features(classifier, (x + shift).clamp(0, 1)))
             for shift in (0.0, 0.05, 0.15, 0.4)]
    assert found[0] == pytest.approx(0.0, abs=1e-6)
    assert found == sorted(found) and found[1] > 0, found

    class Net(torch.nn.Module):  # the classifier's features, as torchmetrics calls a network
        num_features = classifier.num_features

        def forward(self, images):
            return classifier.features(images).double()

    shifted = (x + 0.15).clamp(0, 1)
    metric = FrechetInceptionDistance(feature=Net())
    metric.update(x, real=True)
    metric.update(shifted, real=False)
    assert sq.fid(real, sq.features(classifier, shifted)) == pytest.approx(
        float(metric.compute()), rel=1e-6)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    torch.manual_seed(2)
    a = torch.randn(300, 4, dtype=torch.float64)
    b = torch.randn(300, 4, dtype=torch.float64) + 0.5

    def kernel(u, v):
        return (u @ v.T / u.shape[1] + 1) ** 3

    def off_diagonal_mean(k):
        return (k.sum() - k.diagonal().sum()) / (len(k) * (len(k) - 1))

    mmd = off_diagonal_mean(kernel(a, a)) + off_diagonal_mean(kernel(b, b)) \
        - 2 * kernel(a, b).mean()
    mean, _ = sq.kid(a, b, subsets=1, subset_size=300)
    assert mean == pytest.approx(float(mmd), rel=1e-6)
    same, spread = sq.kid(a, torch.randn(300, 4, dtype=torch.float64), subsets=20,
                          subset_size=100)
    assert abs(same) < 3 * spread + 1e-3
    assert sq.kid(a, a + 1.0, subsets=20, subset_size=100)[0] > mean > same


def test_precision_and_recall():
    torch.manual_seed(3)
    real = torch.randn(500, 2, dtype=torch.float64)
    assert sq.precision_recall(real, real) == (1.0, 1.0)
    assert sq.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # A generator that covers one small part of the data: precise, without recall.
    collapsed = real[real[:, 0] > 1.2]
    precision, recall = sq.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.3
    line = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert sq.kth_neighbour_distance(line, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="eval.nearest_k=3"):
        sq.precision_recall(real, real[:3])


def test_the_classifier_is_saved_and_read_back(classifier, tmp_path):
    path = sq.classifier_path(tmp_path, "mnist")
    assert path == tmp_path / "feature_classifiers" / "mnist.pt"
    sq.save_classifier(path, classifier, data="mnist", test_accuracy=0.5)
    net, record = sq.load_classifier(path, (1, 28, 28), "eval.classifier")
    assert record["data"] == "mnist" and record["test_accuracy"] == 0.5
    x, _ = synthetic(20, seed=3)
    assert torch.equal(sq.features(net, x), sq.features(classifier, x))


def test_a_missing_classifier_says_how_to_make_one_for_the_run_s_data(tmp_path):
    """The refusal fills in the script's command for a data set it trains on (the run's data
    and data root, not placeholders), and for another (dSprites, which the script refuses)
    says to name a classifier of one's own or leave sample quality out."""
    missing = tmp_path / "feature_classifiers" / "mnist.pt"
    with pytest.raises(ConfigError) as err:
        sq.load_classifier(missing, (1, 28, 28), "eval.classifier", "mnist", tmp_path)
    assert (f"python scripts/train_feature_classifier.py --data mnist --root {tmp_path} "
            f"(in a checkout of the repository; it writes {missing})") in str(err.value)
    with pytest.raises(ConfigError) as err:
        sq.load_classifier(tmp_path / "dsprites.pt", (1, 64, 64), "eval.classifier", "dsprites",
                           tmp_path)
    assert ("trains one for mnist, fashion_mnist only: for data=dsprites name a classifier of "
            "your own with eval.classifier=<file>") in str(err.value)
    assert "--data" not in str(err.value)


def test_bad_classifier_files_are_refused_naming_the_file(classifier, tmp_path):
    with pytest.raises(ConfigError, match=r"eval.classifier: no feature classifier at .*missing"):
        sq.load_classifier(tmp_path / "none.pt", (1, 28, 28), "eval.classifier")
    path = tmp_path / "c.pt"
    sq.save_classifier(path, classifier, data="mnist")
    with pytest.raises(DataError, match=r"for images \[1, 28, 28\], not the model's"):
        sq.load_classifier(path, (1, 64, 64), "eval.classifier")
    for content in (b"\x00" * 64, None):
        if content is None:
            torch.save({"state_dict": {}, "classes": 10}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(DataError, match=f"{path} is not a feature classifier"):
            sq.load_classifier(path, (1, 28, 28), "eval.classifier")
    sq.save_classifier(path, classifier, data="mnist")
    record = torch.load(path, weights_only=True)
    record["state_dict"] = {k: v[:1] for k, v in record["state_dict"].items()}
    torch.save(record, path)
    with pytest.raises(DataError, match="do not fit the network"):
        sq.load_classifier(path, (1, 28, 28), "eval.classifier")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DataError, match="a FIFO"):
        sq.load_classifier(path, (1, 28, 28), "eval.classifier")


@pytest.mark.parametrize("change, words", [
    # its settings' network: 3.5 GB, allocated before this was said
    (lambda r: r.update(width=4096, num_features=4096, classes=4096),
     r"body.0.weight has shape \[8, 1, 3, 3\], not \[4096, 1, 3, 3\]"),
    (lambda r: r["state_dict"]["head.weight"].view(-1)[0].fill_(float("nan")),
     "head.weight holds NaN or infinite values"),
])
def test_a_classifier_file_is_checked_before_its_network_is_allocated(change, words, classifier,
                                                                      tmp_path):
    """A file's settings size the network it is loaded into: its tensors are checked against a
    network of those settings on the meta device first (a file of a few bytes asking for width
    4096 took 3.5 GB and 14 s to refuse), and must be finite (NaN weights loaded, and gave NaN
    features to the FID)."""
    import resource

    path = tmp_path / "c.pt"
    sq.save_classifier(path, classifier, data="mnist")
    record = torch.load(path, weights_only=True)
    change(record)
    torch.save(record, path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=f"{path}: its weights do not fit the network its "
                       f"settings describe \\({words}"):
        sq.load_classifier(path, (1, 28, 28), "eval.classifier")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, grown_mb


def test_inception_without_torch_fidelity_is_refused_naming_what_to_download(tmp_path,
                                                                            monkeypatch):
    # As if it were not installed, whether or not it is (the dev extras install it): a None in
    # sys.modules makes find_spec answer None and an import fail.
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ConfigError) as err:
        sq.inception_features(str(tmp_path / "w.pth"), "eval.inception_weights")
    message = str(err.value)
    assert "\n" not in message and "pip install torch-fidelity" in message
    assert sq.INCEPTION_URL in message and "eval.inception_weights=<file>" in message


# --------------------------------------------------------------------------------- vae-eval
@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """An MNIST-format data root (synthetic images), a VAE trained on it for a few steps."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    for prefix, n, seed in (("train", 600, 0), ("t10k", 300, 1)):
        x, y = synthetic(n, seed)
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte",
                  (x[:, 0] * 255).round().to(torch.uint8).numpy())
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte", y.numpy().astype(np.uint8))
    run = tmp_path_factory.mktemp("run")
    path = trained(["data=mnist", f"data.root={root}", "data.download=false",
                    "data.val_size=100", "model.latent=3"], run, 10)[0]
    return root, path


QUALITY = ["eval.k=2", "eval.limit=10", "eval.device=cpu", "eval.samples=200",
           "eval.kid_subset_size=50", "eval.kid_subsets=10"]


def test_vae_eval_writes_the_sample_quality_into_eval_json(mnist_run, classifier, tmp_path):
    root, path = mnist_run
    sq.save_classifier(sq.classifier_path(root, "mnist"), classifier, data="mnist",
                       test_accuracy=0.99)
    results = run_eval([f"ckpt_path={path}", f"eval.data_root={root}", *QUALITY,
                        "eval.sample_quality=[fid,kid,precision_recall]",
                        f"output_dir={tmp_path}"])
    saved = json.loads((tmp_path / "eval.json").read_text())["sample_quality"]
    assert saved == results["sample_quality"]
    assert saved["real"] == 200 and saved["generated"] == 200 and saved["split"] == "test"
    assert saved["features"] == "classifier"
    assert saved["classifier"] == str(sq.classifier_path(root, "mnist"))
    assert saved["classifier_record"]["test_accuracy"] == 0.99
    assert saved["fid"] > 0 and saved["kid"]["subset_size"] == 50
    assert 0 <= saved["precision"] <= 1 and 0 <= saved["recall"] <= 1
    assert saved["samples_are"] == "E[x|z]"


def test_vae_eval_prints_the_sample_quality_with_its_bounds(mnist_run, classifier, tmp_path,
                                                             monkeypatch, capsys):
    """The summary vae-eval prints at its end names the sample-quality scores beside the bounds
    (they were only in earlier log lines and eval.json)."""
    from test_hostile import run as command

    from vae_lightning import cli

    root, path = mnist_run
    sq.save_classifier(sq.classifier_path(root, "mnist"), classifier, data="mnist",
                       test_accuracy=0.99)
    done = command(cli.evaluate, [f"ckpt_path={path}", f"eval.data_root={root}", *QUALITY,
                                  "eval.sample_quality=[fid,kid,precision_recall]",
                                  f"output_dir={tmp_path}"], monkeypatch, capsys, tmp_path)
    assert done.code == 0, done.err[-2000:]
    saved = json.loads((tmp_path / "eval.json").read_text())["sample_quality"]
    line = next(line for line in done.out.splitlines() if "sample quality" in line)
    assert line.startswith("test sample quality (200 samples against 200 images, classifier "
                           f"features): fid {saved['fid']:.4g}, precision "), line
    assert f"kid {saved['kid']['mean']:.4g} +- " in line


def test_sample_quality_is_added_to_an_evaluation_without_estimating_its_bounds_again(
        mnist_run, classifier, tmp_path):
    """eval.bounds=false: FID after an hours-long k = 5000 evaluation took that evaluation again
    (or a cheap k replaced its eval.json). The bounds are now the eval.json's, unchanged, and the
    scores are added to it; an eval.json of another checkpoint or split is refused, as is
    nothing asked besides the bounds, or AIS (paired with its own IW estimate)."""
    root, path = mnist_run
    sq.save_classifier(sq.classifier_path(root, "mnist"), classifier, data="mnist",
                       test_accuracy=0.99)
    base = [f"ckpt_path={path}", f"eval.data_root={root}", *QUALITY, f"output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="eval.bounds=false: there is no evaluation with "
                                          "bounds in"):
        run_eval([*base, "eval.bounds=false", "eval.sample_quality=[fid]"])
    first = run_eval([*base, "eval.k=3"])  # the "long" evaluation: bounds only
    added = run_eval([*base, "eval.k=50", "eval.bounds=false", "eval.sample_quality=[fid]"])
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["iw"] == first["iw"] and saved["elbo"] == first["elbo"] and saved["k"] == 3
    assert saved["sample_quality"]["fid"] == added["sample_quality"]["fid"] > 0
    with pytest.raises(ConfigError, match="nothing else is asked"):
        run_eval([*base, "eval.bounds=false"])
    with pytest.raises(ConfigError, match="eval.bounds=false with eval.ais_steps=5"):
        run_eval([*base, "eval.bounds=false", "eval.ais_steps=5", "eval.sample_quality=[fid]"])
    with pytest.raises(ConfigError, match="is of another split 'test' \\(this one: 'val'\\)"):
        run_eval([*base, "eval.bounds=false", "eval.split=val", "eval.sample_quality=[fid]"])
    assert json.loads((tmp_path / "eval.json").read_text()) == saved  # nothing written


def test_vae_eval_without_a_classifier_says_how_to_train_one(mnist_run, tmp_path):
    root, path = mnist_run
    missing = tmp_path / "none.pt"
    with pytest.raises(ConfigError, match="scripts/train_feature_classifier.py") as err:
        run_eval([f"ckpt_path={path}", f"eval.data_root={root}", *QUALITY,
                  "eval.sample_quality=[fid]", f"eval.classifier={missing}",
                  f"output_dir={tmp_path}"])
    assert str(missing) in str(err.value)
    assert not (tmp_path / "eval.json").exists()


def test_the_training_script_reports_the_test_accuracy_and_writes_the_weights(mnist_run,
                                                                             tmp_path):
    root, _ = mnist_run
    out = tmp_path / "classifier.pt"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_feature_classifier.py"), "--data",
         "mnist", "--root", str(root), "--epochs", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split("test accuracy ")[1].split()[0])
    net, record = sq.load_classifier(out, (1, 28, 28), "eval.classifier")
    assert record["data"] == "mnist" and record["test_accuracy"] == pytest.approx(accuracy,
                                                                                 abs=1e-4)
    assert record["train_size"] == 600 and record["epochs"] == 1


def test_too_few_samples_for_precision_and_recall_are_refused_before_the_bound(
        mnist_run, classifier, tmp_path):
    root, path = mnist_run
    sq.save_classifier(tmp_path / "c.pt", classifier, data="mnist")
    # eval.max_hours refuses any bound: the refusal seen is the one made before the bound.
    with pytest.raises(ConfigError, match=r"eval.nearest_k=3: .*\(there are 3 and 3\)"):
        run_eval([f"ckpt_path={path}", f"eval.data_root={root}", *QUALITY, "eval.samples=3",
                  "eval.sample_quality=[fid,precision_recall]", f"eval.classifier={tmp_path}/c.pt",
                  "eval.max_hours=1e-9", f"output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
