"""The held-out evaluation: the reporting episodes, and the only way a held-out record is made."""
import json
import shutil

import pytest

import deltalearn as dl
from deltalearn import cli


@pytest.fixture
def agents(tmp_path):
    """A private copy of the CartPole agent and its manifest entry, to record into."""
    rec = dl.agent_record("CartPole-v1")
    shutil.copy(dl.store.AGENT_DIR / rec["file"], tmp_path / rec["file"])
    rec = dict(rec)
    rec.pop("heldout_evaluation", None)
    (tmp_path / "manifest.json").write_text(json.dumps({"CartPole-v1": rec}))
    return tmp_path


def test_heldout_plays_the_reporting_seeds_and_records_only_the_shipped_agent_as_it_ships(agents):
    res = dl.study.evaluate_heldout("CartPole-v1", record=True, directory=agents)
    assert (res.seed, len(res.scores)) == (dl.study.HELDOUT_SEED, dl.study.HELDOUT_EPISODES)
    stored = dl.agent_record("CartPole-v1", agents)["heldout_evaluation"]
    assert stored == res.record(lengths=True)
    assert stored["seed"] == 1000 and stored["episodes"] == 30
    # the shipped record (made by `deltalearn evaluate --heldout --record`) is what this replays
    assert stored["scores"] == dl.agent_record("CartPole-v1")["heldout_evaluation"]["scores"]
    for bad in (dict(sparsity=0.5), dict(threshold=0.01), dict(epsilon=0.1), dict(net=dl.load_agent("CartPole-v1"))):
        with pytest.raises(ValueError, match="held-out record"):
            dl.study.evaluate_heldout("CartPole-v1", record=True, directory=agents, **bad)


def test_cli_record_needs_heldout_and_a_shipped_agent(capsys):
    assert cli.main(["evaluate", "--env", "CartPole-v1", "--record"]) == 2
    assert "--heldout" in capsys.readouterr().err
    assert cli.main(["evaluate", "--env", "CartPole-v1", "--heldout", "--record", "--sparsity", "0.5"]) == 2
    assert "dense variant" in capsys.readouterr().err
