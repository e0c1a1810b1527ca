"""`make venv`'s first step, run by the Python that is to make .venv: is it one Shelfcast runs on, and is a
.venv already there made by another?

Before, `make venv` with a `python3` of 3.12 or 3.13 (no python3.11 on PATH) made .venv with it, upgraded pip and
only then failed inside pip: `Package 'shelfcast' requires a different Python: 3.12.1 not in '<3.12,>=3.11'`,
naming neither what to install nor how to point make at it. And that .venv stayed: once Python 3.11 was installed,
every `make venv` refused the same way (`python3.11 -m venv` over it kept its `python`, still 3.12's) until
`make clean`. Now the first is one line naming pyproject.toml's `requires-python` and `PYTHON=`, before anything is
made; the second is made again by the Python given.

    python3 scripts/venv_python.py .venv      # exit 0: go on; 1: a line on stderr says why not

Standard library only, and no syntax past Python 3.6: it is run by whatever `python3` a machine has. Up to the
version check it runs on Python 2.7 too (no pathlib there), so `make venv PYTHON=python` where `python` is 2.7 is
refused in the same one line: before, `ImportError: No module named pathlib` and a traceback.
"""

import io
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*$")


def requires_python(pyproject):
    """pyproject.toml's `requires-python` (one definition of the Pythons Shelfcast runs on)."""
    with io.open(pyproject, encoding="utf-8") as file:
        text = file.read()
    found = re.search(r'^\s*requires-python\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not found:
        raise SystemExit("make venv: {}: no requires-python in [project]".format(pyproject))
    return found.group(1)


def satisfies(version, spec):
    """Whether `version` (a tuple of ints) meets every clause of `spec` (`>=3.11,<3.12`); a clause's missing
    parts compare as 0, as PEP 440's do: 3.12.1 is not < 3.12, 3.11.7 is."""
    for clause in spec.split(","):
        matched = CLAUSE.match(clause)
        if not matched:
            raise SystemExit("make venv: pyproject.toml requires-python: cannot read the clause {!r}".format(clause))
        op, wanted = matched.group(1), tuple(int(part) for part in matched.group(2).split("."))
        width = max(len(wanted), 3)
        have = tuple(version[:width]) + (0,) * (width - len(version[:width]))
        wanted = wanted + (0,) * (width - len(wanted))
        holds = {">=": have >= wanted, "<=": have <= wanted, "==": have == wanted, "!=": have != wanted,
                 ">": have > wanted, "<": have < wanted}[op]
        if not holds:
            return False
    return True


def venv_version(venv):
    """The `major.minor` of the Python in `venv`, or None where it has none that runs (none yet, or its base
    Python removed)."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        return None
    try:
        said = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return said.stdout.strip() if said.returncode == 0 else None


def main(argv):
    spec = requires_python(os.path.join(ROOT, "pyproject.toml"))
    mine = "{}.{}.{}".format(*sys.version_info[:3])
    if not satisfies(tuple(sys.version_info[:3]), spec):
        sys.stderr.write(
            "make venv: Shelfcast needs Python {spec} (pyproject.toml requires-python); {exe} is {mine}. Install "
            "Python 3.11 (make uses python3.11 from PATH first) or name one: make venv PYTHON=/path/to/python3.11\n"
            .format(spec=spec, exe=sys.executable, mine=mine))
        return 1
    venv = argv[0] if argv else os.path.join(ROOT, ".venv")
    wanted = "{}.{}".format(*sys.version_info[:2])
    if os.path.isdir(venv) and not os.path.islink(venv):
        had = venv_version(venv)
        if had != wanted:
            why = "made by Python {}".format(had) if had else "left without a Python that runs"
            print("venv: {} was {}: making it again with {} ({})".format(venv, why, sys.executable, mine))
            shutil.rmtree(venv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
