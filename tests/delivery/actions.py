"""Runs a GitHub Actions workflow file's own steps here, the way a runner would: jobs in `needs` order,
each on a fresh clone, its `run:` steps in order in bash with the workflow's env.

What stands in for GitHub:
- ``${{ }}`` expressions are evaluated from an explicit mapping (``contexts``: e.g. ``vars.X``,
  ``github.event_name``); an expression or a name the mapping does not know fails the run loudly;
- a job's and a step's ``if:`` are evaluated (``==``, ``!=``, ``&&``, ``||``, ``!``, parentheses, quoted strings,
  ``success()``/``failure()``/``always()``); a job whose ``needs`` did not succeed is skipped; a step's ``if:``
  without a status function means ``success() && (...)``, as on GitHub; a step skipped by it is recorded, not run;
- ``uses:`` steps of GitHub-hosted actions (``HOSTED_ACTIONS``) are not run: ``actions/checkout`` is the
  fresh clone each job gets (``checkout``; its ``ref:`` input, evaluated, is recorded in the step's ``inputs``
  and, given ``at_ref``, checked out), ``actions/setup-python`` / ``setup-node`` are the machine's
  interpreters, ``docker/login-action`` talks to a registry only, ``actions/cache`` keeps a folder between runs
  (here the machine's own, which stays); ``upload-artifact`` / ``download-artifact``
  copy files between a run's jobs through ``artifacts`` when one is given (else they are recorded only); a
  name uploaded again in the same ``artifacts`` (a re-run job is the same run) fails as GitHub's 409 does, unless
  the step sets ``overwrite: true``, which replaces it;
  any other ``uses:`` fails the run;
- a ``run:`` step in ``not_run`` (command -> why) is not run, and says why (``make test``: the suite
  this runs inside).
Steps run in ``bash -e`` (GitHub's default shell for run steps); a failing step fails its job and skips
the job's remaining steps (but those whose ``if:`` asks for ``failure()`` or ``always()``), as on GitHub.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import yaml

HOSTED_ACTIONS = ("actions/checkout", "actions/setup-python", "actions/setup-node", "actions/upload-artifact",
                  "actions/download-artifact", "docker/login-action", "actions/cache")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
STATUS_CALL = re.compile(r"\b(?:success|failure|always|cancelled)\(\)")
TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<name>[A-Za-z_][\w.-]*)"
                   r"(?P<call>\(\))?)")


class WorkflowError(AssertionError):
    """The workflow uses something this runner does not know: fix the mapping or the workflow."""


def evaluate(expression: str, contexts: Mapping[str, str], status: str = "success") -> object:
    """A GitHub Actions expression over ``contexts`` (dotted name -> value); unknown names fail loudly."""
    tokens, position = [], 0
    while position < len(expression):
        match = TOKEN.match(expression, position)
        if not match or match.end() == position:
            raise WorkflowError(f"expression {expression!r}: cannot read {expression[position:]!r}")
        tokens.append(match)
        position = match.end()
    tokens = [t for t in tokens if t.group(0).strip()]
    at = 0

    def peek() -> str | None:
        return tokens[at].group(0).strip() if at < len(tokens) else None

    def primary() -> object:
        nonlocal at
        token = tokens[at]
        at += 1
        if token.group("string"):
            return token.group("string")[1:-1].replace("''", "'")
        if token.group("op") == "(":
            value = disjunction()
            if peek() != ")":
                raise WorkflowError(f"expression {expression!r}: missing ')'")
            at += 1
            return value
        if token.group("op") == "!":
            return not truthy(primary())
        name = token.group("name")
        if token.group("call"):
            calls = {"success": status == "success", "failure": status == "failure", "always": True,
                     "cancelled": False}
            if name not in calls:
                raise WorkflowError(f"expression {expression!r}: function {name}() is not supported here")
            return calls[name]
        if name in ("true", "false"):
            return name == "true"
        if name not in contexts:
            raise WorkflowError(f"expression {expression!r}: {name} is not in the test's mapping "
                                f"(known: {', '.join(sorted(contexts))})")
        return contexts[name]

    def comparison() -> object:
        nonlocal at
        left = primary()
        while peek() in ("==", "!="):
            op = peek()
            at += 1
            right = primary()
            left = (str(left).lower() == str(right).lower()) == (op == "==")  # GitHub compares strings caselessly
        return left

    def conjunction() -> object:
        nonlocal at
        left = comparison()
        while peek() == "&&":
            at += 1
            right = comparison()
            left = right if truthy(left) else left
        return left

    def disjunction() -> object:
        nonlocal at
        left = conjunction()
        while peek() == "||":
            at += 1
            right = conjunction()
            left = left if truthy(left) else right
        return left

    value = disjunction()
    if at != len(tokens):
        raise WorkflowError(f"expression {expression!r}: unexpected {peek()!r}")
    return value


def truthy(value: object) -> bool:
    return bool(value) and value not in ("", "0", "false")


def substitute(text: str, contexts: Mapping[str, str]) -> str:
    def one(match: re.Match) -> str:
        value = evaluate(match.group(1), contexts)
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return EXPRESSION.sub(one, str(text))


@dataclass
class StepResult:
    job: str
    name: str
    command: str
    returncode: int | None  # None: not run (uses: / not_run), with `why`
    seconds: float = 0.0
    output: str = ""
    why: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), line) as printed
    inputs: dict[str, str] = field(default_factory=dict)  # a uses: step's `with:`, its expressions evaluated


@dataclass
class WorkflowRun:
    name: str
    jobs: dict[str, str] = field(default_factory=dict)  # job -> success | failure | skipped
    steps: list[StepResult] = field(default_factory=list)

    @property
    def conclusion(self) -> str:
        return "failure" if "failure" in self.jobs.values() else "success"

    def step(self, command: str) -> StepResult:
        found = [s for s in self.steps if s.command == command]
        assert found, f"{self.name}: no step ran {command!r}: {[s.command for s in self.steps]}"
        return found[-1]


def run_workflow(path: Path, contexts: Mapping[str, str], checkout: Callable[[str], Path],
                 runner_env: Callable[[str], dict], not_run: Mapping[str, str], say: Callable[[str], None] = print,
                 step_timeout_s: float = 600.0, at_ref: Callable[[Path, str], None] | None = None,
                 artifacts: Path | None = None) -> WorkflowRun:
    """Every job of the workflow at ``path``, in order; ``checkout(job)`` makes the job's fresh clone and
    ``runner_env(job)`` its runner's environment (the job's and workflow's ``env:`` are added to it).
    ``at_ref(clone, ref)`` checks out an ``actions/checkout`` step's non-empty ``ref:``; ``artifacts`` is the
    run's artifact store (a directory per artifact name)."""
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    result = WorkflowRun(workflow["name"])
    pending = dict(workflow["jobs"])
    while pending:
        ready = [n for n, job in pending.items() if all(d in result.jobs for d in _needs(job))]
        if not ready:
            raise WorkflowError(f"{path.name}: jobs {sorted(pending)} wait on each other (needs)")
        name = ready[0]
        job = pending.pop(name)
        needs_ok = all(result.jobs[d] == "success" for d in _needs(job))
        condition = str(job.get("if", "success()"))
        condition = EXPRESSION.sub(lambda m: m.group(1), condition)
        status = "success" if needs_ok else "failure"
        if not needs_ok or not truthy(evaluate(condition, contexts, status)):
            result.jobs[name] = "skipped"
            say(f"{result.name} / {name}: skipped (if: {condition}; needs {'met' if needs_ok else 'not met'})")
            continue
        result.jobs[name] = _run_job(result, name, job, workflow, contexts, checkout, runner_env, not_run, say,
                                     step_timeout_s, at_ref, artifacts)
    return result


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _run_job(result: WorkflowRun, name: str, job: dict, workflow: dict, contexts: Mapping[str, str],
             checkout: Callable[[str], Path], runner_env: Callable[[str], dict], not_run: Mapping[str, str],
             say: Callable[[str], None], step_timeout_s: float, at_ref: Callable[[Path, str], None] | None,
             artifacts: Path | None) -> str:
    workdir = checkout(name)
    env = dict(runner_env(name))
    for scope in (workflow.get("env") or {}, job.get("env") or {}):
        env.update({key: substitute(value, contexts) for key, value in scope.items()})
    status = "success"
    for number, step in enumerate(job["steps"], 1):
        label = step.get("name") or step.get("uses") or step.get("run")
        if "uses" in step and step["uses"].split("@")[0] not in HOSTED_ACTIONS:
            raise WorkflowError(f"{name} step {number}: uses {step['uses']}, not a known GitHub-hosted action")
        condition = step_condition(step)
        if not truthy(evaluate(condition, contexts, status)):
            command = step["uses"] if "uses" in step else substitute(step["run"], contexts).strip()
            result.steps.append(StepResult(name, label, command, None, why=f"skipped (if: {condition})"))
            say(f"{result.name} / {name} / {label}: skipped (if: {condition})")
            continue
        if "uses" in step:
            inputs = {key: substitute(value, contexts) for key, value in (step.get("with") or {}).items()}
            result.steps.append(StepResult(name, label, step["uses"], None, why="GitHub-hosted action",
                                           inputs=inputs))
            _hosted_action(step["uses"].split("@")[0], inputs, workdir, at_ref, artifacts)
            continue
        command = substitute(step["run"], contexts).strip()
        if command in not_run:
            result.steps.append(StepResult(name, label, command, None, why=not_run[command]))
            say(f"{result.name} / {name} / {label}: not run ({not_run[command]})")
            continue
        step_env = {**env, **{k: substitute(v, contexts) for k, v in (step.get("env") or {}).items()}}
        done = _run_step(name, label, command, workdir, step_env, step_timeout_s)
        result.steps.append(done)
        say(f"{result.name} / {name} / {label}: exit {done.returncode} in {done.seconds:.1f} s")
        if done.returncode != 0:
            status = "failure"
    return status


def _hosted_action(action: str, inputs: dict, workdir: Path, at_ref: Callable[[Path, str], None] | None,
                   artifacts: Path | None) -> None:
    """What of a GitHub-hosted action this runner stands in for: checkout's ``ref:`` and the artifact copies."""
    import shutil

    if action == "actions/checkout" and inputs.get("ref") and at_ref is not None:
        at_ref(workdir, inputs["ref"])
    elif action == "actions/upload-artifact" and artifacts is not None:
        store = artifacts / inputs["name"]
        if store.exists():  # upload-artifact v4: a name is uploaded once per run, a re-run job's attempts included
            if str(inputs.get("overwrite", "false")).lower() != "true":
                raise WorkflowError(f"upload-artifact: an artifact named {inputs['name']!r} already exists on this run "
                                    "(GitHub: 409 Conflict), as after a re-run of the job: set `overwrite: true`")
            shutil.rmtree(store)  # overwrite: the earlier artifact is deleted, not merged into
        for pattern in filter(None, (line.strip() for line in inputs.get("path", "").splitlines())):
            source = workdir / pattern
            if source.is_dir():
                shutil.copytree(source, store / pattern, dirs_exist_ok=True)
            elif source.is_file():
                (store / pattern).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, store / pattern)
    elif action == "actions/download-artifact" and artifacts is not None:
        store = artifacts / inputs["name"]
        if not store.is_dir():
            raise WorkflowError(f"download-artifact: no artifact {inputs['name']!r} was uploaded in this run")
        shutil.copytree(store, workdir / inputs.get("path", "."), dirs_exist_ok=True)


def step_condition(step: dict) -> str:
    """A step's ``if:`` as GitHub reads it: without a status function it means ``success() && (...)``."""
    condition = EXPRESSION.sub(lambda m: m.group(1), str(step.get("if", "success()")))
    return condition if STATUS_CALL.search(condition) else f"success() && ({condition})"


def _run_step(job: str, label: str, command: str, workdir: Path, env: dict, timeout_s: float) -> StepResult:
    started = time.monotonic()
    process = subprocess.Popen(["bash", "-e", "-c", command], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list[tuple[float, str]] = []
    watchdog = threading.Timer(timeout_s, process.kill)  # a step that hangs fails (killed: exit -9)
    watchdog.start()
    try:
        for line in process.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return StepResult(job, label, command, process.returncode, time.monotonic() - started,
                      "\n".join(line for _, line in lines), lines=lines)


def unset_secrets(path: Path) -> dict[str, str]:
    """Every ``secrets.NAME`` the workflow reads, as GitHub passes a secret nobody set: an empty string (so a test's
    contexts follow the workflow: a secret added to it needs no edit in each test that runs it)."""
    names = set(re.findall(r"\bsecrets\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))
    return {f"secrets.{name}": "" for name in sorted(names)}


def runner_environment(**extra: str) -> dict:
    """A clean runner's environment: none of this test process's project, MLflow or pytest variables, and
    not this test's virtual environment on PATH (each job's make targets use its own clone's .venv)."""
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHELFCAST_", "MLFLOW_", "FLUENTD_", "ELASTICSEARCH_", "PYTEST", "VIRTUAL_ENV",
                                "PYTHON", "AWS_", "GITHUB_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.update(CI="true", DVC_NO_ANALYTICS="1", **extra)
    return env
