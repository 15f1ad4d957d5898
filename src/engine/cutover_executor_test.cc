// The executor against a fake world: every (row, crash point, direction), and failures at
// every row, each followed by a recovery as a restarted process would run it. After every
// action the fake checks the invariants the real system must keep: never both servers open,
// no acknowledged write lost; at the end, clients are never held and the world is either fully
// on the new side or fully back.
#include "engine/cutover_executor.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace pgshift::engine {
namespace {

enum Where { kOld, kNew };

// The live system of one cutover, reduced to what the rows change.
struct World {
  bool forward = true;
  bool paused = false;
  bool old_fenced = false;
  bool new_fenced = true;  // fenced since ReadyForCutover (forward) or since the cutover (rollback)
  bool old_sub_enabled = true;
  Where router = kOld;         // the running router's view
  Where router_config = kOld;  // what it loads on its next reload
  bool router_down = false;    // Observe() can read the config only
  bool reverse_slot = false;
  bool reverse_sub = false;
  bool marker_applied = false;
  bool hook_holds = false;

  // Clients through the router write wherever it leads, when not held and not fenced.
  bool wrote_new = false;               // clients' writes reached the new side
  bool wrote_old_after_marker = false;  // ... or the old side after the marker was applied
  std::vector<std::string> violations;

  void Check(const std::string& at) {
    if (!old_fenced && !new_fenced) violations.push_back(at + ": both servers open");
    if (!paused && !router_down) {
      if (router == kNew && !new_fenced) wrote_new = true;
      if (router == kOld && !old_fenced && marker_applied) wrote_old_after_marker = true;
    }
  }
};

// Which calls fail: row name -> how many more times its act (or undo) fails.
struct Faults {
  std::map<std::string, int> act_fails;
  std::map<std::string, int> undo_fails;
  bool switch_half_done = false;  // the failing switch rewrote the config, not the live view
  bool observe_switch_fails = false;
  bool new_side_down = false;  // the new server stopped: its rows can be neither read nor undone
  std::string crash_at;        // fault point to "kill -9" at
};

Status Fail(std::map<std::string, int>& m, const std::string& row) {
  auto it = m.find(row);
  if (it == m.end() || it->second == 0) return Status::Ok();
  it->second--;
  return Status::Unavailable("injected failure of " + row);
}

Observation Mark(bool done) {
  return Observation{done ? Progress::kDone : Progress::kNotDone, false, ""};
}

// Every lambda captures only `w` and `f`, which outlive the table.
std::vector<CutoverRow> Table(World& w, Faults& f) {
  std::vector<CutoverRow> rows;
  auto add = [&rows](CutoverRow r) { rows.push_back(std::move(r)); };

  add({"prepare", false, false, false, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "prepare"));
         w.new_fenced = true;
         w.old_sub_enabled = true;
         w.marker_applied = false;
         if (w.forward) w.reverse_slot = true;
         w.Check("prepare");
         return Status::Ok();
       },
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.undo_fails, "prepare"));
         w.reverse_slot = false;
         return Status::Ok();
       },
       nullptr});
  CutoverRow pause{"pause",
                   true,
                   false,
                   false,
                   false,
                   false,
                   [&w, &f] {
                     PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "pause"));
                     w.paused = true;
                     return Status::Ok();
                   },
                   [&w, &f] {
                     PGSHIFT_RETURN_IF_ERROR(Fail(f.undo_fails, "pause"));
                     w.paused = false;
                     w.Check("undo pause");
                     return Status::Ok();
                   },
                   [&w, &f]() -> Result<Observation> { return Mark(w.paused); }};
  pause.release_when_stuck = true;
  add(pause);
  add({"fence", true, false, true, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "fence"));
         w.old_fenced = true;
         return Status::Ok();
       },
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.undo_fails, "fence"));
         // The real undo refuses to open the old side unless the new one is fenced.
         if (!w.new_fenced) return Status::FailedPrecondition("the new side is open");
         w.old_fenced = false;
         w.Check("undo fence");
         return Status::Ok();
       },
       [&w, &f]() -> Result<Observation> { return Mark(w.old_fenced); }});
  add({"catch-up", true, false, false, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "catch-up"));
         if (!w.old_sub_enabled) return Status::DeadlineExceeded("replication is stopped");
         w.marker_applied = true;
         return Status::Ok();
       },
       nullptr, nullptr});
  add({"consistent-point", true, false, false, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "consistent-point"));
         w.hook_holds = true;
         return Status::Ok();
       },
       [&w, &f] {
         w.hook_holds = false;
         return Status::Ok();
       },
       nullptr});
  add({"sequences", true, false, false, false, false,
       [&w, &f] { return Fail(f.act_fails, "sequences"); }, nullptr, nullptr});
  add({"replication", true, false, true, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "replication"));
         w.old_sub_enabled = false;
         return Status::Ok();
       },
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.undo_fails, "replication"));
         if (f.new_side_down) return Status::Unavailable("new side: connection refused");
         w.old_sub_enabled = true;
         return Status::Ok();
       },
       [&w, &f]() -> Result<Observation> {
         if (f.new_side_down) return Status::Unavailable("new side: connection refused");
         return Mark(!w.old_sub_enabled);
       }});
  auto switch_to = [&w, &f](Where to, const char* what) -> Status {
    w.router_config = to;
    if (Status s = Fail(what[0] == 's' ? f.act_fails : f.undo_fails, "switch"); !s.ok()) {
      if (!f.switch_half_done) w.router = to;  // e.g. the Service's selector moved, endpoints late
      w.Check(what);
      return s;
    }
    w.router = to;
    w.Check(what);
    return Status::Ok();
  };
  add({"switch", true, true, true, false, false, [switch_to] { return switch_to(kNew, "switch"); },
       [switch_to] { return switch_to(kOld, "undo switch"); },
       [&w, &f]() -> Result<Observation> {
         if (f.observe_switch_fails) return Status::Unavailable("router unreachable");
         Observation o;
         o.progress = w.router == kNew && w.router_config == kNew   ? Progress::kDone
                      : w.router == kOld && w.router_config == kOld ? Progress::kNotDone
                                                                    : Progress::kPartly;
         o.clients_may_be_on_new_side = w.router == kNew;
         return o;
       }});
  add({"open", true, false, true, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "open"));
         if (!w.old_fenced) return Status::FailedPrecondition("the old side is open");
         w.new_fenced = false;
         w.Check("open");
         return Status::Ok();
       },
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.undo_fails, "open"));
         w.new_fenced = true;
         return Status::Ok();
       },
       [&w, &f]() -> Result<Observation> { return Mark(!w.new_fenced); }});
  add({"resume", true, false, true, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "resume"));
         w.paused = false;
         w.Check("resume");
         return Status::Ok();
       },
       nullptr, [&w, &f]() -> Result<Observation> { return Mark(!w.paused); }});
  add({"reverse-subscription", false, false, true, false, false,
       [&w, &f] {
         PGSHIFT_RETURN_IF_ERROR(Fail(f.act_fails, "reverse-subscription"));
         if (w.forward) w.reverse_sub = true;
         return Status::Ok();
       },
       nullptr, [&w, &f]() -> Result<Observation> { return Mark(!w.forward || w.reverse_sub); }});
  add({"drain", false, false, false, true, false, [] { return Status::Ok(); }, nullptr, nullptr});
  return rows;
}

struct Harness {
  World world;
  Faults faults;
  CutoverJournal journal;  // as persisted
  // Only synced entries survive the crash: the operator, whose unsynced entries live in its
  // memory, or a machine crash.
  bool lose_unsynced = false;
  bool in_flight = false;
  std::vector<CutoverOutcome> commits;
  std::vector<std::string> points;  // every fault point reached, in order

  CutoverCallbacks Callbacks(bool with_crash) {
    CutoverCallbacks cb;
    cb.journal = [this](const CutoverJournal& j, bool durable) {
      if (durable || !lose_unsynced) journal = j;
      in_flight = true;
      return Status::Ok();
    };
    cb.commit = [this](CutoverOutcome o, const CutoverReport&) {
      commits.push_back(o);
      in_flight = false;
      journal = {};
      return Status::Ok();
    };
    cb.sleep = [](int64_t) {};
    cb.fault_point_for_test = [this, with_crash](const std::string& p) {
      points.push_back(p);
      return with_crash && p == faults.crash_at;
    };
    return cb;
  }

  // The first run (the command), then recoveries (the command run again) until it ends.
  CutoverReport RunToTheEnd() {
    auto rows = Table(world, faults);
    auto cb = Callbacks(true);
    Result<CutoverReport> r = RunCutover(rows, cb);
    for (int run = 0; run < 5; ++run) {
      if (r.ok() && r->outcome != CutoverOutcome::kStuck) return *r;
      // Killed, or stuck: a new process recovers from the journal, with no more crashes and,
      // after the first try, the faults cleared (the server came back).
      EXPECT_TRUE(in_flight) << "no journal to recover from";
      if (run > 0) faults = Faults{};
      auto cb2 = Callbacks(false);
      r = RecoverCutover(rows, journal, cb2);
    }
    ADD_FAILURE() << "never ended";
    return CutoverReport{};
  }

  void ExpectWhole(const CutoverReport& rep, const std::string& what) {
    SCOPED_TRACE(what);
    World& w = world;
    EXPECT_TRUE(w.violations.empty()) << w.violations.front();
    EXPECT_FALSE(w.paused) << "clients left held";
    EXPECT_FALSE(in_flight);
    if (rep.outcome == CutoverOutcome::kCompleted) {
      EXPECT_EQ(w.router, kNew);
      EXPECT_EQ(w.router_config, kNew);
      EXPECT_TRUE(w.old_fenced);
      EXPECT_FALSE(w.new_fenced);
      EXPECT_FALSE(w.old_sub_enabled);
      EXPECT_TRUE(w.marker_applied);
      EXPECT_EQ(w.reverse_sub, w.forward);
      EXPECT_FALSE(w.wrote_old_after_marker) << "a write on the old side after the marker";
    } else {
      ASSERT_EQ(rep.outcome, CutoverOutcome::kUndone);
      EXPECT_EQ(w.router, kOld);
      EXPECT_EQ(w.router_config, kOld) << "the config would switch at the next reload";
      EXPECT_FALSE(w.old_fenced);
      EXPECT_TRUE(w.new_fenced);
      EXPECT_TRUE(w.old_sub_enabled);
      EXPECT_FALSE(w.reverse_slot);
      EXPECT_FALSE(w.hook_holds);
      EXPECT_FALSE(w.wrote_new) << "clients wrote to the new side, then it was undone";
    }
  }
};

const std::vector<std::string> kRows = {
    "prepare",     "pause",  "fence", "catch-up", "consistent-point",    "sequences",
    "replication", "switch", "open",  "resume",   "reverse-subscription"};

std::vector<std::string> AllPoints() {
  std::vector<std::string> out;
  for (const auto& r : kRows) {
    out.push_back("before-" + r);
    out.push_back("after-" + r);
    out.push_back("undo-" + r);
  }
  return out;
}

TEST(CutoverExecutor, CleanRunCompletesInOrderAndJournalsEachRowFirst) {
  for (bool forward : {true, false}) {
    Harness h;
    h.world.forward = forward;
    auto rows = Table(h.world, h.faults);
    std::vector<int> journaled;
    std::vector<bool> durables;
    auto cb = h.Callbacks(false);
    auto inner = cb.journal;
    cb.journal = [&](const CutoverJournal& j, bool durable) {
      journaled.push_back(j.row);
      durables.push_back(durable);
      return inner(j, durable);
    };
    auto r = RunCutover(rows, cb);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->outcome, CutoverOutcome::kCompleted);
    // prepare; before the pause, the switch's entry (synced) covering every in-pause row up to
    // it; then open and resume unsynced, and the row after the pause synced. Nothing synced is
    // written once the pause started.
    EXPECT_EQ(journaled, (std::vector<int>{0, 7, 8, 9, 10}));
    EXPECT_EQ(durables, (std::vector<bool>{true, true, false, false, true}));
    h.ExpectWhole(*r, forward ? "forward" : "rollback");
    EXPECT_EQ(r->rows_ms.size(), kRows.size() + 1);  // and drain, after the commit
  }
}

// kill -9 at every fault point of every row, in both directions, then run again; once with
// every journal entry kept, once with only the synced ones.
TEST(CutoverExecutor, CrashAtEveryPointThenRecoveryEndsWhole) {
  for (bool forward : {true, false}) {
    for (bool lose_unsynced : {false, true}) {
      for (const auto& point : AllPoints()) {
        // The undo points are only reached when an attempt fails; make one fail after the point
        // of no return's neighbours have acted, so that every undo runs.
        for (const char* failing : {"", "open", "switch", "replication", "fence"}) {
          Harness h;
          h.world.forward = forward;
          h.lose_unsynced = lose_unsynced;
          h.faults.crash_at = point;
          if (*failing) h.faults.act_fails[failing] = 1;
          CutoverReport rep = h.RunToTheEnd();
          h.ExpectWhole(rep, std::string(forward ? "forward " : "rollback ") + point + " failing " +
                                 failing + (lose_unsynced ? " synced only" : ""));
          // Before the switch a crash rolls back, after it forward.
          const bool crashed = std::find(h.points.begin(), h.points.end(), point) != h.points.end();
          if (crashed && !*failing && point.rfind("undo-", 0) != 0) {
            const bool past = point == "after-switch" || point.find("open") != std::string::npos ||
                              point.find("resume") != std::string::npos ||
                              point.find("reverse-subscription") != std::string::npos;
            EXPECT_EQ(rep.outcome, past ? CutoverOutcome::kCompleted : CutoverOutcome::kUndone)
                << point;
          }
        }
      }
    }
  }
}

TEST(CutoverExecutor, AFailureAtEachRowBeforeTheSwitchIsUndoneAfterItFinished) {
  for (bool forward : {true, false}) {
    for (size_t i = 0; i < kRows.size(); ++i) {
      Harness h;
      h.world.forward = forward;
      h.faults.act_fails[kRows[i]] = 1;
      CutoverReport rep = h.RunToTheEnd();
      h.ExpectWhole(rep, kRows[i]);
      const bool before_switch = i < 7;
      EXPECT_EQ(rep.outcome, before_switch ? CutoverOutcome::kUndone : CutoverOutcome::kCompleted)
          << kRows[i];
      if (!before_switch) {
        EXPECT_EQ(rep.failed_row, kRows[i]);
      }
    }
  }
}

// PgBouncer: the ini was rewritten, RELOAD failed. The live view still leads to the old side,
// so the attempt is undone, and the undo puts the ini back too.
TEST(CutoverExecutor, HalfDoneSwitchThatClientsCannotSeeIsUndoneIncludingTheConfig) {
  Harness h;
  h.faults.act_fails["switch"] = 1;
  h.faults.switch_half_done = true;
  CutoverReport rep = h.RunToTheEnd();
  EXPECT_EQ(rep.outcome, CutoverOutcome::kUndone);
  h.ExpectWhole(rep, "reload failed");
}

// A Service whose selector moved but whose endpoints never followed in time: clients may reach
// the new side, so the only way is forward.
TEST(CutoverExecutor, HalfDoneSwitchThatClientsMaySeeRollsForward) {
  Harness h;
  h.faults.act_fails["switch"] = 1;
  CutoverReport rep = h.RunToTheEnd();
  EXPECT_EQ(rep.outcome, CutoverOutcome::kCompleted);
  h.ExpectWhole(rep, "endpoints late");
}

// The router cannot be read at the switch: no guess. Both servers stay fenced, clients are
// released (to errors), and the next run, once the router answers, decides.
TEST(CutoverExecutor, UnknownRouterAtTheSwitchStopsFencedAndReleasesClients) {
  Harness h;
  h.faults.crash_at = "after-switch";
  auto rows = Table(h.world, h.faults);
  auto cb = h.Callbacks(true);
  auto first = RunCutover(rows, cb);
  ASSERT_FALSE(first.ok());  // "killed"
  // Killed after the switch acted: recovery reads the router; make it unreadable, and crash
  // the journal back to the switch row (as if killed inside it).
  h.journal.row = 7;
  h.faults.observe_switch_fails = true;
  auto cb2 = h.Callbacks(false);
  auto r = RecoverCutover(rows, h.journal, cb2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kStuck);
  EXPECT_TRUE(h.world.old_fenced);
  EXPECT_TRUE(h.world.new_fenced);
  EXPECT_FALSE(h.world.paused);
  EXPECT_TRUE(h.in_flight);
  h.faults.observe_switch_fails = false;
  r = RecoverCutover(rows, h.journal, cb2);
  ASSERT_TRUE(r.ok());
  h.ExpectWhole(*r, "router back");
  EXPECT_EQ(r->outcome, CutoverOutcome::kCompleted);
}

// The journal names its row: a process whose table orders the rows differently (another
// version; a router that switches early) recovers from the row of that name, not the index.
// Here killed after the switch with its clients on the new side: recovering by the index of
// an earlier row would roll back the writes they made there; by the name it goes forward.
TEST(CutoverExecutor, RecoveryFindsTheJournalsRowByName) {
  Harness h;
  h.lose_unsynced = true;  // the operator: the switch's entry is the last one kept
  h.faults.crash_at = "after-resume";
  auto rows = Table(h.world, h.faults);
  auto cb = h.Callbacks(true);
  ASSERT_FALSE(RunCutover(rows, cb).ok());  // "killed"
  h.faults = Faults{};
  ASSERT_EQ(h.journal.row_name, "switch");
  h.journal.row = 3;  // another table's index of the same row
  auto r = RecoverCutover(rows, h.journal, cb);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kCompleted);
  h.ExpectWhole(*r, "by name");
  // No name (an older state file): the index decides, here a row before the switch.
  Harness old;
  old.faults.crash_at = "after-catch-up";
  auto rows2 = Table(old.world, old.faults);
  auto cb2 = old.Callbacks(true);
  ASSERT_FALSE(RunCutover(rows2, cb2).ok());
  old.faults = Faults{};
  old.journal.row_name.clear();
  old.journal.row = 3;
  r = RecoverCutover(rows2, old.journal, cb2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kUndone);
  old.ExpectWhole(*r, "by index");
}

// An undo that keeps failing (the old side is down) leaves the outcome stuck and the journal in
// place; the run after it finishes the undo.
TEST(CutoverExecutor, AnUndoThatFailsIsFinishedByTheNextRun) {
  Harness h;
  h.faults.act_fails["sequences"] = 1;
  h.faults.undo_fails["fence"] = 10;
  auto rows = Table(h.world, h.faults);
  auto cb = h.Callbacks(false);
  auto r = RunCutover(rows, cb);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kStuck);
  EXPECT_FALSE(h.world.paused) << "the resume must not wait for the fence";
  EXPECT_TRUE(h.in_flight);
  h.faults = Faults{};
  r = RecoverCutover(rows, h.journal, cb);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kUndone);
  h.ExpectWhole(*r, "undo finished");
}

// The new server stops inside the pause (after the fence): the rows that never started and
// cannot be read there do not hold the undo up; clients are back on the old side, open.
TEST(CutoverExecutor, NewSideDownInsideThePauseIsUndoneWithoutItsUnstartedRows) {
  Harness h;
  h.faults.act_fails["catch-up"] = 1;
  h.faults.new_side_down = true;
  auto rows = Table(h.world, h.faults);
  auto cb = h.Callbacks(false);
  auto r = RunCutover(rows, cb);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kUndone) << r->cause.message();
  h.ExpectWhole(*r, "new side down");
}

// Killed inside the replication row's act, then the new side stops: that row started, so
// its undo is owed and the run is stuck (clients released) until the new side is back.
TEST(CutoverExecutor, NewSideDownAfterTheReplicationRowStartedStaysOwed) {
  Harness h;
  h.faults.crash_at = "after-replication";
  auto rows = Table(h.world, h.faults);
  auto cb = h.Callbacks(true);
  ASSERT_FALSE(RunCutover(rows, cb).ok());  // "killed"
  h.faults = Faults{};
  h.faults.new_side_down = true;
  h.faults.observe_switch_fails = false;
  auto cb2 = h.Callbacks(false);
  auto r = RecoverCutover(rows, h.journal, cb2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kStuck);
  EXPECT_FALSE(h.world.paused);
  EXPECT_TRUE(h.in_flight);
  h.faults.new_side_down = false;
  r = RecoverCutover(rows, h.journal, cb2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kUndone);
  h.ExpectWhole(*r, "new side back");
}

TEST(CutoverExecutor, OverBudgetBeforeTheSwitchIsUndone) {
  Harness h;
  auto rows = Table(h.world, h.faults);
  auto cb = h.Callbacks(false);
  int calls = 0;
  cb.over_budget = [&calls] { return ++calls > 3; };  // runs out at the 4th in-pause row
  auto r = RunCutover(rows, cb);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, CutoverOutcome::kUndone);
  EXPECT_EQ(r->cause.code(), StatusCode::kDeadlineExceeded);
  h.ExpectWhole(*r, "over budget");
}

}  // namespace
}  // namespace pgshift::engine
