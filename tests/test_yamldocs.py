"""Parsing apply bodies: YAML or JSON, one or many documents, with hard limits. No database."""

from __future__ import annotations

import json

import pytest

from controlplane.errors import Invalid, TooLarge
from controlplane.yamldocs import MAX_DEPTH, parse

LIMIT = 1024 * 1024
MAX_DOCS = 500

NODE = "apiVersion: flotilla.dev/v1\nkind: Node\nmetadata:\n  name: {name}\nspec: {{}}\n"

BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def parse_text(text: str | bytes, max_bytes: int = LIMIT, max_documents: int = MAX_DOCS) -> list:
    body = text.encode() if isinstance(text, str) else text
    return parse(body, max_bytes, max_documents)


def nested(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


# --- what it accepts --------------------------------------------------------------


def test_it_reads_one_yaml_document():
    assert parse_text(NODE.format(name="gpu-a")) == [
        {"apiVersion": "flotilla.dev/v1", "kind": "Node", "metadata": {"name": "gpu-a"}, "spec": {}}
    ]


def test_it_reads_many_yaml_documents_in_order():
    body = "---\n".join(NODE.format(name=f"gpu-{i}") for i in range(3))
    documents = parse_text(body)
    assert [d["metadata"]["name"] for d in documents] == ["gpu-0", "gpu-1", "gpu-2"]


def test_it_skips_empty_yaml_documents_between_separators():
    body = "---\n" + NODE.format(name="gpu-a") + "---\n---\n" + NODE.format(name="gpu-b") + "---\n"
    assert [d["metadata"]["name"] for d in parse_text(body)] == ["gpu-a", "gpu-b"]


def test_it_reads_one_json_object():
    document = {"apiVersion": "flotilla.dev/v1", "kind": "Node", "metadata": {"name": "gpu-a"}}
    assert parse_text(json.dumps(document)) == [document]


def test_it_reads_a_json_list_of_documents():
    documents = [{"kind": "Node", "metadata": {"name": f"gpu-{i}"}} for i in range(3)]
    assert parse_text(json.dumps(documents)) == documents


def test_it_unwraps_a_json_kind_list():
    items = [{"kind": "Node", "metadata": {"name": "gpu-a"}}, {"kind": "Cluster", "metadata": {"name": "p"}}]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    assert parse_text(body) == items


def test_it_unwraps_a_yaml_kind_list():
    body = "apiVersion: v1\nkind: List\nitems:\n- kind: Node\n  metadata: {name: gpu-a}\n"
    assert parse_text(body) == [{"kind": "Node", "metadata": {"name": "gpu-a"}}]


def test_it_reads_json_after_leading_whitespace():
    assert parse_text('\n\n  {"kind": "Node"}') == [{"kind": "Node"}]


def test_it_reads_a_yaml_flow_mapping_that_is_not_json():
    # YAML is a superset of JSON: flow style with bare keys is still YAML.
    assert parse_text("{kind: Node, metadata: {name: gpu-a}}") == [
        {"kind": "Node", "metadata": {"name": "gpu-a"}}
    ]


def test_it_allows_an_anchor_that_is_never_aliased():
    assert parse_text("a: &x 1\nb: 2\n") == [{"a": 1, "b": 2}]


def test_it_accepts_a_body_of_exactly_the_size_limit():
    body = NODE.format(name="gpu-a").encode()
    assert len(parse(body, len(body), MAX_DOCS)) == 1


def test_it_accepts_exactly_the_document_limit():
    body = "---\n".join(NODE.format(name=f"gpu-{i}") for i in range(5))
    assert len(parse_text(body, max_documents=5)) == 5


def test_it_accepts_nesting_up_to_the_depth_limit():
    document = nested(MAX_DEPTH)
    assert parse_text(json.dumps(document)) == [document]


# --- what it refuses --------------------------------------------------------------


def test_it_refuses_yaml_aliases_so_a_billion_laughs_cannot_expand():
    with pytest.raises(Invalid) as excinfo:
        parse_text(BILLION_LAUGHS)
    assert "alias *a" in excinfo.value.message
    assert "line 2" in excinfo.value.message
    assert "anchors and aliases" in excinfo.value.details[0]["fix"]


def test_it_refuses_a_merge_key_because_it_is_an_alias():
    with pytest.raises(Invalid, match="alias"):
        parse_text("base: &base {replicas: 1}\nspec:\n  <<: *base\n")


def test_it_refuses_an_alias_in_a_later_document():
    body = NODE.format(name="gpu-a") + "---\na: &x 1\nb: *x\n"
    with pytest.raises(Invalid, match="alias"):
        parse_text(body)


def test_it_refuses_a_body_over_the_size_limit():
    body = NODE.format(name="gpu-a").encode()
    with pytest.raises(TooLarge) as excinfo:
        parse(body, len(body) - 1, MAX_DOCS)
    assert f"body is {len(body)} bytes; the limit is {len(body) - 1}" == excinfo.value.message
    assert "FLOTILLA_MAX_BODY_BYTES" in excinfo.value.details[0]["fix"]
    assert excinfo.value.status == 413


def test_it_refuses_more_yaml_documents_than_the_limit():
    body = "---\n".join(NODE.format(name=f"gpu-{i}") for i in range(6))
    with pytest.raises(TooLarge) as excinfo:
        parse_text(body, max_documents=5)
    assert "more than 5 documents" in excinfo.value.message
    assert "FLOTILLA_MAX_DOCUMENTS" in excinfo.value.details[0]["fix"]


def test_it_refuses_more_json_documents_than_the_limit():
    body = json.dumps([{"kind": "Node"}] * 6)
    with pytest.raises(TooLarge, match="more than 5 documents"):
        parse_text(body, max_documents=5)


def test_it_refuses_a_json_kind_list_with_more_items_than_the_limit():
    body = json.dumps({"kind": "List", "items": [{"kind": "Node"}] * 6})
    with pytest.raises(TooLarge):
        parse_text(body, max_documents=5)


@pytest.mark.parametrize("body", ["", "   \n", "---\n---\n", "# only a comment\n", "[]", "null"])
def test_it_refuses_a_body_with_no_documents(body):
    with pytest.raises(Invalid) as excinfo:
        parse_text(body)
    assert excinfo.value.message == "no documents in the body"
    assert excinfo.value.status == 422


def test_it_refuses_an_empty_json_kind_list():
    with pytest.raises(Invalid, match="no documents"):
        parse_text('{"kind": "List", "items": []}')


def test_an_invalid_yaml_error_names_the_line():
    body = "kind: Node\nmetadata:\n  name: a\n bad: indentation\n"
    with pytest.raises(Invalid) as excinfo:
        parse_text(body)
    assert excinfo.value.message.startswith("body is not valid YAML at line 4, column 2")


def test_an_invalid_yaml_error_in_a_later_document_names_its_line():
    body = NODE.format(name="gpu-a") + "---\nspec:\n  a: 1\n b: 2\n"
    with pytest.raises(Invalid) as excinfo:
        parse_text(body)
    assert "not valid YAML at line 9, column 2" in excinfo.value.message


def test_an_invalid_json_error_names_the_line():
    # Invalid as JSON and as (flow-style) YAML alike.
    with pytest.raises(Invalid) as excinfo:
        parse_text('{"kind": "Node",\n "metadata": [}')
    assert excinfo.value.message.startswith("body is neither valid JSON")
    assert "line 2" in excinfo.value.message


def test_it_refuses_python_object_tags():
    with pytest.raises(Invalid, match="not valid YAML"):
        parse_text('a: !!python/object/apply:os.system ["true"]\n')


def test_it_refuses_documents_nested_deeper_than_the_limit():
    body = json.dumps([{"kind": "Node"}, nested(MAX_DEPTH + 2)])
    with pytest.raises(Invalid) as excinfo:
        parse_text(body)
    assert excinfo.value.message == f"document 1 is nested deeper than {MAX_DEPTH} levels"
    assert excinfo.value.details[0]["document"] == 1


def test_it_refuses_deeply_nested_yaml():
    body = "".join("  " * level + f"k{level}:\n" for level in range(MAX_DEPTH + 2)) + "  " * 40 + "v: 1\n"
    with pytest.raises(Invalid, match="nested deeper"):
        parse_text(body)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"a: " + b"[" * 100_000 + b"]" * 100_000,
        b"".join(b" " * level + b"- \n" for level in range(1_000)),
    ],
    ids=["json-lists", "json-objects", "yaml-flow", "yaml-block"],
)
def test_a_nesting_bomb_under_the_size_limit_is_invalid_not_a_crash(body):
    assert len(body) <= LIMIT
    with pytest.raises(Invalid, match="nested|not valid"):
        parse_text(body)


@pytest.mark.parametrize(
    "body",
    [b"kind: N\xf6de\n", b"\xff\xfe" + "kind: Node".encode("utf-16-le"), b"\x80\x81\x82"],
    ids=["latin-1", "utf-16", "garbage"],
)
def test_it_refuses_a_body_that_is_not_utf_8(body):
    with pytest.raises(Invalid) as excinfo:
        parse_text(body)
    assert excinfo.value.message == "body is not UTF-8 text"


def test_it_checks_the_size_before_decoding():
    with pytest.raises(TooLarge):
        parse(b"\xff" * 2048, 1024, MAX_DOCS)
