"""The Figure-2 reproduction page: runs found from their curve.json, the last evaluations beside
the paper's values, the two methods compared at equal samples seen, and the copied figures."""

import json
import math
import os

import pytest

from vae_lightning.reports.reproduction import main
from vae_lightning.reports.reproduction_runs import ReproductionError, at_samples, find_runs

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = {"seed": 0,
          "optimizer": {"_target_": "torch.optim.Adagrad", "lr": 0.02},
          "data": {"batch_size": 100, "scale": 256.0, "binarize": "none"},
          "model": {"encoder_hidden": [200], "decoder_hidden": [200], "activation": "tanh"}}
# AEVB evaluated at 1e4 .. 3e6, wake-sleep at 1e4 .. 2e6: they share 1e4 .. 2e6, and 2e6 falls
# between AEVB's evaluations at 1e6 and 3e6.
AEVB = [(10_000, 400.0, 390.0), (30_000, 520.0, 505.0), (100_000, 650.0, 640.0),
        (300_000, 740.0, 725.0), (1_000_000, 815.0, 800.0), (3_000_000, 861.237, 850.5)]
WAKE_SLEEP = [(10_000, 100.0, 95.0), (20_000, 150.0, 140.0), (50_000, 230.0, 220.0),
              (200_000, 350.0, 335.0), (500_000, 420.0, 410.0), (2_000_000, 480.125, 470.75)]


def write_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.linspace(0, 1, 16).reshape(4, 4), cmap="gray")


def write_run(directory, method, points, latent=2, data="frey", figures=("manifold", "samples"),
              finished="completed"):
    directory.mkdir(parents=True)
    curve = {"data": data, "latent": latent, "method": method, "train_size": 1565,
             "test_size": 200, "config": CONFIG,
             "points": [{"samples_seen": n, "train/elbo": train, "test/elbo": test}
                        for n, train, test in points]}
    (directory / "curve.json").write_text(json.dumps(curve))
    for name in figures:
        write_png(directory / "figures" / f"{name}.png")
    if finished:
        (directory / "results.json").write_text(json.dumps({"status": finished}))
    return directory


@pytest.fixture
def runs(tmp_path):
    write_run(tmp_path / "runs" / "aevb", "aevb", AEVB)
    write_run(tmp_path / "runs" / "ws", "wake_sleep", WAKE_SLEEP, figures=("manifold",),
              finished=None)
    return tmp_path / "runs"


def test_page_tables_figures_and_copied_images(runs, tmp_path, capsys):
    out = tmp_path / "docs" / "reproduction.md"
    assert main([str(runs), "--out", str(out)]) == 0
    assert "written:" in capsys.readouterr().out
    page = out.read_text()
    assert page.startswith("# Reproduction of Kingma & Welling")
    assert f"`vae-reproduction {runs} --out {out}`" in page
    assert "## Frey Face" in page and "pixels scaled by 1/256" in page
    assert "1,565 training / 200 test points" in page and "minibatch 100" in page
    assert "optimizer AEVB: Adagrad (lr 0.02) / wake-sleep: Adagrad (lr 0.02);" in page
    # A row per run, its last point; the paper's values at the paper's count.
    rows = [line for line in page.splitlines() if line.startswith("| 2 |")]
    assert rows[0] == (f"| 2 | AEVB | 3,000,000 | 861.24 | 850.50 | ≈ 870 at 1e8 | completed "
                       f"| `{runs / 'aevb'}` |")
    assert rows[1] == (f"| 2 | wake-sleep | 2,000,000 | 480.12 | 470.75 | ≈ 575 at 1e8 | running "
                       f"| `{runs / 'ws'}` |")
    # Along the curve: 1e6 is an evaluation of AEVB's and between two of wake-sleep's (5e5 and
    # 2e6); neither reached 1e7.
    ws_1e6 = 410.0 + (470.75 - 410.0) * math.log(2) / math.log(4)
    assert rows[2] == "| 2 | AEVB | 800.00 | — | 850.50 (3e6) | ≈ 870 at 1e8 |"
    assert rows[3] == f"| 2 | wake-sleep | {ws_1e6:.2f} | — | 470.75 (2e6) | ≈ 575 at 1e8 |"
    # Equal samples seen: 1e6, which both reached, and 2e6, the largest count both reached,
    # where AEVB is interpolated in log10(samples) between 1e6 and 3e6.
    assert rows[4] == f"| 2 | 1,000,000 | 800.00 | {ws_1e6:.2f} | {800.0 - ws_1e6:+.2f} |"
    expected = 800.0 + (850.5 - 800.0) * math.log(2) / math.log(3)
    assert rows[5] == (f"| 2 | 2,000,000 | {expected:.2f} | 470.75 "
                       f"| {expected - 470.75:+.2f} |")
    assert f"{expected:.2f}" == "831.86" and len(rows) == 6
    images = tmp_path / "docs" / "reproduction"
    for name in ("figure2_frey.png", "manifold_frey_aevb.png", "manifold_frey_wake_sleep.png",
                 "samples_frey_nz2_aevb.png"):
        assert (images / name).read_bytes()[:8] == PNG, name
        assert f"(reproduction/{name})" in page
    assert page.index("manifold_frey_aevb.png") < page.index("manifold_frey_wake_sleep.png")
    # The wake-sleep run has no samples.png: noted, not shown.
    assert not (images / "samples_frey_nz2_wake_sleep.png").exists()
    assert f"Not found (not shown): `{runs / 'ws' / 'figures' / 'samples.png'}`." in page


def test_an_extra_data_set_has_no_paper_values(tmp_path):
    write_run(tmp_path / "fm", "aevb", AEVB, latent=5, data="fashion_mnist", figures=())
    out = tmp_path / "page.md"
    assert main([str(tmp_path / "fm"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "## Fashion-MNIST (an extra data set)" in page and "The paper did not use" in page
    row = f"| 5 | AEVB | 3,000,000 | 861.24 | 850.50 | — | completed | `{tmp_path / 'fm'}` |"
    assert row in page
    assert "No latent size has both an AEVB and a wake-sleep run." in page
    assert (tmp_path / "reproduction" / "figure2_fashion_mnist.png").read_bytes()[:8] == PNG


def test_two_runs_of_a_kind_are_an_error_naming_both(tmp_path):
    first = write_run(tmp_path / "a", "aevb", AEVB, figures=())
    second = write_run(tmp_path / "b", "aevb", AEVB[:3], figures=())
    with pytest.raises(ReproductionError, match="two runs of data=frey, latent=2, method=aevb") \
            as err:
        find_runs([tmp_path])
    assert str(first) in str(err.value) and str(second) in str(err.value)
    # The same run reached twice (itself and its parent) counts once.
    assert len(find_runs([first, tmp_path / "a"])) == 1


def test_no_runs_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "page.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no curve.json under" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "page.md").exists()


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(points=[1, 2]), "point 0 is 1, not an object"),
    (lambda c: c.update(points=[]), "points=[] is not allowed: expected a non-empty list"),
    (lambda c: c.update(latent="x"), "latent='x' is not allowed: expected the latent size Nz"),
    (lambda c: c.update(latent=True), "latent=True is not allowed"),
    (lambda c: c.update(method="ais"), "method='ais' is not allowed: expected one of 'aevb'"),
    (lambda c: c.pop("data"), "has no data"),
    (lambda c: c["points"][1].update({"test/elbo": "x"}), "point 1's test/elbo='x' is not"),
    # json reads NaN and 1e308 as numbers: the first drew nothing, the second overflowed the
    # figure's axis (a matplotlib warning, then a page with an empty plot).
    (lambda c: c["points"][1].update({"test/elbo": float("nan")}), "point 1's test/elbo=nan"),
    (lambda c: c["points"][0].update({"train/elbo": 1e308}), "point 0's train/elbo=1e+308"),
    (lambda c: c["points"][0].update({"samples_seen": 0}), "point 0's samples_seen=0 is not"),
    (lambda c: c["points"][0].pop("samples_seen"), "point 0 has no samples_seen"),
    (lambda c: c["points"].reverse(), "samples_seen decreases"),
    # The table wrote f"{n:,}" of it: a ValueError traceback.
    (lambda c: c.update(train_size="many"), "train_size='many' is not allowed"),
    (lambda c: c.update(config=[1]), "config=[1] is not allowed"),
])
def test_a_malformed_curve_json_is_one_error_naming_the_file(change, words, runs, tmp_path,
                                                            capsys):
    """A curve.json whose points are not objects, whose latent is not a size or whose bounds are
    not finite numbers is one error naming the file, the key and its value, exit code 2,
    nothing written (each was a traceback, AttributeError or ValueError, or a broken figure)."""
    path = runs / "aevb" / "curve.json"
    curve = json.loads(path.read_text())
    change(curve)
    path.write_text(json.dumps(curve))
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--out", str(tmp_path / "page.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and words in err, err
    assert not (tmp_path / "page.md").exists()


def test_at_samples_is_linear_in_log_samples_and_does_not_extrapolate():
    points = [{"samples_seen": 10, "test/elbo": 0.0}, {"samples_seen": 1000, "test/elbo": 2.0},
              {"samples_seen": 10_000, "test/elbo": 4.0}]
    assert at_samples(points, 100, "test/elbo") == pytest.approx(1.0)  # linear in n: 0.18
    assert at_samples(points, 10 ** 3.5, "test/elbo") == pytest.approx(3.0)
    assert at_samples(points, 10, "test/elbo") == 0.0
    assert at_samples(points, 10_000, "test/elbo") == 4.0
    for n in (9, 10_001):
        with pytest.raises(ValueError, match="outside the curve's range"):
            at_samples(points, n, "test/elbo")


def test_notes_go_under_discussion_and_a_missing_notes_file_is_an_error(runs, tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("Our runs stopped at 1e7 samples, the paper's at 1e8.\n")
    out = tmp_path / "page.md"
    assert main([str(runs), "--out", str(out), "--notes", str(notes)]) == 0
    page = out.read_text()
    assert "## Discussion\n\nOur runs stopped at 1e7 samples, the paper's at 1e8.\n" in page
    assert f"--notes {notes}" in page  # the rebuild command names it
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--out", str(out), "--notes", str(tmp_path / "absent.md")])
    assert exit_info.value.code == 2 and "absent.md" in capsys.readouterr().err


def test_mnist_rows_carry_the_papers_values_at_its_count(tmp_path):
    write_run(tmp_path / "m20", "wake_sleep", WAKE_SLEEP, latent=20, data="mnist", figures=())
    write_run(tmp_path / "m3", "aevb", AEVB, latent=3, data="mnist", figures=())
    out = tmp_path / "page.md"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    page = out.read_text()
    assert "## MNIST\n" in page
    assert "| 3 | AEVB | 3,000,000 | 861.24 | 850.50 | ≈ -133.5 at 2e8 |" in page
    assert "| 20 | wake-sleep | 2,000,000 | 480.12 | 470.75 | ≈ -104 at 2e8 |" in page


def test_the_seed_table_averages_per_seed_differences_at_shared_counts(tmp_path):
    """Per seed, AEVB minus wake-sleep at the same counts; the mean and its standard error over
    seeds; keys with fewer than two seeds of both methods are left out."""
    import math

    from vae_lightning.reports.reproduction_runs import Run
    from vae_lightning.reports.reproduction_tables import seeds_table

    def run(method, seed, values, latent=5):
        points = [{"samples_seen": n, "test/elbo": v} for n, v in zip((1e4, 2e4, 2e5), values)]
        return Run(dir=tmp_path, data="mnist", latent=latent, method=method,
                   config={"seed": seed}, points=points)

    runs = [run("aevb", 0, [-100, -90, -80]), run("wake_sleep", 0, [-103, -89, -85]),
            run("aevb", 1, [-101, -92, -81]), run("wake_sleep", 1, [-102, -95, -86]),
            run("aevb", 0, [-100, -90, -80], latent=3)]  # one seed only: no row
    table = seeds_table(runs)
    rows = [line for line in table.splitlines() if line.startswith("| MNIST")]
    assert len(rows) == 2  # the counts up to 1e5
    diffs = (3.0, 1.0)  # at 1e4: seed 0 +3, seed 1 +1
    mean, se = sum(diffs) / 2, math.sqrt(sum((d - 2) ** 2 for d in diffs)) / math.sqrt(2)
    assert rows[0] == f"| MNIST | 5 | 10,000 | 2 | +{mean:.2f} ± {se:.2f} | 2 of 2 |"
    assert rows[1].endswith("| 1 of 2 |")  # at 2e4: -1 and +3


def test_jobs_that_ended_without_a_curve_are_named_not_dropped(runs, tmp_path, capsys):
    """A sweep job refused before training (bad input, missing data) has a results.json and no
    curve.json: it is not on the page, and the page and the command's line say so (a sweep of
    four whose three failed made a page of one without a word; newcomer walkthrough eight)."""
    failed = runs / "failed"
    failed.mkdir()
    (failed / "results.json").write_text(json.dumps({"status": "error", "message": "no data"}))
    out = tmp_path / "page.md"
    assert main([str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(2 runs)" in printed and f"not on it, ended without a curve: {failed}" in printed
    assert (f"Not on this page: `{failed}` (error), jobs that ended without a curve"
            in out.read_text())
    # none missing: no such line
    failed.joinpath("results.json").unlink()
    assert main([str(runs), "--out", str(out)]) == 0
    assert "Not on this page" not in out.read_text()


@pytest.mark.parametrize("results", ["[1, 2]", '{"status": 3}', "fifo"])
def test_a_run_whose_results_json_is_not_an_object_is_marked_unreadable(results, runs, tmp_path):
    """The status column reads each run's results.json: a list there was an AttributeError
    traceback, and a FIFO named results.json was taken for a run still running; either is the
    status 'unreadable results.json' (only a regular file is opened), the page written."""
    path = runs / "aevb" / "results.json"
    path.unlink(missing_ok=True)
    if results == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(results)
    out = tmp_path / "page.md"
    assert main([str(runs), "--out", str(out)]) == 0
    assert "unreadable results.json" in out.read_text()


def test_a_curve_json_that_is_a_fifo_is_one_error_not_a_wait(runs, tmp_path, capsys):
    """curve.json was read with read_text: a FIFO by that name blocked the page forever."""
    path = runs / "aevb" / "curve.json"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--out", str(tmp_path / "page.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err
