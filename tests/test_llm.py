"""LLM prompt generation against a local fake OpenAI server (real ``openai`` client, 127.0.0.1)."""

from __future__ import annotations

import time

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from alfa_ad.prompting.base import PromptSource, combine
from alfa_ad.prompting.library import (
    FORMAT, VERSION, LibraryError, LLMPromptSource, load_library, new_library, save_library,
)
from alfa_ad.llm.generate import (
    MVTEC_CLASSES, QUERIES, VISA_CLASSES, GenerationSettings, LLMClient, LLMConfig, LLMError,
    build_messages, generate_class_prompts, generate_library, open_reply_cache,
    parse_reply, resolve_classes,
)
from alfa_ad.llm.client import parse_retry_after
from alfa_ad.llm.parse import clip_token_count
from alfa_ad.llm.queries import PARAPHRASES, descriptor_ask, side_ask
from alfa_ad.prompting.templates import AlfaTemplateSource
from llm_server import (
    FakeLLMServer, child_generate, delay, empty, good, malformed, status, unused_port,
)

KEY = "sk-test-SECRET123"
# Small settings: the fake server's first list (6 sentences) meets the target, so a class
# takes one descriptor request and one request per side.
SMALL = GenerationSettings(target=6, max_rounds=2)
N_QUERIES = 3


def gen(client, name, **kw):
    return generate_class_prompts(client, name, settings=kw.pop("settings", SMALL), **kw)

MESSY = "\n".join([
    "Sure! Here are some descriptions:",
    "## Abnormal signs",
    "1. **An abnormal image of bottle** with a `crack` near the neck.",
    '2) "An abnormal image of bottle with a chipped rim."',
    "- An abnormal image of bottle with a crack near the neck",
    "* An abnormal\timage of bottle\x00 with\x1b stains\u200b   inside.",
    "\u2022 AN ABNORMAL IMAGE OF BOTTLE WITH A CHIPPED RIM.",
    "3. Too short",
    "What does a broken bottle look like?",
    "4. An abnormal image of bottle with " + " ".join(f"flaw{i}" for i in range(120)),
    "I hope this helps!",
])
MESSY_EXPECTED_HEAD = [
    "An abnormal image of bottle with a crack near the neck.",
    "An abnormal image of bottle with a chipped rim.",
    "An abnormal image of bottle with stains inside.",
]


@pytest.fixture
def server():
    with FakeLLMServer() as srv:
        yield srv


def make_config(base_url: str, **kw) -> LLMConfig:
    opts = dict(api_key=KEY, timeout=1.0, max_retries=2, backoff=0.001, retry_after_cap=5.0)
    opts.update(kw)
    return LLMConfig("fake-model", base_url=base_url, **opts)


@pytest.fixture
def cache(tmp_path):
    c = open_reply_cache(tmp_path / "cache")
    yield c
    c.close()


def one_line_error(exc: pytest.ExceptionInfo, class_name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith(f"class {class_name!r}")
    assert "SECRET123" not in msg
    return msg


# --------------------------------------------------------------------------- classes, queries
def test_resolve_classes():
    assert resolve_classes("mvtec") == MVTEC_CLASSES and len(MVTEC_CLASSES) == 15
    assert resolve_classes("VisA") == VISA_CLASSES and len(VISA_CLASSES) == 12
    assert resolve_classes(" screw, screw ,metal_nut ") == ["screw", "metal_nut"]
    assert len(resolve_classes("mvtec,visa,bottle")) == 27
    for bad in ("", " , ,", ","):
        with pytest.raises(ValueError):
            resolve_classes(bad)


def test_queries_follow_the_paper():
    texts = {q.kind: build_messages(q, "metal_nut")[-1]["content"] for q in QUERIES}
    assert texts["free"] == "How to identify an abnormal metal nut in an image?"
    assert "beginning with: An abnormal image of metal nut" in texts["abnormal"]
    assert "useful descriptions for distinguishing an anomaly metal nut in a photo?" in texts["descriptors"]
    assert descriptor_ask("metal_nut").question == texts["descriptors"]
    assert texts["descriptors"].rstrip().endswith("-")
    assert "one per line" in build_messages(QUERIES[0], "x")[0]["content"]
    # round 0 of each side is the paper's question with its syntactic-consistency starter
    for side, head in (("abnormal", "An abnormal image of metal nut with"), ("normal", "A normal image of metal nut with")):
        ask = side_ask("metal_nut", side, 0)
        assert ask.question.startswith("The images show a metal nut")       # class context
        assert PARAPHRASES[side][0].format(c="metal nut", a="a") in ask.question
        chat = ask.messages("chat")[-1]
        assert chat["role"] == "user" and chat["content"].endswith(f"\n1. {ask.example}\n2. {head}")
        prefill = ask.messages("chatml")[-1]
        assert prefill == {"role": "assistant", "content": f"1. {ask.example}\n2. {head}"}
    # later rounds change the paraphrase and the starter
    asks = [side_ask("screw", "normal", r) for r in range(5)]
    assert len({a.question for a in asks}) == 5 and len({a.head for a in asks}) >= 3
    # dataset folder names become the object's name, with aliases
    assert "printed circuit board" in side_ask("pcb3", "abnormal", 0).question


# --------------------------------------------------------------------------- parsing
def test_parse_reply_normalises():
    lines = parse_reply(MESSY)
    assert lines[:3] == MESSY_EXPECTED_HEAD
    assert len(lines) == 4                      # duplicates, short, question, preamble dropped
    long = lines[3]
    assert long.startswith("An abnormal image of bottle with flaw0")
    assert len(long.split()) <= 60 and len(long) <= 300
    n = clip_token_count(long)
    assert n is None or n <= 77
    assert all(ch.isprintable() for line in lines for ch in line)


def test_parse_reply_bounds_and_descriptor_words():
    many = "\n".join(f"{i}. An abnormal image of thing number {i} with a scratch" for i in range(100))
    assert len(parse_reply(many)) == 40
    assert len(parse_reply(many, max_items=7)) == 7
    assert parse_reply("- discoloration\n- cracks", min_words=1) == ["discoloration", "cracks"]
    assert parse_reply("- discoloration\n- cracks") == []
    assert parse_reply("") == [] and parse_reply(None) == []


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "300"}) == pytest.approx(0.3)
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# --------------------------------------------------------------------------- generation
def test_every_reply_and_decision_is_recorded(server, cache):
    server.default = good(MESSY)
    client = LLMClient(make_config(server.base_url))
    entry = gen(client, "bottle", cache=cache)
    assert server.count == 1 + 2 * SMALL.max_rounds     # MESSY never reaches the target of 6
    assert entry["abnormal"][:3] == MESSY_EXPECTED_HEAD and len(entry["abnormal"]) == 4
    assert entry["normal"] == []                    # "An abnormal image ..." is the other side
    assert entry["descriptors"]                     # min_words=1 keeps short lines too
    assert [(q["kind"], q["side"]) for q in entry["queries"]] == [
        ("descriptors", "descriptors"), ("side", "abnormal"), ("side", "abnormal"), ("side", "normal"),
        ("side", "normal")]
    assert all(q["raw_reply"] == MESSY for q in entry["queries"])
    for q in entry["queries"][1:]:
        decisions = {d["text"]: d for d in q["sentences"]}
        assert decisions["Here are some descriptions:"]["decision"] == "dropped"
        assert decisions["Too short"]["decision"] == "dropped"
        assert {d["decision"] for d in q["sentences"]} <= {"kept", "rewritten", "dropped", "duplicate"}
        assert all("reason" in d for d in q["sentences"] if d["decision"] != "kept")
        assert q["sampling"]["seed"] in (0, 1) and q["sampling"]["temperature"] in SMALL.temperatures
    assert entry["counts"]["abnormal"]["kept"] == 4
    assert entry["model"] == "fake-model" and entry["base_url"] == server.base_url
    assert entry["date"].endswith("+00:00")
    assert entry["settings"]["temperatures"] == list(SMALL.temperatures)
    body = server.requests[1]["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 0.7 and body["seed"] == 0
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    # sampling changes with the round: temperature and seed
    assert server.requests[2]["body"]["temperature"] == 0.9 and server.requests[2]["body"]["seed"] == 1


def test_sides_name_the_class_and_are_distinct(server, cache):
    client = LLMClient(make_config(server.base_url))
    entry = gen(client, "metal_nut", cache=cache, settings=GenerationSettings(target=20, max_rounds=5))
    for side in ("normal", "abnormal"):
        assert len(entry[side]) >= 20
        assert all("metal nut" in p.lower() for p in entry[side])
        assert len({p.lower() for p in entry[side]}) == len(entry[side])
    assert not any("abnormal" in n.lower() for n in entry["normal"])
    assert entry["descriptors"] == ["cracks or scratches", "discoloration", "missing parts", "irregular shape"]
    kept = sum(d["decision"] in ("kept", "rewritten") for q in entry["queries"] for d in q.get("sentences", [])
               if q["side"] != "descriptors")
    assert kept == len(entry["normal"]) + len(entry["abnormal"])


def test_chatml_style_continues_our_list_on_the_completions_endpoint(server, cache):
    client = LLMClient(make_config(server.base_url))
    entry = gen(client, "screw", cache=cache, settings=GenerationSettings(target=6, max_rounds=2, style="chatml"))
    paths = [r["path"] for r in server.requests]
    assert paths == ["/v1/chat/completions", "/v1/completions", "/v1/completions"]
    prompt = server.requests[1]["body"]["prompt"]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("\n2. An abnormal image of screw with")
    assert "<|im_end|>" in server.requests[1]["body"]["stop"]
    assert entry["abnormal"][0].startswith("An abnormal image of screw with ")   # our head + the continuation
    echo = [d for d in entry["queries"][1]["sentences"] if d["decision"] == "dropped"]
    assert [d["reason"] for d in echo] == ["echo of the example given in the query"]
    assert entry["queries"][1]["endpoint"].startswith("completions")


def test_cache_hit_makes_no_request_and_refresh_does(server, cache):
    client = LLMClient(make_config(server.base_url))
    first = gen(client, "screw", cache=cache)
    assert server.count == N_QUERIES
    second = gen(client, "screw", cache=cache)
    assert server.count == N_QUERIES
    assert second == first
    server.default = good("\n".join(f"{i}. A screw with refreshed detail number {i}." for i in range(1, 7)))
    third = gen(client, "screw", cache=cache, refresh=True)
    assert server.count == 2 * N_QUERIES
    assert third["abnormal"][0] == "A screw with refreshed detail number 1."
    # the refreshed replies were written: a plain run now returns them without a request
    assert gen(client, "screw", cache=cache)["abnormal"] == third["abnormal"]
    assert server.count == 2 * N_QUERIES


def test_cache_key_depends_on_model_and_sampling_not_key(server):
    msgs = build_messages(QUERIES[0], "screw")
    base = LLMClient(make_config(server.base_url)).cache_key(msgs)
    assert LLMClient(make_config(server.base_url, api_key="other-key")).cache_key(msgs) == base
    assert LLMClient(make_config(server.base_url, temperature=0.7)).cache_key(msgs) != base
    other_model = LLMConfig("other-model", base_url=server.base_url, api_key=KEY)
    assert LLMClient(other_model).cache_key(msgs) != base
    assert LLMClient(make_config(server.base_url)).cache_key(build_messages(QUERIES[1], "screw")) != base


def test_server_error_then_good_is_retried(server, cache):
    server.script(status(500), status(503))
    sleeps: list[float] = []
    client = LLMClient(make_config(server.base_url), sleep=sleeps.append)
    entry = gen(client, "screw", cache=cache)
    assert server.count == N_QUERIES + 2
    assert entry["abnormal"] and entry["normal"]
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0]          # exponential backoff


def test_429_retry_after_is_honoured(server, cache):
    server.script(status(429, retry_after=0.4))
    sleeps: list[float] = []
    client = LLMClient(make_config(server.base_url), sleep=sleeps.append)
    gen(client, "screw", cache=cache)
    assert sleeps == [0.4]
    assert server.count == N_QUERIES + 1


def test_429_retry_after_is_capped(server, cache):
    server.script(status(429, retry_after=3600), status(429, retry_after=86400))
    sleeps: list[float] = []
    client = LLMClient(make_config(server.base_url, retry_after_cap=0.2), sleep=sleeps.append)
    gen(client, "screw", cache=cache)
    assert sleeps == [0.2, 0.2]                 # capped, not an hour
    assert server.count == N_QUERIES + 2


def test_429_retry_after_really_waits(server, cache):
    import time

    server.script(status(429, retry_after=0.3))
    client = LLMClient(make_config(server.base_url))
    t0 = time.monotonic()
    gen(client, "screw", cache=cache)
    assert 0.28 <= time.monotonic() - t0 < 3.0
    assert server.count == N_QUERIES + 1


@pytest.mark.parametrize("failure", ["503", "timeout", "refused", "empty", "malformed", "unusable"])
def test_persistent_failures_raise_one_line_errors_and_cache_nothing(server, cache, failure):
    cfg = make_config(server.base_url, max_retries=1)
    expect = {"503": "server returned HTTP 503 after 2 tries", "timeout": "timed out",
              "empty": "empty reply", "malformed": "malformed reply",
              "unusable": "no usable description lines"}
    if failure == "503":
        server.default = status(503)
    elif failure == "timeout":
        server.default = delay(1.5)
        cfg = make_config(server.base_url, max_retries=1, timeout=0.3)
    elif failure == "refused":
        url = f"http://127.0.0.1:{unused_port()}/v1"
        cfg = make_config(url, max_retries=1)
        expect["refused"] = f"connection refused at {url}"
    elif failure == "empty":
        server.default = empty()
    elif failure == "malformed":
        server.default = malformed()
    else:
        server.default = good("Here are the answers:\nWhy?\n- ")
    with pytest.raises(LLMError) as exc:
        gen(LLMClient(cfg), "screw", cache=cache)
    msg = one_line_error(exc, "screw")
    assert expect[failure] in msg
    if failure == "timeout":  # the client gave up on both; on a loaded machine the server may still be reading the 2nd
        deadline = time.monotonic() + 10
        while server.count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.count == (0 if failure == "refused" else 2)    # bounded: 1 + max_retries tries
    assert len(cache) == 0
    # a later good run asks again (nothing bad was cached) and succeeds
    server.default = good()
    entry = gen(LLMClient(make_config(server.base_url)), "screw", cache=cache)
    assert entry["abnormal"]
    assert server.count == (0 if failure == "refused" else 2) + N_QUERIES


def test_client_errors_fail_at_once_and_are_scrubbed(server, cache):
    server.default = status(401, body=json.dumps({"error": {"message": f"Incorrect API key {KEY}"}}))
    with pytest.raises(LLMError) as exc:
        gen(LLMClient(make_config(server.base_url)), "screw", cache=cache)
    msg = one_line_error(exc, "screw")
    assert "HTTP 401" in msg and "***" in msg
    assert server.count == 1                    # not retried


def test_partial_class_keeps_successful_replies(server, cache):
    server.rule("A normal image of", status(503))
    client = LLMClient(make_config(server.base_url))
    with pytest.raises(LLMError) as exc:
        gen(client, "screw", cache=cache)
    assert "normal query, round 1" in one_line_error(exc, "screw")
    assert len(cache) == 2                       # descriptor + abnormal replies kept
    server.reset()
    gen(client, "screw", cache=cache)
    assert server.count == 1                     # only the normal request asked again


def test_library_progress_across_classes(server, tmp_path):
    out = tmp_path / "prompts" / "lib.json"
    server.rule("bravo", status(503))
    seen_on_disk: dict[str, list[str]] = {}
    events = []

    def on_progress(ev):
        events.append((ev.class_name, ev.status))
        if ev.status == "done":
            seen_on_disk[ev.class_name] = list(json.loads(out.read_text())["classes"])

    cfg = make_config(server.base_url)
    lib, errors = generate_library(["alpha", "bravo", "charlie"], cfg, out, settings=SMALL,
                                   cache_dir=tmp_path / "cache", on_progress=on_progress)
    assert seen_on_disk == {"alpha": ["alpha"], "charlie": ["alpha", "charlie"]}   # saved per class
    on_disk = load_library(out)
    assert set(on_disk["classes"]) == {"alpha", "charlie"} == set(lib["classes"])
    assert list(errors) == ["bravo"]
    assert errors["bravo"].startswith("class 'bravo'") and "HTTP 503" in errors["bravo"]
    assert "\n" not in errors["bravo"]
    assert ("bravo", "failed") in events
    assert on_disk["format"] == FORMAT and on_disk["version"] == VERSION
    assert on_disk["generator"]["tool"] == "alfa-ad generate-prompts"

    server.reset()                               # the server is fixed
    events.clear()
    lib2, errors2 = generate_library(["alpha", "bravo", "charlie"], cfg, out, settings=SMALL, cache_dir=tmp_path / "cache",
                                     on_progress=on_progress)
    assert errors2 == {}
    assert server.count == N_QUERIES
    assert all("bravo" in m for m in server.user_messages())
    assert set(load_library(out)["classes"]) == {"alpha", "bravo", "charlie"}
    assert ("alpha", "skipped") in events and ("charlie", "skipped") in events
    assert lib2["classes"]["alpha"] == lib["classes"]["alpha"]

    # refresh regenerates everything (served from the reply cache: refresh bypasses reading it)
    server.reset()
    generate_library(["alpha"], cfg, out, settings=SMALL, cache_dir=tmp_path / "cache", refresh=True)
    assert server.count == N_QUERIES


def test_library_other_model_is_not_complete_and_bad_file_is_kept(server, tmp_path):
    out = tmp_path / "lib.json"
    generate_library(["alpha"], make_config(server.base_url), out, settings=SMALL, cache_dir=tmp_path / "c")
    other = LLMConfig("other-model", base_url=server.base_url, api_key=KEY, backoff=0.001)
    lib, _ = generate_library(["alpha"], other, out, settings=SMALL, cache_dir=tmp_path / "c")
    assert server.count == 2 * N_QUERIES and lib["classes"]["alpha"]["model"] == "other-model"
    out.write_text("{broken")
    with pytest.raises(LibraryError):
        generate_library(["beta"], make_config(server.base_url), out, settings=SMALL, cache_dir=tmp_path / "c")
    assert out.read_text() == "{broken"


def test_a_class_made_with_a_larger_target_is_complete_a_smaller_one_is_not(server, tmp_path):
    """A rerun with a smaller --target (or the same) asks nothing; a larger one asks again,
    and so does any other setting change."""
    out, cache = tmp_path / "lib.json", tmp_path / "c"
    cfg = make_config(server.base_url)
    generate_library(["alpha"], cfg, out, settings=SMALL, cache_dir=cache)
    made = load_library(out)["classes"]["alpha"]
    for smaller in (SMALL, GenerationSettings(target=SMALL.target - 3, max_rounds=SMALL.max_rounds)):
        server.reset()
        events = []
        generate_library(["alpha"], cfg, out, settings=smaller, cache_dir=tmp_path / "empty",
                         on_progress=lambda ev: events.append(ev.status))  # an empty cache: nothing replayed
        assert server.count == 0 and events == ["skipped"]
        assert load_library(out)["classes"]["alpha"] == made
    for i, changed in enumerate((GenerationSettings(target=SMALL.target + 1, max_rounds=SMALL.max_rounds),
                                 GenerationSettings(target=SMALL.target - 3, max_rounds=SMALL.max_rounds + 1))):
        server.reset()
        generate_library(["alpha"], cfg, out, settings=changed, cache_dir=tmp_path / f"fresh{i}")
        assert server.count > 0, changed


def test_api_key_never_stored_or_reported(server, tmp_path):
    out = tmp_path / "lib.json"
    cache_dir = tmp_path / "cache"
    server.rule("bravo", status(401, body=json.dumps({"error": {"message": f"bad key {KEY}"}})))
    server.rule("charlie", status(503))
    cfg = make_config(server.base_url)
    lib, errors = generate_library(["alpha", "bravo", "charlie"], cfg, out, settings=SMALL, cache_dir=cache_dir)
    assert set(errors) == {"bravo", "charlie"} and "alpha" in lib["classes"]
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    files = [p for p in [out, *cache_dir.rglob("*")] if p.is_file()]
    assert len(files) >= 2
    for p in files:
        assert b"SECRET123" not in p.read_bytes(), p
    assert all("SECRET123" not in e for e in errors.values())
    assert "SECRET123" not in json.dumps(lib)
    assert "SECRET123" not in repr(cfg) and "SECRET123" not in repr(LLMClient(cfg))


def test_env_api_key_and_base_url(server, cache, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-SECRET123")
    client = LLMClient(LLMConfig("fake-model", backoff=0.001, timeout=1.0))
    assert client.base_url == server.base_url
    gen(client, "screw", cache=cache)
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-env-SECRET123"
    monkeypatch.delenv("OPENAI_API_KEY")
    client = LLMClient(LLMConfig("fake-model", base_url=server.base_url, timeout=1.0))
    gen(client, "screw", cache=None)
    assert server.requests[-1]["headers"]["authorization"] == "Bearer not-needed"


@pytest.mark.slow
def test_two_processes_share_the_cache(server, tmp_path):
    """A spawned process and this one fill one reply cache at the same time."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    cache_dir = str(tmp_path / "cache")
    groups = [[f"left{i}" for i in range(4)], [f"right{i}" for i in range(4)]]
    child = ctx.Process(target=child_generate, args=(server.base_url, cache_dir, groups[0], barrier, KEY))
    child.start()
    try:
        child_generate(server.base_url, cache_dir, groups[1], barrier, KEY)
    finally:
        child.join(120)
    assert child.exitcode == 0
    assert server.count == 8 * N_QUERIES
    cache = open_reply_cache(cache_dir)
    try:
        assert len(cache) == 8 * N_QUERIES
        client = LLMClient(make_config(server.base_url))
        for name in groups[0] + groups[1]:
            entry = gen(client, name, cache=cache)
            assert entry["normal"][0].startswith(f"A normal image of {name}")
    finally:
        cache.close()
    assert server.count == 8 * N_QUERIES        # everything came from the shared cache
    for p in Path(cache_dir).rglob("*"):
        if p.is_file():
            assert b"SECRET123" not in p.read_bytes()


# --------------------------------------------------------------------------- library file
@pytest.mark.parametrize("content, reason", [
    ("{not json", "malformed JSON"),
    ('{"format": "something-else", "version": 1, "classes": {}}', "not an alfa-ad prompt library"),
    ('{"format": "alfa-ad-prompts", "version": 2, "classes": {}}', "unsupported version 2"),
    ('{"format": "alfa-ad-prompts", "version": 1, "classes": {"a": {"normal": "x", "abnormal": []}}}',
     "'normal' must be a list of strings"),
    ("[1, 2]", "top level"),
    (None, "file not found"),
])
def test_load_library_errors_name_the_file(tmp_path, content, reason):
    path = tmp_path / "my-lib.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LibraryError) as exc:
        load_library(path)
    msg = str(exc.value)
    assert str(path) in msg and reason in msg and "\n" not in msg


def test_save_load_roundtrip_and_rejects_invalid(tmp_path):
    lib = new_library()
    lib["classes"]["metal_nut"] = {"normal": ["a normal metal nut photo"], "abnormal": ["a bent metal nut"],
                                   "descriptors": ["bent edge"]}
    path = save_library(tmp_path / "x" / "lib.json", lib)
    assert load_library(path) == lib
    bad = dict(lib, version=3)
    with pytest.raises(LibraryError):
        save_library(path, bad)
    assert load_library(path) == lib             # the good file was not replaced


def test_llm_prompt_source(tmp_path):
    lib = new_library()
    lib["classes"]["metal_nut"] = {"normal": ["A normal image of metal nut, flat and round."],
                                   "abnormal": ["An abnormal image of metal nut with a bent edge.",
                                                "An abnormal image of metal nut, flipped upside down."],
                                   "descriptors": ["bent edge", "scratches"]}
    path = save_library(tmp_path / "lib.json", lib)
    for src in (LLMPromptSource(lib), LLMPromptSource(path)):
        assert isinstance(src, PromptSource) and src.name == "llm"
        a, b = src.prompts("metal_nut"), src.prompts("metal nut")
        assert a == b and len(a.normal) == 1 and len(a.abnormal) == 2
        assert set(a.normal_sources + a.abnormal_sources) == {"llm"}
        assert src.has_class("Metal-Nut") and not src.has_class("screw")
        assert src.descriptors("metal nut") == ["bent edge", "scratches"]
        assert src.descriptors("screw") == []
        empty_set = src.prompts("screw")
        assert empty_set.normal == () and empty_set.abnormal == ()
    merged = combine([AlfaTemplateSource().prompts("metal_nut"), LLMPromptSource(lib).prompts("metal_nut")])
    assert merged.sources["llm"] == 3 and merged.sources["template"] == 144
    with pytest.raises(LibraryError):
        LLMPromptSource({"format": "nope"})


def test_last_item_cut_by_the_token_limit_is_dropped(server, cache):
    server.default = good("2. A screw with a bent tip.\n3. A screw with a rusty head.\n4. A screw with a cracked")
    entry = gen(LLMClient(make_config(server.base_url)), "screw", cache=cache,
                settings=GenerationSettings(target=2, max_rounds=1))
    assert entry["abnormal"] == ["A screw with a bent tip.", "A screw with a rusty head."]
    rec = entry["queries"][1]
    assert rec["cut_off"] is True
    assert rec["sentences"][-1] == {"text": "A screw with a cracked", "decision": "dropped",
                                    "reason": "cut off by the token limit"}
