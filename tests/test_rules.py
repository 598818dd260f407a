"""Normality rules: the file forms, and how they change what generate-prompts asks and stores."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.prompting.library import load_library
from alfa_ad.llm.generate import GenerationSettings, LLMClient, LLMConfig, generate_class_prompts
from alfa_ad.llm.rules import Rules, RulesError, load_rules, parse_rules_text

from llm_server import FakeLLMServer

TEXT = """# rules for the test
the object is fully inside the image
[screw]
exactly one screw   # a comment
- the thread is continuous
[metal nut]
no text on the nut
"""


def test_plain_text_rules():
    rules = parse_rules_text(TEXT)
    assert rules.for_class("screw") == ["the object is fully inside the image", "exactly one screw",
                                        "the thread is continuous"]
    assert rules.for_class("metal_nut") == ["the object is fully inside the image", "no text on the nut"]
    assert rules.for_class("bottle") == ["the object is fully inside the image"]
    assert not Rules({}) and rules


def test_yaml_rules(tmp_path):
    pytest.importorskip("yaml")
    p = tmp_path / "rules.yaml"
    p.write_text('"*": the object is fully inside the image\nscrew: [exactly one screw, "the thread is continuous."]\n')
    rules = load_rules(p)
    assert rules.for_class("screw") == ["the object is fully inside the image", "exactly one screw",
                                        "the thread is continuous"]
    assert rules.source.endswith("rules.yaml")


@pytest.mark.parametrize("name, content, reason", [
    ("r.txt", "", "no rules found"),
    ("r.txt", "[]\nx", "empty class header"),
    ("r.txt", "x" * 300, "longer than 200"),
    ("r.yaml", "screw: [1, 2]", "list of rules"),
    ("r.yaml", "- a\n- b", "expected a mapping"),
    ("r.yaml", "screw: [unclosed", "malformed YAML"),
    ("missing.txt", None, "file not found"),
])
def test_rules_errors_name_the_file(tmp_path, name, content, reason):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(RulesError) as exc:
        load_rules(p)
    assert str(p) in str(exc.value) and reason in str(exc.value) and "\n" not in str(exc.value)


def test_rules_change_the_queries_and_are_stored_with_their_prompts(tmp_path):
    settings = GenerationSettings(target=30, max_rounds=2)      # unreachable: every side round is asked
    with FakeLLMServer() as server:
        client = LLMClient(LLMConfig("fake", base_url=server.base_url, max_retries=0))
        plain = generate_class_prompts(client, "screw", settings=settings)
        n_plain = server.count
        asked_plain = server.user_messages()
        ruled = generate_class_prompts(client, "screw", settings=settings,
                                       rules=["exactly one screw", "the thread is continuous"])
        asked_ruled = server.user_messages()[n_plain:]
    assert not any("exactly one screw" in m for m in asked_plain)
    side_asks = [m for m in asked_ruled if "Continue this list" in m and "Rule for a normal" not in m]
    assert side_asks and all("exactly one screw; the thread is continuous" in m for m in side_asks)
    assert any("satisfies all of these rules" in m for m in side_asks)
    assert any("breaks any of these rules" in m for m in side_asks)
    rule_asks = [m for m in asked_ruled if "Rule for a normal screw: exactly one screw." in m]
    assert len(rule_asks) == 2                                  # follows it (normal) / breaks it (abnormal)
    assert len(asked_ruled) == n_plain + 4                      # 2 rules x 2 sides
    assert plain["rules"] == [] and [r["rule"] for r in ruled["rules"]] == ["exactly one screw",
                                                                             "the thread is continuous"]
    for produced in ruled["rules"]:
        assert produced["normal"] and produced["abnormal"]
        assert set(produced["normal"]) <= set(ruled["normal"]) and set(produced["abnormal"]) <= set(ruled["abnormal"])
    assert ruled["fingerprint"] != plain["fingerprint"]
    rule_records = [q for q in ruled["queries"] if q["kind"] == "rule"]
    assert [q["rule"] for q in rule_records] == ["exactly one screw"] * 2 + ["the thread is continuous"] * 2


def test_generate_prompts_cli_rules(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text("[gadget]\nexactly two screws\n")
    out, cache = tmp_path / "lib.json", tmp_path / "cache"
    runner = CliRunner()
    with FakeLLMServer() as server:
        base = ["generate-prompts", "--classes", "widget,gadget", "--base-url", server.base_url, "--model", "fake",
                "--out", str(out), "--cache-dir", str(cache), "--retries", "0", "--target", "6",
                "--max-rounds", "2"]
        first = runner.invoke(app, base, catch_exceptions=False)
        assert first.exit_code == 0, first.output
        n_plain = server.count
        assert not any("exactly two screws" in m for m in server.user_messages())
        # the same classes with rules: gadget's queries change (so it is asked again), widget's do not
        second = runner.invoke(app, [*base, "--rules", str(rules)], catch_exceptions=False)
        assert second.exit_code == 0, second.output
        new = server.user_messages()[n_plain:]
        assert new and all("gadget" in m for m in new)
        assert all("exactly two screws" in m for m in new)
        lib = load_library(out)
        assert [r["rule"] for r in lib["classes"]["gadget"]["rules"]] == ["exactly two screws"]
        assert lib["classes"]["widget"]["rules"] == [] and lib["rules_file"].endswith("rules.txt")
        # a rerun with the same rules makes no request
        count = server.count
        third = runner.invoke(app, [*base, "--rules", str(rules)], catch_exceptions=False)
        assert third.exit_code == 0 and server.count == count
        bad = runner.invoke(app, [*base, "--rules", str(tmp_path / "none.txt")])
        assert bad.exit_code == 2 and "none.txt" in bad.output and server.count == count
    json.dumps(lib)


def test_embedding_dedupe_drops_near_duplicates_and_records_them():
    import numpy as np

    from alfa_ad.llm.filters import PromptFilter

    def embed(texts):       # a toy embedding: "dent" and "dint" mean the same thing
        return np.array([[1.0, 0.0] if ("dent" in t or "dint" in t) else [0.0, 1.0] for t in texts])

    f = PromptFilter("bottle", "abnormal", embed=embed, cosine=0.95)
    decisions = f.judge_all(["A bottle with a dent at the neck.", "A bottle with a scratch on the base.",
                             "A bottle with a dint at the neck."])
    assert [d["decision"] for d in decisions] == ["kept", "kept", "kept"]     # text dedupe lets it through
    removed = f.dedupe_by_embedding(decisions)
    assert f.kept == ["A bottle with a dent at the neck.", "A bottle with a scratch on the base."]
    assert [d["decision"] for d in decisions] == ["kept", "kept", "duplicate"] and removed == [decisions[2]]
    assert "embedding cosine 1.000" in decisions[2]["reason"]


def test_generate_prompts_cli_embed_dedupe_with_planted_clip(tmp_path):
    out = tmp_path / "lib.json"
    with FakeLLMServer() as server:
        result = CliRunner().invoke(app, ["generate-prompts", "--classes", "widget", "--base-url", server.base_url,
                                          "--model", "fake", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                                          "--target", "6", "--max-rounds", "1", "--embed-dedupe", "planted"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    entry = load_library(out)["classes"]["widget"]
    assert "planted" in entry["settings"]["embedding_dedupe"]["model"]
    assert entry["normal"] and entry["abnormal"]
