"""Fixtures shared by the test modules."""

import os

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist each worker takes its share of the cores for torch's threads (the
    rule ``sweeps.threads_per_job`` applies to a sweep's jobs), and so do the commands a test
    starts in a new process (``OMP_NUM_THREADS``, unless the caller set it): with torch's
    default, every worker ran as many threads as there are cores, and the workers' threads
    contended for them."""
    from vae_lightning.sweeps import share_of_cores

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = os.environ.setdefault("OMP_NUM_THREADS", str(share_of_cores(workers)))
        torch.set_num_threads(int(threads))


@pytest.fixture
def one_thread():
    """Tiny tensors on one thread: a parallel region (torch's CPU log_sigmoid enters one whatever
    the size) costs more than the work on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cache_config_files() -> None:
    """Hydra reads and parses every YAML file of a composition again for each ``compose`` (its
    ``CachingConfigRepository`` lives for one composition); the suite composes a thousand configs
    from the same unchanging files, and parsing them is most of each composition's time. Here
    a file's parsed result is kept for the process and each composition gets its own deep copy:
    only for compositions whose every source is the project's ``conf/``, the installed package or
    Hydra's own (a test's temporary config folder is read afresh). Without Hydra's private
    ``ConfigRepository.load_config`` (another Hydra version), nothing is cached."""
    import copy
    from pathlib import Path

    try:
        from hydra._internal.config_repository import ConfigRepository
    except ImportError:
        return
    load = getattr(ConfigRepository, "load_config", None)
    if load is None:
        return
    conf = (Path(__file__).resolve().parent.parent / "conf").resolve()
    cache = {}

    def cached(self, config_path):
        sources = tuple((source.scheme(), str(source.path)) for source in self.sources)
        if any(scheme == "file" and Path(path).resolve() != conf for scheme, path in sources):
            return load(self, config_path)
        key = (sources, config_path)
        if key not in cache:
            cache[key] = load(self, config_path)
        return copy.deepcopy(cache[key])

    ConfigRepository.load_config = cached


_cache_config_files()
