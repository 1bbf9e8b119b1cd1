"""The console: progress as bars on a terminal and as log lines elsewhere; only clipforget's INFO lines."""

from __future__ import annotations

import logging

from clipforget.app.cli import configure_logging
from clipforget.progress import progress


def test_off_a_terminal_progress_is_log_lines_with_counts_and_eta(caplog):
    with caplog.at_level(logging.INFO, logger="clipforget.progress"):
        items = list(progress(range(4), desc="Fisher", unit="images", interval=0, terminal=False))
    assert items == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "clipforget.progress"]
    assert lines[0].startswith("Fisher: 1/4 images (25%),") and "ETA" in lines[0]
    assert lines[-1].startswith("Fisher: 4 images done in")


def test_a_quick_loop_off_a_terminal_says_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="clipforget.progress"):
        assert list(progress([1, 2], desc="quick", interval=3600, terminal=False)) == [1, 2]
    assert not [r for r in caplog.records if r.name == "clipforget.progress"]


def test_short_loops_in_a_row_still_report_every_interval(caplog, monkeypatch):
    import clipforget.progress as p

    monkeypatch.setattr(p._Heartbeat, "last", 0.0)  # the last line was long ago
    with caplog.at_level(logging.INFO, logger="clipforget.progress"):
        list(progress(range(2), desc="set a", interval=5, terminal=False))
        list(progress(range(2), desc="set b", interval=5, terminal=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "clipforget.progress"]
    assert len(lines) == 1 and lines[0].startswith("set a: 1/2"), "one heartbeat, then quiet for the interval"


def test_on_a_terminal_progress_is_a_tqdm_bar():
    from tqdm.auto import tqdm

    bar = progress(range(3), desc="x", terminal=True)
    assert isinstance(bar, tqdm) and bar.total == 3 and list(bar) == [0, 1, 2]


def test_the_cli_prints_clipforgets_info_and_only_other_libraries_warnings(capsys):
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_logging()
        configure_logging()  # a second call replaces, never doubles
        logging.getLogger("clipforget.app.runner").info("ours speaks")
        logging.info("a library's root-level info")  # noqa: LOG015 - open_clip does this; it must not install basicConfig
        logging.getLogger("open_clip").info("a library's info")
        logging.getLogger("open_clip").warning("a library's warning")
        err = capsys.readouterr().err
        assert err.count("ours speaks") == 1
        assert "info" not in err.replace("ours speaks", "")
        assert err.count("a library's warning") == 1 and "[open_clip] warning:" in err
        assert [h for h in root.handlers if h not in before and not getattr(h, "clipforget_cli", False)] == []
    finally:
        for lg in (root, logging.getLogger("clipforget")):
            for h in [h for h in lg.handlers if getattr(h, "clipforget_cli", False)]:
                lg.removeHandler(h)
        logging.getLogger("clipforget").setLevel(logging.NOTSET)
