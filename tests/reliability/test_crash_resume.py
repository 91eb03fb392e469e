"""Crash-resume: stages killed with SIGKILL at random points end exactly like uninterrupted runs.

DESIGN.md section 2: a stage killed at any point and rerun with the same command continues
where it stopped and ends with exactly the rows of an uninterrupted run, no duplicates, no
partial file visible as complete. Each stage here runs on 200 rows of the built-in
personalization set with the tiny model, is killed 10 times at points drawn from a seeded RNG,
and is then finished by a real ``mipo`` process; the result must equal an uninterrupted run.

Kill points (mixed in a seeded order, each must land):

- ``timer``: SIGKILL from outside after a random delay (during start-up, model loading or a
  chunk), capped so it lands before the run could finish;
- ``parts``: SIGKILL from outside once the journal holds N more parts, after a random delay
  (so usually in the middle of the next chunk);
- ``after-part`` / ``mid-part``: the process kills itself right after its n-th journal part is
  renamed into place, or after writing the part's temporary file but before the rename;
- ``mid-output``: killed while the final artifact's temporary file is written;
- ``before-manifest``: killed after the final artifact is in place but before its manifest.

Start-up of ``import torch, transformers`` costs several CPU seconds, so the killed runs are
forked from a "zygote" process that imported everything once (``python this_file --zygote``):
each run is still a separate process that runs the ``mipo`` CLI and dies by SIGKILL with
whatever it had in memory. The final resume is a fresh ``python cli.py ...`` process.

Cost on 2 idle cores: about a CPU-minute and a half for generate, score, judge --mode verify
and train (default suite); judge --mode rlaif with the tiny model as judge (about a
CPU-minute) and the two expected failures are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mipo_engine.artifacts.store import file_sha256, is_complete, read_manifest
from tests.helpers.mipo_process import run_mipo

REPO_ROOT = Path(__file__).resolve().parents[2]
KILLS_PER_STAGE = 10
ROWS = 200
CHILD_TIME_LIMIT_S = 600.0
"""A forked run still alive after this long is killed and reported as timed out."""
POLL_S = 0.002
"""How often the zygote checks its child and the journal folder (bounded busy-wait)."""

# ---------------------------------------------------------------------------------------------
# The zygote: imports once, forks one child per run, kills it on cue, reports how it ended.
# Runs in its own process (python this_file --zygote); it imports but never uses polars or
# torch before forking (their thread pools start on first use), so every child starts with
# no threads and no half-held locks.
# ---------------------------------------------------------------------------------------------


def _count_parts(parts_dir: str | None) -> int:
    if parts_dir is None or not os.path.isdir(parts_dir):
        return 0
    return sum(
        1
        for name in os.listdir(parts_dir)
        if name.startswith("part-") and name.endswith(".parquet")
    )


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nth_call(n: int) -> Callable[[], bool]:
    """A counter that answers True on exactly its n-th call."""
    calls = [0]

    def tick() -> bool:
        calls[0] += 1
        return calls[0] == n

    return tick


def _install_journal_hook(kind: str, n: int) -> None:
    """Kill the process around the n-th journal part write (after-part / mid-part)."""
    from mipo_engine.artifacts import journal
    from mipo_engine.artifacts.store import atomic_path

    original = journal.write_parquet_atomic
    is_nth = _nth_call(n)

    def write_part(frame: Any, path: Any) -> None:
        if not is_nth():
            original(frame, path)
            return
        if kind == "after-part":
            original(frame, path)
            _sigkill_self()
        with atomic_path(path) as tmp:  # mid-part: the temporary file exists, not renamed
            frame.write_parquet(tmp)
            _sigkill_self()

    journal.write_parquet_atomic = write_part


def _install_output_hook(kind: str) -> None:
    """Kill the process while the final artifact or its manifest is being written."""
    from mipo_engine.artifacts import store

    if kind == "mid-output":

        def write_output(frame: Any, path: Any) -> None:
            with store.atomic_path(path) as tmp:
                frame.write_parquet(tmp)
                _sigkill_self()

        store.write_parquet_atomic = write_output
        return
    original = store.write_json_atomic

    def write_json(path: Any, payload: Any) -> None:
        if str(path).endswith(".manifest.json"):
            _sigkill_self()
        original(path, payload)

    store.write_json_atomic = write_json


def _install_train_hook(kind: str, n: int) -> None:
    """Kill ``mipo train`` at its n-th optimizer step, or in the middle of its n-th checkpoint
    (model written, optimizer not; or trainer_state.json half written)."""
    import transformers
    from transformers.trainer_callback import TrainerState

    from mipo_engine.training.trainer import PreferenceTrainer

    is_nth = _nth_call(n)
    if kind == "train-step":
        original_step = PreferenceTrainer.training_step

        def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            if is_nth():
                _sigkill_self()
            return original_step(self, *args, **kwargs)

        PreferenceTrainer.training_step = training_step
    elif kind == "mid-optimizer":
        original_save = transformers.Trainer._save_optimizer_and_scheduler

        def save_optimizer(self: Any, output_dir: str) -> None:
            if is_nth():
                _sigkill_self()
            original_save(self, output_dir)

        transformers.Trainer._save_optimizer_and_scheduler = save_optimizer
    elif kind == "mid-trainer-state":
        original_json = TrainerState.save_to_json

        def save_to_json(self: Any, json_path: str) -> None:
            if not is_nth():
                original_json(self, json_path)
                return
            text = json.dumps({"global_step": self.global_step, "log_history": []}, indent=2)
            with open(json_path, "w", encoding="utf-8") as handle:
                handle.write(text[: len(text) // 2])
                handle.flush()
                _sigkill_self()

        TrainerState.save_to_json = save_to_json
    else:
        raise ValueError(f"unknown train hook {kind!r}")


def _install_hook(hook: dict[str, Any] | None) -> None:
    if hook is None:
        return
    kind, n = hook["kind"], int(hook.get("n", 1))
    if kind in ("after-part", "mid-part"):
        _install_journal_hook(kind, n)
    elif kind in ("mid-output", "before-manifest"):
        _install_output_hook(kind)
    else:
        _install_train_hook(kind, n)


def _child(app: Any, request: dict[str, Any]) -> None:
    """Run one CLI command in the forked child; never returns."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 1
    try:
        _install_hook(request.get("hook"))
        result = app(request["args"], prog_name="mipo", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # the log must show why, then the child exits non-zero
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _kill_due(kill: dict[str, Any] | None, started: float, parts_reached: list[float]) -> bool:
    """Whether the outside kill of this run is due: a delay after start, or a delay after the
    journal reached a number of parts, whichever comes first."""
    if kill is None:
        return False
    now = time.monotonic()
    if kill.get("after_s") is not None and now - started >= kill["after_s"]:
        return True
    if kill.get("parts") is not None:
        if not parts_reached and _count_parts(kill.get("parts_dir")) >= kill["parts"]:
            parts_reached.append(now)
        if parts_reached and now - parts_reached[0] >= kill.get("delay_s", 0.0):
            return True
    return False


def _supervise(pid: int, kill: dict[str, Any] | None) -> dict[str, Any]:
    """Wait for the child (bounded), killing it when its trigger fires; report how it ended."""
    started = time.monotonic()
    parts_reached: list[float] = []
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"exit": os.waitstatus_to_exitcode(status), "killed_from_outside": False}
        overdue = time.monotonic() - started > CHILD_TIME_LIMIT_S
        if overdue or _kill_due(kill, started, parts_reached):
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return {
                "exit": os.waitstatus_to_exitcode(status),
                "killed_from_outside": True,
                "timed_out": overdue,
                "seconds": round(time.monotonic() - started, 3),
            }
        time.sleep(POLL_S)


def zygote_main() -> None:
    """Import the heavy modules once, then serve one JSON request per stdin line."""
    sys.path.insert(0, str(REPO_ROOT))
    import torch  # noqa: F401 - imported once here, shared by every forked child
    import transformers  # noqa: F401

    import mipo_engine.backends.hf
    import mipo_engine.stages.generate
    import mipo_engine.stages.judge
    import mipo_engine.stages.score
    import mipo_engine.stages.train  # noqa: F401
    from cli import app

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(app, request)
        print(json.dumps(_supervise(pid, request.get("kill"))), flush=True)


# ---------------------------------------------------------------------------------------------
# The test side
# ---------------------------------------------------------------------------------------------


class Zygote:
    """The test's handle on the zygote process: send a run, read how it ended."""

    def __init__(self, log_dir: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        # The zygote runs this file as a script: put the checkout first on its import path.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        self.log_dir = log_dir
        self._stderr = (log_dir / "zygote.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO_ROOT,
            env=env,
            text=True,
        )
        self._read(timeout=600)  # {"ready": true}
        self.runs = 0

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            log = (self.log_dir / "zygote.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the zygote stopped answering; its log:\n{log}")
        return json.loads(line)

    def run(
        self,
        args: list[str],
        *,
        kill: dict[str, Any] | None = None,
        hook: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run ``mipo <args>`` in a forked child; return its exit code and its log."""
        assert self.process.stdin is not None
        self.runs += 1
        log = self.log_dir / f"run-{self.runs:03d}.log"
        request = {"args": args, "log": str(log), "kill": kill, "hook": hook}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        outcome = self._read(timeout=CHILD_TIME_LIMIT_S + 60)
        outcome["log"] = log.read_text(errors="replace") if log.exists() else ""
        return outcome

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # end of input: the zygote exits
        self.process.wait(timeout=60)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    process = Zygote(tmp_path_factory.mktemp("zygote-logs"))
    yield process
    process.close()


def _mipo(args: list[str]) -> subprocess.CompletedProcess[str]:
    """A fresh, real ``mipo`` process (the final resume of every stage)."""
    return run_mipo(args, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash-resume")


@pytest.fixture(scope="module")
def prompts(work: Path, zygote: Zygote) -> Path:
    out = work / "prompts.parquet"
    args = ["ingest", "builtin:personalization-train", "--limit", str(ROWS), "--out", str(out)]
    outcome = zygote.run(args)
    assert outcome["exit"] == 0, outcome["log"]
    return out


def _generate_args(prompts: Path, out: Path, model: Path) -> list[str]:
    return [
        "generate", "--prompts", str(prompts), "--out", str(out), "--model", str(model),
        "--max-new-tokens", "4", "--temperature", "1.0", "--seed", "11",
        "--chunk-pairs", "4", "--batch-size", "4",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def generations(work: Path, prompts: Path, tiny_model_dir: Path, zygote: Zygote) -> Path:
    """The uninterrupted generate run: the reference of the generate test, input of the rest."""
    out = work / "reference" / "generations.parquet"
    outcome = zygote.run(_generate_args(prompts, out, tiny_model_dir))
    assert outcome["exit"] == 0, outcome["log"]
    return out


# ---------------------------------------------------------------------------------------------
# Kill plans
# ---------------------------------------------------------------------------------------------

MIDDLE_KINDS = ("timer", "timer", "parts", "parts", "parts", "after-part", "after-part", "mid-part")
END_KINDS = ("mid-output", "before-manifest")


@dataclass
class Attempt:
    """One killed run: the kind of kill point and the request fields that produce it."""

    kind: str
    kill: dict[str, Any] | None
    hook: dict[str, Any] | None


def kill_kinds(rng: random.Random) -> list[str]:
    """10 kill points: eight in a seeded order during the work, then the two end windows."""
    middle = list(MIDDLE_KINDS)
    rng.shuffle(middle)
    return [*middle, *END_KINDS]


def plan_attempt(kind: str, rng: random.Random, parts_dir: Path) -> Attempt:
    """The trigger of one kill, drawn from ``rng`` given the parts already in the journal."""
    done = _count_parts(str(parts_dir))
    if kind == "timer":
        # Capped at 4 more parts, so the kill lands before the run can finish.
        kill = {"after_s": rng.uniform(0.0, 1.5), "parts_dir": str(parts_dir), "parts": done + 4}
        return Attempt(kind, kill, None)
    if kind == "parts":
        kill = {
            "parts_dir": str(parts_dir),
            "parts": done + rng.randint(1, 3),
            "delay_s": rng.uniform(0.0, 0.05),
        }
        return Attempt(kind, kill, None)
    if kind in ("after-part", "mid-part"):
        return Attempt(kind, None, {"kind": kind, "n": rng.randint(1, 3)})
    return Attempt(kind, None, {"kind": kind})


@dataclass
class CrashReport:
    kills: int
    kinds: list[str]
    rows: int
    duplicates: int
    missing: int


def crash_and_resume(zygote: Zygote, args: list[str], out: Path, *, seed: str) -> CrashReport:
    """Kill ``mipo <args>`` at 10 seeded points, checking after each kill that nothing is
    visible as complete; then finish it with a real ``mipo`` process."""
    rng = random.Random(seed)
    parts_dir = out.with_name(out.name + ".parts")
    kinds = []
    for kind in kill_kinds(rng):
        attempt = plan_attempt(kind, rng, parts_dir)
        outcome = zygote.run(args, kill=attempt.kill, hook=attempt.hook)
        assert outcome["exit"] == -signal.SIGKILL, (
            f"kill point {attempt} did not land (exit {outcome['exit']}):\n{outcome['log'][-3000:]}"
        )
        assert not outcome.get("timed_out"), outcome["log"][-3000:]
        assert not is_complete(out), f"{out} looks complete after a kill at {attempt}"
        kinds.append(kind)
    final = _mipo(args)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Resuming" in final.stderr, final.stderr[-3000:]
    frame = pl.read_parquet(out)
    report = CrashReport(
        kills=len(kinds),
        kinds=kinds,
        rows=frame.height,
        duplicates=int(frame["id"].is_duplicated().sum()),
        missing=0,
    )
    return report


def assert_same_artifact(reference: Path, resumed: Path, *, float_tol: float = 0.0) -> int:
    """Same ids in the same order, no duplicates, equal values; manifests consistent with
    their files and with each other. Returns the number of reference ids missing (0)."""
    expected, actual = pl.read_parquet(reference), pl.read_parquet(resumed)
    assert actual["id"].n_unique() == actual.height, "duplicated ids"
    missing = set(expected["id"]) - set(actual["id"])
    extra = set(actual["id"]) - set(expected["id"])
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    assert actual["id"].to_list() == expected["id"].to_list(), "rows in another order"
    assert_frame_equal(actual, expected, check_exact=float_tol == 0, abs_tol=float_tol)
    manifests = {path: read_manifest(path) for path in (reference, resumed)}
    for path, manifest in manifests.items():
        assert manifest["output"]["rows"] == expected.height
        assert manifest["output"]["sha256"] == file_sha256(path)
    ref_manifest, got_manifest = manifests[reference], manifests[resumed]
    assert got_manifest["fingerprint"] == ref_manifest["fingerprint"]
    assert got_manifest["inputs"] == ref_manifest["inputs"]
    assert got_manifest["output"]["schema"] == ref_manifest["output"]["schema"]
    _assert_no_leftovers(resumed)
    return len(missing)


def _assert_no_leftovers(out: Path) -> None:
    """The journal is gone and nothing but the artifact and its side files is visible.

    (Hidden temporary files of a killed final write are checked in
    ``test_a_killed_final_write_leaves_no_temporary_file``.)
    """
    assert not out.with_name(out.name + ".parts").exists(), "journal parts were not removed"
    visible = {p.name for p in out.parent.iterdir() if not p.name.startswith(".")}
    expected = {out.name, out.stem + ".manifest.json", out.stem + ".summary.json"}
    assert visible <= expected, f"unexpected files beside the artifact: {visible - expected}"


def _print_report(stage: str, report: CrashReport) -> None:
    print(
        f"\n[crash-resume] {stage}: {report.kills} SIGKILLs survived ({', '.join(report.kinds)}); "
        f"{report.rows} rows, {report.duplicates} duplicated, {report.missing} missing"
    )


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


def test_generate_survives_ten_kills(
    zygote: Zygote, prompts: Path, generations: Path, tiny_model_dir: Path, work: Path
) -> None:
    out = work / "generate" / "generations.parquet"
    args = _generate_args(prompts, out, tiny_model_dir)
    report = crash_and_resume(zygote, args, out, seed="crash:generate")
    report.missing = assert_same_artifact(generations, out)
    assert report.kills == KILLS_PER_STAGE and report.rows == ROWS and report.duplicates == 0
    assert read_manifest(out)["stats"]["failed"] == []
    _print_report("generate", report)


def _score_args(generations: Path, out: Path, model: Path) -> list[str]:
    return [
        "score", "--generations", str(generations), "--out", str(out), "--model", str(model),
        "--chunk-rows", "4", "--batch-size", "12", "--max-length", "128",
    ]  # fmt: skip


def test_score_survives_ten_kills(
    zygote: Zygote, generations: Path, tiny_model_dir: Path, work: Path
) -> None:
    reference = work / "reference" / "scores.parquet"
    outcome = zygote.run(_score_args(generations, reference, tiny_model_dir))
    assert outcome["exit"] == 0, outcome["log"]
    out = work / "score" / "scores.parquet"
    args = _score_args(generations, out, tiny_model_dir)
    report = crash_and_resume(zygote, args, out, seed="crash:score")
    # Chunks are the same in both runs (a resume starts at a chunk boundary), so even the
    # floating-point sums are equal; a tolerance only guards against BLAS nondeterminism.
    report.missing = assert_same_artifact(reference, out, float_tol=1e-5)
    assert report.kills == KILLS_PER_STAGE and report.rows == ROWS and report.duplicates == 0
    assert pl.read_parquet(out)["pmi_chosen"].null_count() == 0
    _print_report("score", report)


def _judge_args(generations: Path, out: Path, model: Path | None) -> list[str]:
    args = ["judge", "--responses", str(generations), "--out", str(out)]
    if model is None:
        return [*args, "--mode", "verify", "--chunk-items", "2"]
    # The first 100 pairs: 200 judged responses (the judge prompt is long, so this is the
    # slowest stage of the harness).
    return [
        *args, "--mode", "rlaif", "--backend", "hf", "--model", str(model), "--limit", "100",
        "--max-new-tokens", "4", "--max-attempts", "2", "--seed", "3",
        "--chunk-items", "4", "--batch-size", "8",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "mode",
    ["verify", pytest.param("rlaif", marks=pytest.mark.slow)],  # rlaif: about a CPU-minute
)
def test_judge_survives_ten_kills(
    zygote: Zygote, generations: Path, tiny_model_dir: Path, work: Path, mode: str
) -> None:
    """verify: checkers only (fast, many small chunks). rlaif: the tiny model as judge, whose
    replies mostly fail to parse: those become null scores with reasons, identical after
    kills because every attempt's seed derives from the row id."""
    model = None if mode == "verify" else tiny_model_dir
    reference = work / "reference" / f"judgments-{mode}.parquet"
    outcome = zygote.run(_judge_args(generations, reference, model))
    assert outcome["exit"] == 0, outcome["log"]
    out = work / f"judge-{mode}" / "judgments.parquet"
    args = _judge_args(generations, out, model)
    report = crash_and_resume(zygote, args, out, seed=f"crash:judge:{mode}")
    report.missing = assert_same_artifact(reference, out)
    assert report.kills == KILLS_PER_STAGE and report.duplicates == 0
    judged = pl.read_parquet(out)
    assert set(judged["response_id"]) <= set(pl.read_parquet(generations)["id"])
    # A null score always carries its reason.
    assert judged.filter(pl.col("score").is_null() & pl.col("error").is_null()).height == 0
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    reference_summary = json.loads(
        reference.with_name(reference.stem + ".summary.json").read_text()
    )
    assert summary == reference_summary
    _print_report(f"judge --mode {mode}", report)


# ---------------------------------------------------------------------------------------------
# Training: killed at steps and inside checkpoint writes, resumed from the last good one
# ---------------------------------------------------------------------------------------------

TRAIN_PAIRS = 16


def _train_args(preferences: Path, scores: Path, model: Path, output_dir: Path) -> list[str]:
    return [
        "train", "--preferences", str(preferences), "--scores", str(scores),
        "--model", str(model), "--output-dir", str(output_dir), "--loss", "dpo",
        "--max-length", "96", "--per-device-batch-size", "2", "--max-steps", "12",
        "--save-steps", "2", "--save-total-limit", "2", "--logging-steps", "1",
        "--learning-rate", "1e-2", "--lr-scheduler", "constant",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def train_inputs(
    work: Path, generations: Path, tiny_model_dir: Path, zygote: Zygote
) -> tuple[Path, Path]:
    """16 generated pairs (8 steps per epoch at batch 2) and their reference scores."""
    pairs = work / "train-inputs" / "generations.parquet"
    pairs.parent.mkdir(parents=True, exist_ok=True)
    pl.read_parquet(generations).head(TRAIN_PAIRS).write_parquet(pairs)
    scores = pairs.with_name("scores.parquet")
    outcome = zygote.run(_score_args(pairs, scores, tiny_model_dir))
    assert outcome["exit"] == 0, outcome["log"]
    return pairs, scores


def _metrics(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def straight_training(
    zygote: Zygote, train_inputs: tuple[Path, Path], tiny_model_dir: Path, work: Path
) -> Path:
    """The uninterrupted training run the killed ones are compared with."""
    pairs, scores = train_inputs
    straight = work / "train-straight"
    outcome = zygote.run(_train_args(pairs, scores, tiny_model_dir, straight))
    assert outcome["exit"] == 0, outcome["log"][-3000:]
    return straight


def _kill_train_then_resume(
    zygote: Zygote, args: list[str], output_dir: Path, kills: tuple[tuple[str, int], ...]
) -> subprocess.CompletedProcess[str]:
    for kind, n in kills:
        outcome = zygote.run(args, hook={"kind": kind, "n": n})
        assert outcome["exit"] == -signal.SIGKILL, f"{kind} did not land:\n{outcome['log'][-3000:]}"
        assert not (output_dir / "final").exists()
    return _mipo(args)


def _assert_same_training(straight: Path, resumed: Path) -> None:
    """Same steps and losses (so the same data order) and the same final weights."""
    import torch
    from transformers import AutoModelForCausalLM

    got, want = _metrics(resumed), _metrics(straight)
    assert [r["step"] for r in got] == list(range(1, 13))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    final_a = AutoModelForCausalLM.from_pretrained(straight / "final").state_dict()
    final_b = AutoModelForCausalLM.from_pretrained(resumed / "final").state_dict()
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=0, atol=1e-5)


# Kill points of one training run, in order: (hook kind, n-th occurrence in that process).
TRAIN_KILLS = (
    ("train-step", 3),  # killed before step 3; checkpoint-2 on disk
    ("mid-optimizer", 1),  # resumed at 2; checkpoint-4: weights written, optimizer not
    ("train-step", 4),  # resumed at 2 again (4 was incomplete); killed before step 6
    ("train-step", 2),  # resumed at 4; killed before step 6 again
)


def test_train_resumes_after_kills_at_steps_and_inside_a_checkpoint_write(
    zygote: Zygote,
    train_inputs: tuple[Path, Path],
    straight_training: Path,
    tiny_model_dir: Path,
    work: Path,
) -> None:
    """12 steps over 16 pairs (1.5 epochs), a checkpoint every 2 steps. Killed at steps and
    while a checkpoint's optimizer state is being written, the rerun must drop the incomplete
    checkpoint, resume from the last complete one and reproduce the uninterrupted run step for
    step (same losses: same data order) and weight for weight. Extends
    ``tests/test_train_cli.py::test_killed_training_resumes_with_the_same_data_order`` (one
    kill at a step) with repeated kills and a kill inside a checkpoint write."""
    pairs, scores = train_inputs
    resumed = work / "train-killed"
    args = _train_args(pairs, scores, tiny_model_dir, resumed)
    final = _kill_train_then_resume(zygote, args, resumed, TRAIN_KILLS)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Resuming from" in final.stderr
    _assert_same_training(straight_training, resumed)
    print(f"\n[crash-resume] train: {len(TRAIN_KILLS)} SIGKILLs survived ({TRAIN_KILLS})")


@pytest.mark.slow
def test_train_resumes_after_a_kill_while_trainer_state_is_written(
    zygote: Zygote,
    train_inputs: tuple[Path, Path],
    straight_training: Path,
    tiny_model_dir: Path,
    work: Path,
) -> None:
    """Killed while checkpoint-4's trainer_state.json is half written, the rerun must treat
    checkpoint-4 as incomplete, resume from checkpoint-2 and end like the uninterrupted run."""
    pairs, scores = train_inputs
    resumed = work / "train-killed-state"
    args = _train_args(pairs, scores, tiny_model_dir, resumed)
    final = _kill_train_then_resume(zygote, args, resumed, (("mid-trainer-state", 2),))
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_same_training(straight_training, resumed)


@pytest.mark.slow
def test_a_killed_final_write_leaves_no_temporary_file(
    zygote: Zygote, prompts: Path, tiny_model_dir: Path, work: Path
) -> None:
    """A run killed while the final artifact is written leaves a hidden temporary file beside
    it; the rerun must finish and not leave it there (it is as large as the artifact)."""
    small = work / "small-prompts.parquet"
    pl.read_parquet(prompts).head(8).write_parquet(small)
    out = work / "leftover" / "generations.parquet"
    args = _generate_args(small, out, tiny_model_dir)
    outcome = zygote.run(args, hook={"kind": "mid-output"})
    assert outcome["exit"] == -signal.SIGKILL, outcome["log"][-3000:]
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")], "no kill mid-write"
    outcome = zygote.run(args)
    assert outcome["exit"] == 0, outcome["log"][-3000:]
    assert is_complete(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    zygote_main()
