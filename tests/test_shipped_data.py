"""The book's data ships inside the package: every chapter reads it through dl.study, never through
a path into the repository, so a chapter copied alone runs beside a pip-installed library."""
import csv
import json
from pathlib import Path

import pytest

import deltalearn as dl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "deltalearn" / "data"


def test_book_data_names_shipped_files_and_lists_what_exists_otherwise():
    assert dl.study.book_data() == DATA.resolve()
    assert dl.study.book_data("grid.csv") == DATA.resolve() / "grid.csv"
    for folder in ("heldout", "reproduce", "pruned", "histories"):
        assert dl.study.book_data(folder).is_dir()
    with pytest.raises(FileNotFoundError, match=r"no shipped data 'grid.cvs'; .*holds .*grid\.csv.*heldout/"):
        dl.study.book_data("grid.cvs")
    with pytest.raises(FileNotFoundError, match=r"'heldout/Pong_table.json'; heldout/ holds BattleZone_table.json"):
        dl.study.book_data("heldout/Pong_table.json")
    with pytest.raises(ValueError, match="inside the package's data folder"):
        dl.study.book_data("../agents")


def test_the_book_reads_nothing_left_in_the_old_folder():
    left = [str(p) for p in (ROOT / "book" / "data").rglob("*") if p.is_file()]
    assert not left, f"book/data moved to deltalearn/data (dl.study.book_data); still there: {left}"


def test_a_shipped_set_name_and_its_folder_give_the_same_results():
    for game in dl.study.SIX_GAMES:
        assert dl.load_table(game) == dl.load_table(game, "heldout") == dl.load_table(game, DATA / "heldout")
        assert dl.load_table(game, "reproduce") == dl.load_table(game, DATA / "reproduce")
        assert dl.load_sweep(game).equals(dl.load_sweep(game, DATA / "reproduce"))
    # the two sets are different results: the reported tables play 30 held-out episodes
    assert dl.load_table("Breakout").episodes == 30 != dl.load_table("Breakout", "reproduce").episodes
    assert list(dl.study.load_tables()) == list(dl.study.SIX_GAMES)
    assert dl.study.load_summary().equals(dl.study.load_summary(DATA / "heldout"))
    assert not dl.study.load_summary("reproduce").equals(dl.study.load_summary())


def test_a_local_folder_is_read_when_given_as_a_path(tmp_path, monkeypatch):
    (tmp_path / "heldout").mkdir()
    raw = json.loads((DATA / "heldout" / "Breakout_table.json").read_text())
    raw["seed"] = 4242
    (tmp_path / "heldout" / "Breakout_table.json").write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path)
    assert dl.load_table("Breakout", Path("heldout")).seed == 4242
    assert dl.load_table("Breakout", "./heldout").seed == 4242
    assert dl.load_table("Breakout", "heldout").seed != 4242  # the bare name is the shipped set
    with pytest.raises(FileNotFoundError, match="root is a shipped set"):
        dl.load_sweep("Breakout", "nowhere")
    with pytest.raises(TypeError, match="shipped set .* or a folder path, got int"):
        dl.study.load_tables(3)


def test_load_grid_gives_the_csv_rows_with_their_columns():
    with open(DATA / "grid.csv") as f:
        rows = list(csv.DictReader(f))
    grid = dl.study.load_grid()
    assert list(grid.columns) == list(rows[0]) and len(grid) == len(rows)
    for got, want in zip(grid.to_dict("records"), rows):
        assert got["kind"] == want["kind"] and got["threshold"] == want["threshold"]  # "none", "0", "0.001"
        assert got["significant"] == int(want["significant"]) and isinstance(got["significant"], int)
        assert got["reduction"] == float(want["reduction"])
    assert {"none", "0", "0.001"} <= set(grid["threshold"])


def test_load_count_noise_is_the_committed_measurement():
    noise = dl.study.load_count_noise()
    assert noise == json.loads((DATA / "count_noise.json").read_text())
    assert {"native", "onednn-off", "avx2"} <= set(noise["replays"])


def test_training_histories_are_the_committed_runs_of_one_game():
    freeway = dl.study.training_histories("Freeway")
    assert list(freeway) == ["Freeway-seed0", "Freeway-short-seed0"]
    for name, hist in freeway.items():
        assert hist == json.loads((ROOT / "runs" / name / "history.json").read_text())
        assert hist["config"]["env"] == "Freeway"
    for game in dl.study.FIGURE_GAMES:
        runs = dl.study.training_histories(game)
        assert runs and all(h["config"]["env"] == game for h in runs.values())
    assert dl.study.training_histories("CartPole-v1") == {}
    with pytest.raises(ValueError, match="unknown game 'Freewy'; shipped training histories are for .*Freeway"):
        dl.study.training_histories("Freewy")


def test_every_committed_run_history_ships_unchanged():
    runs = sorted(ROOT.glob("runs/*/history.json"))
    assert runs
    for path in runs:
        shipped = DATA / "histories" / f"{path.parent.name}.json"
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped} differs from {path}: copy it again"


def test_the_pruned_cartpole_agents_load_from_package_data():
    pruned = dl.study.book_data("pruned")
    for s in (0.3, 0.5, 0.7, 0.8, 0.9):
        a = dl.study.agent_at("CartPole-v1", s, directory=pruned)
        assert a.fine_tuned and a.name == f"CartPole-v1-pruned-{s}"
        assert dl.agent_record(a.name, pruned)["made_with"] == "deltalearn.rl.prune_and_distill"


def test_the_reproduce_command_writes_into_the_shipped_sets_by_default():
    from deltalearn import cli

    assert cli.DEFAULT_REPRODUCE_OUT == dl.study.book_data("reproduce")
    assert cli.DEFAULT_HELDOUT_OUT == dl.study.book_data("heldout")


def test_the_package_data_glob_ships_every_data_file():
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["deltalearn"]
    shipped = {p for g in globs for p in (ROOT / "deltalearn").glob(g) if p.is_file()}
    missing = sorted(str(p.relative_to(ROOT)) for p in DATA.rglob("*") if p.is_file() and p not in shipped)
    assert not missing, f"package data not shipped by {globs}: {missing}"
