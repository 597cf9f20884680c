"""The bench's profile summary, over py-spy's collapsed stacks."""

from bench.sampling import summary


def test_own_time_and_time_including_callees() -> None:
    collapsed = "\n".join(
        [
            "run (uvloop/__init__.py:92);handler (svc.py:10);query (db.py:5) 6",
            "run (uvloop/__init__.py:92);handler (svc.py:11) 3",
            "run (uvloop/__init__.py:92);handler (svc.py:10);handler (svc.py:20) 1",
            "not a stack line",
        ]
    )
    lines = summary(collapsed, top=2)
    assert lines[0] == "    profile, 10 samples: own time (the frame itself, and C it calls)"
    assert lines[1:3] == ["       60.0%  query (db.py:5)", "       30.0%  handler (svc.py:11)"]
    # handler counts once per sample though it recurses; the event loop's frame is left out.
    assert lines[4:6] == ["      100.0%  handler (svc.py)", "       60.0%  query (db.py)"]


def test_no_samples() -> None:
    assert summary("", top=5) == ["    (profile: no samples)"]
