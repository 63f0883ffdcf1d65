"""A rolling deploy with real `switchyard serve` processes: the new environment value is
adopted once, an old process restarting late cannot move the rollout back, and a restart with
the same environment leaves an operator's runtime change in force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.faults import ApiProcess, fault_rig, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def rollout(api: ApiProcess) -> dict[str, Any]:
    with api.new_client() as client:
        body: dict[str, Any] = client.get("/rollout").json()
    return body


def restart(api: ApiProcess, **env: str) -> None:
    api.stop()
    api.env.update(env)
    api.start()


def test_a_rolling_deploy_adopts_the_new_value_once_and_never_flips_back(
    tmp_path: Path,
) -> None:
    with fault_rig(tmp_path, USE_CELERY="true", CELERY_ROLLOUT_PERCENTAGE="5") as rig:
        old = rig.start_api("old")
        first = rollout(old)
        assert (first["percentage"], first["source"], first["environment"]["outcome"]) == (
            5,
            "seed",
            "seeded",
        )
        rig.set_rollout(old, percentage=10)  # an operator's runtime change

        # The same environment again: the runtime change stays in force.
        restart(old)
        assert (rollout(old)["percentage"], rollout(old)["environment"]["outcome"]) == (
            10,
            "unchanged",
        )

        # The deploy starts a new process with a new value: adopted, audited.
        new = rig.start_api("new", CELERY_ROLLOUT_PERCENTAGE="25")
        adopted = rollout(new)
        assert (adopted["percentage"], adopted["source"], adopted["updated_by"]) == (
            25,
            "environment",
            "environment",
        )
        assert adopted["environment"]["outcome"] == "adopted"
        assert rollout(old)["percentage"] == 25  # the old one follows the stored state

        # An old process restarts late, still with 5 %: ignored, and its banner says so.
        restart(old)
        late = rollout(old)
        assert (late["percentage"], late["version"]) == (25, adopted["version"])
        assert late["environment"] == {"percentage": 5, "outcome": "stale"}
        banner = tail(old.logs[-1], 200)
        assert "rollout=25% (version" in banner
        assert "CELERY_ROLLOUT_PERCENTAGE=5% is an older value, ignored" in banner

        # The new one restarts: already applied, nothing moves.
        restart(new)
        assert rollout(new)["version"] == adopted["version"]
        with new.new_client() as client:
            history = client.get("/rollout/history").json()
        assert [e["action"] for e in history][:2] == ["environment", "set"]
