"""ralbook.runtime: the thread count from the load, who overrides it, the re-check, and output without a terminal."""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest
import torch

from ralbook import cli
from ralbook.runtime import threads as runtime
from ralbook.runtime.progress import use_bars
from ralbook.errors import RalbookError
from ralbook.runtime.threads import CpuSample, ThreadChoice, ThreadGovernor, choose_threads, other_load


@pytest.fixture
def fresh_runtime(monkeypatch):
    """No choice made yet, no override in the environment; torch's thread count restored afterwards."""
    before = torch.get_num_threads()
    for name in (runtime.ENV_THREADS, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    runtime.reset()
    yield
    runtime.reset()
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the decision


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2), (2, 0.3, 2),            # idle or a little noise: every core
    (2, 0.6, 1), (2, 1.0, 1),            # one busy loop (sharing a core it shows as 0.6-1.0)
    (2, 2.0, 1), (2, 7.5, 1),            # overloaded: never fewer than one thread
    (4, 1.2, 3), (4, 2.4, 2), (8, 0.49, 8),
    (2, None, 2),                        # load unknown: torch's default
])
def test_threads_are_the_cores_not_busy_with_other_work(cores, busy, expected):
    choice = choose_threads(None, {}, cores, busy)
    assert (choice.threads, choice.source, choice.cores) == (expected, "auto", cores)


def test_precedence_argument_then_ralbook_threads_then_omp_num_threads_then_load():
    env = {"RALBOOK_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(4, env, 2, 0.0, source="--threads") == ThreadChoice(4, "--threads", 2)
    assert choose_threads(None, env, 2, 0.0) == ThreadChoice(3, "RALBOOK_THREADS", 2)
    assert choose_threads(0, env, 2, 0.0) == ThreadChoice(3, "RALBOOK_THREADS", 2)      # 0: not a choice
    assert choose_threads("auto", {"OMP_NUM_THREADS": "5"}, 2, 0.0) == ThreadChoice(5, "OMP_NUM_THREADS", 2)
    assert choose_threads(None, {"RALBOOK_THREADS": "auto", "OMP_NUM_THREADS": ""}, 2, 1.0).source == "auto"


@pytest.mark.parametrize("bad", ["two", "-1", "1.5"])
def test_a_bad_thread_count_is_a_one_line_error(bad):
    with pytest.raises(RalbookError, match=f"RALBOOK_THREADS: expected a thread count.*{bad}"):
        choose_threads(None, {"RALBOOK_THREADS": bad}, 2, 0.0)


def test_the_printed_line_says_why():
    assert choose_threads(None, {}, 2, 0.05).line().startswith("threads: 2 (2 cores, machine idle")
    assert "1.0 of them busy with other work" in choose_threads(None, {}, 2, 1.0).line()
    assert choose_threads(3, {}, 2, None, source="--threads").line() == "threads: 3 (set by --threads; 2 cores)"


# ----------------------------------------------------------------------------- measuring


def test_other_load_leaves_out_this_process():
    before, after = CpuSample(10.0, 1.0, 100.0), CpuSample(13.0, 2.0, 102.0)
    assert other_load(before, after) == pytest.approx(1.0)  # 3 busy CPU-seconds, 1 of them ours, over 2 s
    assert other_load(after, after) == 0.0
    assert other_load(CpuSample(0.0, 0.0, 0.0), CpuSample(1.0, 1.5, 1.0)) == 0.0  # never negative


def test_proc_stat_counts_only_the_usable_cpus(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal
    stat.write_text("cpu  900 0 300 5000 100 0 0 0 0 0\n"
                    "cpu0 100 0 50 1000 20 0 0 0 0 0\n"
                    "cpu1 200 10 40 1000 30 5 5 0 0 0\n"
                    "cpu2 600 0 210 3000 50 0 0 0 0 0\n"
                    "intr 12345\n")
    tick = __import__("os").sysconf("SC_CLK_TCK")
    sample = runtime.read_cpu_sample([0, 1], str(stat))
    assert sample.busy_s == pytest.approx((150 + 260) / tick)
    assert runtime.read_cpu_sample([0], str(tmp_path / "missing")) is None


def fake_sys(tmp_path, siblings: list[str], quota: str | None) -> str:
    for cpu, group in enumerate(siblings):
        topo = tmp_path / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(group + "\n")
    if quota is not None:
        (tmp_path / "fs" / "cgroup").mkdir(parents=True)
        (tmp_path / "fs" / "cgroup" / "cpu.max").write_text(quota + "\n")
    return str(tmp_path)


@pytest.mark.parametrize("siblings, quota, expected", [
    (["0", "1"], None, 2),                      # two cores, no hyper-threading
    (["0,2", "1,3", "0,2", "1,3"], None, 2),    # two cores with two hyper-threads each
    (["0", "1", "2", "3"], "max 100000", 4),    # a cgroup without a limit
    (["0", "1", "2", "3"], "150000 100000", 2),  # docker --cpus=1.5: two threads at most
])
def test_cores_count_hyperthreads_once_and_respect_a_cpu_quota(tmp_path, siblings, quota, expected):
    root = fake_sys(tmp_path, siblings, quota)
    assert runtime.physical_cores(list(range(len(siblings))), root) == expected


# ----------------------------------------------------------------------------- re-checking between epochs


def scripted_sampler(samples):
    it = iter(samples)
    return lambda cpus: next(it)


def test_the_recheck_gives_a_core_away_and_takes_it_back():
    applied: list[int] = []
    samples = [CpuSample(11.0, 1.0, 11.0),   # 10 s with another process busy on a core (ours: 1 s)
               CpuSample(21.0, 11.0, 21.0),  # 10 s: only we were busy
               CpuSample(22.0, 12.0, 31.0)]
    gov = ThreadGovernor(ThreadChoice(2, "auto", 2, 0.0), CpuSample(0.0, 0.0, 1.0), [0, 1],
                         sampler=scripted_sampler(samples), set_threads=applied.append)
    said: list[str] = []
    assert gov.recheck(said.append).threads == 1
    assert gov.recheck(said.append).threads == 2
    assert gov.recheck(said.append).threads == 2
    assert applied == [2, 1, 2]
    assert len(said) == 2 and said[0].startswith("threads: 1") and said[0].endswith("(was 2)")


def test_a_user_choice_is_never_revised():
    applied: list[int] = []
    gov = ThreadGovernor(ThreadChoice(2, "--threads", 2), CpuSample(0.0, 0.0, 0.0), [0, 1],
                         sampler=scripted_sampler([CpuSample(100.0, 0.0, 10.0)]), set_threads=applied.append)
    assert gov.recheck().threads == 2 and applied == [2]


# ----------------------------------------------------------------------------- applying it in a process


def test_configure_threads_applies_the_environment_and_prints_once(fresh_runtime, monkeypatch):
    monkeypatch.setenv("RALBOOK_THREADS", "1")
    said: list[str] = []
    assert runtime.configure_threads(announce=said.append).threads == 1
    assert torch.get_num_threads() == 1
    assert runtime.configure_threads(announce=said.append).threads == 1  # library calls keep the choice
    assert said == [f"threads: 1 (set by RALBOOK_THREADS; {runtime.physical_cores(runtime.usable_cpus())} cores)"]
    assert runtime.configure_threads(2, announce=said.append).source == "threads parameter"  # explicit wins
    assert torch.get_num_threads() == 2


def test_configure_threads_measures_the_load_when_nobody_chose(fresh_runtime):
    choice = runtime.configure_threads(announce=None, sample_s=0.05)
    assert choice.source == "auto" and 1 <= choice.threads <= choice.cores
    assert torch.get_num_threads() == choice.threads


def test_cli_threads_flag_reaches_notebook_kernels_through_the_environment(fresh_runtime, monkeypatch, capsys):
    monkeypatch.setenv("RALBOOK_THREADS", "2")
    cli.apply_threads(argparse.Namespace(command="train", threads="1"))
    assert torch.get_num_threads() == 1
    assert __import__("os").environ["RALBOOK_THREADS"] == "1"
    assert capsys.readouterr().out.startswith("threads: 1 (set by --threads")


def test_importing_ralbook_leaves_the_openmp_wait_policy_alone():
    """A short spin (GOMP_SPINCOUNT=10000) cost 10% on a free machine and saved nothing beside a busy one
    (benchmarks/bench_threads.py, README "Threads"): ralbook does not change OpenMP's wait policy."""
    import subprocess
    import sys

    code = "import os, ralbook, torch; print(sorted(k for k in os.environ if k.startswith(('GOMP', 'OMP_WAIT'))))"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("GOMP", "OMP_WAIT"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_looks_at_the_machine_again_every_few_seconds(monkeypatch):
    looks: list[int] = []

    class Governor:
        def recheck(self, announce):
            looks.append(1)

    clock = [100.0]
    monkeypatch.setattr(runtime, "_GOVERNOR", Governor())
    monkeypatch.setattr(runtime, "_LAST_LOOK", 0.0)
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    runtime.recheck_threads_now_and_then(every_s=5.0)
    assert len(looks) == 1  # the first step looks
    clock[0] += 4.9
    runtime.recheck_threads_now_and_then(every_s=5.0)
    assert len(looks) == 1  # too soon
    clock[0] += 0.2
    runtime.recheck_threads_now_and_then(every_s=5.0)
    assert len(looks) == 2
    monkeypatch.setattr(runtime, "_GOVERNOR", None)
    clock[0] += 60
    assert runtime.recheck_threads_now_and_then(every_s=5.0) is None and len(looks) == 2


# ----------------------------------------------------------------------------- progress output in log files


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_or_in_jupyter(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert use_bars(FakeTerminal()) is True
    assert use_bars(io.StringIO()) is False
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    assert use_bars(io.StringIO()) is True


def test_training_into_a_log_file_prints_one_line_per_epoch(tmp_path, capsys, monkeypatch, one_thread):
    from ralbook.data.demo import generate_demo
    from ralbook.config import preset
    from ralbook.training.trainer import train

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    dims = {"visual_dim": 8, "text_dim": 6}
    generate_demo(tmp_path / "data", n_train=24, n_val=6, n_test=6, latent_dim=4, **dims)
    cfg = preset("demo", data={"data_root": str(tmp_path / "data"), **dims}, model={"hidden_size": 8, "n_heads": 2},
                 train={"n_epoch": 3, "batch_size": 8, "patience": 100})
    train(cfg, Path(tmp_path / "run"), progress=True)
    captured = capsys.readouterr()
    epoch_lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["0/3", "1/3", "2/3"]
    assert "\r" not in captured.out + captured.err and "%|" not in captured.err  # no bar fragments


def test_child_processes_count_as_this_runs_work():
    """DataLoader workers are ours: a busy child must not look like other work."""
    import os
    import subprocess

    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc here")
    code = ("import sys, time\nwhile time.process_time() < 0.5: pass\nprint('done', flush=True)\n"
            "sys.stdin.read()")  # spend 0.5 s of CPU, then stay alive until told
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        spent = runtime.descendants_cpu_s(os.sysconf("SC_CLK_TCK"))
    finally:
        child.communicate("")
    assert spent >= 0.45


def test_cli_bad_threads_is_one_line_and_exit_2(fresh_runtime, capsys):
    assert cli.main(["evaluate", "--checkpoint", "missing.pt", "--threads", "many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ralbook evaluate: error: --threads: expected a thread count >= 1, 0 or 'auto', got 'many'"


@pytest.mark.parametrize("name, call", [("02_train", "threads=threads)"),
                                        ("06_ablation_sweep", '"threads": threads')])
def test_notebooks_that_train_take_a_threads_parameter(name, call):
    import nbformat
    import papermill

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    params = papermill.inspect_notebook(str(path))
    assert params["threads"]["default"] == "0"
    assert any(call in cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")


def test_steps_print_one_line_per_stage_where_bars_do_not_render(monkeypatch):
    """Output to a file or a pipe (no terminal, no Jupyter kernel): no carriage returns, one line when the
    loop ends; nothing without progress."""
    import io

    from ralbook.runtime import progress
    from ralbook.runtime.progress import steps

    monkeypatch.setattr(progress, "use_bars", lambda stream=None: False)  # other tests may load ipykernel

    log = io.StringIO()
    assert list(steps(range(7), "score videos", True, unit="batches", stream=log)) == list(range(7))
    text = log.getvalue()
    assert "\r" not in text and len(text.splitlines()) == 1 and text.startswith("score videos: 7 batches in ")
    quiet = io.StringIO()
    assert list(steps(range(3), "x", False, stream=quiet)) == [0, 1, 2] and quiet.getvalue() == ""


def test_hub_bars_are_turned_off_where_bars_do_not_render(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    from ralbook.runtime import progress
    from ralbook.runtime.progress import quiet_hub_bars

    monkeypatch.setattr(progress, "use_bars", lambda stream=None: False)

    try:
        transformers.utils.logging.enable_progress_bar()
        quiet_hub_bars()
        assert not transformers.utils.logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    finally:
        transformers.utils.logging.enable_progress_bar()
        enable_progress_bars()


def test_result_provenance_records_one_label_file_or_a_list_of_them(tmp_path):
    """One file -> one {"path", "sha256"} record; several merged files -> a list of records in the given order."""
    import hashlib

    from ralbook.runtime.provenance import result_provenance

    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("q0\t1\n")
    b.write_text("q1\t0\n")
    record = {"path": str(a.resolve()), "sha256": hashlib.sha256(b"q0\t1\n").hexdigest()}
    assert result_provenance(labels=a)["labels"] == record
    assert result_provenance(labels=str(a))["labels"] == record
    several = result_provenance(labels=[str(b), a])["labels"]
    assert several == [{"path": str(b.resolve()), "sha256": hashlib.sha256(b"q1\t0\n").hexdigest()}, record]
    assert result_provenance(labels=[])["labels"] == [] and result_provenance()["labels"] is None
