"""Snapshot loading: every input format, load order, and bad input reported, not raised."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from netwatch.core.model import Labels, Protocol, WorkloadKind
from netwatch.core.policy import PolicyKey
from netwatch.k8s import yamldocs
from netwatch.k8s.snapshot import LoadResult, load_cluster, snapshot_files

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "loader"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def pod_doc(name: str, *, namespace: str = "shop", ip: str = "10.0.0.1") -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {name}}}
status:
  podIP: {ip}
"""


def policy_doc(name: str, *, app: str = "web", namespace: str = "shop") -> str:
    return f"""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  podSelector:
    matchLabels: {{app: {app}}}
"""


def keys(result: LoadResult) -> tuple[list[str], list[str]]:
    return [p.key for p in result.cluster.pods], [p.key for p in result.cluster.policies]


# ------------------------------------------------------------------ input formats


def test_single_document_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "pod.yaml", pod_doc("web"))
    result = load_cluster([path])
    assert result.problems == ()
    assert (result.objects, result.skipped) == (1, 0)
    assert keys(result) == (["shop/web"], [])


def test_multi_document_yaml_skips_empty_documents(tmp_path: Path) -> None:
    text = "---\n# leading comment\n" + pod_doc("a") + "---\n---\n" + policy_doc("p") + "...\n"
    result = load_cluster([write(tmp_path, "all.yaml", text)])
    assert result.problems == ()
    assert keys(result) == (["shop/a"], ["shop/p"])


def test_json_file(tmp_path: Path) -> None:
    obj = yaml.safe_load(pod_doc("web"))
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(obj, indent=2))
    result = load_cluster([path])
    assert result.problems == ()
    assert keys(result) == (["shop/web"], [])


def test_kubectl_get_all_list_fixture() -> None:
    result = load_cluster([FIXTURES / "kubectl-get-all.yaml"])
    assert result.problems == ()
    assert (result.objects, result.skipped) == (22, 0)
    cluster = result.cluster
    assert [p.key for p in cluster.pods] == [
        "default/debug",
        "kube-system/coredns-5d78c9869d-8vt6c",
        "kube-system/kube-proxy-hn2kd",
        "shop/cart-5c8d7f9b44-qw7rt",
        "shop/frontend-7d9f8c6b5-lm4tp",
        "shop/frontend-7d9f8c6b5-x2kqz",
    ]
    assert [p.key for p in cluster.policies] == [
        "shop/allow-frontend-to-cart",
        "shop/allow-web-from-outside",
        "shop/default-deny",
        "shop/frontend-egress",
    ]
    assert [s.key for s in cluster.services] == [
        "default/kubernetes",
        "kube-system/kube-dns",
        "shop/cart",
        "shop/frontend",
    ]
    assert cluster.namespaces["shop"].labels["team"] == "payments"
    cart = cluster.pod("shop/cart-5c8d7f9b44-qw7rt")
    assert cart is not None
    assert cart.ips == ("10.244.2.7", "fd00:10:244:2::7")
    assert cart.named_port("proxy", Protocol.TCP) == 15001  # a sidecar init container
    proxy = cluster.pod("kube-system/kube-proxy-hn2kd")
    assert proxy is not None and proxy.host_network
    debug = cluster.pod("default/debug")
    assert debug is not None and debug.phase.terminal
    # Pod → ReplicaSet → Deployment through the dumped objects, and inferred for `cart`,
    # whose ReplicaSet is not in the dump.
    workloads = {p.name: cluster.workload_of(p) for p in cluster.pods}
    assert workloads["frontend-7d9f8c6b5-x2kqz"].key == "shop/frontend"
    assert workloads["frontend-7d9f8c6b5-x2kqz"].kind is WorkloadKind.DEPLOYMENT
    assert workloads["cart-5c8d7f9b44-qw7rt"].key == "shop/cart"
    assert workloads["coredns-5d78c9869d-8vt6c"].key == "kube-system/coredns"
    assert workloads["kube-proxy-hn2kd"].kind is WorkloadKind.DAEMON_SET
    assert workloads["debug"].kind is WorkloadKind.POD
    headless = next(s for s in cluster.services if s.key == "shop/cart")
    assert headless.cluster_ips == ()
    egress = cluster.policy(PolicyKey("shop/frontend-egress"))
    assert egress is not None and len(egress.egress) == 2


def test_typed_lists_without_item_kinds_nested_in_a_list() -> None:
    result = load_cluster([FIXTURES / "api-lists.json"])
    assert result.problems == ()
    assert (result.objects, result.skipped) == (6, 0)
    cluster = result.cluster
    assert keys(result) == (["shop/cart-0"], ["shop/allow-cart"])
    assert [n.name for n in cluster.nodes] == ["node-1"]
    assert cluster.nodes[0].addresses == ("192.168.49.2", "203.0.113.10")
    assert cluster.endpoint_slices[0].endpoints[0].pod == "shop/cart-0"
    [pod] = cluster.pods
    assert cluster.workload_of(pod).kind is WorkloadKind.STATEFUL_SET
    [sts] = cluster.workload_objects
    assert sts.selector_labels == Labels({"app.kubernetes.io/name": "cart"})


def test_typed_list_items_inherit_kind_and_api_version(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "lists.yaml",
        """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicyList
        items:
        - metadata: {name: a, namespace: shop}
          spec: {podSelector: {}}
        - kind: NetworkPolicy
          metadata: {name: b, namespace: shop}
          spec: {podSelector: {}}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicyList
        items:
        - metadata: {name: calico, namespace: shop}
          spec: {selector: all()}
        """,
    )
    result = load_cluster([path])
    assert result.problems == ()
    assert keys(result) == ([], ["shop/a", "shop/b"])
    assert result.skipped == 1  # Calico's NetworkPolicy has another shape: not misread


def test_problem_in_nested_list_names_the_item_path(tmp_path: Path) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
            {
                "apiVersion": "v1",
                "kind": "PodList",
                "items": [
                    {"metadata": {"name": "ok"}},
                    {"metadata": {"name": "bad", "labels": {"a b": "c"}}},
                ],
            },
        ],
    }
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(obj))
    result = load_cluster([path])
    [problem] = result.problems
    assert problem.source == f"{path} items[1].items[1]"
    assert problem.obj == "Pod default/bad"
    assert problem.field == "metadata.labels[a b]"
    assert keys(result) == (["default/ok"], [])
    assert (result.objects, result.skipped) == (1, 1)


def test_directory_is_read_recursively_in_sorted_path_order(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    write(root, "b/20-policy.yaml", policy_doc("p", app="second"))
    write(root, "a/10-policy.yml", policy_doc("p", app="first"))
    write(root, "c.json", json.dumps(yaml.safe_load(policy_doc("p", app="third"))))
    write(root, "a/pods.yaml", pod_doc("web"))
    write(root, "notes.txt", "kind: Pod\nmetadata: {name: not-read}\n")
    write(root, ".hidden.yaml", pod_doc("hidden"))
    write(root, "..data/pod.yaml", pod_doc("mounted-twice"))
    assert [os.path.relpath(f, root) for f in snapshot_files(str(root))] == [
        "a/10-policy.yml",
        "a/pods.yaml",
        "b/20-policy.yaml",
        "c.json",
    ]
    result = load_cluster([root])
    assert result.problems == ()
    assert keys(result) == (["shop/web"], ["shop/p"])
    assert result.cluster.policies[0].pod_selector.match_labels == (("app", "third"),)


def test_later_duplicate_policy_wins_within_a_file_and_across_paths(tmp_path: Path) -> None:
    one = write(
        tmp_path, "one.yaml", policy_doc("p", app="v1") + "---\n" + policy_doc("p", app="v2")
    )
    two = write(tmp_path, "two.yaml", policy_doc("p", app="v3"))

    def selected(paths: list[str]) -> str:
        [pol] = load_cluster(paths).cluster.policies
        return pol.pod_selector.match_labels[0][1]

    assert selected([one]) == "v2"
    assert selected([one, two]) == "v3"
    assert selected([two, one]) == "v2"


def test_repeated_services_and_nodes_collapse_to_the_last(tmp_path: Path) -> None:
    svc = "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{clusterIP: {ip}}}\n"
    node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n"
    text = "---\n".join([svc.format(ip="10.96.0.1"), node, svc.format(ip="10.96.0.2"), node])
    cluster = load_cluster([write(tmp_path, "dump.yaml", text)]).cluster
    assert [s.cluster_ips for s in cluster.services] == [("10.96.0.2",)]
    assert [n.name for n in cluster.nodes] == ["n1"]


def test_missing_namespace_defaults_to_default(tmp_path: Path) -> None:
    text = "kind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n"
    result = load_cluster([write(tmp_path, "p.yaml", text)])
    assert keys(result) == ([], ["default/p"])


def test_unused_kinds_are_counted_as_skipped(tmp_path: Path) -> None:
    text = """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: cfg}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: cnp}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: web}
        """
    result = load_cluster([write(tmp_path, "misc.yaml", text)])
    assert result.problems == ()
    assert (result.objects, result.skipped) == (0, 3)


# -------------------------------------------------------------- bad input (§3.9)

BAD_OBJECTS = {
    "bad CIDR": (
        "NetworkPolicy shop/bad",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "'10.0.0.0/40'",
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: bad, namespace: shop}
        spec:
          podSelector: {}
          ingress:
          - from:
            - ipBlock: {cidr: 10.0.0.0/40}
        """,
    ),
    "except outside cidr": (
        "NetworkPolicy shop/bad",
        "spec.egress[0].to[0].ipBlock.except[1]",
        "'172.16.0.0/12' must be a strict subset of `cidr` 10.0.0.0/8",
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: bad, namespace: shop}
        spec:
          podSelector: {}
          egress:
          - to:
            - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 172.16.0.0/12]}
        """,
    ),
    "endPort below port": (
        "NetworkPolicy shop/bad",
        "spec.ingress[1].ports[0].endPort",
        "endPort 8000 must be greater than or equal to port 8080",
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: bad, namespace: shop}
        spec:
          podSelector: {}
          ingress:
          - {}
          - ports:
            - {port: 8080, endPort: 8000}
        """,
    ),
    "endPort with a named port": (
        "NetworkPolicy shop/bad",
        "spec.ingress[0].ports[1].endPort",
        "endPort 9000 may not be specified when port is a name ('http')",
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: bad, namespace: shop}
        spec:
          podSelector: {}
          ingress:
          - ports:
            - port: 53
              protocol: UDP
            - port: http
              endPort: 9000
        """,
    ),
    "unknown operator": (
        "NetworkPolicy shop/bad",
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator",
        "unknown operator 'Equals'",
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: bad, namespace: shop}
        spec:
          podSelector: {}
          ingress:
          - from:
            - namespaceSelector:
                matchExpressions:
                - {key: team, operator: Equals, values: [payments]}
        """,
    ),
    "bad label syntax in a selector": (
        "NetworkPolicy shop/bad",
        "spec.podSelector.matchLabels[app/name/x]",
        "'app/name/x'",
        """\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: bad, namespace: shop}
        spec:
          podSelector:
            matchLabels: {app/name/x: web}
        """,
    ),
    "bad label syntax on a pod": (
        "Pod shop/bad",
        "metadata.labels[tier]",
        "'front end'",
        """\
        apiVersion: v1
        kind: Pod
        metadata:
          name: bad
          namespace: shop
          labels: {tier: front end}
        """,
    ),
}


@pytest.mark.parametrize("case", list(BAD_OBJECTS))
def test_invalid_object_is_reported_and_the_rest_of_the_file_loads(
    tmp_path: Path, case: str
) -> None:
    obj, field, fragment, doc = BAD_OBJECTS[case]
    text = pod_doc("web") + "---\n" + textwrap.dedent(doc) + "---\n" + policy_doc("good")
    path = write(tmp_path, "cluster.yaml", text)
    result = load_cluster([path])
    [problem] = result.problems
    assert problem.source == f"{path} (document 2)"
    assert problem.obj == obj
    assert problem.field == field
    assert fragment in problem.message
    assert str(problem).startswith(f"{path} (document 2): {obj}: {field}: ")
    assert keys(result) == (["shop/web"], ["shop/good"])
    assert result.objects == 2


def test_yaml_syntax_error_names_line_and_keeps_other_documents(tmp_path: Path) -> None:
    broken = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n  labels: {app: [x}\n"
    text = pod_doc("a") + "---\n" + broken + "---\n" + policy_doc("p")
    path = write(tmp_path, "cluster.yaml", text)
    error_line = text.splitlines().index("  labels: {app: [x}") + 1
    result = load_cluster([path])
    [problem] = result.problems
    assert problem.source == f"{path} (document 2)"
    assert problem.obj == "YAML document"
    assert f"line {error_line}," in problem.message
    assert keys(result) == (["shop/a"], ["shop/p"])


def test_yaml_syntax_error_in_a_single_document_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "kind: Pod\nmetadata:\n  name: x\n    labels: 1\n")
    good = write(tmp_path, "good.yaml", pod_doc("web"))
    result = load_cluster([bad, good])
    [problem] = result.problems
    assert problem.source == bad
    assert "syntax error at line 4, column" in problem.message
    assert keys(result) == (["shop/web"], [])


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "kind": "Pod",\n  "metadata": {"name": "x",}\n}\n')
    result = load_cluster([bad, write(tmp_path, "good.yaml", pod_doc("web"))])
    [problem] = result.problems
    assert problem.source == str(bad)
    assert "syntax error at line 3" in problem.message
    assert keys(result) == (["shop/web"], [])


@pytest.mark.parametrize(
    ("doc", "what"),
    [("- a\n- b\n", "got a list"), ("just a string\n", "got 'just a string'"), ("42\n", "got 42")],
)
def test_non_mapping_document_is_reported(tmp_path: Path, doc: str, what: str) -> None:
    path = write(tmp_path, "odd.yaml", doc + "---\n" + pod_doc("web"))
    result = load_cluster([path])
    [problem] = result.problems
    assert problem.source == f"{path} (document 1)"
    assert what in problem.message
    assert keys(result) == (["shop/web"], [])


def test_missing_file_is_reported_and_other_paths_load(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = load_cluster([missing, write(tmp_path, "pod.yaml", pod_doc("web"))])
    [problem] = result.problems
    assert (problem.source, problem.obj) == (str(missing), "file")
    assert "no such file" in problem.message
    assert keys(result) == (["shop/web"], [])


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    link = tmp_path / "dangling.yaml"
    link.symlink_to(tmp_path / "gone.yaml")
    [problem] = load_cluster([link]).problems
    assert problem.source == str(link)
    assert "cannot read" in problem.message


def test_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"kind: Pod\nmetadata: {name: caf\xe9}\n")
    [problem] = load_cluster([path]).problems
    assert problem.source == str(path)


def test_object_without_kind_is_reported(tmp_path: Path) -> None:
    text = "metadata: {name: mystery, namespace: shop}\n---\n" + pod_doc("web")
    path = write(tmp_path, "x.yaml", text)
    result = load_cluster([path])
    [problem] = result.problems
    assert (problem.source, problem.obj, problem.field) == (
        f"{path} (document 1)",
        "object shop/mystery",
        "kind",
    )
    assert "missing kind" in problem.message
    assert keys(result) == (["shop/web"], [])


def test_object_without_name_is_reported(tmp_path: Path) -> None:
    text = "kind: NetworkPolicy\nmetadata: {namespace: shop}\nspec: {podSelector: {}}\n"
    [problem] = load_cluster([write(tmp_path, "x.yaml", text)]).problems
    assert (problem.obj, problem.field) == ("NetworkPolicy shop/<no name>", "metadata.name")


def test_list_item_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- 7\n- " + json.dumps(yaml.safe_load(pod_doc("w")))
    path = write(tmp_path, "list.yaml", text)
    result = load_cluster([path])
    [problem] = result.problems
    assert problem.source == f"{path} items[0]"
    assert keys(result) == (["shop/w"], [])


def test_empty_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    [problem] = load_cluster([tmp_path / "empty"]).problems
    assert "no .yaml" in problem.message


def test_garbage_never_raises(tmp_path: Path) -> None:
    files = {
        "a.yaml": "\x00\x01",
        "b.yaml": "kind: [Pod]\n",
        "c.yaml": "kind: List\nitems: {}\n",
        "d.yaml": "kind: Pod\nmetadata: []\nspec: 3\nstatus: [1]\n",
        "e.yaml": "kind: NetworkPolicy\nmetadata: {name: x}\nspec: [1, 2]\n",
        "f.yaml": "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: x, targetPort: []}]}",
        "g.yaml": "kind: EndpointSlice\nmetadata: {name: e}\nendpoints: [{addresses: 1}]\n",
        "h.yaml": "kind: Node\nmetadata: {name: n}\nstatus: {addresses: [1, {type: InternalIP}]}\n",
        "i.yaml": "kind: Deployment\nmetadata: {name: d, ownerReferences: {}}\nspec: []\n",
        "j.yaml": "? [complex, key]\n: value\n",
        "k.json": "[1, 2",
    }
    paths = [write(tmp_path, name, text) for name, text in files.items()]
    result = load_cluster(paths)
    assert len(result.problems) >= len(files) - 1
    assert result.objects == 0


# ------------------------------------------------------------------ YAML fidelity

EXOTIC_YAML = """\
base: &base {app: web, replicas: 010, on: yes, ratio: 1.5e3, hex: 0x1f}
merged:
  <<: *base
  extra: ~
tagged: !!str 123
created: 2024-05-01T10:00:00Z
alias: *base
---
plain: [true, False, null, "quoted: yes", 'single', .inf, -12, 1_000]
---
"""


@pytest.mark.parametrize(
    "text",
    [
        EXOTIC_YAML,
        EXOTIC_YAML.split("---")[1],
        (FIXTURES / "kubectl-get-all.yaml").read_text(),
        "",
        "# only a comment\n",
        "--- |\n  literal\n  text\n",
    ],
)
def test_fast_yaml_reader_matches_safe_loader(text: str) -> None:
    assert yamldocs.load_all(text.encode()) == list(
        yaml.load_all(text, Loader=yamldocs.SAFE_LOADER)
    )


def test_timestamps_stay_strings() -> None:
    [doc] = yamldocs.load_all(b"creationTimestamp: 2024-05-01T10:00:00Z\n")
    assert doc == {"creationTimestamp": "2024-05-01T10:00:00Z"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\n---\nb: 2\n", [(0, "a: 1\n"), (1, "---\nb: 2\n")]),
        ("---\na: 1\n...\n# tail\n", [(0, "---\na: 1\n...\n")]),
        ("# c\n---\n---\nx: 1\n", [(1, "---\n"), (2, "---\nx: 1\n")]),
        ("a: |\n  --- not a marker\n", [(0, "a: |\n  --- not a marker\n")]),
    ],
)
def test_split_documents_matches_parser_numbering(
    text: str, expected: list[tuple[int, str]]
) -> None:
    chunks = yamldocs.split_documents(text)
    assert chunks == expected
    assert len(chunks) == len(list(yaml.load_all(text, Loader=yaml.SafeLoader)))


def _sample(n: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            yaml.safe_load(pod_doc(f"p{i}", ip=f"10.1.{i // 250}.{i % 250}")) for i in range(n)
        ],
    }


def test_large_list_loads_every_pod(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(_sample(500)))
    result = load_cluster([path])
    assert result.problems == ()
    assert len(result.cluster.pods) == 500
