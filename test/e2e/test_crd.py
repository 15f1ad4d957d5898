"""The PostgresUpgrade CRD (deploy/crd): `make install`, schema defaults, and the validation the
API server applies before the operator sees anything: each invalid resource is rejected with
a message that names the field and says what is wrong."""
import copy
import json

import pytest

from conftest import CRD_NAME, ROOT, make

pytestmark = pytest.mark.usefixtures("crd_installed")


def valid(name="orders-to-17"):
    return {
        "apiVersion": "pgshift.dev/v1alpha1",
        "kind": "PostgresUpgrade",
        "metadata": {"name": name},
        "spec": {
            "source": {"service": "orders-db", "credentialsSecret": {"name": "orders-db-admin"}},
            "target": {"version": 17},
            "traffic": {"service": "orders"},
        },
    }


def with_(change, name="bad"):
    obj = valid(name)
    change(obj["spec"])
    return obj


def rejected(k, obj):
    """Applies `obj`, expects the API server to refuse it, returns kubectl's message."""
    p = k.apply(obj, check=False)
    assert p.returncode != 0, f"accepted, should be rejected:\n{json.dumps(obj['spec'])}\n{p.stdout}"
    assert k.get("postgresupgrade", obj["metadata"]["name"]) is None
    return p.stderr


def test_make_install_establishes_the_crd(kubectl):
    p = make("install", kubectl=kubectl)  # a second time: idempotent
    assert p.returncode == 0, p.stderr
    crd = kubectl.json("get", "crd", CRD_NAME)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert crd["spec"]["names"]["shortNames"] == ["pgu"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


def test_sample_is_accepted_with_defaults(k):
    p = k.run("apply", "-f", str(ROOT / "deploy" / "samples" / "postgresupgrade.yaml"))
    assert "created" in p.stdout
    spec = k.json("get", "pgu", "orders-to-18")["spec"]
    assert spec["target"]["version"] == 18 and spec["source"]["service"] == "orders-db"

    # The minimal resource gets every documented default; 45 characters is the longest name.
    k.apply(valid("a" * 45))
    k.apply(valid("minimal"))
    spec = k.json("get", "postgresupgrade", "minimal")["spec"]
    assert spec["source"]["port"] == 5432
    assert spec["source"]["credentialsSecret"] == {
        "name": "orders-db-admin", "usernameKey": "username", "passwordKey": "password"}
    assert spec["target"]["storage"] == {"size": "1Gi"}
    assert spec["cutover"] == {"mode": "auto", "approved": False, "maxLagBytes": 16777216,
                               "maxPauseMs": 2000}
    assert spec["verify"] == "checksum"
    assert spec["rollback"] == {"keepReverseReplication": True}
    assert spec["checkOnly"] is False
    # The engine's defaults (engine::MigrationOptions); onDifference unset is the engine's too.
    assert spec["tablesWithoutPrimaryKey"] == "refuse"
    assert spec["copy"] == {"method": "snapshot", "jobs": 0, "rate": 0}
    assert "action" not in spec and "image" not in spec["target"]
    # A pooler instead of the Service flip gets its defaults too.
    pooled = valid("pooled")
    pooled["spec"]["traffic"] = {"pooler": {}}
    k.apply(pooled)
    assert k.json("get", "pgu", "pooled")["spec"]["traffic"] == {"pooler": {
        "replicas": 2, "poolMode": "transaction", "image": "edoburu/pgbouncer:v1.24.1-p1",
        "maxClientConn": 1000, "defaultPoolSize": 20}}


def test_source_by_host_and_every_field_is_accepted(k):
    obj = valid("by-host")
    obj["spec"] = {
        "source": {"host": "db.example.internal", "port": 6432, "databases": ["app", "audit"],
                   "credentialsSecret": {"name": "s", "usernameKey": "u", "passwordKey": "p"}},
        "target": {"version": 12, "image": "registry.local/postgres:12.22",
                   "storage": {"size": "500Mi", "storageClassName": "fast"},
                   "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}},
                   "parameters": {"max_connections": "300", "auto_explain.log_min_duration": "1s"}},
        "traffic": {"service": "app"},
        "tablesWithoutPrimaryKey": "full",
        "copy": {"method": "snapshot", "jobs": 256, "rate": "50Mi"},
        "cutover": {"mode": "manual", "approved": False, "maxLagBytes": 0, "maxPauseMs": 600000,
                    "onDifference": "stop"},
        "verify": "none",
        "rollback": {"keepReverseReplication": False},
        "action": "",
        "checkOnly": True,
    }
    k.apply(obj)
    got = k.json("get", "pgu", "by-host")["spec"]
    assert got["target"]["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}}
    assert got["source"]["databases"] == ["app", "audit"]
    assert got["copy"] == {"method": "snapshot", "jobs": 256, "rate": "50Mi"}
    assert got["cutover"]["onDifference"] == "stop" and got["tablesWithoutPrimaryKey"] == "full"

    # The rate as bytes per second or as any whole quantity; native with no jobs and no rate.
    for name, copy_ in (("rate-bytes", {"rate": 50000000}), ("rate-decimal", {"rate": "1.5M"}),
                        ("rate-exponent", {"rate": "5e7"}), ("native", {"method": "native"}),
                        ("native-zero-rate", {"method": "native", "jobs": 0, "rate": "0"})):
        k.apply(with_(lambda s: s.update(copy=copy_), name=name))
        assert k.json("get", "pgu", name)["spec"]["copy"]["method"] == copy_.get("method", "snapshot")


@pytest.mark.parametrize("version, message", [
    (11, 'spec.target.version: Invalid value: 11: spec.target.version in body should be greater than or equal to 12'),
    (19, 'spec.target.version: Invalid value: 19: spec.target.version in body should be less than or equal to 18'),
    ("abc", 'spec.target.version: Invalid value: "string": spec.target.version in body must be of type integer'),
])
def test_bad_target_version(k, version, message):
    assert message in rejected(k, with_(lambda s: s["target"].update(version=version)))


def test_source_needs_exactly_one_of_service_and_host(k):
    both = with_(lambda s: s["source"].update(host="db.example.internal"))
    assert "spec.source: Invalid value: \"object\": set exactly one of source.service and source.host" \
        in rejected(k, both)
    neither = with_(lambda s: s["source"].pop("service"))
    assert "set exactly one of source.service and source.host" in rejected(k, neither)
    empty = with_(lambda s: s["source"].update(service=""))
    assert "spec.source.service: Invalid value: \"\": spec.source.service in body should be at least 1 chars long" \
        in rejected(k, empty)


def test_traffic_service_must_differ_from_source_service(k):
    msg = rejected(k, with_(lambda s: s["traffic"].update(service="orders-db")))
    assert "spec: Invalid value: \"object\": traffic.service must differ from source.service" in msg


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(cutover={"maxLagBytes": -1}),
     "spec.cutover.maxLagBytes in body should be greater than or equal to 0"),
    (lambda s: s.update(cutover={"maxPauseMs": 0}),
     "spec.cutover.maxPauseMs in body should be greater than or equal to 1"),
    (lambda s: s.update(cutover={"maxPauseMs": 600001}),
     "spec.cutover.maxPauseMs in body should be less than or equal to 600000"),
    (lambda s: s.update(cutover={"mode": "sometimes"}),
     'spec.cutover.mode: Unsupported value: "sometimes": supported values: "auto", "manual"'),
    (lambda s: s.update(verify="sha256"),
     'spec.verify: Unsupported value: "sha256": supported values: "none", "count", "checksum"'),
    (lambda s: s.update(action="Delete"),
     'spec.action: Unsupported value: "Delete": supported values: "", "Rollback", "Finish"'),
    (lambda s: s["source"].update(port=70000),
     "spec.source.port in body should be less than or equal to 65535"),
    (lambda s: s["source"].update(databases=[f"db{i}" for i in range(65)]),
     "spec.source.databases: Too many: 65: must have at most 64 items"),
    (lambda s: s["source"].update(databases=["x" * 64]),
     "spec.source.databases[0]: Too long: may not be more than 63 bytes"),
    (lambda s: s["source"].pop("credentialsSecret"),
     "spec.source.credentialsSecret: Required value"),
    (lambda s: s.pop("traffic"), "spec.traffic: Required value"),
    (lambda s: s["traffic"].update(pooler={}), "set exactly one of traffic.service and traffic.pooler"),
    (lambda s: s.update(traffic={}), "set exactly one of traffic.service and traffic.pooler"),
    (lambda s: s.update(traffic={"pooler": {"poolMode": "session"}}),
     'spec.traffic.pooler.poolMode: Unsupported value: "session": supported values: '
     '"transaction", "statement"'),
    (lambda s: s.update(traffic={"pooler": {"replicas": 0}}),
     "spec.traffic.pooler.replicas in body should be greater than or equal to 1"),
    (lambda s: (s["source"].pop("service"), s["source"].update(host="db.example"),
                s.update(traffic={"pooler": {}})),
     "traffic.pooler needs source.service"),
    (lambda s: s.update(traffic={"pooler": {"existing": {
        "service": "pgb", "backendService": "orders-db", "adminSecret": {"name": "a"}}}}),
     "traffic.pooler.existing.backendService must differ from source.service"),
    (lambda s: s.update(traffic={"pooler": {"existing": {
        "service": "pgb", "backendService": "pgb", "adminSecret": {"name": "a"}}}}),
     "traffic.pooler.existing.backendService must differ from its service"),
    (lambda s: s.update(traffic={"pooler": {"existing": {
        "service": "pgb", "backendService": "db-rw"}}}),
     "spec.traffic.pooler.existing.adminSecret: Required value"),
    (lambda s: s["target"].update(storage={"size": "lots"}),
     "target.storage.size must be a positive quantity such as 10Gi"),
    (lambda s: s["target"].update(storage={"size": "0"}),
     "target.storage.size must be a positive quantity such as 10Gi"),
    (lambda s: s["target"].update(parameters={"wal_level": "replica"}),
     "target.parameters must not set wal_level: the operator sets it to logical"),
    (lambda s: s["target"].update(parameters={"Shared-Buffers": "1GB"}),
     "target.parameters names must be PostgreSQL setting names"),
    (lambda s: s.update(rollback={"keepReverseReplication": False}, action="Rollback"),
     "action Rollback needs rollback.keepReverseReplication: true"),
    (lambda s: s.update(checkOnly=True, action="Finish"),
     "action cannot be set when checkOnly is true"),
    (lambda s: s.update(tablesWithoutPrimaryKey="yes"),
     'spec.tablesWithoutPrimaryKey: Unsupported value: "yes": supported values: "refuse", "full"'),
    (lambda s: s.update(cutover={"onDifference": "ignore"}),
     'spec.cutover.onDifference: Unsupported value: "ignore": supported values: "rollback", "stop"'),
    (lambda s: s.update(rollback={"keepReverseReplication": False},
                        cutover={"onDifference": "rollback"}),
     "cutover.onDifference rollback needs rollback.keepReverseReplication: true"),
    (lambda s: s.update(copy={"method": "pg_dump"}),
     'spec.copy.method: Unsupported value: "pg_dump": supported values: "snapshot", "native"'),
    (lambda s: s.update(copy={"jobs": 257}),
     "spec.copy.jobs in body should be less than or equal to 256"),
    (lambda s: s.update(copy={"jobs": -1}),
     "spec.copy.jobs in body should be greater than or equal to 0"),
    (lambda s: s.update(copy={"rate": -5}),
     "copy.rate must be a whole number of bytes per second, 0 (no limit) or more, or a quantity"),
    (lambda s: s.update(copy={"rate": "-5Mi"}),
     "copy.rate must be a whole number of bytes per second"),
    (lambda s: s.update(copy={"rate": "1.5"}),
     "copy.rate must be a whole number of bytes per second"),
    (lambda s: s.update(copy={"rate": "50MB"}),
     "copy.rate must be a whole number of bytes per second"),
    (lambda s: s.update(copy={"method": "native", "jobs": 4}),
     "copy.jobs and copy.rate apply to copy.method snapshot only"),
    (lambda s: s.update(copy={"method": "native", "rate": "10Mi"}),
     "copy.jobs and copy.rate apply to copy.method snapshot only"),
], ids=["negative-maxLagBytes", "maxPauseMs-0", "maxPauseMs-too-big", "cutover-mode",
        "verify-level", "action", "port", "too-many-databases", "long-database-name",
        "no-credentials", "no-traffic", "traffic-both", "traffic-neither", "pooler-session",
        "pooler-replicas-0", "pooler-without-source-service", "adopted-backend-is-source",
        "adopted-backend-is-pooler", "adopted-without-admin", "storage-size-word", "storage-size-zero", "wal_level",
        "parameter-name", "rollback-without-reverse", "checkOnly-with-action",
        "tablesWithoutPrimaryKey", "onDifference", "onDifference-rollback-without-reverse",
        "copy-method", "copy-jobs-too-many", "copy-jobs-negative", "copy-rate-negative",
        "copy-rate-negative-quantity", "copy-rate-fraction", "copy-rate-MB", "native-with-jobs",
        "native-with-rate"])
def test_invalid_spec_is_rejected_with_a_message(k, change, message):
    assert message in rejected(k, with_(change))


@pytest.mark.parametrize("name", ["a" * 46, "1st-upgrade", "orders.v17"])
def test_names_that_cannot_name_the_target_are_rejected(k, name):
    msg = rejected(k, valid(name))
    assert "metadata.name must be at most 45 characters of lower case letters" in msg


def test_unknown_fields_are_rejected(k):
    msg = rejected(k, with_(lambda s: s.update(cutover={"maxLag": 5})))
    assert 'unknown field "spec.cutover.maxLag"' in msg


def update(k, name, change):
    """Applies the stored resource's spec with `change` made; returns the completed process."""
    obj = k.json("get", "pgu", name)
    new = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
           "metadata": {"name": name, "resourceVersion": obj["metadata"]["resourceVersion"]},
           "spec": copy.deepcopy(obj["spec"])}
    change(new["spec"])
    return k.run("replace", "-f", "-", input=new, check=False)


def test_immutable_fields_cannot_change(k):
    k.apply(valid("upg"))

    p = update(k, "upg", lambda s: s["target"].update(version=16))
    assert p.returncode != 0
    assert "spec.target.version: Invalid value: \"integer\": target.version cannot change once created" in p.stderr

    for change in (lambda s: s["source"].update(service="other-db"),
                   lambda s: (s["source"].pop("service"), s["source"].update(host="db.internal")),
                   lambda s: s["source"].update(port=5433),
                   lambda s: s["source"].update(databases=["only_this"])):
        p = update(k, "upg", change)
        assert p.returncode != 0, "source change accepted"
        assert "source (service, host, port, databases) cannot change once created" in p.stderr

    p = update(k, "upg", lambda s: s.update(checkOnly=True))
    assert p.returncode != 0 and "checkOnly cannot change" in p.stderr

    p = update(k, "upg", lambda s: s["copy"].update(method="native"))
    assert p.returncode != 0 and "copy.method cannot change once created" in p.stderr

    # What a user is meant to change is accepted: credentials, manual approval, actions.
    for change in (lambda s: s["source"]["credentialsSecret"].update(name="rotated"),
                   lambda s: s.update(cutover={**s["cutover"], "mode": "manual"}),
                   lambda s: s["cutover"].update(approved=True),
                   lambda s: s["target"].update(parameters={"work_mem": "64MB"}),
                   lambda s: s.update(tablesWithoutPrimaryKey="full"),
                   lambda s: s["copy"].update(jobs=2, rate="20Mi"),
                   lambda s: s["cutover"].update(onDifference="stop"),
                   lambda s: s.update(action="Rollback"),
                   lambda s: s.update(action="Finish")):
        p = update(k, "upg", change)
        assert p.returncode == 0, p.stderr
    spec = k.json("get", "pgu", "upg")["spec"]
    assert spec["source"]["credentialsSecret"]["name"] == "rotated"
    assert spec["cutover"]["approved"] is True and spec["action"] == "Finish"

    for change in (lambda s: s.update(action="Rollback"), lambda s: s.pop("action")):
        p = update(k, "upg", change)
        assert p.returncode != 0 and "action Finish cannot be undone" in p.stderr

    checked = valid("preflight-only")
    checked["spec"]["checkOnly"] = True
    k.apply(checked)
    p = update(k, "preflight-only", lambda s: s.update(checkOnly=False))
    assert p.returncode != 0 and "checkOnly cannot change" in p.stderr


def test_status_subresource_and_printer_columns(k):
    k.apply(valid("shown"))
    # Status is only written through the status subresource: a spec write ignores it.
    obj = valid("shown")
    obj["status"] = {"phase": "Completed"}
    k.apply(obj)
    assert "status" not in k.json("get", "pgu", "shown")

    status = {"phase": "CatchingUp", "message": "catching up: 3 of 4 tables streaming",
              "observedGeneration": 1, "sourceVersion": 15, "targetVersion": 17,
              "lagBytes": 123456789012, "lagSeconds": 1.5, "tablesSynced": 3, "tablesTotal": 4,
              "bytesCopied": 5000000000, "lagDrainBytesPerSecond": 8388608.0, "readyInSeconds": 42,
              "leaderEpoch": 3,
              "lastCutover": {"direction": "forward", "succeeded": True, "pauseMs": 41.7,
                              "at": "2026-11-22T01:00:00Z",
                              "notes": ["rolling forward from step switch (interrupted)"]},
              "phaseTimes": {"InitialCopy": {"started": "2026-11-22T00:59:00Z",
                                             "finished": "2026-11-22T00:59:30Z"}},
              "conditions": [{"type": "Progressing", "status": "True", "reason": "CatchingUp",
                              "message": "", "lastTransitionTime": "2026-11-22T01:00:00Z",
                              "observedGeneration": 1}],
              "preflight": ["warning: table public.t has no primary key"],
              "engine": {"id": "m1", "anything": {"nested": [1, 2]}}}
    k.run("patch", "pgu", "shown", "--subresource=status", "--type=merge",
          "-p", json.dumps({"status": status}))
    got = k.json("get", "pgu", "shown")["status"]
    assert got == status  # nothing pruned, engine state kept as written

    table = k.run("get", "pgu").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "SOURCE", "TARGET", "LAG", "REVERSE-LAG", "READY-IN", "AGE"]
    row = next(line.split() for line in table[1:] if line.startswith("shown "))
    assert row[:6] == ["shown", "CatchingUp", "15", "17", "123456789012", "42"]
    wide = k.run("get", "postgresupgrades", "shown", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "MESSAGE" and wide[1].endswith("catching up: 3 of 4 tables streaming")

    bad = {"conditions": [{"type": "Ready", "status": "Maybe", "reason": "X", "message": "",
                           "lastTransitionTime": "2026-11-22T01:00:00Z"}]}
    p = k.run("patch", "pgu", "shown", "--subresource=status", "--type=merge",
              "-p", json.dumps({"status": bad}), check=False)
    assert p.returncode != 0
    assert 'status.conditions[0].status: Unsupported value: "Maybe"' in p.stderr
