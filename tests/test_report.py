"""``mipo report``: a run directory -> a self-contained HTML page and PNG figures.

The run directory is built once per module with the real stages wherever they need no model
(ingest, export, judge in verify mode), a scripted in-process backend for generate and score
(``tests/scripted_backend.py``), and hand-written files in the exact formats of the train and
eval stages (their schemas and summary function are imported, so these tests break if the
formats change). Its contents are chosen so that every number checked below is known by
construction:

- 6 prompts -> 6 pairs. Pair p4's two responses are equal and p5's chosen response is empty,
  so export's ``identical`` and ``empty`` filters remove one each: 4 pairs exported.
- gsm8k: base correct on items [1, 0, 0, 1] (50%), trained on all four (100%); per-item
  differences [0, 1, 1, 0], paired mean +50 points.
- personalization: base meets [0, 1, 1, 0] of one checkable item each (50%), trained
  [1, 1, 1, 0] (75%); differences [1, 0, 0, 0], paired mean +25 points.
- training: the chosen log-prob shift ends at -3.10 nats: likelihood displacement.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import polars as pl
import pytest
from helpers.browser import INSTALL_HINT, find_chromium, image_stats, screenshot
from scripted_backend import ScriptedBackend
from typer.testing import CliRunner

from mipo_engine.artifacts.run import StageRun
from mipo_engine.artifacts.schemas import EVAL
from mipo_engine.artifacts.store import summary_path, write_json_atomic
from mipo_engine.backends.base import ScoreResult
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.evaluation.results import summarize
from mipo_engine.report import REPORT_FILE, collect_run, write_report
from mipo_engine.report import collect as collect_module
from mipo_engine.report.collect import read_metrics_records
from mipo_engine.report.data import TrainingData
from mipo_engine.report.formatting import fmt_interval, fmt_seconds, interval_cell
from mipo_engine.report.html import SECTION_TITLES
from mipo_engine.report.pairs import distinct_n
from mipo_engine.report.sections import displacement_verdict
from mipo_engine.stages.export import ExportConfig, run_export
from mipo_engine.stages.generate import GenerateConfig, run_generate
from mipo_engine.stages.ingest import IngestConfig, run_ingest
from mipo_engine.stages.judge import JudgeConfig, run_judge
from mipo_engine.stages.score import ScoreConfig, run_score

HF_TOKEN = "hf_" + "Q" * 26
OPENAI_KEY = "sk-" + "Z" * 30
PLAIN_SECRET = "plain-secret-value-4242"
SECRETS = (HF_TOKEN, OPENAI_KEY, PLAIN_SECRET)
LOWERCASE = "Write everything in lowercase letters, with no capitals at all."
NO_COMMAS = "Please don't use commas at all."

PROMPTS = [
    ("p0", "<script>alert('x')</script> How do I boil an egg?", LOWERCASE),
    ("p1", "Plan a weekend trip.", f"{NO_COMMAS} My token is {HF_TOKEN}"),
    ("p2", "Suggest a book.", LOWERCASE),
    ("p3", "Explain compound interest.", NO_COMMAS),
    ("p4", "Say hello.", "Keep it friendly."),
    ("p5", "Describe the sea.", "Be poetic."),
]
CONTEXT_MARKER = "My requirements for your answer"  # prompts/user_turn_with_context.txt


def reply(text: str, call: int) -> str:
    """Chosen (context shown) answers in lowercase without commas; rejected ones do not."""
    if "Say hello" in text:
        return "hello!"  # identical pair
    with_context = CONTEXT_MARKER in text
    if "Describe the sea" in text:
        return "" if with_context else "The sea is big, blue and deep."  # empty chosen
    if not with_context:
        return "Here Is An Answer, With Capitals, And Commas."
    answer = "here is a short answer in lowercase without commas"
    if "boil an egg" in text:
        answer += " <b>bold</b> & <script>steal()</script>"
    if "weekend" in text:
        answer += f" {OPENAI_KEY}"
    return answer


class PromptAwareScorer(ScriptedBackend):
    """Log-probs that depend on the conditioning, so PMI varies from pair to pair."""

    def score(self, prompts, responses, *, max_length=None):  # type: ignore[no-untyped-def]
        return [
            ScoreResult(logp=-0.5 * len(r.split()) + 0.01 * len(p), num_tokens=len(r.split()))
            for p, r in zip(prompts, responses, strict=True)
        ]


# --------------------------------------------------------------------------------------------
# Building the run directory
# --------------------------------------------------------------------------------------------


def _write_prompts(run: Path) -> Path:
    source = run.parent / "prompts.jsonl"
    lines = [json.dumps({"id": i, "prompt": p, "context": c}) for i, p, c in PROMPTS]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run_ingest(IngestConfig(inputs=[str(source)], out=run / "prompts.parquet"))


def _eval_rows(task: str, outcomes: list[int]) -> pl.DataFrame:
    """Eval rows as ``mipo eval`` writes them: math graded by ``correct``, personalization
    by one checkable item per response."""
    rows = []
    for index, outcome in enumerate(outcomes):
        row = dict.fromkeys(EVAL.names)
        row.update(
            id=f"q{index}",
            item_id=f"q{index}",
            sample=0,
            task=task,
            prompt=f"question {index}",
            input=f"question {index}",
            response=f"answer number {index} is {outcome}",
            finish_reason="stop",
            response_tokens=6,
            seed=index,
        )
        if task == "gsm8k":
            row.update(answer="1", prediction=str(outcome), correct=bool(outcome))
        else:
            row.update(
                context=LOWERCASE,
                verifiable_items=1,
                items_met=outcome,
                pmi=0.1 * (index + 1) + 0.2 * outcome,
            )
        rows.append(row)
    return pl.DataFrame(rows, schema=EVAL.polars_schema())


def _write_eval(run: Path, name: str, task: str, outcomes: list[int], adapter: str | None) -> None:
    """The end of ``run_eval``: summary JSON first, then the artifact and its manifest."""
    frame = _eval_rows(task, outcomes)
    summary = summarize(frame, "math" if task == "gsm8k" else "personalization")
    summary.update(model="tiny-base", adapter=adapter, backend="hf")
    output = run / f"{name}.parquet"
    write_json_atomic(summary_path(output), summary)
    config = {"task": task, "model": "tiny-base", "adapter": adapter}
    StageRun("eval", output, config, {}).write(
        frame, EVAL, model="tiny-base", backend="hf", seed=0, stats=summary
    )


CHOSEN_SHIFT = [0.0, -0.5, -1.2, -2.0, -3.1]
REJECTED_SHIFT = [0.0, -1.5, -3.0, -5.0, -8.0]


def _write_training(folder: Path, *, finished: bool, shifts: list[float]) -> None:
    """``metrics.jsonl`` lines as ``MetricsFileCallback`` writes them (NaN as a string), and
    the manifest ``stages.train._finish`` writes when the run completes."""
    folder.mkdir(parents=True)
    lines = []
    for step, chosen in enumerate(shifts, start=1):
        rejected = REJECTED_SHIFT[step - 1]
        record = {
            "step": step,
            "loss": 0.6931 - 0.1 * (step - 1),
            "grad_norm": "nan" if step == 3 else 1.0,
            "learning_rate": 1e-4,
            "rewards/chosen": 0.1 * chosen,
            "rewards/rejected": 0.1 * rejected,
            "rewards/margins": 0.1 * (chosen - rejected),
            "rewards/accuracies": 1.0 if chosen > rejected else 0.0,
            "logps/chosen": -40.0 + chosen,
            "logps/rejected": -42.0 + rejected,
            "logps/chosen_shift": chosen,
            "logps/rejected_shift": rejected,
            "epoch": step / len(shifts),
        }
        lines.append(json.dumps(record))
    lines.append('{"step": 6, "loss": 0.1')  # torn last line of a killed run
    (folder / collect_module.METRICS_FILE).write_text("\n".join(lines), encoding="utf-8")
    if not finished:
        return
    manifest = {
        "stage": "train",
        "package_version": "0.1.0",
        "config": {"loss": "dpo", "hf_token": HF_TOKEN, "model": "tiny-base"},
        "fingerprint": "f" * 64,
        "inputs": [{"role": "preferences", "path": str(folder.parent / "preferences.parquet")}],
        "model": "tiny-base",
        "model_path": "/models/tiny-base",
        "loss": {
            "loss": "dpo",
            "formula": "-log sigmoid(beta (D_c - D_r))",
            "citation": "seed 004 eq. 5",
            "beta": 0.1,
            "length_normalize": False,
            "prior": None,
        },
        "learning_rate": 1e-4,
        "lora": {"r": 8, "alpha": 16},
        "pairs": 4,
        "stats": {
            "global_step": len(shifts),
            "train_runtime_s": 75.5,
            "input_tokens_seen": 1234,
            "tokens_per_second": 16.3,
        },
        "started_at": "2026-01-01T10:00:00+00:00",
        "finished_at": "2026-01-01T10:01:15+00:00",
    }
    write_json_atomic(folder / collect_module.TRAIN_MANIFEST_FILE, manifest)


def _write_state(run: Path) -> None:
    """``state.json`` as ``pipeline.runner`` writes it: records keyed by stage id."""

    def record(name: str, stage: str, output: str, status: str = "done") -> dict:
        return {"name": name, "stage": stage, "output": str(run / output), "status": status}

    stages = [
        record("ingest", "ingest", "prompts.parquet"),
        record("eval_base", "eval", "eval_base.parquet"),
        record("generate", "generate", "generations.parquet"),
        record("score", "score", "scores.parquet"),
        record("judge", "judge", "judgments.parquet"),
        record("export", "export", "preferences.parquet"),
        record("train", "train", "train"),
        record("eval_trained", "eval", "eval_trained.parquet"),
        record("publish", "publish", "published", status="running"),
        record("round-2/generate", "generate", "round-2/generations.parquet", status="running"),
    ]
    for entry in stages:
        entry["seconds"] = 1.5
    stages[1]["seconds"] = 125.0
    write_json_atomic(run / "state.json", {"stages": {s["name"]: s for s in stages}})


def build_run(run: Path, backend_dir: Path) -> Path:
    run.mkdir(parents=True)
    (run / "pipeline.yaml").write_text(
        f"run_dir: {run}\nopenai:\n  api_key: {PLAIN_SECRET}\n  hf_token: {HF_TOKEN}\n"
        "stages:\n  - stage: generate\n",
        encoding="utf-8",
    )
    _write_prompts(run)
    run_generate(
        GenerateConfig(
            prompts=run / "prompts.parquet", out=run / "generations.parquet", model="scripted"
        ),
        backend=ScriptedBackend(reply),
    )
    run_score(
        ScoreConfig(generations=run / "generations.parquet", out=run / "scores.parquet"),
        backend=PromptAwareScorer(reply),
    )
    run_judge(
        JudgeConfig(
            responses=run / "generations.parquet", out=run / "judgments.parquet", mode="verify"
        )
    )
    run_export(
        ExportConfig(
            generations=run / "generations.parquet",
            scores=run / "scores.parquet",
            out=run / "preferences.parquet",
        )
    )
    _write_training(run / "train", finished=True, shifts=CHOSEN_SHIFT)
    _write_eval(run, "eval_base", "gsm8k", [1, 0, 0, 1], None)
    _write_eval(run, "eval_trained", "gsm8k", [1, 1, 1, 1], "train/final")
    _write_eval(run, "eval_pers_base", "personalization", [0, 1, 1, 0], None)
    _write_eval(run, "eval_pers_trained", "personalization", [1, 1, 1, 0], "train/final")
    # Round 2 was killed: training logged 3 steps without a manifest, generation left a journal.
    round_two = run / "round-2"
    _write_training(round_two / "train", finished=False, shifts=[0.0, 0.4, 0.9])
    parts = round_two / "generations.parquet.parts"
    parts.mkdir()
    pl.read_parquet(run / "generations.parquet").head(3).write_parquet(
        parts / "part-000000.parquet"
    )
    _write_state(run)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    return build_run(base / "demo-run", base)


@pytest.fixture(scope="module")
def report(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(run_dir, tmp_path_factory.mktemp("report-out") / "report", samples=5)


@pytest.fixture(scope="module")
def page(report: Path) -> str:
    return report.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The collected data
# --------------------------------------------------------------------------------------------


def _module_constants(module: str) -> dict[str, object]:
    """String constants assigned at the top of a module, read from its source (importing
    ``stages.train`` would load torch and transformers just to compare two names)."""
    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    constants = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


def test_file_names_match_the_train_stage() -> None:
    train = _module_constants("mipo_engine.training.checkpoints")
    assert train["MANIFEST_FILE"] == collect_module.TRAIN_MANIFEST_FILE
    assert train["METRICS_FILE"] == collect_module.METRICS_FILE


def test_pipeline_rows_follow_the_state_file_with_rows_in_and_out(run_dir: Path) -> None:
    run = collect_run(run_dir)
    rows = {row.name: row for row in run.stages}
    assert [row.name for row in run.stages][:9] == [
        "ingest",
        "eval_base",
        "generate",
        "score",
        "judge",
        "export",
        "train",
        "eval_trained",
        "publish",
    ]
    assert (rows["ingest"].rows_in, rows["ingest"].rows_out) == (None, 6)
    assert (rows["generate"].rows_in, rows["generate"].rows_out) == (6, 6)
    assert (rows["score"].rows_in, rows["score"].rows_out) == (6, 6)
    assert (rows["export"].rows_in, rows["export"].rows_out) == (6, 4)
    assert rows["export"].note == "kept 4 of 6 pairs (67%)"
    assert rows["train"].rows_in == 4 and rows["train"].note == "dpo: 5 steps on 4 pairs"
    assert rows["train"].output == "train"
    assert rows["eval_base"].seconds == 125.0
    assert rows["publish"].status == "stopped"
    # Eval outputs the state does not list still appear, after the listed ones.
    assert {"eval_pers_base", "eval_pers_trained"} <= set(rows)
    assert all(row.status == "done" for name, row in rows.items() if name != "publish")


def test_round_two_shows_the_interrupted_stages(run_dir: Path) -> None:
    (round_two,) = collect_run(run_dir).rounds
    assert round_two.label == "round-2"
    (generate,) = round_two.stages
    assert generate.status == "interrupted" and "about 3 rows saved" in generate.note
    assert round_two.training is not None and round_two.training.manifest is None
    assert len(round_two.training.records) == 3


def test_eval_groups_put_the_baseline_first_with_paired_differences(run_dir: Path) -> None:
    groups = {group.task: group for group in collect_run(run_dir).evals}
    math, personal = groups["gsm8k"], groups["personalization"]
    assert [row.label for row in math.rows] == ["base", "trained"]
    assert [row.label for row in personal.rows] == ["pers_base", "pers_trained"]
    assert math.paired and personal.paired
    assert math.rows[0].summary["accuracy"]["mean"] == pytest.approx(0.5)
    assert math.rows[1].difference["accuracy"]["mean"] == pytest.approx(0.5)
    assert personal.rows[1].difference["adherence"]["mean"] == pytest.approx(0.25)


def test_pair_stats_and_samples(run_dir: Path) -> None:
    run = collect_run(run_dir, samples=6)
    assert run.pairs is not None and run.pairs.pairs == 6
    # Scorer: logp = -0.5 * words + 0.01 * len(conditioning); PMI = 0.01 * (extra length of
    # the conditioning with the context), positive for every pair with a context.
    assert len(run.pairs.pmi) == 6 and all(value > 0 for value in run.pairs.pmi)
    kept = {sample["id"]: sample["kept"] for sample in run.samples}
    assert kept == {"p0": True, "p1": True, "p2": True, "p3": True, "p4": False, "p5": False}
    by_id = {sample["id"]: sample for sample in run.samples}
    # verify judge: the chosen answer meets "lowercase", the rejected one does not (5 vs 1).
    assert (by_id["p0"]["judge_chosen"], by_id["p0"]["judge_rejected"]) == (5.0, 1.0)
    assert HF_TOKEN not in by_id["p1"]["context"] and OPENAI_KEY not in by_id["p1"]["chosen"]


def test_distinct_n_counts_unique_bigrams() -> None:
    """ "a b a b": bigrams (a,b) (b,a) (a,b): 2 unique of 3. "c": no bigram."""
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["c"], 2) is None


def test_metrics_records_keep_numbers_and_stop_at_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": "nan", "note": "x"}\n{"step": 2, "loss": 0.5}\n{"st')
    records = read_metrics_records(path)
    assert len(records) == 2 and records[1] == {"step": 2.0, "loss": 0.5}
    assert records[0]["loss"] != records[0]["loss"]  # NaN
    assert "note" not in records[0]


# --------------------------------------------------------------------------------------------
# Formatting and the displacement verdict
# --------------------------------------------------------------------------------------------


def test_interval_and_time_formats() -> None:
    value = {"mean": 0.435, "low": 0.365, "high": 0.505}
    assert fmt_interval(value, percent=True) == "43.5 [36.5, 50.5]"
    assert fmt_interval(value, percent=False, signed=True) == "+0.435 [+0.365, +0.505]"
    assert fmt_interval(None, percent=True) == "—"
    # A difference whose interval excludes 0 is coloured; one that spans 0 is not.
    assert interval_cell(value, percent=True, signed=True) == (
        '<span class="up">+43.5</span><span class="ci">[+36.5, +50.5]</span>'
    )
    spanning = {"mean": 0.1, "low": -0.2, "high": 0.4}
    assert interval_cell(spanning, percent=True, signed=True) == (
        '+10.0<span class="ci">[-20.0, +40.0]</span>'
    )
    assert fmt_seconds(4.25) == "4.2 s"
    assert fmt_seconds(125) == "2 m 05 s"
    assert fmt_seconds(3720) == "1 h 02 m"


def test_displacement_verdict_reads_the_last_chosen_shift() -> None:
    falling = TrainingData(
        "t", [{"step": 1, "logps/chosen_shift": 0.0}, {"step": 2, "logps/chosen_shift": -3.1}], None
    )
    kind, text = displacement_verdict(falling)
    assert kind == "warn" and "-3.10" in text and "Likelihood displacement" in text
    rising = TrainingData(
        "t", [{"step": 1, "logps/chosen_shift": 0.0}, {"step": 2, "logps/chosen_shift": 0.4}], None
    )
    assert displacement_verdict(rising)[0] == "ok"
    # Without a reference: the change of logps/chosen since the first step, -40 -> -41.5.
    plain = TrainingData(
        "t", [{"step": 1, "logps/chosen": -40.0}, {"step": 2, "logps/chosen": -41.5}], None
    )
    kind, text = displacement_verdict(plain)
    assert kind == "warn" and "-1.50" in text


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def test_page_has_every_section_heading(page: str) -> None:
    headings = re.findall(r"<h[23][^>]*>([^<]+)</h[23]>", page)
    for title in SECTION_TITLES.values():
        assert title in headings, title
    assert "Round 2: round-2" in headings and "Configuration" in headings


def test_page_shows_counts_intervals_and_deltas(page: str) -> None:
    assert "kept 4 of 6 pairs (67%)" in page
    # Means in the cell, bootstrap intervals in small print below them.
    assert '50.0<span class="ci">[' in page and '100.0<span class="ci">[' in page  # gsm8k
    assert '+50.0<span class="ci">[' in page  # gsm8k accuracy, paired difference
    assert '+25.0<span class="ci">[' in page  # personalization adherence, paired
    assert "(empty response)" in page  # p5's chosen response
    assert "Likelihood displacement" in page and "-3.10" in page
    # 5 of the run's 6 pairs; round 2 has no finished generations to sample from.
    assert page.count('<article class="pair">') == 5


def test_page_escapes_markup_and_holds_no_script(page: str) -> None:
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;steal()" in page


def test_no_secret_reaches_any_report_file(report: Path) -> None:
    files = list(report.parent.iterdir())
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (path.name, secret)
    assert "&lt;redacted&gt;" in report.read_text(encoding="utf-8")


def test_figures_are_files_and_embedded(report: Path, page: str) -> None:
    names = sorted(p.name for p in report.parent.glob("*.png"))
    expected = {"loss.png", "logps.png", "rewards.png", "lengths.png", "pmi.png", "eval.png"}
    assert expected <= set(names)
    assert {"round-2_loss.png", "round-2_logps.png"} <= set(names)
    assert page.count('src="data:image/png;base64,') == len(names)
    for name in names:
        assert (report.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'href="{name}"' in page


def _generations_only(run_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ("generations.parquet", "generations.manifest.json"):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    return folder


def test_partial_run_says_what_is_absent(run_dir: Path, tmp_path: Path) -> None:
    partial = _generations_only(run_dir, tmp_path / "partial")
    page = write_report(partial, tmp_path / "out").read_text(encoding="utf-8")
    assert "No training folder" in page and "No eval outputs" in page
    assert "No export manifest" in page
    assert "training curves (mipo train)" in page


def test_bad_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run directory not found"):
        write_report(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no stage outputs found"):
        write_report(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pipeline.yaml").write_text("stages: []\n")
    with pytest.raises(ConfigError, match="not a folder"):
        write_report(tmp_path / "run", tmp_path / "file")
    with pytest.raises(ConfigError, match="samples"):
        write_report(tmp_path / "run", tmp_path / "out", samples=-1)
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_report_and_fails_cleanly(run_dir: Path, tmp_path: Path) -> None:
    from cli import app

    runner = CliRunner()
    partial = _generations_only(run_dir, tmp_path / "partial")
    result = runner.invoke(app, ["report", str(partial), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / REPORT_FILE).is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "run directory not found" in result.output


# --------------------------------------------------------------------------------------------
# Headless rendering
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(find_chromium() is None, reason=f"no Chromium; {INSTALL_HINT}")
def test_headless_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    """Rendered at 1280x2000 the page shows the header, the glance cards, the pipeline and
    filter tables and the first training figure: hundreds of colours, far from all white."""
    png = screenshot(report, tmp_path / "report.png", width=1280, height=2000)
    colours, ink = image_stats(png)
    assert colours > 200, colours
    assert ink > 0.10, ink


def test_unreadable_files_are_listed_not_fatal(run_dir: Path, tmp_path: Path) -> None:
    """A torn manifest, a corrupt Parquet file and a malformed state file each become a line
    under "Could not read"; the rest of the report is still written."""
    broken = _generations_only(run_dir, tmp_path / "broken")
    (broken / "scores.manifest.json").write_text("{torn", encoding="utf-8")
    (broken / "generations.parquet").write_bytes(b"not parquet")
    (broken / "state.json").write_text('{"stages": 3}', encoding="utf-8")
    run = collect_run(broken)
    assert len(run.problems) == 3, run.problems
    page = write_report(broken, tmp_path / "out").read_text(encoding="utf-8")
    assert "Could not read" in page and "not a readable Parquet file" in page
    assert "No generations to sample pairs from" in page


def test_glance_card_gives_the_paired_change_with_its_interval(page: str) -> None:
    """personalization: per-item differences [1, 0, 0, 0] -> +25 points; every bootstrap
    resample of four values in {0, 1} has a mean in [0, 100] points."""
    import re

    found = re.search(r"<b>\+25\.0 pts \[([+-]\d+\.\d), ([+-]\d+\.\d)\]</b>", page)
    assert found, "the personalization card lacks its interval"
    low, high = (float(value) for value in found.groups())
    assert 0.0 <= low <= 25.0 <= high <= 100.0 and low < high
    assert "(paired, bootstrap 95%)" in page
