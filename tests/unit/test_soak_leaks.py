"""The soak's judge of its samples: flat resources pass, a steady growth of any of them fails."""

from tests.soak.test_soak import find_leaks


def run(rss=lambda i: 90.0, fds=lambda i: 20, sessions=lambda i: 5, channels=lambda i: 2):
    return [
        {
            "at_s": 30 * i,
            "order_service": {
                "rss_mb": rss(i),
                "open_files": fds(i),
                "db_connections": sessions(i),
                "broker_channels": channels(i),
            },
        }
        for i in range(60)
    ]


def test_flat_resources_with_some_noise_are_no_leak():
    assert find_leaks(run(rss=lambda i: 90.0 + (i % 3), fds=lambda i: 20 + (i % 2))) == []


def test_memory_that_keeps_growing_is_a_leak():
    assert find_leaks(run(rss=lambda i: 90.0 + i)) == [
        "order_service: memory 99.0 MiB -> 144.0 MiB"
    ]


def test_open_files_sessions_or_channels_that_pile_up_are_leaks():
    leaks = find_leaks(run(fds=lambda i: 20 + i // 5, channels=lambda i: 2 + i // 20))
    assert leaks == ["order_service: open_files 22 -> 31", "order_service: broker_channels 2 -> 4"]


def test_a_run_too_short_to_judge_says_so():
    assert find_leaks(run()[:8]) == ["only 4 samples after the warm-up: too short a run to judge"]
