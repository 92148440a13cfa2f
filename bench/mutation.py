"""Mutation score of the safety-critical modules: how many planted bugs the tests catch.

A small AST mutator of our own (why not mutmut or cosmic-ray: see bench/RESULTS.md, "Mutation"). For each module it
lists every mutation point of its files (comparison flipped, ``and``/``or`` swapped, ``not`` dropped, constant
changed, arithmetic swapped, a returned value replaced by ``None``, a call statement or a ``raise`` deleted), draws a
fixed-seed sample of them, and runs the module's tests against each mutant: killed when a test fails or the run
times out, survived when every test passes.

Each mutant runs in a fork of this process: the heavy third-party imports (NumPy, pandas, SciPy, MLflow's client,
Great Expectations, prometheus_client) are done once here, and the child drops every ``mlcd``/``tests`` module,
puts an overlay copy of ``include/`` holding the one mutated file first on ``sys.path`` (and on ``PYTHONPATH`` for
subprocesses) and calls ``pytest.main``. TensorFlow and Airflow are never imported here: their thread pools and
database engines are not fork-safe, so a child imports them itself when a test needs them.

    make mutation                                   # every module, default sample
    .venv/bin/python bench/mutation.py --module registry --sample 0   # every mutant of one module
    .venv/bin/python bench/mutation.py --list --module validation_gate

    .venv/bin/python bench/mutation.py --module rollout --only canary.py:157   # re-run chosen sampled mutants
    .venv/bin/python bench/mutation.py --rescore run1.txt rerun.txt   # score saved output with today's EQUIVALENT

Prints one line per mutant and a score table per module: killed / (run − equivalent), where a surviving mutant
listed in :data:`EQUIVALENT` (with the reason no test can tell it apart) is counted as neither killed nor
survived. Exit status 0 (a measurement, not a gate).
"""

from __future__ import annotations

import argparse
import ast
import copy
import fnmatch
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INCLUDE = REPO / "include"


@dataclass(frozen=True)
class Module:
    """A safety-critical module: the files mutated and the pytest arguments that judge them.

    ``per_file`` maps a file pattern to the tests that judge that file's mutants instead of ``tests`` (the
    smallest set that covers it: a rollback mutant needs the real-registry rollout tests, a spec mutant does not).
    """

    files: tuple[str, ...]
    tests: tuple[str, ...]
    mlflow: bool = False  # the tests use the session's MLflow server: start one here and share it
    per_file: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def tests_for(self, rel: str) -> tuple[str, ...]:
        for pattern, tests in self.per_file:
            if fnmatch.fnmatch(rel, pattern):
                return tests
        return self.tests


_ROLLOUT_UNIT = (
    "tests/unit/test_rollout_spec.py",
    "tests/unit/test_canary_trigger.py",
    "tests/unit/test_router_k8s.py",
    "tests/unit/test_guard_watch.py",
    "tests/unit/test_rollout_state.py",
    "tests/unit/test_mutants_rollout.py",
)
# The rollout driven step by step against a real registry (one MLflow server shared by every mutant).
_ROLLOUT_REGISTRY = ("tests/integration/test_canary_rollout.py", "tests/integration/test_mutants_canary.py")
_ANALYSIS = ("tests/unit/test_guard_judge.py", "tests/unit/test_mutants_analysis.py")

MODULES: dict[str, Module] = {
    "rollout": Module(
        files=("mlcd/rollout/*.py",),
        tests=_ROLLOUT_UNIT,
        mlflow=True,
        per_file=(
            ("mlcd/rollout/canary.py", (*_ROLLOUT_REGISTRY, "tests/unit/test_canary_trigger.py")),
            ("mlcd/rollout/actions.py", _ROLLOUT_REGISTRY),
            ("mlcd/rollout/analysis.py", _ANALYSIS),
        ),
    ),
    "guard": Module(
        files=("mlcd/guard/*.py",),
        tests=("tests/unit/test_guard_watch.py", "tests/unit/test_mutants_guard.py"),
        per_file=(
            ("mlcd/guard/drift.py", ("tests/unit/test_guard_drift.py", "tests/unit/test_mutants_guard.py")),
            ("mlcd/guard/signals.py", ("tests/unit/test_mutants_guard.py",)),
        ),
    ),
    "registry": Module(
        files=("mlcd/registry/*.py",),
        tests=(
            "tests/unit/test_rollout_state.py",
            "tests/unit/test_registry_helpers.py",
            "tests/unit/test_registry_invariants.py",
            "tests/integration/test_mutants_registry.py",
            "tests/integration/test_registry.py",
            # the tests that log and evaluate real Keras models (minutes each) or restart a server of their own
            "-k", "not evaluate_and_register and not registration_is_idempotent and not killed_server and not hook",
        ),
        mlflow=True,
        per_file=(
            # the lease is a database row, not MLflow: its own tests run processes and threads against it
            ("mlcd/registry/lease.py", ("tests/unit/test_mutants_lease.py", "tests/integration/test_registry_lease.py")),
            ("mlcd/registry/reconcile.py", ("tests/unit/test_registry_invariants.py",
                                            "tests/integration/test_reconcile.py",
                                            "tests/integration/test_mutants_registry.py")),
        ),
    ),
    "intake": Module(
        files=("mlcd/data/intake.py",),
        tests=(
            "tests/unit/test_intake_branches.py",
            "tests/unit/test_intake_hostile.py",
            "tests/unit/test_mutants_intake.py",
        ),
    ),
    "validation_gate": Module(
        files=("mlcd/validation/gate.py",),
        tests=("tests/unit/test_validation_gate_rules.py", "tests/unit/test_mutants_gate.py",
               "tests/integration/test_validation_gate.py", "-k", "not cli"),
    ),
}

# Surviving mutants judged equivalent (no behaviour can tell them apart): Mutant.key -> why. They are run and
# listed, but left out of the score (``--list`` marks them).
EQUIVALENT: dict[str, str] = {
    "mlcd/rollout/analysis.py cmp0: s.latency_count > 0 | qs = histogram_quantile(q, s.buckets) if "
    "s.latency_count > 0 else None":
        "no latency samples means every cumulative bucket is 0 too, and histogram_quantile of those is None already",
    "mlcd/rollout/analysis.py const: 0.0 | total = max(buckets.values()) if buckets else 0.0":
        "with no buckets there is no finite bound either, so _edge returns None whatever the total",
    "mlcd/guard/drift.py const: 1 | cov = centred.T @ centred / (len(centred) - 1)":
        "scales the covariance only: its eigenvectors (the components) and everything built on them are unchanged",
    "mlcd/guard/drift.py const: 1.0 | distance_scale=1.0,  # the three scales are replaced below, once distances "
    "can be computed":
        "a placeholder overwritten (object.__setattr__) before anything reads it",
    "mlcd/guard/drift.py const: 1.0 | residual_scale=1.0,":
        "a placeholder overwritten (object.__setattr__) before anything reads it",
    "mlcd/guard/drift.py const: 1.0 | anomaly_threshold=1.0,":
        "a placeholder overwritten (object.__setattr__) before anything reads it",
    "mlcd/registry/lease.py const: 0.0 | conn.execute(insert(t).values(name=name, owner=None, token=0, "
    "expires_at=0.0))":
        "the new row's placeholder expiry: 0.0 and 1.0 s after the epoch are both long past, so it is free either way",
    "mlcd/guard/watch.py flipbool: True | @dataclass(frozen=True)":
        "GuardConfig, PollResult, Scrape: no caller assigns to or hashes one, so frozen changes nothing observable",
    "mlcd/data/intake.py flipbool: True | @dataclass(frozen=True)":
        "the decorator of Identified: no caller assigns to or hashes one, so frozen changes nothing observable",
    "mlcd/validation/gate.py const: 0 | n_images: int = 0":
        "a default no caller uses: both ValidationOutcome(...) calls pass n_images",
    "mlcd/validation/gate.py flipbool: False | context.variables.progress_bars = ProgressBarsConfig(globally=False)":
        "GX progress bars only write to the terminal",
    "mlcd/validation/gate.py andor: suite.get('meta') or {} | gx.ExpectationSuite(name=self.suite_name, "
    "expectations=expectations, meta=suite.get(\"meta\") or {})":
        "the suite's meta is shown in Data Docs only; no verdict, reason or failure record reads it",
    "mlcd/validation/gate.py const: 1 | index = int((config.meta or {}).get(\"mlcd_index\", -1))":
        "every expectation carries mlcd_index; the default (-1 or -2) is never read, and both are absent keys",
    "mlcd/validation/gate.py flipbool: True | key = (str(path), json.dumps(suite, sort_keys=True), str(data_docs_dir) "
    "if data_docs_dir else None)":
        "the cache key is only compared with keys built the same way from the same file text",
}


# Heavy imports shared by every child through fork (none of them starts threads or opens a database on import).
PRELOAD = ("numpy", "pandas", "scipy.stats", "mlflow", "mlflow.tracking", "great_expectations", "prometheus_client", "pytest")

_LOG_NAMES = {"log", "logger", "_log", "_logger", "LOG", "logging", "warnings"}
_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BIN_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


@dataclass(frozen=True)
class Mutant:
    """One mutation: the file, the node's position in ``ast.walk`` order, the operator, and a readable diff."""

    file: str
    index: int
    op: str
    line: int
    before: str
    after: str

    @property
    def name(self) -> str:
        return f"{self.file}:{self.line} {self.op}"

    @property
    def key(self) -> str:
        """The mutant by its source line's text, not its number (the key of :data:`EQUIVALENT`): an edit above it
        keeps the key, an edit of the line itself drops the judgement."""
        text = _source(self.file).splitlines()[self.line - 1].strip() if self.line else ""
        return f"{self.file} {self.op}: {self.before} | {text}"


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: annotations, docstrings, logging calls, ``__all__`` and type-only code."""
    skip: set[int] = set()

    def drop(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            drop(node.annotation)
        elif isinstance(node, ast.arg):
            drop(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            drop(node.returns)
            drop(node.args)  # defaults are configuration; their mutants are judged by the callers' own tests
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                drop(body[0])
        if isinstance(node, ast.Call):
            func = node.func
            root = func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in _LOG_NAMES:
                drop(node)  # log lines: deleting or changing them is equivalent by design
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            drop(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            drop(node)
        if isinstance(node, ast.JoinedStr):
            drop(node)  # message text
    return skip


def _ops_for(node: ast.AST) -> list[str]:
    """The mutation operators that apply to one node."""
    ops: list[str] = []
    if isinstance(node, ast.Compare):
        ops += [f"cmp{i}" for i, op in enumerate(node.ops) if type(op) in _CMP_SWAP]
    elif isinstance(node, ast.BoolOp):
        ops.append("andor")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        ops.append("dropnot")
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
        ops.append("binop")
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            ops.append("flipbool")
        elif isinstance(node.value, int | float) and not isinstance(node.value, bool):
            ops.append("const")
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            ops.append("retnone")
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
        ops.append("delcall")
    elif isinstance(node, ast.Raise):
        ops.append("delraise")
    return ops


def _apply(node: ast.AST, op: str) -> ast.AST:
    """Mutate ``node`` (in place where possible); returns the node that replaces it."""
    if op.startswith("cmp"):
        assert isinstance(node, ast.Compare)
        i = int(op[3:])
        node.ops[i] = _CMP_SWAP[type(node.ops[i])]()
        return node
    if op == "andor":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return node
    if op == "dropnot":
        assert isinstance(node, ast.UnaryOp)
        return node.operand
    if op == "binop":
        assert isinstance(node, ast.BinOp)
        node.op = _BIN_SWAP[type(node.op)]()
        return node
    if op == "flipbool":
        assert isinstance(node, ast.Constant)
        node.value = not node.value
        return node
    if op == "const":
        assert isinstance(node, ast.Constant)
        value = node.value
        node.value = (value + 1) if isinstance(value, int) else (value * 2 if value else 1.0)
        return node
    if op == "retnone":
        assert isinstance(node, ast.Return)
        node.value = ast.Constant(None)
        return node
    if op in ("delcall", "delraise"):
        return ast.Pass()
    raise ValueError(op)


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, op: str) -> None:
        self.target, self.op, self.done = target, op, False

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            self.done = True
            return _apply(node, self.op)
        return super().visit(node)


_SOURCES: dict[str, str] = {}  # the text each mutant was enumerated from: a checkout changing mid-run cannot skew it


def _source(rel: str) -> str:
    if rel not in _SOURCES:
        _SOURCES[rel] = (INCLUDE / rel).read_text()
    return _SOURCES[rel]


def _expand(patterns: tuple[str, ...]) -> list[str]:
    """Files under include/ matching the patterns (package ``__init__`` files hold only re-exports)."""
    out: list[str] = []
    for pattern in patterns:
        found = sorted(p.relative_to(INCLUDE).as_posix() for p in INCLUDE.glob(pattern) if p.name != "__init__.py")
        out += [f for f in found if f not in out]
    return out


def enumerate_mutants(rel: str) -> list[Mutant]:
    """Every mutation point of one file under include/."""
    source = _source(rel)
    tree = ast.parse(source)
    skip = _skipped_nodes(tree)
    out: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or (isinstance(node, ast.Expr) and id(node.value) in skip):
            continue  # (a log line's statement as well as the call in it)
        for op in _ops_for(node):
            before = ast.unparse(node) if not isinstance(node, ast.stmt) else ast.unparse(node).splitlines()[0]
            mutated = _apply(copy.deepcopy(node), op)
            after = ast.unparse(mutated).splitlines()[0] if mutated is not None else ""
            out.append(Mutant(rel, index, op, getattr(node, "lineno", 0), before[:90], after[:90]))
    return out


def mutated_source(m: Mutant) -> str:
    tree = ast.parse(_source(m.file))
    target = next(node for i, node in enumerate(ast.walk(tree)) if i == m.index)
    replacer = _Replace(target, m.op)
    new = replacer.visit(tree)
    assert replacer.done, m
    return ast.unparse(ast.fix_missing_locations(new))


# ------------------------------------------------------------------------------------------------ running
class SharedMlflow:
    """pytest plugin: the session's ``mlflow_server`` fixture is one server started here, shared by every mutant.

    A server takes 15-30 s to start on a loaded 2-core machine; started once it makes a registry mutant cost
    seconds. Each test uses its own registered-model name, so mutants never see each other's state.
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Any:
        if fixturedef.argname != "mlflow_server":
            return None
        fixturedef.cached_result = (self.server, fixturedef.cache_key(request), None)
        return self.server


_PLUGINS: list[Any] = []


def _run_child(overlay: Path, tests: tuple[str, ...], log: Path) -> None:
    """In the forked child: forget our own modules, put the overlay first and run pytest. Never returns."""
    code = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.setsid()  # the parent kills the whole group on a timeout (servers a test started included)
        for name in list(sys.modules):
            if name == "mlcd" or name.startswith("mlcd.") or name == "tests" or name.startswith("tests."):
                del sys.modules[name]
        sys.path.insert(0, str(overlay))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(overlay), os.environ.get("PYTHONPATH", "")])
        os.chdir(REPO)
        import pytest

        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore", *tests],
                               plugins=_PLUGINS))
    except BaseException as exc:  # noqa: BLE001 - anything in the child is a test outcome, reported by code
        print(f"child error: {exc!r}", flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_once(overlay: Path, tests: tuple[str, ...], timeout_s: float, log: Path) -> tuple[str, float]:
    """One pytest run in a fork; returns (outcome, seconds): passed, failed, error or timeout."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _run_child(overlay, tests, log)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout_s:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    try:
        os.killpg(pid, signal.SIGKILL)  # leftovers of the child's session (a server a killed test left behind)
    except (ProcessLookupError, PermissionError):
        pass
    if code == 0:
        return "passed", elapsed
    if code == 1:
        return "failed", elapsed
    return f"error({code})", elapsed


def report(results: dict[str, list[tuple[Mutant, str]]], totals: dict[str, int]) -> None:
    """The score table per module, then the survivors and the equivalent mutants with why."""
    print(f"{'module':16s} {'mutants':>8s} {'run':>5s} {'killed':>7s} {'equiv':>6s} {'survived':>9s} {'score':>7s}")
    results = {name: [(m, "equivalent" if v == "survived" and m.key in EQUIVALENT else v) for m, v in rows]
               for name, rows in results.items()}
    for name, rows in results.items():
        killed = sum(1 for _, v in rows if v == "killed")
        equivalent = sum(1 for _, v in rows if v == "equivalent")
        judged = len(rows) - equivalent
        score = 100.0 * killed / judged if judged else 0.0
        print(f"{name:16s} {totals[name]:8d} {len(rows):5d} {killed:7d} {equivalent:6d} {judged - killed:9d} {score:6.1f}%")
    for name, rows in results.items():
        for label in ("survived", "equivalent"):
            hits = [m for m, v in rows if v == label]
            if hits:
                print(f"\n{label} in {name}:")
                for m in hits:
                    why = f"  -- {EQUIVALENT[m.key]}" if label == "equivalent" else ""
                    print(f"  {m.name}: {m.before}  ->  {m.after}{why}")


_RUN_LINE = re.compile(r"^\s+\d+ (killed|survived|equivalent)\s+\S+\s+[\d.]+s  (\S+):(\d+) (\w+): (.*)  ->  (.*)$")
_PLAN_LINE = re.compile(r"^\[(\w+)\] (?:baseline .*; )?\d+ of (\d+) mutants")  # (older runs: one line)


def rescore(logs: list[Path]) -> int:
    """Score finished runs' output again with today's :data:`EQUIVALENT` (judged after the run).

    The runs' own per-mutant lines decide killed or survived; a later file's line for the same mutant (a re-run
    with ``--only`` after new tests) replaces an earlier one; a survivor now listed as equivalent leaves the score.
    """
    results: dict[str, dict[str, tuple[Mutant, str]]] = {}
    totals: dict[str, int] = {}
    for log in logs:
        name, seen = "", Counter[str]()
        for line in log.read_text().splitlines():
            if plan := _PLAN_LINE.match(line):
                name = plan[1]
                totals.setdefault(name, int(plan[2]))
                results.setdefault(name, {})
            elif row := _RUN_LINE.match(line):
                verdict, file, lineno, op, before, after = row.groups()
                m = Mutant(file, -1, op, int(lineno), before, after)
                seen[f"{m.name} {before}"] += 1  # two mutants can read alike (two True on one line)
                results[name][f"{m.name} {before} #{seen[f'{m.name} {before}']}"] = (m, verdict)
    print(f"mutation score of {', '.join(log.name for log in logs)} (killed / (run - equivalent)); equivalents as "
          "listed in bench/mutation.py" + ("; later files' re-runs replace earlier verdicts" if len(logs) > 1 else ""))
    report({name: list(rows.values()) for name, rows in results.items()}, totals)
    return 0


def _existing(tests: tuple[str, ...]) -> tuple[str, ...]:
    """The pytest arguments without test files this checkout does not have (yet)."""
    return tuple(t for t in tests if not t.startswith("tests/") or (REPO / t.split("::")[0]).exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="repeatable; default: all")
    parser.add_argument("--sample", type=int, default=30, help="mutants per module, fixed seed; 0 = every mutant")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="timeout = factor × baseline + 30 s")
    parser.add_argument("--budget-s", type=float, default=1200, help="per module: stop drawing mutants after this")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the sampled mutants whose 'file:line op' contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--rescore", type=Path, nargs="+",
                        help="score saved runs' output again with today's EQUIVALENT list (later files' re-runs win)")
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(args.rescore)
    names = args.module or list(MODULES)

    plan: dict[str, list[Mutant]] = {}
    totals: dict[str, int] = {}
    for name in names:
        every = [m for rel in _expand(MODULES[name].files) for m in enumerate_mutants(rel)]
        totals[name] = len(every)
        chosen = every if args.sample <= 0 or args.sample >= len(every) else random.Random(args.seed).sample(every, args.sample)
        if args.only:
            chosen = [m for m in chosen if any(o in m.name for o in args.only)]
        plan[name] = sorted(chosen, key=lambda m: (m.file, m.line, m.index, m.op))
    if args.list:
        for name, mutants in plan.items():
            print(f"## {name}: {len(mutants)} of {totals[name]} mutants")
            for m in mutants:
                mark = "  [equivalent]" if m.key in EQUIVALENT else ""
                print(f"  {m.name}: {m.before}  ->  {m.after}{mark}")
        return 0

    sys.dont_write_bytecode = True  # a mutant of the same size in the same second must never reuse a stale .pyc
    work = Path(tempfile.mkdtemp(prefix="mlcd-mutation-"))
    os.environ["TMPDIR"] = str(work / "tmp")
    (work / "tmp").mkdir()
    tempfile.tempdir = None
    overlay = work / "overlay"
    shutil.copytree(INCLUDE, overlay, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for rel, text in _SOURCES.items():
        (overlay / rel).write_text(text)  # the overlay holds exactly the text the mutants were made from
    for mod in PRELOAD:
        __import__(mod)
    server = None
    if any(MODULES[name].mlflow and any("tests/integration/" in t for m in plan[name]
                                        for t in MODULES[name].tests_for(m.file)) for name in names):
        sys.path.insert(0, str(INCLUDE))
        from mlcd.mlflow_server import LocalMlflowServer

        server = LocalMlflowServer(root=work / "mlflow").start(timeout=600)  # a loaded machine starts it slowly
        _PLUGINS.append(SharedMlflow(server))
        sys.path.remove(str(INCLUDE))
    print(f"mutation: modules {', '.join(names)}; sample {args.sample or 'all'} per module, seed {args.seed}"
          + (f"; only {args.only}" if args.only else "") + f"; work {work}")
    results: dict[str, list[tuple[Mutant, str]]] = {}
    wall = time.monotonic()
    try:
        for name in names:
            module = MODULES[name]
            timeouts: dict[tuple[str, ...], float] = {}
            # The test files are read once: a test file added while the run goes on waits for the next run.
            tests_of = {m: _existing(module.tests_for(m.file)) for m in plan[name]}
            for tests in dict.fromkeys(tests_of.values()):
                outcome, base_s = run_once(overlay, tests, 1800, work / f"{name}-baseline.log")
                if outcome != "passed":
                    print(f"[{name}] baseline {outcome} in {base_s:.0f} s ({' '.join(tests)}): fix the tests first; log:")
                    print((work / f"{name}-baseline.log").read_text()[-3000:])
                    return 1
                timeouts[tests] = args.timeout_factor * base_s + 30
                print(f"[{name}] baseline passed in {base_s:.1f} s, timeout {timeouts[tests]:.0f} s: {' '.join(tests)}",
                      flush=True)
            print(f"[{name}] {len(plan[name])} of {totals[name]} mutants", flush=True)
            results[name] = []
            module_start = time.monotonic()
            for i, m in enumerate(plan[name], 1):
                if time.monotonic() - module_start > args.budget_s:
                    print(f"[{name}] budget of {args.budget_s:.0f} s spent: {i - 1} of {len(plan[name])} sampled mutants run")
                    break
                tests = tests_of[m]
                target = overlay / m.file
                original = target.read_text()
                target.write_text(mutated_source(m))
                try:
                    outcome, secs = run_once(overlay, tests, timeouts[tests], work / "mutant.log")
                finally:
                    target.write_text(original)
                verdict = "killed" if outcome != "passed" else ("equivalent" if m.key in EQUIVALENT else "survived")
                results[name].append((m, verdict))
                print(f"  {i:3d} {verdict:10s} {outcome:9s} {secs:5.1f}s  {m.name}: {m.before}  ->  {m.after}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmutation score (killed / (run - equivalent)), {time.monotonic() - wall:.0f} s in all")
    report(results, totals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
