import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Tests never write into the user's QSCOPE_HOME, except real-model tests that reuse it."""
    import os

    if os.environ.get("QSCOPE_TEST_REAL_HOME") != "1":
        monkeypatch.setenv("QSCOPE_HOME", str(tmp_path_factory.getbasetemp() / "qscope_home"))
