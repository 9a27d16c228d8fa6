"""The command line a researcher uses (issue #24): no silent fallbacks, clear messages, consistent options.

One tiny run is trained through the CLI from another working directory with a relative --data-root; every
other test reads it. Expected values are computed independently (closed-form chance levels, the run's own
files, the parser's own lists).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from ralbook import cli
from ralbook.checkpoint import HASH_KEY, load_file, with_content_hash
from ralbook.data.demo import generate_demo
from ralbook.files import save_atomic
from ralbook.cli import build_parser
from ralbook.cli import train as train_cli
from ralbook.config import build_config
from ralbook.retrieval.index import MANIFEST
from ralbook.training.rundir import BEST_FILE, CONFIG_FILE, LAST_FILE, read_metrics
from test_train import DIMS

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent
SMALL = ["--set", "model.hidden_size=16", "--set", "model.n_heads=2", "--set", f"data.visual_dim={DIMS['visual_dim']}",
         "--set", f"data.text_dim={DIMS['text_dim']}", "--batch-size", "8"]


class chdir:
    def __init__(self, path: Path):
        self.path, self.before = path, os.getcwd()

    def __enter__(self) -> None:
        os.chdir(self.path)

    def __exit__(self, *exc: object) -> None:
        os.chdir(self.before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(data root, run dir, captured train stdout): 2 epochs of 2 steps, trained with --data-root typed relative to
    the working directory and --no-progress."""
    base = tmp_path_factory.mktemp("cli")
    generate_demo(base / "data", n_train=12, n_val=4, n_test=12, latent_dim=8, **DIMS)  # with ambiguous captions
    out = base / "run"
    buffer = io.StringIO()
    with chdir(base), contextlib.redirect_stdout(buffer):
        assert cli.main(["train", "--data-root", "data", "--epochs", "2", "--out", "run", "--no-progress"] + SMALL) == 0
    return base / "data", out, buffer.getvalue()


def data_args(root: Path) -> list[str]:
    return ["--data-root", str(root), "--no-progress"]


# ----------------------------------------------------------------------------- 5. one rule for data roots


def test_a_cli_run_stores_an_absolute_data_root_and_evaluates_from_another_folder(run, tmp_path, capsys):
    root, out, _ = run
    stored = json.loads((out / CONFIG_FILE).read_text())["data"]["data_root"]
    assert Path(stored).is_absolute() and Path(stored) == root.resolve()
    with chdir(tmp_path):  # no data/ here: the stored absolute root must be used
        assert cli.main(["evaluate", "--checkpoint", str(out), "--no-progress"]) == 0
    assert "fused" in capsys.readouterr().out
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    cfg = json.loads((moved / CONFIG_FILE).read_text())
    assert cfg  # the checkpoint carries the config; point it at a missing root through --set
    assert cli.main(["evaluate", "--checkpoint", str(moved), "--set", 'data.data_root="/nowhere/at/all"']) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "/nowhere/at/all" in err


# ----------------------------------------------------------------------------- 1. evaluate --relevant


def _chance(counts: list[int], n: int) -> float:
    """Closed form by brute force over k: 1 - C(n-m, k)/C(n, k), summed over R@1,5,10,100."""
    total = 0.0
    for k in (1, 5, 10, 100):
        k = min(k, n)
        total += 100.0 * sum(1 - math.comb(n - m, k) / math.comb(n, k) for m in counts) / len(counts)
    return total


def test_evaluate_states_its_ground_truth_and_prints_the_matching_chance_row(run, tmp_path, capsys):
    root, out, _ = run
    relevant = json.loads((root / "demo" / "GroundTruth" / "relevant_test.json").read_text())
    report = tmp_path / "e.json"
    assert cli.main(["evaluate", "--checkpoint", str(out), "--relevant",
                     str(root / "demo" / "GroundTruth" / "relevant_test.json"), "--json", str(report)]
                    + data_args(root)) == 0
    printed = capsys.readouterr().out
    assert "relevance lists of" in printed and "chance" in printed
    saved = json.loads(report.read_text())
    n_videos = saved["n_videos"]
    want = _chance([len(relevant[q["cap_id"]]) for q in saved["queries"]], n_videos)
    assert saved["chance"]["SumR"] == pytest.approx(want)
    assert saved["ground_truth"]["captions_with_lists"] == saved["n_queries"]
    prov = saved["provenance"]
    assert prov["split"] == "test" and prov["relevant"]["path"].endswith("relevant_test.json")
    assert len(prov["checkpoint"]["sha256"]) == 64 and prov["checkpoint"]["path"].endswith(BEST_FILE)
    assert {"torch", "ralbook", "precision", "threads"} <= set(prov["environment"])
    # without the file: one truth per caption, and a lower chance level
    assert cli.main(["evaluate", "--checkpoint", str(out), "--json", str(report)] + data_args(root)) == 0
    plain = json.loads(report.read_text())
    assert "own video" in capsys.readouterr().out and plain["ground_truth"]["relevant_file"] is None
    assert plain["chance"]["SumR"] == pytest.approx(_chance([1] * plain["n_queries"], n_videos))
    assert plain["chance"]["SumR"] <= saved["chance"]["SumR"]


def test_evaluate_refuses_another_splits_relevance_file_and_warns_on_partial_ones(run, tmp_path, capsys):
    root, out, _ = run
    val_file = root / "demo" / "GroundTruth" / "relevant_val.json"
    assert cli.main(["evaluate", "--checkpoint", str(out), "--relevant", str(val_file)] + data_args(root)) == 2
    err = capsys.readouterr().err
    n_val = len(json.loads(val_file.read_text()))
    assert str(val_file) in err and "'test'" in err and f"{n_val} caption ids" in err
    relevant = json.loads((root / "demo" / "GroundTruth" / "relevant_test.json").read_text())
    part = dict(list(relevant.items())[:3])
    (tmp_path / "part.json").write_text(json.dumps(part))
    assert cli.main(["evaluate", "--checkpoint", str(out), "--relevant", str(tmp_path / "part.json")]
                    + data_args(root)) == 0
    captured = capsys.readouterr()
    assert f"for 3 of the {len(relevant)} captions" in captured.err
    assert f"for 3 of {len(relevant)} captions" in captured.out


# ----------------------------------------------------------------------------- 3. index and --rerank


def test_rerank_needs_an_index_and_the_mixed_frame_row_is_labelled(run, tmp_path, capsys):
    root, out, _ = run
    assert cli.main(["evaluate", "--checkpoint", str(out), "--rerank", "5"] + data_args(root)) == 2
    assert "--index" in capsys.readouterr().err
    idx = tmp_path / "idx"
    assert cli.main(["index", "--checkpoint", str(out), "--out", str(idx)] + data_args(root)) == 0
    assert json.loads((idx / MANIFEST).read_text())["provenance"]["checkpoint"]["path"].endswith(BEST_FILE)
    assert cli.main(["evaluate", "--checkpoint", str(out), "--index", str(idx), "--rerank", "4", "--json",
                     str(tmp_path / "two.json")] + data_args(root)) == 0
    printed = capsys.readouterr().out
    rows = [line.split()[0] for line in printed.splitlines() if line[:1].isalpha()]
    assert "frame@4" in rows and "frame" not in rows and "chance" in rows
    assert set(json.loads((tmp_path / "two.json").read_text())["metrics"]) == {"clip", "frame@4", "fused"}


def test_index_refuses_a_run_directory_and_another_checkpoints_index(run, tmp_path, capsys):
    root, out, _ = run
    assert cli.main(["index", "--checkpoint", str(out), "--out", str(out)] + data_args(root)) == 2
    err = capsys.readouterr().err
    assert "run directory" in err and "config.json" in err and "--force" in err
    idx = tmp_path / "idx"
    assert cli.main(["index", "--checkpoint", str(out), "--out", str(idx)] + data_args(root)) == 0
    assert cli.main(["index", "--checkpoint", str(out), "--out", str(idx)] + data_args(root)) == 0  # same weights
    capsys.readouterr()
    ckpt = load_file(out / BEST_FILE)
    ckpt["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    other = tmp_path / "other.pt"
    save_atomic(with_content_hash({k: v for k, v in ckpt.items() if k != HASH_KEY}), other)
    assert cli.main(["index", "--checkpoint", str(other), "--out", str(idx)] + data_args(root)) == 2
    err = capsys.readouterr().err
    assert "other weights" in err and "--force" in err
    assert cli.main(["index", "--checkpoint", str(other), "--out", str(idx), "--force"] + data_args(root)) == 0
    assert json.loads((idx / MANIFEST).read_text())["provenance"]["checkpoint"]["path"] == str(other.resolve())


# ----------------------------------------------------------------------------- 6. search


def test_free_text_search_on_a_non_clip_model_fails_before_loading_anything(run, monkeypatch, capsys):
    root, out, _ = run
    from ralbook.cli import search as search_cli

    def no_network(*a, **k):
        raise AssertionError("load_clip must not be called")

    monkeypatch.setattr(search_cli, "load_clip", no_network)
    assert cli.main(["search", "--checkpoint", str(out), "--query", "a dog"] + data_args(root)) == 2
    err = capsys.readouterr().err.strip()
    assert "extract.json" in err and "--query-id" in err and err.endswith("CAPTION_ID")


def test_search_by_a_stored_caption_with_and_without_an_index(run, tmp_path, capsys):
    root, out, _ = run
    cap = (root / "demo" / "TextData" / "demotest.caption.txt").read_text().split()[0]
    own = cap.split("#")[0]
    assert cli.main(["search", "--checkpoint", str(out), "--query-id", cap, "--split", "test", "--top", "12"]
                    + data_args(root)) == 0
    exhaustive = capsys.readouterr().out
    assert cap in exhaustive and own in exhaustive
    idx = tmp_path / "idx"
    assert cli.main(["index", "--checkpoint", str(out), "--out", str(idx)] + data_args(root)) == 0
    capsys.readouterr()
    assert cli.main(["search", "--checkpoint", str(out), "--index", str(idx), "--query-id", cap, "--top", "12",
                     "--rerank", "12"] + data_args(root)) == 0
    assert own in capsys.readouterr().out


# ----------------------------------------------------------------------------- 8. logs


def test_no_progress_keeps_epoch_lines_and_test_table_and_steps_are_logged(run):
    _, out, printed = run
    assert len(re.findall(r"^epoch +\d+/2 ", printed, re.M)) == 2
    assert "test (" in printed and "fused" in printed
    with open(out / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["global_step"]) for r in rows] == list(range(1, len(rows) + 1))
    records = read_metrics(out)
    assert len(rows) == records[-1]["global_step"]
    last_of_epoch = {int(r["epoch"]): r for r in rows}
    for record in records:  # the last step's lr is the epoch record's lr; the mean loss is the record's
        assert float(last_of_epoch[record["epoch"]]["lr"]) == pytest.approx(record["lr"])
        losses = [float(r["loss"]) for r in rows if int(r["epoch"]) == record["epoch"]]
        assert sum(losses) / len(losses) == pytest.approx(record["loss"]["total"], rel=1e-5)


# ----------------------------------------------------------------------------- 9. interrupts and resume


def interrupt_training(monkeypatch, event: str, key: str, value: int):
    """Make ``train``'s training stop with Ctrl-C when ``event`` reports ``info[key] == value``; returns the original."""
    original = train_cli.train

    def interrupted(*args, **kwargs):
        def stop(ev, info):
            if ev == event and info[key] == value:
                raise KeyboardInterrupt
        return original(*args, callbacks=[stop], **kwargs)

    monkeypatch.setattr(train_cli, "train", interrupted)
    return original


def test_ctrl_c_says_what_was_kept_and_the_resume_command_works(run, tmp_path, monkeypatch, capsys):
    root, _, _ = run
    original = interrupt_training(monkeypatch, "step", "global_step", 3)
    out = tmp_path / "r"
    argv = ["train", "--data-root", str(root), "--epochs", "2", "--out", str(out), "--no-progress",
            "--checkpoint-every", "1"] + SMALL
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "epoch 1 (counting from 0) up to step 1, global step 3" in err
    command = err.split("resume with: ")[1].strip()
    assert command == f"python -m ralbook train --out {shlex.quote(str(out))} --resume --checkpoint-every 1 --no-progress"
    monkeypatch.setattr(train_cli, "train", original)
    assert cli.main(shlex.split(command)[3:]) == 0
    assert "at epoch 1/2 (counting from 0), after step 1 of 2 (global step 3)" in capsys.readouterr().out
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "2 epochs" in err and "schedule" in err and "--epochs 5 and another --out" in err


def test_resume_says_where_it_continues(run, tmp_path, monkeypatch, capsys):
    root, _, _ = run
    original = interrupt_training(monkeypatch, "epoch", "epoch", 0)
    out = tmp_path / "r"
    assert cli.main(["train", "--data-root", str(root), "--epochs", "2", "--out", str(out), "--no-progress"]
                    + SMALL) == 130
    assert "keeps 1 completed epoch(s), global step 2" in capsys.readouterr().err
    monkeypatch.setattr(train_cli, "train", original)
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "at the start of epoch 1/2 (counting from 0; 1 completed)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 11. the command line


def test_top_level_help_lists_every_command_with_one_plain_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text
    for name, (_, help_text, reads_writes) in cli.COMMANDS.items():
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), name
        assert "reads" in reads_writes.lower() or "writes" in reads_writes.lower()
    listed = re.findall(r"^    ([a-z-]+)", text, re.M)
    assert set(listed) == set(cli.COMMANDS)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert re.match(r"ralbook \d", capsys.readouterr().out)


def test_options_are_the_same_across_commands():
    from ralbook.cli.common import DEFAULT_RERANK, parse_list
    from ralbook.config import PRESETS
    parser = build_parser()
    subs = next(a for a in parser._actions if a.choices and "train" in a.choices).choices
    for name, sub in subs.items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                assert action.default == "auto", name
            if "--preset" in action.option_strings:
                assert sorted(action.choices) == sorted(PRESETS), name
            if "--rerank" in action.option_strings:
                assert str(DEFAULT_RERANK) in action.help, name
    assert parse_list("1, 2 3", int) == [1, 2, 3]


def test_unknown_set_key_suggests_the_nearest_and_print_config_shows_the_result(capsys):
    assert cli.main(["train", "--preset", "tvr", "--set", "train.lrr=1e-4", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "did you mean train.lr?" in err and "warmup" in err
    assert cli.main(["train", "--preset", "tvr", "--data-root", "/x", "--set", "train.lr=1e-4", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    want = build_config("tvr", overrides=['data.data_root="/x"', 'train.device="auto"', "train.lr=1e-4"]).to_dict()
    assert shown == want and shown["train"]["lr"] == 1e-4


def test_changing_the_hidden_size_of_a_trained_checkpoint_is_one_clear_message(run, capsys):
    root, out, _ = run
    assert cli.main(["evaluate", "--checkpoint", str(out), "--set", "model.hidden_size=32"] + data_args(root)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.hidden_size=16 -> 32 cannot change for a trained checkpoint" in err and "size mismatch" not in err


# ----------------------------------------------------------------------------- 4. the README's commands


def readme_commands() -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", REPO / "notebooks" / "README.md",
                                                                *sorted((REPO / "docs").glob("*.md"))])
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        commands += [line.split("  #")[0].strip() for line in joined.splitlines()
                     if line.strip().startswith("python -m ralbook ")]
    return commands


def test_every_documented_command_parses():
    parser = build_parser()
    commands = readme_commands()
    assert len(commands) >= 10
    for command in commands:
        parser.parse_args(shlex.split(command)[3:])  # SystemExit (a failed test) on a wrong option


def test_the_readme_demo_commands_run_on_a_demo_run(run, tmp_path, capsys):
    """The README's section on the demo run, on a tiny run put where `make demo` puts its run."""
    root, out, _ = run
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The command line on the demo run", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("python -m ralbook")]
    assert any("--query-id" in c for c in commands) and any("--index" in c for c in commands)
    fake = tmp_path / "repo"
    (fake / "outputs" / "demo").mkdir(parents=True)
    shutil.copytree(out, fake / "outputs" / "demo" / "ral_demo")
    (fake / "data").symlink_to(root, target_is_directory=True)
    cap = (root / "demo" / "TextData" / "demotest.caption.txt").read_text().split()[0]
    with chdir(fake):
        for command in commands:
            argv = [a.replace("v0700#enc#0", cap) for a in shlex.split(command)[3:]]
            if "ROOT" in argv:
                argv[argv.index("ROOT")] = str(root)
            code = cli.main(argv + ["--no-progress"] * ("--print-config" not in argv))
            assert code == 0, (command, capsys.readouterr().err)
