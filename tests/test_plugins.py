"""One plug-in mechanism (imagetext.plugins) for encoders and captioners: lazy, by name."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_registries_import_a_backend_only_when_it_is_asked_for():
    code = ("import sys; from imagetext.models.registry import ENCODERS; "
            "from imagetext.caption.registry import CAPTIONERS; "
            "before = 'torch' in sys.modules; cls = ENCODERS.get('onnx'); "
            "print(before, 'torch' in sys.modules, cls.backend, "
            "'imagetext.models.aligned' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "onnx", "False"]


def test_both_kinds_register_and_refuse_the_same_way():
    from imagetext.caption.registry import CAPTIONERS, captioner_class
    from imagetext.models.registry import ENCODERS, backend_class

    assert backend_class("conse").backend == "conse"
    assert captioner_class("efficientnet-captioner").backend == "efficientnet-captioner"
    assert "aligned" in ENCODERS.names() and "hf-captioner" in CAPTIONERS.names()
    with pytest.raises(ValueError, match="unknown backend 'nope'; known: aligned"):
        backend_class("nope")
    with pytest.raises(ValueError, match="unknown captioner backend 'nope'"):
        captioner_class("nope")
