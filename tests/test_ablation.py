"""`bench/curation.py --ablate`'s pure parts: which flags each pool gets, and the summary of
stored runs (means, seeds' spread, paired gain intervals) that the README's table comes from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import ablation

RECIPE_CRAWL = {
    "allowed-networks": "127.0.0.0/8", "samples-per-shard": 1000, "timeout": 2,
    "filters": "lang,caption,image,score", "min-side": 64, "queries": "q.txt",
    "max-per-query": 80, "decontaminate": "heldout", "dedup-scope": "pair",
    "score-checkpoint": "raw.pt", "keep-top-fraction": 0.7,
}  # fmt: skip


def flags_of(stages: set[str]) -> dict[str, str | None]:
    flags = ablation.pool_flags(RECIPE_CRAWL, stages)
    return {f: (flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else None)
            for i, f in enumerate(flags) if f.startswith("--")}  # fmt: skip


def test_each_stage_alone_gets_only_its_own_options() -> None:
    assert flags_of(set()) == {"--allowed-networks": "127.0.0.0/8", "--samples-per-shard": "1000",
                               "--timeout": "2", "--dedup": "none"}  # fmt: skip
    text = flags_of({"text_filters"})
    assert text["--filters"] == "lang,caption" and "--min-side" not in text
    assert text["--dedup"] == "none"
    dedup = flags_of({"dedup"})
    assert dedup["--dedup-scope"] == "pair" and dedup["--decontaminate"] == "heldout"
    assert "--dedup" not in dedup and "--filters" not in dedup
    assert flags_of({"balancing"})["--max-per-query"] == "80"
    score = flags_of({"score"})
    assert score["--filters"] == "score" and score["--keep-top-fraction"] == "0.7"
    every = flags_of(set(ablation.STAGES))
    assert every["--filters"] == "lang,caption,image,score" and "--dedup" not in every


def test_a_recipe_option_no_stage_owns_is_refused() -> None:
    with pytest.raises(ValueError, match="max-pairs"):
        ablation.pool_flags({**RECIPE_CRAWL, "max-pairs": 10}, set(ablation.STAGES))


def hits(rate: float, n: int, rng: np.random.Generator) -> list[int]:
    return (rng.random(n) < rate).astype(int).tolist()


def write_run(folder: Path, pool: str, seed: int, top1: list[int], settings: dict) -> None:
    style = {"hits1": top1, "hits5": [1] * len(top1), "image_to_text_R@1": 0.5,
             "text_to_image_R@1": 0.4}  # fmt: skip
    run = {"settings": settings, "pool": pool, "seed": seed, "samples": 100, "seconds": 1.0,
           "styles": {"twitter": style}}  # fmt: skip
    (folder / f"{pool}-{seed}.json").write_text(json.dumps(run))


def test_summary_of_finished_runs_gives_the_gain_with_a_paired_interval(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    settings = {"steps": 10}
    raw = [hits(0.1, 400, rng) for _ in range(3)]
    better = [hits(0.3, 400, rng) for _ in range(2)]  # a pool with fewer seeds done so far
    for seed, top1 in enumerate(raw):
        write_run(tmp_path, "raw", seed, top1, settings)
    for seed, top1 in enumerate(better):
        write_run(tmp_path, "all", seed, top1, settings)
    runs = ablation.finished(tmp_path)
    assert list(runs) == ["raw", "all"] and [r["seed"] for r in runs["all"]] == [0, 1]
    summary = ablation.summarise({p: [r["styles"] for r in rs] for p, rs in runs.items()})
    row = summary["all"]["twitter"]
    assert row["top1"] == pytest.approx(np.mean(better), abs=1e-4)
    assert row["top1_seeds"] == [pytest.approx(np.mean(b), abs=1e-4) for b in better]
    assert row["top1_gain"] == pytest.approx(np.mean(better) - np.mean(raw), abs=1e-4)
    low, high = row["top1_gain_ci"]
    assert 0 < low < row["top1_gain"] < high  # a 20-point gain on 400 images is no noise
    assert row["top5_gain"] == 0 and row["top5_gain_ci"] == [0.0, 0.0]
    assert summary["raw"]["twitter"]["top1_gain"] == 0
    assert row["image_to_text_R@1"] == 0.5


def test_two_pools_are_compared_directly_against_a_named_baseline(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    for seed in range(2):
        write_run(tmp_path, "raw", seed, hits(0.1, 400, rng), {"steps": 10})
        write_run(tmp_path, "recipe", seed, hits(0.3, 400, rng), {"steps": 10})
        write_run(tmp_path, "recipe_no_dedup", seed, hits(0.32, 400, rng), {"steps": 10})
    ablation.main([str(tmp_path), "--baseline", "recipe", "--markdown"])
    table = capsys.readouterr().out.splitlines()
    assert "gain vs recipe [95% CI]" in table[0]
    runs = ablation.finished(tmp_path)
    styles = {p: [r["styles"] for r in rs] for p, rs in runs.items()}
    against_recipe = ablation.summarise(styles, baseline="recipe")
    against_raw = ablation.summarise(styles)
    row, vs_raw = (
        against_recipe["recipe_no_dedup"]["twitter"],
        against_raw["recipe_no_dedup"]["twitter"],
    )
    expected = vs_raw["top1_gain"] - against_raw["recipe"]["twitter"]["top1_gain"]
    assert row["top1_gain"] == pytest.approx(expected, abs=2e-4)
    low, high = row["top1_gain_ci"]
    assert low < 0 < high  # 2 points on 400 images: the paired interval spans 0
    assert against_recipe["recipe"]["twitter"]["top1_gain"] == 0
    assert against_recipe["raw"]["twitter"]["top1_gain"] < 0
    recipe_row = next(line for line in table if line.startswith("| recipe (100)"))
    assert recipe_row.split(" | ")[4] == ""  # the baseline's own gain is left blank
    with pytest.raises(SystemExit, match="no finished run of pool 'dedup'"):
        ablation.main([str(tmp_path), "--baseline", "dedup"])


def test_runs_made_under_other_settings_are_not_one_ablation(tmp_path: Path) -> None:
    write_run(tmp_path, "raw", 0, [1, 0], {"steps": 10})
    write_run(tmp_path, "raw", 1, [1, 0], {"steps": 20})
    with pytest.raises(ValueError, match="different settings"):
        ablation.finished(tmp_path)


def test_the_balance_last_variant_is_all_stages_without_the_pass_before_download() -> None:
    flags = ablation.flags_of_pools(RECIPE_CRAWL)
    every, last = flags["all"], flags["all_balance_last"]
    assert "--prebalance-headroom" not in every
    assert last[last.index("--prebalance-headroom") + 1] == "0"
    assert [f for f in last if f not in ("--prebalance-headroom", "0")] == every


def test_a_stored_run_is_finished_only_under_the_same_settings_and_flags(tmp_path: Path) -> None:
    from bench.curation import RunStore, portable

    work = tmp_path / "work"
    flags = {"all": portable(["--queries", f"{work}/queries.txt"], work)}
    assert flags["all"] == ["--queries", "{work}/queries.txt"]
    RunStore(tmp_path, {"steps": 10}, flags).put("all", 0, {"styles": {}}, samples=5)
    assert RunStore(tmp_path, {"steps": 10}, flags).get("all", 0)["samples"] == 5
    assert RunStore(tmp_path, {"steps": 20}, flags).get("all", 0) is None
    changed = {"all": [*flags["all"], "--prebalance-headroom", "0"]}  # a recipe default changed
    assert RunStore(tmp_path, {"steps": 10}, changed).get("all", 0) is None


def test_a_run_on_another_corpus_counts_only_when_its_digest_is_named(tmp_path: Path) -> None:
    from bench.curation import RunStore, corpora_of, corpus_environment
    from demo.webcorpus import WebCorpus

    rows = [
        {"path": "img/a.jpg", "caption": "a cat", "source": "emoji"},
        {"path": "status/404", "caption": "a dead link"},
    ]  # noise rows have no source
    corpus = WebCorpus(images={"a.jpg": b"A", "x.jpg": b"X"}, rows=rows, heldout=[(b"B", "cat")])
    environment = corpus_environment(corpus)
    assert set(environment["digests"]) == {"rows", "images:emoji", "images:noise", "heldout"}
    assert environment["versions"]["pillow"]
    flags = {"all": ["--dedup", "none"]}
    RunStore(tmp_path, {"steps": 10, "corpus_sha256": "old"}, flags, environment=environment).put(
        "all", 0, {"styles": {}}, samples=5)  # fmt: skip
    here = {"steps": 10, "corpus_sha256": "new"}
    assert RunStore(tmp_path, here, flags).get("all", 0) is None
    joined = RunStore(tmp_path, here, flags, frozenset({"old"})).get("all", 0)
    assert joined["environment"] == environment
    assert corpora_of({"all": [joined]}) == {"old": ["all-0"]}
    assert (
        RunStore(tmp_path, {**here, "steps": 20}, flags, frozenset({"old"})).get("all", 0) is None
    )


def test_pools_train_in_the_order_named_raw_first_and_unknown_ones_are_refused() -> None:
    from bench.curation import training_order

    pools = ablation.pools()
    assert training_order(None, pools)[:2] == ["raw", "all"]
    assert set(training_order(None, pools)) == set(pools)
    assert training_order("all_balance_last,raw,balancing", pools) == [
        "raw", "all_balance_last", "balancing"]  # fmt: skip
    with pytest.raises(SystemExit, match="no pool"):
        training_order("all,dedupe", pools)


def test_the_recipe_pools_are_every_stage_but_the_score_filter_and_then_the_dedup() -> None:
    flags = ablation.flags_of_pools(RECIPE_CRAWL)["recipe"]
    assert flags[flags.index("--filters") + 1] == "lang,caption,image"
    assert "--score-checkpoint" not in flags and "--max-per-query" in flags
    kept = ablation.flags_of_pools(RECIPE_CRAWL)["recipe_no_dedup"]
    assert kept[kept.index("--dedup") + 1] == "none" and "--decontaminate" not in kept
    assert kept[kept.index("--filters") + 1] == "lang,caption,image" and "--max-per-query" in kept


def test_a_kept_crawl_is_reused_only_under_the_flags_it_was_made_with(tmp_path, monkeypatch):
    from bench import curation

    made = []

    def crawl(work: Path, name: str, flags: list[str]) -> dict:
        (work / name).mkdir(parents=True)
        (work / name / "stats.json").write_text(json.dumps({"samples": len(flags)}))
        made.append(flags)
        return {"samples": len(flags)}

    monkeypatch.setattr(curation, "crawl", crawl)
    assert curation.crawled(tmp_path, "all", ["--a"])["samples"] == 1
    assert curation.crawled(tmp_path, "all", ["--a"])["samples"] == 1 and len(made) == 1
    assert curation.crawled(tmp_path, "all", ["--a", "--b"])["samples"] == 2 and len(made) == 2
    (tmp_path / "all" / "flags.json").unlink()  # cut short before its flags were written
    assert curation.crawled(tmp_path, "all", ["--a", "--b"])["samples"] == 2 and len(made) == 3


def test_kept_runs_of_another_folder_join_under_their_folder_and_print_as_a_table(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    main, kept = tmp_path / "main" / "runs", tmp_path / "global"
    main.mkdir(parents=True), kept.mkdir()
    for seed in range(2):
        write_run(main, "raw", seed, hits(0.1, 200, rng), {"steps": 10})
    write_run(main, "all", 0, hits(0.3, 200, rng), {"steps": 10})
    write_run(kept, "all", 0, hits(0.1, 200, rng), {"steps": 10})
    write_run(main, "dedup", 0, hits(0.2, 200, rng), {"steps": 10, "corpus_sha256": "rebuilt"})
    runs = ablation.gathered([tmp_path / "main", kept])
    assert list(runs) == ["raw", "dedup", "all", "all (global)"]
    summary = ablation.summarise({p: [r["styles"] for r in rs] for p, rs in runs.items()})
    table = ablation.markdown(runs, summary).splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| raw (100) | 0,1 | twitter |")
    assert table[3].startswith("| dedup (100) | 0† | twitter |")  # on another corpus: marked
    assert f"{summary['all']['twitter']['top1_gain']:+.3f}" in table[4]
    write_run(kept, "score", 0, [1, 0], {"steps": 20})
    with pytest.raises(ValueError, match="different settings"):
        ablation.gathered([tmp_path / "main", kept])


def test_each_input_row_is_counted_under_its_origin_by_status_group(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"kind": "clean", "source": "apple"}, {"kind": "clean", "source": "openclipart"},
            {"kind": "clean", "source": "openclipart"}, {"kind": "dead"},
            {"kind": "near_duplicate"}, {"kind": "clean", "source": "apple"}]  # fmt: skip
    assert ablation.origins(rows) == ["apple", "openclipart", "openclipart", "dead",
                                      "near_duplicate", "apple"]  # fmt: skip
    pq.write_table(pa.table({"origin": ablation.origins(rows)}), tmp_path / "origins.parquet")
    statuses = ["ok", "filtered:score:not_top", "filtered:score:not_top", "error:http_404",
                "dup:near", "filtered:image:too_small"]  # fmt: skip
    keys = [f"{i:015d}" for i in range(len(rows))]
    (tmp_path / "all" / "manifest").mkdir(parents=True)
    for part, (lo, hi) in enumerate([(0, 4), (4, 6)]):  # the manifest comes in parts, any order
        table = pa.table({"key": keys[lo:hi][::-1], "status": statuses[lo:hi][::-1]})
        pq.write_table(table, tmp_path / "all" / "manifest" / f"{part:05d}.parquet")
    table = ablation.statuses_by_origin(tmp_path, "all")
    assert table == {
        "apple": {"ok": 1, "filtered:image": 1},
        "openclipart": {"filtered:score": 2},
        "dead": {"error": 1},
        "near_duplicate": {"dup": 1},
    }
    ablation.main(["--by-origin", str(tmp_path), "all", "--markdown"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| origin | rows | ok | dup | error | filtered:image | filtered:score |"
    assert lines[2] == "| apple | 2 | 1 | 0 | 0 | 1 | 0 |"
    assert sum(int(line.split(" | ")[1]) for line in lines[2:]) == len(rows)  # every row


def test_unseen_concepts_are_those_no_kept_caption_names_as_whole_words(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("Flag: Niger icon", "ok"), ("an emoji of cat face", "ok"),
            ("Nepal emoji", "filtered:score:not_top"), ("nigeria emoji", "ok")]  # fmt: skip
    table = pa.table({"caption": [c for c, _ in rows], "status": [s for _, s in rows]})
    pq.write_table(table, tmp_path / "00000.parquet")
    concepts = ["Niger", "Nepal", "cat", "cat face", "Nigeria", "C++ (1)"]
    assert ablation.unseen_concepts(tmp_path, concepts) == ["Nepal", "C++ (1)"]


def test_the_gain_by_frequency_splits_classes_by_how_often_the_input_list_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    work, runs = tmp_path / "work", tmp_path / "out" / "runs"
    # held-out classes in load_folder's (sorted) order, named 1, 1, 3, 3, 9 and 9 times
    classes = {"ant": 9, "bee": 1, "cat face": 3, "dog": 9, "eel": 1, "fox": 3}
    for name in classes:
        (work / "styles" / "twitter" / name).mkdir(parents=True)
    captions = [f"a {name} icon" for name, n in classes.items() for _ in range(n)]
    captions += ["a beetle", "cat", "Fox Terrier"]  # not "bee" nor "cat face"; "fox" in any case
    pq.write_table(pa.table({"url": ["u"] * len(captions), "caption": captions}),
                   work / "urls.parquet")  # fmt: skip
    assert ablation.heldout_name_counts(work) == {"twitter": [9, 1, 3, 9, 1, 4]}
    runs.mkdir(parents=True)
    write_run(runs, "raw", 0, [1, 0, 0, 1, 0, 0], {"steps": 10})  # only the often named
    write_run(runs, "all", 0, [0, 1, 1, 0, 1, 0], {"steps": 10})  # the rarely named, one more
    ablation.main(["--by-frequency", str(work), str(tmp_path / "out")])
    table = json.loads(capsys.readouterr().out)
    assert table["groups"]["twitter"] == [[1, 1], [3, 4], [9, 9]]
    gains = [group["top1_gain"] for group in table["all"]["twitter"]]
    assert gains == [1.0, 0.5, -1.0]
    assert table["all"]["twitter"][0]["top1_gain_ci"] == [1.0, 1.0]  # every resample the same
    assert [group["top1"] for group in table["raw"]["twitter"]] == [0.0, 0.0, 1.0]
    page = ablation.frequency_section(table)  # the report's table
    assert "named 9-9x" in page and page.count("<tr>") == 1 + 2
    ablation.main(["--by-frequency", str(work), str(tmp_path / "out"), "--markdown"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| pool | style | named 1-1x: top-1")
    assert lines[3] == ("| all | twitter | 1.000 (+1.000 [+1.000, +1.000]) | 0.500 (+0.500 "
                        "[+0.000, +1.000]) | 0.000 (-1.000 [-1.000, -1.000]) |")  # fmt: skip
