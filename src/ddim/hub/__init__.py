"""Named sources: the paper's pretrained weights and CIFAR-10 by name, fetched once into a cache.

    sources      the table: each name's file, origin URL, published MD5 and size
    cache        where the cache is (DDIM_CACHE), the mirror (DDIM_MIRROR), offline (DDIM_OFFLINE)
    download     `fetch`: resumable, verified, atomic, one process at a time
    huggingface  hub ids through huggingface_hub's own cache
"""

from ddim.hub.cache import cache_root, cached_file, is_offline, source_url
from ddim.hub.download import cache_lock, cache_state, fetch, manual_route, md5_of
from ddim.hub.huggingface import hub_snapshot, is_hub_id
from ddim.hub.sources import ALIASES, DATA, WEIGHTS, Source, data_source, weights_source

__all__ = [
    "ALIASES",
    "DATA",
    "WEIGHTS",
    "Source",
    "cache_lock",
    "cache_root",
    "cache_state",
    "cached_file",
    "data_source",
    "fetch",
    "hub_snapshot",
    "is_hub_id",
    "is_offline",
    "manual_route",
    "md5_of",
    "source_url",
    "weights_source",
]
