"""The tests' export cache forgets entries no run has used for a week, and never one another process holds."""
from __future__ import annotations

import fcntl
import os
import time

from tests.conftest import prune_export_cache

DAY = 24 * 3600


def _entry(cache, key, dir_age_days, used_age_days=None):
    entry = cache / key
    (entry / "models" / "m" / "1").mkdir(parents=True)
    (entry / "done").write_text("models/m/1")
    now = time.time()
    if used_age_days is not None:
        (entry / "used").touch()
        os.utime(entry / "used", (now - used_age_days * DAY,) * 2)
    os.utime(entry, (now - dir_age_days * DAY,) * 2)
    return entry


def test_entries_unused_for_longer_than_the_limit_go_and_the_rest_stay(tmp_path):
    cache = tmp_path / "cache"
    stale = _entry(cache, "stale", dir_age_days=30, used_age_days=8)
    fresh = _entry(cache, "fresh", dir_age_days=30, used_age_days=1)  # made long ago, used yesterday
    never_used = _entry(cache, "never-used", dir_age_days=9)  # an entry from before `used` files
    new = _entry(cache, "new", dir_age_days=0)
    (cache / "stale.lock").touch()

    removed = prune_export_cache(cache, 7 * DAY)

    assert sorted(removed) == ["never-used", "stale"]
    assert not stale.exists() and not never_used.exists()
    assert (fresh / "done").is_file() and (new / "done").is_file()
    assert (cache / "stale.lock").is_file()  # a process waiting on it must lock the same file as the next one


def test_an_entry_another_process_holds_stays_however_old(tmp_path):
    cache = tmp_path / "cache"
    held = _entry(cache, "held", dir_age_days=30, used_age_days=30)
    with open(cache / "held.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # an export running, or the entry being handed out
        assert prune_export_cache(cache, 7 * DAY) == []
        assert (held / "done").is_file()
    assert prune_export_cache(cache, 7 * DAY) == ["held"]
    assert not held.exists()


def test_no_cache_yet_is_nothing_to_prune(tmp_path):
    assert prune_export_cache(tmp_path / "absent", 7 * DAY) == []
