"""Shared pytest fixtures: the real-data folder and single-threaded torch."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("LANDMARK_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` (or ``$LANDMARK_DATA_DIR``); required in CI, skipped elsewhere if absent."""
    d = _data_dir()
    if not (d / "hamedan_ceph").is_dir():
        msg = f"real data not found at {d} (set LANDMARK_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory) -> dict:
    """Environment for bundle runs: a module-private cache where the demo data is generated on first use."""
    return {"CUSTOM_MONAI_CACHE": str(tmp_path_factory.mktemp("demo_cache"))}


#: module-scoped fixtures that are cheap to build twice (everything else module-scoped, e.g. a trained bundle, is not)
_CHEAP_MODULE_FIXTURES = {"demo_env"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n --dist loadgroup``, the tests that share an expensive module-scoped fixture (a trained
    bundle) form one xdist group per module, so that fixture is built on one worker only; the module's other
    tests are still spread over the workers. Without this, each worker that runs one of them trains it again."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        shared = [n for n, d in defs.items() if d and d[-1].scope == "module" and n not in _CHEAP_MODULE_FIXTURES]
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    """Make ``--dist loadgroup`` group again under pytest 9: pytest 9 keeps a node's id in ``_id``, while
    pytest-xdist 3.8 still appends the ``@group`` suffix to the old ``_nodeid`` attribute, which nothing reads any
    more, so every group silently fell apart (each worker built the shared fixtures again). Runs before xdist
    sends the collected ids to the controller; a no-op where xdist's own suffix took effect."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    from _pytest.nodeid import coerce_node_id

    for item in session.items:
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(names))}")
