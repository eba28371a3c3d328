"""The in-repo Kubernetes API server driven by the official Kubernetes Python client.

Run by tests/tests/apiserver_python.rs against two servers on loopback:
APISERVER_KUBECONFIG (default limits) and APISERVER_SMALL_KUBECONFIG (an event log of
APISERVER_SMALL_EVENTS events, so compaction and 410 Gone come quickly).
"""

import datetime
import json
import os

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "pytest"


def api_client(env):
    return config.new_client_from_config(config_file=os.environ[env])


@pytest.fixture(scope="module")
def api():
    return api_client("APISERVER_KUBECONFIG")


@pytest.fixture(scope="module")
def small():
    return api_client("APISERVER_SMALL_KUBECONFIG")


def service(name, labels=None, finalizers=None):
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}, finalizers=finalizers),
        spec=client.V1ServiceSpec(type="LoadBalancer", selector={"app": name}, ports=[client.V1ServicePort(port=80)]),
    )


def status_of(e):
    body = json.loads(e.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure", body
    assert body["code"] == e.status, body
    return body


def test_a_lease_update_with_a_stale_resource_version_is_a_conflict(api):
    leases = client.CoordinationV1Api(api)
    now = datetime.datetime.now(datetime.timezone.utc)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15, acquire_time=now, renew_time=now),
    )
    created = leases.create_namespaced_lease(NS, lease)
    assert created.spec.holder_identity == "a"
    assert created.spec.renew_time is not None
    created.spec.holder_identity = "b"
    renewed = leases.replace_namespaced_lease("leader", NS, created)
    assert renewed.metadata.resource_version != created.metadata.resource_version
    created.spec.holder_identity = "c"  # still carries the first resourceVersion
    with pytest.raises(ApiException) as e:
        leases.replace_namespaced_lease("leader", NS, created)
    assert e.value.status == 409
    body = status_of(e.value)
    assert body["reason"] == "Conflict"
    assert body["details"]["name"] == "leader"
    assert leases.read_namespaced_lease("leader", NS).spec.holder_identity == "b"


def test_a_second_create_is_already_exists_and_a_missing_object_not_found(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_service(NS, service("twice"))
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service(NS, service("twice"))
    assert e.value.status == 409 and status_of(e.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_service("never", NS)
    assert e.value.status == 404 and status_of(e.value)["reason"] == "NotFound"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service(NS, service("Not_A_Name"))
    assert e.value.status == 422 and status_of(e.value)["reason"] == "Invalid"


def test_lists_page_and_select(api):
    core = client.CoreV1Api(api)
    for i in range(5):
        core.create_namespaced_service("paging", service(f"p{i}", labels={"group": "paging", "parity": str(i % 2)}))
    core.create_namespaced_service("paging-other", service("p-other", labels={"group": "paging"}))
    names, token, pages = [], None, 0
    while True:
        page = core.list_namespaced_service("paging", limit=2, _continue=token)
        pages += 1
        names += [s.metadata.name for s in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == ["p0", "p1", "p2", "p3", "p4"] and pages == 3
    odd = core.list_namespaced_service("paging", label_selector="parity=1")
    assert [s.metadata.name for s in odd.items] == ["p1", "p3"]
    some = core.list_namespaced_service("paging", label_selector="parity in (0),group")
    assert [s.metadata.name for s in some.items] == ["p0", "p2", "p4"]
    one = core.list_namespaced_service("paging", field_selector="metadata.name=p2")
    assert [s.metadata.name for s in one.items] == ["p2"]
    everywhere = core.list_service_for_all_namespaces(label_selector="group=paging")
    assert sorted(s.metadata.name for s in everywhere.items) == ["p-other", "p0", "p1", "p2", "p3", "p4"]


def test_a_watch_resumes_from_a_resource_version(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_service("watching", service("w"))
    rv = core.list_namespaced_service("watching").metadata.resource_version
    core.patch_namespaced_service("w", "watching", {"metadata": {"labels": {"step": "one"}}})
    core.patch_namespaced_service("w", "watching", {"metadata": {"labels": {"step": "two"}}})
    core.create_namespaced_service("watching", service("x"))
    seen = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_service, "watching", resource_version=rv, timeout_seconds=2, allow_watch_bookmarks=True):
        if event["type"] == "BOOKMARK":
            continue
        seen.append((event["type"], event["object"].metadata.name, (event["object"].metadata.labels or {}).get("step")))
        if len(seen) == 3:
            w.stop()
    assert seen == [("MODIFIED", "w", "one"), ("MODIFIED", "w", "two"), ("ADDED", "x", None)]


def test_a_watch_or_continue_from_before_compaction_is_gone(small):
    core = client.CoreV1Api(small)
    for i in range(3):
        core.create_namespaced_service(NS, service(f"c{i}"))
    first = core.list_namespaced_service(NS, limit=1)
    assert first.metadata._continue
    old_rv = first.metadata.resource_version
    for i in range(int(os.environ["APISERVER_SMALL_EVENTS"]) + 5):
        core.patch_namespaced_service("c0", NS, {"metadata": {"labels": {"n": str(i)}}})
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(core.list_namespaced_service, NS, resource_version=old_rv, timeout_seconds=5):
            pass
    assert e.value.status == 410
    with pytest.raises(ApiException) as e:
        core.list_namespaced_service(NS, limit=1, _continue=first.metadata._continue)
    assert e.value.status == 410 and status_of(e.value)["reason"] == "Expired"
    # A fresh list and a watch from it work again.
    rv = core.list_namespaced_service(NS).metadata.resource_version
    core.patch_namespaced_service("c1", NS, {"metadata": {"labels": {"after": "compaction"}}})
    events = list(watch.Watch().stream(core.list_namespaced_service, NS, resource_version=rv, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("MODIFIED", "c1")]


def test_a_finalizer_holds_a_deletion_and_a_failed_test_op_changes_nothing(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_service(NS, service("held", finalizers=["example.com/hold"]))
    core.delete_namespaced_service("held", NS)
    held = core.read_namespaced_service("held", NS)
    assert held.metadata.deletion_timestamp is not None
    guard = [{"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/other"}, {"op": "remove", "path": "/metadata/finalizers/0"}]
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_service("held", NS, guard)
    assert e.value.status == 422 and status_of(e.value)["reason"] == "Invalid"
    assert core.read_namespaced_service("held", NS).metadata.finalizers == ["example.com/hold"]
    guard[0]["value"] = "example.com/hold"
    core.patch_namespaced_service("held", NS, guard)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_service("held", NS)
    assert e.value.status == 404


def test_the_status_subresource(api):
    core = client.CoreV1Api(api)
    core.create_namespaced_service(NS, service("lb"))
    core.patch_namespaced_service_status("lb", NS, {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})
    assert core.read_namespaced_service("lb", NS).status.load_balancer.ingress[0].ip == "192.0.2.10"
    core.patch_namespaced_service("lb", NS, {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}}})
    assert core.read_namespaced_service_status("lb", NS).status.load_balancer.ingress[0].ip == "192.0.2.10"


def test_events_and_nodes(api):
    events = client.EventsV1Api(api)
    now = datetime.datetime.now(datetime.timezone.utc)
    ev = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="lb.1"),
        event_time=now,
        reason="EnsuredLoadBalancer",
        note="Ensured load balancer",
        type="Normal",
        action="Ensure",
        reporting_controller="difftracker",
        reporting_instance="difftracker-0",
        regarding=client.V1ObjectReference(kind="Service", name="lb", namespace=NS),
    )
    events.create_namespaced_event(NS, ev)
    listed = events.list_namespaced_event(NS)
    assert [e.reason for e in listed.items] == ["EnsuredLoadBalancer"]
    core = client.CoreV1Api(api)
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-1", labels={"zone": "1"})))
    assert [n.metadata.name for n in core.list_node(label_selector="zone=1").items] == ["node-1"]
