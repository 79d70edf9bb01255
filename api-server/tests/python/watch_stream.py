"""The Python `kubernetes` client's watch against gw's Kubernetes API (run by tests/kube_python.rs).

Usage: watch_stream.py KUBECONFIG_MEMBER_1 KUBECONFIG_MEMBER_2 HISTORY

A watch on member 1, resumed from the last resourceVersion it saw whenever its connection breaks, must see
every change once and in order while member 1 is stopped and started again (the test does that when this
script prints STOP / START and waits for a line on stdin). A watch from a revision older than the
history (HISTORY revisions) must fail with 410, and a relist must recover from it. Prints PASS and a JSON
summary; any failed check raises.
"""

import json
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL, NS = "gateway.networking.k8s.io", "v1", "httproutes", "watched-py"


def api(kubeconfig):
    c = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=c)
    return client.ApiClient(c)


def route(name, host):
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hostnames": [host], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]},
    }


def retrying(f, what, seconds=60):
    """Calls f until it succeeds (a member restarting refuses connections for a while)."""
    deadline = time.time() + seconds
    while True:
        try:
            return f()
        except Exception as e:  # noqa: BLE001 - any failure while the member is down
            if time.time() > deadline:
                raise AssertionError(f"{what}: {e}") from e
            time.sleep(0.2)


def ask(line):
    print(line, flush=True)
    got = sys.stdin.readline().strip()
    assert got == "ok", f"the test answered {got!r} to {line}"


class Watcher(threading.Thread):
    """Watches member 1 from `rv`, resuming after every broken connection from the last revision seen."""

    def __init__(self, objs, rv):
        super().__init__(daemon=True)
        self.objs, self.rv = objs, rv
        self.events, self.errors = [], []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for e in w.stream(
                    self.objs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                    resource_version=self.rv, _request_timeout=30,
                ):
                    o = e["object"]
                    self.rv = o["metadata"]["resourceVersion"]
                    self.events.append((e["type"], o["metadata"]["name"], int(self.rv)))
                    if self.stop.is_set():
                        return
            except ApiException as e:
                self.errors.append(f"ApiException {e.status}")
                raise
            except Exception as e:  # noqa: BLE001 - the connection broke: resume
                self.errors.append(type(e).__name__)
                time.sleep(0.2)

    def wait_for(self, name, seconds=60):
        deadline = time.time() + seconds
        while not any(n == name for _, n, _ in self.events):
            assert time.time() < deadline, f"{name} not seen: {self.events} {self.errors}"
            time.sleep(0.05)


def main():
    kc1, kc2, history = sys.argv[1], sys.argv[2], int(sys.argv[3])
    one, two = api(kc1), api(kc2)
    objs1, objs2 = client.CustomObjectsApi(one), client.CustomObjectsApi(two)
    client.CoreV1Api(two).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    rv0 = objs1.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"]

    watcher = Watcher(objs1, rv0)
    watcher.start()
    expected = []
    for i in range(3):
        o = objs1.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, route(f"a{i}", "a.example"))
        expected.append(("ADDED", f"a{i}", int(o["metadata"]["resourceVersion"])))
    watcher.wait_for("a2")
    ask("STOP 1")
    for i in range(3):
        o = objs2.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, f"a{i}", {"spec": {"hostnames": [f"b{i}.example"]}})
        expected.append(("MODIFIED", f"a{i}", int(o["metadata"]["resourceVersion"])))
    objs2.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a0")
    expected.append(("DELETED", "a0", None))
    ask("START 1")
    o = retrying(lambda: objs1.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, route("after", "after.example")), "a write through member 1")
    expected.append(("ADDED", "after", int(o["metadata"]["resourceVersion"])))
    watcher.wait_for("after")
    watcher.stop.set()
    got = list(watcher.events)
    assert [(t, n) for t, n, _ in got] == [(t, n) for t, n, _ in expected], f"{got} != {expected}"
    assert all(g[2] == e[2] for g, e in zip(got, expected) if e[2] is not None), f"{got} != {expected}"
    assert all(a[2] < b[2] for a, b in zip(got, got[1:])), f"not in order: {got}"
    resumed = len(watcher.errors)
    assert resumed > 0, "the watch never broke: member 1 was not restarted?"

    # Past the history: a watch from the last revision seen gets 410; a relist recovers.
    old = watcher.rv
    last = 0
    for i in range(history + 5):
        o = objs2.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "a1", {"metadata": {"labels": {"n": str(i)}}})
        last = int(o["metadata"]["resourceVersion"])
    # A list is linearizable: once it answers, member 1 has applied every revision written.
    at = int(objs1.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"])
    assert at >= last, f"member 1 listed revision {at}, after {last} was written"
    try:
        for _ in watch.Watch().stream(
            objs1.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version=old,
        ):
            raise AssertionError("an event from a compacted revision")
        raise AssertionError("the watch from a compacted revision ended without an error")
    except ApiException as e:
        assert e.status == 410, f"expected 410, got {e.status}: {e.reason}"
        gone = e.reason
    listed = objs1.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    names = sorted(i["metadata"]["name"] for i in listed["items"])
    assert names == ["a1", "a2", "after"], names
    relisted = Watcher(objs1, listed["metadata"]["resourceVersion"])
    relisted.start()
    o = objs1.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, route("final", "f.example"))
    relisted.wait_for("final")
    relisted.stop.set()
    assert relisted.events == [("ADDED", "final", int(o["metadata"]["resourceVersion"]))], relisted.events

    print("PASS " + json.dumps({"events": len(got), "resumed_after": watcher.errors, "gone": gone}), flush=True)


if __name__ == "__main__":
    main()
