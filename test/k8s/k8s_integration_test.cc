// pgshift::k8s against a real etcd + kube-apiserver + kube-controller-manager and the fake
// kubelet (scripts/k8s/up.sh). Each test works in its own namespace.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "k8s/api_error.h"
#include "k8s/events.h"
#include "k8s/informer.h"
#include "k8s/leader_election.h"
#include "k8s/logging.h"
#include "k8s/status_writer.h"
#include "test_env.h"

namespace pgshift::k8s {
namespace {

using namespace std::chrono_literals;
using testing::AdminClient;
using testing::Ctl;
using testing::Eventually;
using testing::K8sDir;
using testing::Shell;
using testing::TestNamespace;

Json ConfigMap(const std::string& name, Json data, Json labels = Json::object()) {
  Json cm = {{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"metadata", {{"name", name}}},
             {"data", data}};
  if (!labels.empty()) cm["metadata"]["labels"] = labels;
  return cm;
}

class K8sTest : public ::testing::Test {
 protected:
  void SetUp() override {
    client_ = AdminClient();
    ASSERT_NE(client_, nullptr);
    ns_ = std::make_unique<TestNamespace>(client_.get(), "t");
  }
  void TearDown() override { ns_.reset(); }
  const std::string& ns() const { return ns_->name(); }

  std::unique_ptr<Client> client_;
  std::unique_ptr<TestNamespace> ns_;
};

// --- CRUD, apply, patch, optimistic concurrency ------------------------------------------

TEST_F(K8sTest, CrudListPagingAndErrors) {
  const Resource& cm = resources::kConfigMaps;
  Result<Json> created = client_->CreateObject(cm, ns(), ConfigMap("a", {{"k", "v1"}}, {{"app", "x"}}));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_FALSE((*created)["metadata"]["uid"].get<std::string>().empty());

  Result<Json> dup = client_->CreateObject(cm, ns(), ConfigMap("a", {{"k", "v"}}));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ApiErrorOf(dup.status())->http_status, 409);
  EXPECT_EQ(ApiErrorOf(dup.status())->reason, "AlreadyExists");

  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client_->CreateObject(cm, ns(), ConfigMap("p" + std::to_string(i), {{"i", std::to_string(i)}}, {{"app", "paged"}})).ok());
  }
  ListOptions lo;
  lo.label_selector = "app=paged";
  lo.page_size = 2;  // three pages
  Result<ObjectList> list = client_->List(cm, ns(), lo);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->items.size(), 5u);
  EXPECT_FALSE(list->resource_version.empty());
  EXPECT_EQ(list->items[0]["kind"], "ConfigMap");

  Result<Json> got = client_->Get(cm, ns(), "a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)["data"]["k"], "v1");

  Json stale = *got;
  Json fresh = *got;
  fresh["data"]["k"] = "v2";
  ASSERT_TRUE(client_->Update(cm, ns(), fresh).ok());
  stale["data"]["k"] = "lost update";
  Result<Json> conflict = client_->Update(cm, ns(), stale);
  ASSERT_FALSE(conflict.ok());
  EXPECT_TRUE(IsConflict(conflict.status())) << conflict.status().ToString();
  EXPECT_EQ(conflict.status().code(), StatusCode::kAborted);

  Result<Json> patched = client_->MergePatch(cm, ns(), "a", {{"data", {{"m", "merged"}}}});
  ASSERT_TRUE(patched.ok());
  EXPECT_EQ((*patched)["data"]["k"], "v2");
  EXPECT_EQ((*patched)["data"]["m"], "merged");

  ASSERT_TRUE(client_->Delete(cm, ns(), "a").ok());
  Result<Json> gone = client_->Get(cm, ns(), "a");
  EXPECT_TRUE(IsNotFound(gone.status()));
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
  EXPECT_NE(gone.status().message().find("HTTP 404 NotFound"), std::string::npos);
  EXPECT_TRUE(IsNotFound(client_->Delete(cm, ns(), "a")));

  Result<Json> invalid = client_->CreateObject(cm, ns(), ConfigMap("Not_A_Valid_Name", Json::object()));
  EXPECT_EQ(invalid.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiErrorOf(invalid.status())->reason, "Invalid");
}

TEST_F(K8sTest, ModifyRetriesOnConflictUntilEveryWriteLands) {
  const Resource& cm = resources::kConfigMaps;
  ASSERT_TRUE(client_->CreateObject(cm, ns(), ConfigMap("counter", {{"n", "0"}})).ok());
  constexpr int kThreads = 4, kEach = 5;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        Result<Json> r = client_->Modify(cm, ns(), "counter", [](Json& o) {
          o["data"]["n"] = std::to_string(std::stoi(o["data"]["n"].get<std::string>()) + 1);
          return Status::Ok();
        }, "", 50);
        if (!r.ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ((*client_->Get(cm, ns(), "counter"))["data"]["n"], std::to_string(kThreads * kEach));
}

TEST_F(K8sTest, ServerSideApplyOwnsFieldsAndReportsConflicts) {
  const Resource& cm = resources::kConfigMaps;
  Json mine = ConfigMap("ssa", {{"owned", "by-a"}, {"shared", "a"}});
  Result<Json> a = client_->Apply(cm, ns(), mine, {"manager-a", false});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ((*a)["data"]["owned"], "by-a");

  // Applying again with the same manager is idempotent.
  Result<Json> again = client_->Apply(cm, ns(), mine, {"manager-a", false});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(ResourceVersionOf(*again), ResourceVersionOf(*a));

  Json theirs = ConfigMap("ssa", {{"shared", "b"}});
  Result<Json> b = client_->Apply(cm, ns(), theirs, {"manager-b", false});
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(IsConflict(b.status())) << b.status().ToString();
  auto err = ApiErrorOf(b.status());
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ(err->http_status, 409);
  EXPECT_NE(err->message.find("manager-a"), std::string::npos) << err->message;
  EXPECT_NE(err->message.find(".data.shared"), std::string::npos) << err->message;

  Result<Json> forced = client_->Apply(cm, ns(), theirs, {"manager-b", true});
  ASSERT_TRUE(forced.ok()) << forced.status().ToString();
  EXPECT_EQ((*forced)["data"]["shared"], "b");
  EXPECT_EQ((*forced)["data"]["owned"], "by-a");
  std::set<std::string> managers;
  for (const Json& mf : (*forced)["metadata"]["managedFields"]) managers.insert(mf["manager"]);
  EXPECT_TRUE(managers.count("manager-a") && managers.count("manager-b"));

  // Manager a applies without "shared" now: it gives the field up, b keeps it.
  Result<Json> a2 = client_->Apply(cm, ns(), ConfigMap("ssa", {{"owned", "by-a"}}), {"manager-a", false});
  ASSERT_TRUE(a2.ok()) << a2.status().ToString();
  EXPECT_EQ((*a2)["data"]["shared"], "b");
  EXPECT_EQ(client_->Apply(cm, ns(), mine, {"", false}).status().code(), StatusCode::kInvalidArgument);
}

// --- CRD and the status subresource ------------------------------------------------------

const Resource kWidgets{"test.pgshift.dev", "v1", "widgets", true, "Widget"};

void EnsureWidgetCrd(Client* c) {
  Json crd = Json::parse(R"({
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.pgshift.dev"},
    "spec": {"group": "test.pgshift.dev", "scope": "Namespaced",
      "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
      "versions": [{"name": "v1", "served": true, "storage": true,
        "subresources": {"status": {}},
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
          "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
          "status": {"type": "object", "properties": {
            "phase": {"type": "string"}, "observedGeneration": {"type": "integer"},
            "leaderEpoch": {"type": "integer"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}}}}}}]}})");
  Result<Json> r = c->Apply(resources::kCustomResourceDefinitions, "", crd, {"pgshift-test", true});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(Eventually([&] {
    Result<Json> got = c->Get(resources::kCustomResourceDefinitions, "", "widgets.test.pgshift.dev");
    if (!got.ok()) return false;
    for (const Json& cond : (*got)["status"].value("conditions", Json::array())) {
      if (cond["type"] == "Established" && cond["status"] == "True") return true;
    }
    return false;
  }, 30s));
  // Established can precede discovery by a moment.
  ASSERT_TRUE(Eventually([&] { return c->List(kWidgets, "default").ok(); }, 30s));
}

TEST_F(K8sTest, StatusSubresourceIsSeparateFromSpec) {
  EnsureWidgetCrd(client_.get());
  Json w = {{"apiVersion", "test.pgshift.dev/v1"}, {"kind", "Widget"},
            {"metadata", {{"name", "w1"}}}, {"spec", {{"size", 1}}},
            {"status", {{"phase", "ignored-on-create"}}}};
  Result<Json> created = client_->CreateObject(kWidgets, ns(), w);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_FALSE(created->contains("status") && (*created)["status"].contains("phase"));
  EXPECT_EQ((*created)["metadata"]["generation"], 1);

  Json with_status = *created;
  with_status["status"] = {{"phase", "Ready"}, {"observedGeneration", 1}};
  with_status["spec"]["size"] = 99;  // ignored by the status endpoint
  Result<Json> st = client_->UpdateStatus(kWidgets, ns(), with_status);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ((*st)["status"]["phase"], "Ready");
  EXPECT_EQ((*st)["spec"]["size"], 1);
  EXPECT_EQ((*st)["metadata"]["generation"], 1);  // status writes do not bump generation

  // A status change through the main endpoint is ignored; a spec change bumps generation.
  Result<Json> main = client_->MergePatch(kWidgets, ns(), "w1", {{"spec", {{"size", 2}}}, {"status", {{"phase", "Hacked"}}}});
  ASSERT_TRUE(main.ok());
  EXPECT_EQ((*main)["status"]["phase"], "Ready");
  EXPECT_EQ((*main)["metadata"]["generation"], 2);

  Result<Json> sp = client_->MergePatch(kWidgets, ns(), "w1", {{"status", {{"phase", "Patched"}}}}, "status");
  ASSERT_TRUE(sp.ok());
  EXPECT_EQ((*sp)["status"]["phase"], "Patched");

  Result<Json> applied = client_->Apply(kWidgets, ns(),
      {{"apiVersion", "test.pgshift.dev/v1"}, {"kind", "Widget"}, {"metadata", {{"name", "w1"}}},
       {"status", {{"phase", "Applied"}, {"observedGeneration", 2}}}},
      {"pgshift-status", true}, "status");
  ASSERT_TRUE(applied.ok()) << applied.status().ToString();
  EXPECT_EQ((*applied)["status"]["observedGeneration"], 2);

  // Conflicting status writes: optimistic concurrency on the subresource too.
  Json stale = *st;
  stale["status"]["phase"] = "Stale";
  EXPECT_TRUE(IsConflict(client_->UpdateStatus(kWidgets, ns(), stale).status()));
  Result<Json> modified = client_->Modify(kWidgets, ns(), "w1", [](Json& o) {
    o["status"]["phase"] = "Modified";
    return Status::Ok();
  }, "status");
  ASSERT_TRUE(modified.ok()) << modified.status().ToString();
  EXPECT_EQ((*modified)["status"]["phase"], "Modified");
}

TEST_F(K8sTest, StatusWriterLosesNoWriteAndRefusesAnOlderLeader) {
  EnsureWidgetCrd(client_.get());
  Json w = {{"apiVersion", "test.pgshift.dev/v1"}, {"kind", "Widget"},
            {"metadata", {{"name", "w2"}}}, {"spec", {{"size", 1}}}};
  ASSERT_TRUE(client_->CreateObject(kWidgets, ns(), w).ok());
  std::atomic<bool> holds{true};
  std::atomic<int64_t> epoch{3};
  StatusWriter writer(client_.get(), kWidgets,
                      {[&] { return holds.load(); }, [&] { return epoch.load(); }});

  // Four threads write through the writer while an outside party (kubectl, another
  // controller) writes the same status directly: every write of both lands.
  constexpr int kThreads = 4, kEach = 8;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 1; i <= kEach; ++i) {
        if (!writer.Write(ns(), "w2", {{"counts", {{"t" + std::to_string(t), i}}}}).ok()) ++failures;
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 1; i <= kEach; ++i) {
      Result<Json> r = client_->Modify(kWidgets, ns(), "w2", [i](Json& o) {
        o["status"]["counts"]["outside"] = i;
        return Status::Ok();
      }, "status", 50);
      if (!r.ok()) ++failures;
    }
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  Json st = (*client_->Get(kWidgets, ns(), "w2"))["status"];
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(st["counts"]["t" + std::to_string(t)], kEach) << st;
  EXPECT_EQ(st["counts"]["outside"], kEach) << st;
  EXPECT_EQ(st["leaderEpoch"], 3);
  EXPECT_GT(writer.conflicts(), 0) << "the outside writer never raced the writer";

  // A write that changes nothing costs no request.
  const int64_t puts = writer.puts();
  ASSERT_TRUE(writer.Write(ns(), "w2", {{"phase", "Same"}}).ok());
  ASSERT_TRUE(writer.Write(ns(), "w2", {{"phase", "Same"}}).ok());
  EXPECT_EQ(writer.puts(), puts + 1);

  // A newer leader writes; the older one's next write is refused and changes nothing.
  StatusWriter newer(client_.get(), kWidgets, {[] { return true; }, [] { return int64_t{4}; }});
  ASSERT_TRUE(newer.Write(ns(), "w2", {{"phase", "NewLeader"}}).ok());
  Status stale = writer.Write(ns(), "w2", {{"phase", "StaleLeader"}});
  EXPECT_EQ(stale.code(), StatusCode::kAborted) << stale.ToString();
  EXPECT_NE(stale.message().find("newer leader (epoch 4)"), std::string::npos) << stale.message();
  st = (*client_->Get(kWidgets, ns(), "w2"))["status"];
  EXPECT_EQ(st["phase"], "NewLeader");
  EXPECT_EQ(st["leaderEpoch"], 4);

  // A writer that lost its Lease writes nothing, whatever the epochs say.
  epoch = 5;
  holds = false;
  EXPECT_EQ(writer.Write(ns(), "w2", {{"phase", "NoLease"}}).code(), StatusCode::kAborted);
  holds = true;
  ASSERT_TRUE(writer.Write(ns(), "w2", {{"phase", "Epoch5"}}).ok());
  EXPECT_EQ((*client_->Get(kWidgets, ns(), "w2"))["status"]["phase"], "Epoch5");
  // Gone: NotFound, not a retry loop.
  ASSERT_TRUE(client_->Delete(kWidgets, ns(), "w2").ok());
  EXPECT_TRUE(IsNotFound(writer.Write(ns(), "w2", {{"phase", "Gone"}})));
}

// --- watches -----------------------------------------------------------------------------

TEST_F(K8sTest, WatchDeliversEventsAndBookmarks) {
  const Resource& cm = resources::kConfigMaps;
  Result<ObjectList> list = client_->List(cm, ns());
  ASSERT_TRUE(list.ok());
  std::thread writer([&] {
    std::this_thread::sleep_for(300ms);
    (void)client_->CreateObject(cm, ns(), ConfigMap("w", {{"a", "1"}}));
    (void)client_->MergePatch(cm, ns(), "w", {{"data", {{"a", "2"}}}});
    (void)client_->Delete(cm, ns(), "w");
  });
  std::vector<std::string> types;  // without bookmarks
  int bookmarks = 0;
  std::string last_rv;
  WatchOptions wo;
  wo.resource_version = list->resource_version;
  wo.timeout = 4s;  // the watch cache sends a bookmark shortly before the timeout
  wo.field_selector = "metadata.name=w";  // not kube-root-ca.crt, which the controllers add
  Status s = client_->WatchOnce(cm, ns(), wo, [&](const WatchEvent& ev) {
    if (ev.type == "BOOKMARK") {
      ++bookmarks;
      EXPECT_FALSE(ResourceVersionOf(ev.object).empty());
    } else {
      types.push_back(ev.type);
    }
    last_rv = ResourceVersionOf(ev.object);
    return true;
  });
  writer.join();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(types, (std::vector<std::string>{"ADDED", "MODIFIED", "DELETED"}));
  EXPECT_GE(bookmarks, 1) << "no bookmark in a 4 s watch";
  EXPECT_FALSE(last_rv.empty());
}

TEST_F(K8sTest, InformerFeedsRateLimitedWorkQueue) {
  const Resource& cm = resources::kConfigMaps;
  ASSERT_TRUE(client_->CreateObject(cm, ns(), ConfigMap("pre", {{"x", "1"}})).ok());
  Informer inf(client_.get(), {.resource = cm, .ns = ns()});
  WorkQueue queue(10ms, 1s);
  inf.AddHandler(EnqueueHandler(&queue));
  std::mutex mu;
  std::vector<std::string> log;
  auto note = [&](const std::string& what, const Json& o) {
    if (KeyOf(o) == ns() + "/kube-root-ca.crt") return;  // published by the controller manager
    std::lock_guard l(mu);
    log.push_back(what + " " + KeyOf(o));
  };
  inf.AddHandler({[&](const Json& o) { note("add", o); },
                  [&](const Json&, const Json& o) { note("update", o); },
                  [&](const Json& o) { note("delete", o); }});
  inf.Start();
  ASSERT_TRUE(inf.WaitForSync(10s));
  EXPECT_TRUE(inf.Get(ns() + "/pre").has_value());

  // A reconciler that fails twice for "flaky" then succeeds; "pre" succeeds at once.
  std::map<std::string, int> attempts;
  std::thread worker([&] {
    while (auto key = queue.Get()) {
      int n = ++attempts[*key];
      if (*key == ns() + "/flaky" && n < 3) {
        queue.AddRateLimited(*key);
      } else {
        queue.Forget(*key);
      }
      queue.Done(*key);
    }
  });
  ASSERT_TRUE(client_->CreateObject(cm, ns(), ConfigMap("flaky", {{"x", "1"}})).ok());
  ASSERT_TRUE(Eventually([&] { return inf.Get(ns() + "/flaky").has_value(); }, 10s));
  ASSERT_TRUE(client_->MergePatch(cm, ns(), "pre", {{"data", {{"x", "2"}}}}).ok());
  ASSERT_TRUE(client_->Delete(cm, ns(), "pre").ok());
  ASSERT_TRUE(Eventually([&] { return !inf.Get(ns() + "/pre").has_value(); }, 10s));
  std::this_thread::sleep_for(300ms);
  queue.ShutDown();
  worker.join();
  inf.Stop();
  EXPECT_EQ(attempts[ns() + "/flaky"], 3);
  EXPECT_EQ(queue.NumRequeues(ns() + "/flaky"), 0);
  std::lock_guard l(mu);
  std::vector<std::string> want = {"add " + ns() + "/pre", "add " + ns() + "/flaky",
                                   "update " + ns() + "/pre", "delete " + ns() + "/pre"};
  EXPECT_EQ(log, want);
}

// Runs last among the watch tests: it restarts the apiserver.
TEST_F(K8sTest, InformerSurvivesApiserverRestart) {
  const Resource& cm = resources::kConfigMaps;
  ASSERT_TRUE(client_->CreateObject(cm, ns(), ConfigMap("before", {{"x", "1"}})).ok());
  Informer inf(client_.get(), {.resource = cm, .ns = ns(), .backoff_initial = 100ms, .backoff_max = 1s});
  std::atomic<int> deletes{0};
  inf.AddHandler({nullptr, nullptr, [&](const Json&) { ++deletes; }});
  inf.Start();
  ASSERT_TRUE(inf.WaitForSync(10s));
  Ctl("restart-apiserver");
  // Both changes happen after the restart: only a resumed (or relisted) watch sees them.
  ASSERT_TRUE(client_->CreateObject(cm, ns(), ConfigMap("after", {{"x", "1"}})).ok());
  ASSERT_TRUE(client_->Delete(cm, ns(), "before").ok());
  EXPECT_TRUE(Eventually([&] {
    return inf.Get(ns() + "/after").has_value() && !inf.Get(ns() + "/before").has_value();
  }, 30s));
  EXPECT_EQ(deletes.load(), 1);
  Reflector::Stats st = inf.stats();
  EXPECT_GE(st.reconnects + st.expired, 1) << "the watch never noticed the restart";
  EXPECT_GE(st.watches, 2);
  inf.Stop();
}

TEST_F(K8sTest, ReflectorRelistsAfterCompactionGone) {
  // podtemplates have no watch cache in the test apiserver: watches read etcd directly, and
  // a compacted resourceVersion is a real 410 Gone.
  const Resource& pt = resources::kPodTemplates;
  auto tmpl = [](const std::string& name, const std::string& image) {
    return Json{{"apiVersion", "v1"}, {"kind", "PodTemplate"}, {"metadata", {{"name", name}}},
                {"template", {{"spec", {{"containers", {{{"name", "c"}, {"image", image}}}}}}}}};
  };
  ASSERT_TRUE(client_->CreateObject(pt, ns(), tmpl("keep", "a:1")).ok());
  ASSERT_TRUE(client_->CreateObject(pt, ns(), tmpl("drop", "a:1")).ok());

  // A consumer that kept its state at `old_rv` and was away while things changed.
  std::map<std::string, std::string> state;
  std::mutex mu;
  Result<ObjectList> initial = client_->List(pt, ns());
  ASSERT_TRUE(initial.ok());
  for (const Json& o : initial->items) state[KeyOf(o)] = ResourceVersionOf(o);
  std::string old_rv = initial->resource_version;
  ASSERT_TRUE(client_->MergePatch(pt, ns(), "keep", {{"metadata", {{"labels", {{"v", "2"}}}}}}).ok());
  ASSERT_TRUE(client_->Delete(pt, ns(), "drop").ok());
  ASSERT_TRUE(client_->CreateObject(pt, ns(), tmpl("new", "a:2")).ok());
  Ctl("compact");

  // Direct proof that the old version is gone.
  Status direct = client_->WatchOnce(pt, ns(), {.resource_version = old_rv, .timeout = 5s}, [](const WatchEvent& ev) {
    return ev.type != "ERROR";
  });
  bool gone_seen = IsGone(direct);
  if (!gone_seen) {
    // etcd reports compaction as an ERROR event inside a 200 stream.
    Json err;
    (void)client_->WatchOnce(pt, ns(), {.resource_version = old_rv, .timeout = 5s}, [&](const WatchEvent& ev) {
      if (ev.type == "ERROR") err = ev.object;
      return ev.type != "ERROR";
    });
    gone_seen = err.is_object() && err.value("code", 0) == 410;
  }
  EXPECT_TRUE(gone_seen);

  Reflector::Options opts{.resource = pt, .ns = ns()};
  opts.resume_from = old_rv;
  Reflector r(client_.get(), opts, {
      [&](std::vector<Json> items, const std::string&) {
        std::lock_guard l(mu);
        state.clear();
        for (const Json& o : items) state[KeyOf(o)] = ResourceVersionOf(o);
      },
      [&](const WatchEvent& ev) {
        std::lock_guard l(mu);
        if (ev.type == "DELETED") state.erase(KeyOf(ev.object));
        else state[KeyOf(ev.object)] = ResourceVersionOf(ev.object);
      }});
  r.Start();
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard l(mu);
    return state.size() == 2 && state.count(ns() + "/keep") && state.count(ns() + "/new");
  }, 20s));
  // And it keeps watching from the relisted version.
  ASSERT_TRUE(client_->CreateObject(pt, ns(), tmpl("later", "a:3")).ok());
  EXPECT_TRUE(Eventually([&] { std::lock_guard l(mu); return state.count(ns() + "/later") == 1; }, 20s));
  r.Stop();
  EXPECT_GE(r.stats().expired, 1);
  EXPECT_GE(r.stats().lists, 1);
}

// --- events ------------------------------------------------------------------------------

TEST_F(K8sTest, EventsAreRecordedAndAggregated) {
  Result<Json> obj = client_->CreateObject(resources::kConfigMaps, ns(), ConfigMap("subject", Json::object()));
  ASSERT_TRUE(obj.ok());
  EventRecorder rec(client_.get(), "pgshift-test", "instance-1");
  ASSERT_TRUE(rec.Record(*obj, EventType::kNormal, "Started", "phase Preflight").ok());
  Result<Json> second = rec.Record(*obj, EventType::kNormal, "Started", "phase Preflight");
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ((*second)["count"], 2);
  ASSERT_TRUE(rec.Record(*obj, EventType::kWarning, "Lagging", "lag 10 MB").ok());
  ListOptions lo;
  lo.field_selector = "involvedObject.name=subject";
  Result<ObjectList> events = client_->List(resources::kEvents, ns(), lo);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->items.size(), 2u);
  std::map<std::string, Json> by_reason;
  for (const Json& e : events->items) by_reason[e["reason"]] = e;
  EXPECT_EQ(by_reason["Started"]["count"], 2);
  EXPECT_EQ(by_reason["Started"]["involvedObject"]["uid"], (*obj)["metadata"]["uid"]);
  EXPECT_EQ(by_reason["Lagging"]["type"], "Warning");
  EXPECT_EQ(by_reason["Lagging"]["source"]["component"], "pgshift-test");
}

// --- leader election ---------------------------------------------------------------------

// Starts a candidate for Lease `lease` (knowing `min_epoch`), waits until it leads, stops it
// (releasing the Lease) and returns the epoch it led with.
int64_t EpochOfNextLeader(Client* client, const std::string& ns, const std::string& lease,
                          const std::string& identity, int64_t min_epoch = -1) {
  LeaderElectionConfig lc{ns, lease, identity, 3s, 2s, 200ms, true};
  lc.min_epoch = min_epoch;
  auto e = LeaderElector::Create(client, lc, LeaderCallbacks{});
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  if (!e.ok()) return -1;
  (*e)->Start();
  EXPECT_TRUE(Eventually([&] { return (*e)->IsLeader(); }, 10s)) << identity << " never led";
  const int64_t epoch = (*e)->Epoch();
  (*e)->Stop();
  return epoch;
}

TEST_F(K8sTest, LeaderLosesLeaseAndStopsWorking) {
  std::atomic<bool> working{false}, stopped{false};
  std::atomic<int> work_ended{0};
  LeaderElectionConfig lc{ns(), "lock", "candidate-a", 3s, 2s, 200ms, true};
  LeaderCallbacks cb;
  cb.on_started_leading = [&](std::stop_token st) {
    working = true;
    while (!st.stop_requested()) std::this_thread::sleep_for(10ms);
    working = false;
    ++work_ended;
  };
  cb.on_stopped_leading = [&] { stopped = true; };
  auto elector = LeaderElector::Create(client_.get(), lc, cb);
  ASSERT_TRUE(elector.ok()) << elector.status().ToString();
  (*elector)->Start();
  ASSERT_TRUE(Eventually([&] { return working.load(); }, 10s));
  EXPECT_TRUE((*elector)->IsLeader());
  EXPECT_EQ((*elector)->CurrentLeader(), "candidate-a");
  const int64_t first_epoch = (*elector)->Epoch();

  // Another party takes the lease by force (as after a partition): the old leader must
  // notice at its next renewal and stop its work.
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(client_->Modify(resources::kLeases, ns(), "lock", [](Json& l) {
    l["spec"]["holderIdentity"] = "usurper";
    l["spec"]["renewTime"] = "2030-01-01T00:00:00.000000Z";
    return Status::Ok();
  }).ok());
  ASSERT_TRUE(Eventually([&] { return stopped.load(); }, 5s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);  // renew deadline
  EXPECT_FALSE(working.load());
  EXPECT_EQ(work_ended.load(), 1);
  EXPECT_FALSE((*elector)->IsLeader());
  EXPECT_EQ((*elector)->CurrentLeader(), "usurper");
  (*elector)->Stop();
  // It did not take the lease back: the usurper's lease has not expired for it... until it
  // does, which needs a fresh candidate to observe for lease_duration.
  EXPECT_EQ((*client_->Get(resources::kLeases, ns(), "lock"))["spec"]["holderIdentity"], "usurper");

  // The epoch (leaseTransitions) is a fencing token: a later leader's is greater, also when
  // it takes a Lease that was released rather than taken over.
  ASSERT_TRUE(client_->Modify(resources::kLeases, ns(), "lock", [](Json& l) {
    l["spec"]["holderIdentity"] = "";  // as Release() leaves it
    return Status::Ok();
  }).ok());
  const int64_t next_epoch = EpochOfNextLeader(client_.get(), ns(), "lock", "candidate-b");
  EXPECT_GT(next_epoch, first_epoch);
  EXPECT_EQ(next_epoch,
            (*client_->Get(resources::kLeases, ns(), "lock"))["spec"]["leaseTransitions"]);
}

TEST_F(K8sTest, EpochsStayAboveTheOnesAlreadyWrittenWhenTheLeaseIsMadeAgain) {
  // A Lease made anew (deleted by hand) must not hand out epochs that resources already hold:
  // every status write would then be refused as coming from an older leader.
  EXPECT_EQ(EpochOfNextLeader(client_.get(), ns(), "fresh", "candidate-a", 41), 42);
  // Taking an existing Lease: one above both its count and what is known to be written.
  EXPECT_EQ(EpochOfNextLeader(client_.get(), ns(), "fresh", "candidate-b", 50), 51);
  EXPECT_EQ(EpochOfNextLeader(client_.get(), ns(), "fresh", "candidate-c"), 52);
}

// A child process whose stdout lines are collected.
class Child {
 public:
  explicit Child(std::vector<std::string> argv) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      std::string buf;
      char chunk[512];
      ssize_t n;
      while ((n = read(fd, chunk, sizeof chunk)) > 0) {
        buf.append(chunk, static_cast<size_t>(n));
        size_t nl;
        while ((nl = buf.find('\n')) != std::string::npos) {
          std::lock_guard l(mu_);
          lines_.push_back(buf.substr(0, nl));
          buf.erase(0, nl + 1);
        }
      }
      close(fd);
    });
  }
  ~Child() {
    Kill(SIGKILL);
    if (reader_.joinable()) reader_.join();
  }
  void Kill(int sig) {
    if (pid_ > 0) {
      kill(pid_, sig);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  bool Saw(const std::string& line) {
    std::lock_guard l(mu_);
    return std::find(lines_.begin(), lines_.end(), line) != lines_.end();
  }
  size_t Count(const std::string& line) {
    std::lock_guard l(mu_);
    return static_cast<size_t>(std::count(lines_.begin(), lines_.end(), line));
  }

 private:
  pid_t pid_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::vector<std::string> lines_;
};

TEST_F(K8sTest, KilledLeaderProcessIsReplacedWithinTheLeaseTime) {
  std::string helper = PGSHIFT_LEADER_HELPER;
  std::string kubeconfig = K8sDir() + "/kubeconfig";
  Child a({helper, kubeconfig, ns(), "lock", "proc-a"});
  ASSERT_TRUE(Eventually([&] { return a.Saw("LEADING proc-a"); }, 10s));
  Child b({helper, kubeconfig, ns(), "lock", "proc-b"});
  std::this_thread::sleep_for(1500ms);
  EXPECT_FALSE(b.Saw("LEADING proc-b")) << "two leaders at once";
  EXPECT_TRUE(a.Saw("WORKING proc-a"));

  auto killed_at = std::chrono::steady_clock::now();
  a.Kill(SIGKILL);  // no release: b must wait for the lease to expire
  ASSERT_TRUE(Eventually([&] { return b.Saw("LEADING proc-b"); }, 10s));
  auto handover = std::chrono::steady_clock::now() - killed_at;
  // Lease 3 s, retry 0.3 s: b takes over once 3 s passed without a renewal.
  EXPECT_LT(handover, 3s + 1500ms);
  EXPECT_GT(handover, 1s);
  EXPECT_TRUE(Eventually([&] { return b.Saw("WORKING proc-b"); }, 2s));
  Result<Json> lease = client_->Get(resources::kLeases, ns(), "lock");
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ((*lease)["spec"]["holderIdentity"], "proc-b");
  EXPECT_EQ((*lease)["spec"]["leaseTransitions"], 1);
  printf("leader handover after kill -9: %lld ms\n",
         static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(handover).count()));

  // A graceful stop releases the lease: a new candidate leads at once.
  b.Kill(SIGTERM);
  auto t0 = std::chrono::steady_clock::now();
  Child c({helper, kubeconfig, ns(), "lock", "proc-c"});
  ASSERT_TRUE(Eventually([&] { return c.Saw("LEADING proc-c"); }, 10s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

// --- the fake kubelet: real PostgreSQL pods through the real StatefulSet controller -------

std::string Psql() {
  const char* env = std::getenv("PGSHIFT_PSQL");
  if (env != nullptr && *env != '\0') return env;
  std::string v17 = std::string(PGSHIFT_SOURCE_DIR) + "/.cache/pgclient/bin/psql";
  if (access(v17.c_str(), X_OK) == 0) return v17;
  return "/usr/bin/psql";
}

// Where the service proxy serves ns/name/port, from services.json; "" if not (yet) there.
std::string ServiceAddress(const std::string& ns, const std::string& name, int port) {
  std::ifstream in(K8sDir() + "/services.json");
  Json j = Json::parse(in, nullptr, false);
  if (!j.is_object()) return "";
  return j.value(ns + "/" + name + "/" + std::to_string(port), "");
}

// Runs SQL through the Service; returns psql's output, or "ERROR: ..." when it failed.
std::string Sql(const std::string& ns, const std::string& service, const std::string& sql) {
  std::string addr = ServiceAddress(ns, service, 5432);
  if (addr.empty()) return "ERROR: service not in services.json";
  std::string host = addr.substr(0, addr.rfind(':'));
  std::string port = addr.substr(addr.rfind(':') + 1);
  int rc = 0;
  std::string out = Shell("PGPASSWORD=Secret-Pw PGCONNECT_TIMEOUT=5 " + Psql() + " -X -At \"host=" +
                          host + " port=" + port + " user=postgres dbname=app\" -c \"" + sql +
                          "\" 2>&1", &rc);
  return rc == 0 ? out : "ERROR: " + out;
}

Json PostgresStatefulSet(const std::string& name, const std::string& image) {
  return Json::parse(R"({
    "apiVersion": "apps/v1", "kind": "StatefulSet",
    "metadata": {"name": ")" + name + R"("},
    "spec": {
      "serviceName": ")" + name + R"(", "replicas": 1,
      "selector": {"matchLabels": {"app": ")" + name + R"("}},
      "template": {
        "metadata": {"labels": {"app": ")" + name + R"("}},
        "spec": {
          "terminationGracePeriodSeconds": 10,
          "containers": [{
            "name": "postgres", "image": ")" + image + R"(",
            "args": ["-c", "wal_level=logical", "-c", "max_wal_senders=10"],
            "env": [
              {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg-auth", "key": "password"}}},
              {"name": "POSTGRES_DB", "value": "app"},
              {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
            "ports": [{"name": "postgres", "containerPort": 5432}],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}]}},
      "volumeClaimTemplates": [{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})");
}

Json PostgresService(const std::string& name) {
  return {{"apiVersion", "v1"}, {"kind", "Service"}, {"metadata", {{"name", name}}},
          {"spec", {{"selector", {{"app", name}}},
                    {"ports", {{{"name", "postgres"}, {"port", 5432}, {"targetPort", "postgres"}}}}}}};
}

bool PodReady(Client* c, const std::string& ns, const std::string& name, std::string* uid = nullptr) {
  Result<Json> pod = c->Get(resources::kPods, ns, name);
  if (!pod.ok() || (*pod)["metadata"].contains("deletionTimestamp")) return false;
  if (uid != nullptr) *uid = (*pod)["metadata"].value("uid", "");
  if ((*pod)["status"].value("phase", "") != "Running") return false;
  for (const Json& cond : (*pod)["status"].value("conditions", Json::array())) {
    if (cond["type"] == "Ready") return cond["status"] == "True";
  }
  return false;
}

TEST_F(K8sTest, PostgresStatefulSetsRunThroughServicesAndKeepDataAcrossPodDeletion) {
  ApplyOptions apply{"pgshift-test", true};
  Json secret = {{"apiVersion", "v1"}, {"kind", "Secret"}, {"metadata", {{"name", "pg-auth"}}},
                 {"stringData", {{"password", "Secret-Pw"}}}};
  ASSERT_TRUE(client_->Apply(resources::kSecrets, ns(), secret, apply).ok());
  const std::map<std::string, std::string> images = {{"pg15", "postgres:15"}, {"pg17", "postgres:17.6-bookworm"}};
  for (const auto& [name, image] : images) {
    Result<Json> svc = client_->Apply(resources::kServices, ns(), PostgresService(name), apply);
    ASSERT_TRUE(svc.ok()) << svc.status().ToString();
    Result<Json> sts = client_->Apply(resources::kStatefulSets, ns(), PostgresStatefulSet(name, image), apply);
    ASSERT_TRUE(sts.ok()) << sts.status().ToString();
  }
  for (const auto& [name, image] : images) {
    ASSERT_TRUE(Eventually([&] { return PodReady(client_.get(), ns(), name + "-0"); }, 120s))
        << name << "-0 never became Ready; see .cache/k8s/logs/fakelet.log";
    // The StatefulSet controller saw it too.
    EXPECT_TRUE(Eventually([&] {
      Result<Json> sts = client_->Get(resources::kStatefulSets, ns(), name);
      return sts.ok() && (*sts)["status"].value("readyReplicas", 0) == 1;
    }, 30s));
    Result<Json> pvc = client_->Get(resources::kPersistentVolumeClaims, ns(), "data-" + name + "-0");
    ASSERT_TRUE(pvc.ok());
    EXPECT_EQ((*pvc)["status"]["phase"], "Bound");
  }
  // Through the Service proxy (EndpointSlices of the real controller): the right server.
  for (const auto& [name, image] : images) {
    std::string version;
    EXPECT_TRUE(Eventually([&] {
      version = Sql(ns(), name, "SELECT current_setting('server_version_num')");
      return version.rfind("ERROR", 0) != 0;
    }, 30s)) << version;
    EXPECT_EQ(version.substr(0, 2), name.substr(2)) << name << " answered " << version;
    EXPECT_EQ(Sql(ns(), name, "SHOW wal_level"), "logical");
  }
  ListOptions lo;
  lo.label_selector = "kubernetes.io/service-name=pg15";
  Result<ObjectList> slices = client_->List(resources::kEndpointSlices, ns(), lo);
  ASSERT_TRUE(slices.ok());
  ASSERT_EQ(slices->items.size(), 1u);
  ASSERT_EQ(slices->items[0]["endpoints"].size(), 1u);
  EXPECT_EQ(slices->items[0]["endpoints"][0]["conditions"]["ready"], true);

  // Data survives deleting the Pod: the controller recreates it on the same claim.
  ASSERT_EQ(Sql(ns(), "pg15", "CREATE TABLE kept(x int); INSERT INTO kept VALUES (42)"), "CREATE TABLE\nINSERT 0 1");
  std::string old_uid;
  ASSERT_TRUE(PodReady(client_.get(), ns(), "pg15-0", &old_uid));
  ASSERT_TRUE(client_->Delete(resources::kPods, ns(), "pg15-0").ok());
  std::string new_uid;
  ASSERT_TRUE(Eventually([&] {
    return PodReady(client_.get(), ns(), "pg15-0", &new_uid) && new_uid != old_uid;
  }, 120s)) << "pg15-0 was not recreated";
  std::string kept;
  EXPECT_TRUE(Eventually([&] {
    kept = Sql(ns(), "pg15", "SELECT x FROM kept");
    return kept == "42";
  }, 30s)) << kept;

  // Scale to zero: the server stops, the claim (and data) stay.
  ASSERT_TRUE(client_->MergePatch(resources::kStatefulSets, ns(), "pg17", {{"spec", {{"replicas", 0}}}}).ok());
  EXPECT_TRUE(Eventually([&] { return IsNotFound(client_->Get(resources::kPods, ns(), "pg17-0").status()); }, 60s));
  EXPECT_TRUE(Sql(ns(), "pg17", "SELECT 1").rfind("ERROR", 0) == 0);
  EXPECT_TRUE(client_->Get(resources::kPersistentVolumeClaims, ns(), "data-pg17-0").ok());
}

TEST_F(K8sTest, PodsOfOtherImagesFailClearly) {
  Json pod = {{"apiVersion", "v1"}, {"kind", "Pod"}, {"metadata", {{"name", "web"}}},
              {"spec", {{"restartPolicy", "Never"},
                        {"containers", {{{"name", "web"}, {"image", "nginx:1.25"}}}}}}};
  ASSERT_TRUE(client_->CreateObject(resources::kPods, ns(), pod).ok());
  Json status;
  EXPECT_TRUE(Eventually([&] {
    Result<Json> p = client_->Get(resources::kPods, ns(), "web");
    if (!p.ok()) return false;
    status = (*p)["status"];
    return status.value("phase", "") == "Failed";
  }, 30s)) << status.dump();
  EXPECT_EQ(status.value("reason", ""), "UnsupportedImage");
  EXPECT_NE(status.value("message", "").find("nginx:1.25"), std::string::npos);
  EXPECT_FALSE(status.contains("podIP"));
}

}  // namespace
}  // namespace pgshift::k8s
