"""`flowerbed report` on damaged, truncated, empty and junk run folders: it reads every complete
round, says what it skipped, and never fails with a traceback or an "invalid run config" heading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowerbed.cli import main
from flowerbed.platform.recorder import read_metrics, read_metrics_file

ROUNDS = [
    {"round": 1, "clean_acc": 0.5, "clean_loss": 1.2, "asr": {"dmba-0": 0.1}, "clients": [0, 1], "failures": []},
    {"round": 2, "clean_acc": 0.7, "clean_loss": 0.9, "asr": {"dmba-0": 0.6}, "clients": [0, 1], "failures": []},
    {"round": 3, "clean_acc": 0.8, "clean_loss": 0.7, "asr": {"dmba-0": 0.9}, "clients": [0, 1], "failures": []},
]


def run_folder(tmp_path: Path, metrics: bytes, summary: bytes | None = None, attackers: bytes | None = None) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_bytes(metrics)
    if summary is not None:
        (folder / "summary.json").write_bytes(summary)
    if attackers is not None:
        (folder / "attackers.json").write_bytes(attackers)
    return folder


def lines(records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def report(folder: Path, capsys) -> tuple[int, str, str]:
    code = main(["report", str(folder)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "invalid run config" not in captured.err
    return code, captured.out, captured.err


def test_a_torn_last_line_is_skipped_and_said(tmp_path, capsys):
    torn = lines(ROUNDS[:2]) + json.dumps(ROUNDS[2]).encode()[:25]  # what a killed writer could leave
    folder = run_folder(tmp_path, torn)
    code, out, err = report(folder, capsys)
    assert code == 0
    assert "line 3 skipped: not a complete JSON line" in err
    assert "2 rounds recorded" in out and "no summary.json" in out
    assert (folder / "plots" / "accuracy.png").is_file() and (folder / "plots" / "asr.png").is_file()
    assert [record["round"] for record in read_metrics(folder)] == [1, 2]


def test_junk_lines_and_bytes_are_skipped_and_every_complete_round_is_read(tmp_path, capsys):
    junk = lines(ROUNDS[:1]) + b"\xff\xfe not json\n[1, 2]\n" + lines(ROUNDS[1:2]) + b'{"round": "3"}\n' + lines(ROUNDS[2:])
    folder = run_folder(tmp_path, junk)
    content = read_metrics_file(folder)
    assert [record["round"] for record in content.rounds] == [1, 2, 3]
    assert [number for number, _ in content.skipped] == [2, 3, 5]
    code, out, err = report(folder, capsys)
    assert code == 0 and err.count("skipped") == 3 and "3 rounds recorded" in out


def test_an_empty_run_folder_reports_no_rounds(tmp_path, capsys):
    folder = run_folder(tmp_path, b"")
    code, out, _ = report(folder, capsys)
    assert code == 0 and "0 rounds recorded" in out and not list((folder / "plots").glob("*.png"))


def test_damaged_summary_and_attackers_files_fall_back_to_the_rounds(tmp_path, capsys):
    folder = run_folder(tmp_path, lines(ROUNDS), summary=b'{"final": {"clean_acc": 0.', attackers=b"[not json")
    code, out, _ = report(folder, capsys)
    assert code == 0 and "summary.json is damaged" in out and "0.8000" in out
    assert (folder / "plots" / "accuracy.png").is_file()


def test_a_stopped_run_says_why_and_nan_values_print(tmp_path, capsys):
    stopped = {**ROUNDS[1], "clean_loss": "nan", "stopped": "round 2: the global model evaluates to NaN/Inf (clean_loss)"}
    folder = run_folder(tmp_path, lines([ROUNDS[0], stopped]))
    code, out, _ = report(folder, capsys)
    assert code == 0 and "nan" in out and "evaluates to NaN/Inf" in out


@pytest.mark.parametrize("make", ["missing", "file", "metrics-folder"])
def test_a_path_that_is_not_a_run_folder_exits_2_naming_it(tmp_path, capsys, make):
    target = tmp_path / "not-a-run"
    if make == "file":
        target.write_text("hello")
    elif make == "metrics-folder":
        (target / "metrics.jsonl").mkdir(parents=True)
    code, _, err = report(target, capsys)
    assert code == 2 and err.startswith("flowerbed: ") and "is not a run folder (no metrics.jsonl)" in err
