"""Graphviz export (engine/graphviz.py): nodes, labelled data edges, dashed control edges, scope clusters."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import engine as en


def _graph():
    x = en.placeholder(en.float32, shape=(None, 3), name="x")
    with en.name_scope("layer"):
        w = en.Variable(np.ones((3, 2), np.float32), name="w")
        y = en.relu(en.matmul(x, w))
        with en.name_scope("inner"):
            with en.control_dependencies([y]):
                z = en.identity(y, name="out")
    unrelated = en.constant(1.0, name="unrelated")
    return x, w, y, z, unrelated


def _nodes(dot):
    return dict(re.findall(r'^\s*(op\d+) \[label="([^"]*)"', dot, re.M))


def test_whole_graph_structure():
    _, _, _, _, _ = _graph()
    dot = en.graphviz.to_dot(en.get_default_graph())
    assert dot.startswith('digraph "engine_graph" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    labels = set(_nodes(dot).values())
    assert {"Placeholder\\nx", "MatMul\\nMatMul", "Relu\\nRelu", "Identity\\nout", "Const\\nunrelated"} <= labels
    assert 'label="float32 (?, 3)"' in dot and 'label="float32 (3, 2)"' in dot
    dashed = re.findall(r"(op\d+) -> (op\d+) \[style=dashed", dot)
    nodes = _nodes(dot)
    assert [(nodes[a], nodes[b]) for a, b in dashed] == [("Relu\\nRelu", "Identity\\nout")]
    assert 'label="layer"' in dot and 'label="layer/inner"' in dot
    inner = dot[dot.index('label="layer/inner"'):]
    assert "Identity\\nout" in inner[:inner.index("}")]  # the op sits in its scope's cluster


def test_fetches_limit_the_drawing_to_their_dependencies(tmp_path):
    x, w, y, z, unrelated = _graph()
    dot = en.graphviz.to_dot([y])
    labels = set(_nodes(dot).values())
    assert "Const\\nunrelated" not in labels and "Identity\\nout" not in labels and "Relu\\nRelu" in labels
    path = en.graphviz.write_dot(z, str(tmp_path / "g.dot"))
    assert open(path, encoding="utf-8").read() == en.graphviz.to_dot(z)
    with pytest.raises(TypeError, match="to_dot"):
        en.graphviz.to_dot([42])


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
def test_dot_renders(tmp_path):
    *_, z, _ = _graph()
    path = en.graphviz.write_dot(en.get_default_graph(), str(tmp_path / "g.dot"))
    done = subprocess.run(["dot", "-Tsvg", path, "-o", str(tmp_path / "g.svg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
