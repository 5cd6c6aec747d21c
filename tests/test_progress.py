"""`sparseinfer.progress`: plain progress lines when stderr is not a terminal (batch-job logs), tqdm when it is."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from sparseinfer.progress import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_percent_and_a_final_line_on_close():
    log = io.StringIO()
    bar = progress_bar(total=8, desc="train relu", file=log, interval=1e9, percent=25)
    assert isinstance(bar, LineProgress)
    for _ in range(7):
        bar.update()
    bar.set_postfix_str("loss=0.5")
    bar.update()
    bar.close()
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in log.getvalue()
    assert lines[0].startswith("train relu") and "2/8" in lines[0] and "8/8" in lines[-1] and "loss=0.5" in lines[-1]


def test_lines_by_time_iteration_and_silence():
    log = io.StringIO()
    assert list(progress_bar(range(3), desc="x", file=log, interval=0.0)) == [0, 1, 2]
    assert [line.split(":")[0] for line in log.getvalue().splitlines()] == ["x"] * 3  # every update is due
    quiet = io.StringIO()
    bar = progress_bar(total=5, file=quiet, enabled=False)
    bar.update(5)
    bar.close()
    assert quiet.getvalue() == ""
    assert isinstance(progress_bar(total=5, file=Terminal()), tqdm)


def test_fit_reports_progress_lines_when_not_on_a_terminal(capsys):
    import sparseinfer as si
    from sparseinfer.data.synthetic import make_synthetic
    from sparseinfer.training import TrainConfig, fit, get_regime

    data = make_synthetic(n_latents=12, dim=6, k=2, n_train=64, n_test=8, seed=0)
    enc, dico = si.create("relu", dim=6, n_latents=12), si.Dictionary.random(12, 6, seed=1)
    fit(enc, dico, data.train_x, get_regime("learn_both"), TrainConfig(steps=20), progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err and err[-1].startswith("train relu") and "20/20" in err[-1]
