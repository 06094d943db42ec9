"""The suite's own rule: only CUDA tests may skip (the repository's ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def test_a_skip_without_the_cuda_marker_fails(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    cuda: needs a CUDA device\n")
    pytester.makepyfile(
        """
        import pytest

        def test_missing_file():
            pytest.skip("fixture file not found")

        @pytest.mark.skipif(True, reason="always")
        def test_skipif():
            pass

        @pytest.mark.cuda
        def test_gpu():
            pytest.skip("needs a CUDA device")

        def test_runs():
            assert True
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    # a skip in the call phase is reported as a failure, one in setup (skipif) as an error
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1)
    result.stdout.fnmatch_lines(["*only tests marked @pytest.mark.cuda may skip*"])
