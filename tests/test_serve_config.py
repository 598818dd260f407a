"""Service configuration: config files, the Detector/service split, one-line errors, CLI checks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.serve.config import ConfigError, ServiceOptions, detector_kwargs, load_config_file, split_record

runner = CliRunner()


def test_yaml_and_json_give_the_same_split(tmp_path):
    record = {"method": "alfa", "weights": "planted", "scales": [2, 3], "classes": "bottle,hazelnut",
              "shots": 2, "max_batch": 4, "max_wait_ms": 5, "use_text": False, "fpr": 0.05}
    (tmp_path / "c.json").write_text(json.dumps(record))
    (tmp_path / "c.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in record.items()))
    a = split_record(load_config_file(tmp_path / "c.json"))
    b = split_record(load_config_file(tmp_path / "c.yaml"))
    assert a[0] == b[0] and a[1] == b[1]
    det, opts = a
    assert det == {"method": "alfa", "weights": "planted", "scales": [2, 3], "use_text": False}
    assert opts.classes == ["bottle", "hazelnut"] and opts.shots == "2" and opts.max_batch == 4
    assert opts.per_class and opts.fpr == 0.05
    assert detector_kwargs(det)["scales"] == (2, 3)


def test_class_sets_and_defaults():
    _, opts = split_record({"classes": "mvtec"})
    assert len(opts.classes) == 15 and "bottle" in opts.classes
    _, opts = split_record({"class_name": "metal plate"})
    assert opts.classes == ["metal plate"] and not opts.per_class
    defaults = ServiceOptions()
    assert defaults.host == "127.0.0.1" and defaults.classes == ["object"]


@pytest.mark.parametrize("record, culprit", [
    ({"shots": "many"}, "shots"),
    ({"fpr": 2}, "fpr"),
    ({"max_batch": 0}, "max_batch"),
    ({"classes": "a", "class_name": "b"}, "class_name"),
    ({"colour": "red"}, "colour"),
    ({"method": "patchcore"}, "method"),
    ({"scales": "2,x"}, "scales"),
    ({"method": "winclip", "use_text": False}, "use_text"),  # an ALFA option given to WinCLIP
    ({"prompts": "/nonexistent/p.json"}, "p.json"),
    ({"tile": "huge"}, "tile"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_records_fail_on_one_line_naming_the_culprit(record, culprit):
    with pytest.raises(ConfigError) as err:
        split_record(record)
    message = str(err.value)
    assert culprit in message and "\n" not in message


def test_method_options_pass_through_to_the_detector_config():
    from alfa_ad.serve.config import detector_config

    assert detector_kwargs({"method": "winclip", "anomalib_compat": True}) == {"method": "winclip", "anomalib_compat": True}
    cfg = detector_config(detector_kwargs({"sigma": 2.0, "use_text": False, "tile": "none", "scales": "2",
                                           "weights": "planted", "cache_dir": "/tmp/x"}))
    assert cfg.options == {"sigma": 2.0, "use_text": False} and cfg.tile == "none" and cfg.scales == (2,)
    assert cfg.weights == "planted"


def test_build_detector_shares_a_backbone(planted_backbone):
    from alfa_ad.serve.config import build_detector

    a = build_detector({"scales": [2], "use_text": False}, backbone=planted_backbone)
    b = build_detector({"method": "winclip"}, backbone=planted_backbone)
    assert a.backbone is b.backbone is planted_backbone
    assert a.config.scales == (2,) and a.config.options == {"use_text": False} and b.method.name == "winclip"


def test_bad_config_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.json").write_text("{nope")
    for name, words in (("list.yaml", "mapping"), ("broken.json", "JSON"), ("missing.yaml", "cannot read")):
        with pytest.raises(ConfigError) as err:
            load_config_file(tmp_path / name)
        assert words in str(err.value) and name in str(err.value)


@pytest.mark.parametrize("args, words", [
    (["--config", "{dir}/missing.yaml"], "cannot read config"),
    (["--shots", "x"], "shots"),
    (["--weights", "planted", "--normals", "{dir}/nowhere", "--shots", "2"], "--normals folder not found"),
    (["--weights", "planted", "--token-file", "{dir}/no-token"], "cannot read token file"),
    (["--weights", "planted", "--token-file", "{dir}/empty-token"], "one non-empty line"),
])
def test_cli_rejects_bad_options_before_serving(tmp_path, args, words):
    (tmp_path / "empty-token").write_text("\n")
    result = runner.invoke(app, ["serve", *[a.format(dir=tmp_path) for a in args]])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.output


def test_cli_options_override_the_config_file(tmp_path):
    from alfa_ad.cli.serve import merged_record

    (tmp_path / "c.yaml").write_text("classes: [bottle, cable]\nport: 9000\nweights: planted\n")
    record = merged_record(tmp_path / "c.yaml", {"port": 9100, "class_name": "screw", "weights": None})
    det, opts = split_record(record)
    assert opts.port == 9100 and opts.classes == ["screw"] and det["weights"] == "planted"
