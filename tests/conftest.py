"""Fixtures shared by the test modules."""

import pytest
import torch


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
