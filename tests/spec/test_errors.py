"""Bad hive.yaml: each kind of mistake gives one sentence naming file, line, column and field."""

from __future__ import annotations

import textwrap

import pytest

from rbee.spec import load

BASE = """\
hives:
  - name: box
models:
  - name: smol
    source: file:///models/smol.gguf
workers:
  - model: smol
    hive: box
"""

CASES = [
    # (id, document, expected "file:line:col: field", expected words in the message)
    (
        "zero-load-timeout",
        BASE + "    load_timeout: 0\n",
        "hive.yaml:9:19: workers[0].load_timeout",
        "",
    ),
    (
        "zero-threads",
        BASE + "    threads: 0\n",
        "hive.yaml:9:14: workers[0].threads",
        "greater than or equal to 1",
    ),
    (
        "service-user-not-a-user-name",
        BASE.replace("  - name: box\n", "  - name: box\n    service_user: 'Root; rm'\n", 1),
        "hive.yaml:3:19: hives[0].service_user",
        "is not a user name a host accepts",
    ),
    (
        "typo-in-key",
        BASE + "    replcas: 2\n",
        "hive.yaml:9:5: workers[0].replcas",
        "unknown field 'replcas'; did you mean 'replicas'?",
    ),
    (
        "unknown-model",
        BASE.replace("model: smol", "model: smoll"),
        "hive.yaml:7:12: workers[0].model",
        "unknown model 'smoll'; did you mean 'smol'?",
    ),
    (
        "unknown-hive",
        BASE.replace("hive: box", "hive: gpu"),
        "hive.yaml:8:11: workers[0].hive",
        "unknown hive 'gpu'; define it under hives: (known: box)",
    ),
    (
        "tab-indent",
        "hives:\n\t- name: box\n",
        "hive.yaml:2:1",
        "a tab character is used for indentation; YAML indents with spaces only",
    ),
    (
        "duplicate-hive",
        BASE.replace("  - name: box\n", "  - name: box\n  - name: box\n", 1),
        "hive.yaml:3:11: hives[1].name",
        "the name 'box' is already used by hives[0]",
    ),
    (
        "invalid-name",
        BASE.replace("name: box", "name: My_Box").replace("hive: box", "hive: My_Box"),
        "hive.yaml:2:11: hives[0].name",
        "'My_Box' is not a valid name; use lowercase letters, digits and hyphens",
    ),
    (
        "inline-api-key",
        "queen:\n  api_keys: [sk-123456]\n" + BASE,
        "hive.yaml:2:14: queen.api_keys[0]",
        "API keys are never written inline; write {env: VARIABLE_NAME}",
    ),
    (
        "bad-source",
        BASE.replace("file:///models/smol.gguf", "s3://bucket/smol.gguf"),
        "hive.yaml:5:13: models[0].source",
        "unknown source scheme 's3://'",
    ),
    (
        "negative-replicas",
        BASE + "    replicas: -1\n",
        "hive.yaml:9:15: workers[0].replicas",
        "greater than or equal to 0, not -1",
    ),
    (
        "duplicate-yaml-key",
        BASE + "    hive: box\n",
        "hive.yaml:9:5: workers[0].hive",
        "the key 'hive' appears twice (first on line 8); keep one",
    ),
    (
        "floor-above-ceiling",
        BASE + "    replicas: 2\n    min_replicas: 3\n",
        "hive.yaml:7:5: workers[0]",
        "min_replicas (3) must not exceed replicas (2)",
    ),
    (
        "bad-duration",
        BASE + "    idle_timeout: 5 minutes\n",
        "hive.yaml:9:19: workers[0].idle_timeout",
        "'5 minutes' is not a duration",
    ),
    (
        "embedding-on-gguf",
        BASE.replace("    source: file:///models/smol.gguf", "    source: hf://org/minilm\n    kind: embedding")
        + "    backend: gguf\n",
        "hive.yaml:10:14: workers[0].backend",
        "is an embedding model and runs only on the embed backend",
    ),
    (
        "rerank-on-embed",
        BASE.replace("    source: file:///models/smol.gguf", "    source: hf://org/reranker\n    kind: rerank")
        + "    backend: embed\n",
        "hive.yaml:10:14: workers[0].backend",
        "the embed backend serves embedding models, and 'smol' is a rerank model",
    ),
    (
        "speech-from-a-gguf",
        BASE.replace("    source: file:///models/smol.gguf", "    source: file:///models/smol.gguf\n    kind: speech"),
        "hive.yaml:4:5: models[0]",
        "speech models are eSpeak NG (source: system://espeak-ng) or Piper voices",
    ),
    (
        "voice-not-speech",
        BASE.replace("    source: file:///models/smol.gguf", "    source: file:///voices/joe.onnx"),
        "hive.yaml:4:5: models[0]",
        "file:///voices/joe.onnx is a piper voice; set kind: speech on model smol",
    ),
    (
        "image-model-on-torch",
        BASE.replace("    source: file:///models/smol.gguf", "    source: hf://org/sd\n    kind: image")
        + "    backend: torch\n",
        "hive.yaml:10:14: workers[0].backend",
        "the torch backend serves text models, and 'smol' is an image model",
    ),
    (
        "bad-connection",
        BASE.replace("  - name: box\n", "  - name: box\n    connection: sshh\n", 1),
        "hive.yaml:3:17: hives[0].connection",
        "connection is 'local' or a mapping 'ssh: {host: ...}', not 'sshh'",
    ),
    (
        "unknown-ssh-field",
        BASE.replace("  - name: box\n", "  - name: box\n    connection:\n      ssh: {host: a, prot: 2}\n", 1),
        "hive.yaml:4:22: hives[0].connection.ssh.prot",
        "unknown field 'prot'; did you mean 'port'?",
    ),
    (
        "same-port-twice",
        BASE.replace("  - name: box\n", "  - name: box\n  - name: box2\n", 1),
        "hive.yaml:3:5: hives[1].listen",
        "would listen on port 9200 of this machine like hive 'box'",
    ),
    (
        "open-queen-without-keys",
        "queen:\n  listen: 0.0.0.0:8080\n  auth: none\n" + BASE,
        "hive.yaml:3:9: queen.auth",
        "auth: none would serve anyone who can reach 0.0.0.0:8080",
    ),
    (
        "policy-outside",
        "queen:\n  routing: ../elsewhere/route.py\n" + BASE,
        "hive.yaml:2:12: queen.routing",
        "a routing policy file sits beside hive.yaml; write its file name only, like route.py",
    ),
    ("no-hives", "models: []\n", "hive.yaml:1:1: hives", "the required field 'hives' is missing"),
    ("broken-yaml", BASE + "    replicas: [1\n", "hive.yaml:10:1", "invalid YAML"),
    (
        "gguf-on-torch",
        BASE + "    backend: torch\n",
        "hive.yaml:9:14: workers[0].backend",
        "is gguf and the torch backend cannot load it",
    ),
    (
        "bad-sha256",
        BASE.replace("    source: file:///models/smol.gguf", "    source: file:///m.gguf\n    sha256: abc"),
        "hive.yaml:6:13: models[0].sha256",
        "should match pattern",
    ),
    (
        "alias-bomb",
        'lol: &a ["lol", "lol"]\n' + "".join(f"l{i}: &l{i} [*{'a' if i == 0 else f'l{i - 1}'}] \n" for i in range(9)),
        "hive.yaml:1:6",
        "YAML anchors and aliases (&name, *name, <<: *name) are not accepted",
    ),
    (
        "merge-key",
        "base: &base {replicas: 2}\n" + BASE + "    <<: *base\n",
        "hive.yaml:1:7",
        "anchors and aliases",
    ),
    ("deep-nesting", "hives: " + "[" * 5000 + "]" * 5000 + "\n", "hive.yaml:1:71", "nest deeper than 64 levels"),
    ("too-big", BASE + "# " + "x" * (1 << 20) + "\n", "hive.yaml", "larger than 1 MiB"),
    (
        "data-dir-empty",
        BASE.replace("  - name: box\n", "  - name: box\n    data_dir: ''\n", 1),
        "hive.yaml:3:15: hives[0].data_dir",
        "is not absolute",
    ),
    (
        "data-dir-root",
        BASE.replace("  - name: box\n", "  - name: box\n    data_dir: /\n", 1),
        "hive.yaml:3:15: hives[0].data_dir",
        "is / or a top-level dir",
    ),
    (
        "data-dir-top-level",
        BASE.replace("  - name: box\n", "  - name: box\n    data_dir: /opt\n", 1),
        "hive.yaml:3:15: hives[0].data_dir",
        "is / or a top-level dir",
    ),
    (
        "data-dir-home",
        BASE.replace("  - name: box\n", "  - name: box\n    data_dir: '~'\n", 1),
        "hive.yaml:3:15: hives[0].data_dir",
        "is a home directory",
    ),
    (
        "data-dir-user-home",
        BASE.replace("  - name: box\n", "  - name: box\n    data_dir: /home/alice/\n", 1),
        "hive.yaml:3:15: hives[0].data_dir",
        "is a home directory",
    ),
    (
        "mmproj-not-gguf",
        BASE.replace(
            "    source: file:///models/smol.gguf\n",
            "    source: file:///models/smol.gguf\n    mmproj: hf://o/r/eyes.bin\n",
            1,
        ),
        "hive.yaml:6:13: models[0].mmproj",
        "mmproj must name one .gguf file (a multimodal projector)",
    ),
    (
        "mmproj-on-safetensors",
        BASE.replace(
            "    source: file:///models/smol.gguf\n", "    source: hf://o/smol\n    mmproj: hf://o/r/eyes.gguf\n", 1
        ),
        "hive.yaml:6:13: models[0].mmproj",
        "mmproj (a multimodal projector) goes with a GGUF text model only",
    ),
    (
        "model-outside-model-dirs",
        BASE.replace("  - name: box\n", "  - name: box\n    model_dirs: [/srv/models]\n", 1),
        "hive.yaml:9:11: workers[0].hive",
        "model 'smol' is /models/smol.gguf, outside hive 'box''s model_dirs (/srv/models)",
    ),
    (
        "model-dirs-root",
        BASE.replace("  - name: box\n", "  - name: box\n    model_dirs: [/]\n", 1),
        "hive.yaml:3:18: hives[0].model_dirs[0]",
        "would let the hive read any file",
    ),
    (
        "data-dir-dotdot",
        BASE.replace("  - name: box\n", "  - name: box\n    data_dir: /srv/rbee/../..\n", 1),
        "hive.yaml:3:15: hives[0].data_dir",
        "'..' component",
    ),
]


@pytest.mark.parametrize(("document", "where", "words"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_sentence(document: str, where: str, words: str) -> None:
    with pytest.raises(load.SpecError) as caught:
        load.loads(document, "hive.yaml")
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(where + ":") or problems[0].startswith(where + " "), problems[0]
    assert words in problems[0]
    assert "\n" not in problems[0]
    assert problems[0].endswith((".", "?"))


def test_several_problems_are_each_reported() -> None:
    document = BASE.replace("model: smol", "model: nope").replace("hive: box", "hive: nowhere")
    with pytest.raises(load.SpecError) as caught:
        load.loads(document, "hive.yaml")
    assert [problem.split(": ")[1] for problem in caught.value.problems] == [
        "workers[0].model",
        "workers[0].hive",
    ]


def test_missing_file_says_what_to_pass(tmp_path: object) -> None:
    with pytest.raises(load.SpecError, match="no such file"):
        load.load("/nonexistent/hive.yaml")


def test_empty_file() -> None:
    with pytest.raises(load.SpecError, match="the file is empty"):
        load.loads("", "hive.yaml")


def test_a_valid_file_loads_with_defaults() -> None:
    spec = load.loads(textwrap.dedent(BASE), "hive.yaml")
    assert spec.hives[0].api_url == "http://127.0.0.1:9200"
    assert spec.workers[0].replicas == 1
    assert spec.models[0].resolved_format == "gguf"
    assert spec.models[0].idle_timeout == 300.0


def test_durations_accept_units() -> None:
    spec = load.loads("queen: {reconcile_interval: 2m, heartbeat_interval: 500ms}\n" + BASE)
    assert spec.queen.reconcile_interval == 120.0
    assert spec.queen.heartbeat_interval == 0.5


def test_a_load_timeout_travels_with_the_workers_shape() -> None:
    spec = load.loads(BASE + "    load_timeout: 20m\n")
    assert spec.workers[0].shape.load_timeout == 1200.0
    assert load.loads(BASE).workers[0].shape.load_timeout is None, "unset: the hive's default (10 minutes)"
