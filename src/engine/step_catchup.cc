// Phase CatchingUp: lag under the threshold, no DDL since the schema copy, verification,
// then ReadyForCutover.
#include "engine/migration.h"

#include <algorithm>
#include <map>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/fence.h"
#include "engine/inspect.h"
#include "engine/large_objects.h"
#include "engine/preflight.h"
#include "engine/replication_health.h"
#include "engine/schema.h"
#include "engine/server_ops.h"
#include "engine/statistics.h"
#include "engine/verify.h"
#include "engine/wal_retention.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

Status Migration::WaitForMarker(bool forward, int64_t deadline_ms, ReplicationWatch* watch) {
  const std::string& from_dsn = forward ? state_.source_dsn : state_.target_dsn;
  const std::string& to_dsn = forward ? state_.target_dsn : state_.source_dsn;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr from, Connect(from_dsn, db.name, forward ? "source" : "target"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr to, Connect(to_dsn, db.name, forward ? "target" : "source"));
    std::string token = RandomHex(16);
    PGSHIFT_RETURN_IF_ERROR(
        from->Query("UPDATE _pgshift.marker SET token = $1, at = now() WHERE id = 1", {token}).status());
    int64_t last_observed = MonotonicMillis();
    while (true) {
      auto v = to->QueryValue("SELECT token FROM _pgshift.marker WHERE id = 1");
      if (v.ok() && *v == token) break;
      if (stop_ && stop_()) return Status::Aborted("stopped on request");
      MaybeSampleStats();
      if (forward) PGSHIFT_RETURN_IF_ERROR(GuardWal());
      if (watch != nullptr && forward && MonotonicMillis() - last_observed >= 500) {
        // An apply worker that fails on a row never brings the marker: say why, now.
        last_observed = MonotonicMillis();
        PGSHIFT_RETURN_IF_ERROR(watch->Observe(*to, db.name, state_.SubscriptionName(db)));
      }
      if (MonotonicMillis() > deadline_ms) {
        return Status::DeadlineExceeded("replication of " + db.name + " did not catch up in time");
      }
      SleepMillis(20);
    }
  }
  return Status::Ok();
}

Status Migration::GuardWal() {
  const StatsSnapshot snap = stats_.Snapshot(MonotonicMillis());
  for (const auto& db : state_.databases) {
    auto it = snap.databases.find(db.name);
    if (it == snap.databases.end()) continue;
    const std::optional<double> retained = snap.Fresh(it->second.retained_wal_bytes);
    if (!retained) continue;
    SlotRetention r;
    r.slot = state_.SubscriptionName(db);
    r.found = true;
    r.retained_bytes = static_cast<int64_t>(*retained);
    r.wal_status = it->second.wal_status;
    PGSHIFT_RETURN_IF_ERROR(GuardRetention(r, state_.options.max_retained_wal, db.name));
  }
  return Status::Ok();
}

Status Migration::CheckReplicationFlows() {
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_RETURN_IF_ERROR(watch_.Observe(*dst, db.name, state_.SubscriptionName(db)));
  }
  constexpr int64_t kFlowMs = 30000;
  Status s = WaitForMarker(true, MonotonicMillis() + kFlowMs, &watch_);
  if (s.code() == StatusCode::kDeadlineExceeded) {
    return Status::DeadlineExceeded(
        "replication into the target is not keeping up: a marker written on the source did not "
        "reach it within " + std::to_string(kFlowMs / 1000) +
        " s, so clients were not held; `pgshift status` shows the lag and the workers");
  }
  return s;
}

namespace {

// Verification's settle: a marker row updated on the source (its own transaction, flushed at
// once) and polled on the target until it shows there; every write the source committed
// before is then applied. One pair of sessions per database, made on first use; one run at a
// time per database, shared by the workers that ask meanwhile (CoalescingSettle).
class MarkerSettle {
 public:
  MarkerSettle(const MigrationState& state, std::function<void()> on_wait)
      : state_(state), on_wait_(std::move(on_wait)) {
    for (const auto& db : state.databases) {
      auto d = std::make_unique<Db>();
      Db* raw = d.get();
      const std::string name = db.name;
      d->settle = std::make_unique<CoalescingSettle>([this, raw, name] { return Run(*raw, name); });
      dbs_[db.name] = std::move(d);
    }
  }

  // Thread-safe.
  Status operator()(const std::string& db) {
    auto it = dbs_.find(db);
    if (it == dbs_.end()) return Status::Internal("settle: unknown database " + db);
    return (*it->second->settle)();
  }

 private:
  struct Db {
    ConnPtr source, target;
    std::unique_ptr<CoalescingSettle> settle;
  };

  // REQUIRES: one run at a time per Db (CoalescingSettle).
  Status Run(Db& d, const std::string& db) {
    if (d.source == nullptr || d.source->broken()) {
      PGSHIFT_ASSIGN_OR_RETURN(d.source, Connect(state_.source_dsn, db, "source"));
    }
    if (d.target == nullptr || d.target->broken()) {
      PGSHIFT_ASSIGN_OR_RETURN(d.target, Connect(state_.target_dsn, db, "target"));
    }
    std::string token = RandomHex(16);
    PGSHIFT_RETURN_IF_ERROR(
        d.source->Query("UPDATE _pgshift.marker SET token = $1, at = now() WHERE id = 1", {token})
            .status()
            .WithContext("source " + db));
    const int64_t deadline = MonotonicMillis() + 120000;
    while (true) {
      PGSHIFT_ASSIGN_OR_RETURN(std::string v,
                               d.target->QueryValue("SELECT token FROM _pgshift.marker WHERE id = 1"));
      if (v == token) return Status::Ok();
      if (on_wait_) on_wait_();
      if (MonotonicMillis() > deadline) {
        return Status::DeadlineExceeded("replication of " + db + " did not catch up in 120 s");
      }
      SleepMillis(2);
    }
  }

  const MigrationState& state_;
  std::function<void()> on_wait_;
  std::map<std::string, std::unique_ptr<Db>> dbs_;  // fixed before any worker asks
};

}  // namespace

Status Migration::Verify() {
  const VerifyLevel level = state_.options.verify;
  if (level == VerifyLevel::kNone) return Status::Ok();
  VerifyOptions vo;
  vo.level = level;
  for (const auto& db : state_.databases) vo.databases.push_back(db.name);
  MarkerSettle settle(state_, nullptr);
  vo.settle = [&settle](const std::string& db) { return settle(db); };
  vo.stop = stop_;
  vo.exact_check_follows = true;
  int64_t last_history = 0;
  // Verification calls on_table from its workers, one call at a time, while this thread waits
  // in VerifyDatabases: the history writer and the sampler see one caller at a time.
  vo.on_table = [this, &last_history](const TableVerification& t) {
    if (t.blocking()) {
      Progress("verify: " + t.database + "." + t.schema + "." + t.table + " differs: " + t.note);
    }
    StatsSnapshot st;
    stats_.Update([&](StatsSnapshot& s) {
      if (t.result != TableResult::kSkipped) s.verify_tables_done++;
      if (t.blocking()) s.verify_mismatches++;
      s.verify_tables_total = std::max(s.verify_tables_total, s.verify_tables_done);
      st = s;
    });
    if (MonotonicMillis() - last_history >= 1000) {
      last_history = MonotonicMillis();
      VerifyProgress p;
      p.done = st.verify_tables_done;
      p.total = st.verify_tables_total;
      p.mismatches = st.verify_mismatches;
      history_.AppendOrLog(HistoryVerify(UnixMillis(), p));
    }
    MaybeSampleStats();
  };
  Progress("verifying (" + VerifyLevelName(level) + ", pre-cutover convergence)");
  auto to_verify = sampler_.CountVerifiedTables(state_);
  stats_.Update([&](StatsSnapshot& s) {
    s.verify_tables_total = to_verify.ok() ? *to_verify : 0;
    s.verify_tables_done = s.verify_mismatches = 0;
  });
  PGSHIFT_RETURN_IF_ERROR(WaitForMarker(true, MonotonicMillis() + 120000, &watch_));
  PGSHIFT_ASSIGN_OR_RETURN(VerifyReport rep, VerifyDatabases(state_.source_dsn, state_.target_dsn, vo));
  state_.verification = rep.ToJson();
  const int64_t verified = rep.compared();
  stats_.Update([&](StatsSnapshot& s) {
    s.verify_tables_total = s.verify_tables_done = verified;
    s.verify_mismatches = rep.mismatches();
  });
  VerifyProgress done;
  done.done = done.total = verified;
  done.mismatches = rep.mismatches();
  done.changing = rep.Count(TableResult::kChanging);
  done.summary = rep.Summary();
  history_.AppendOrLog(HistoryVerify(UnixMillis(), done));
  PGSHIFT_RETURN_IF_ERROR(Save());
  if (!rep.clean()) {
    return Status::FailedPrecondition("verification found differences; cutover is blocked:\n" +
                                      rep.Render());
  }
  Progress("verification: " + rep.Summary());
  return Status::Ok();
}

Status Migration::StepCatchUp() {
  PGSHIFT_RETURN_IF_ERROR(EnableDdlCarry());
  // Lag under the threshold; an apply worker that keeps failing ends the wait.
  while (true) {
    int64_t total = 0;
    for (const auto& db : state_.databases) {
      PGSHIFT_ASSIGN_OR_RETURN(int64_t lag, ForwardLagBytes(state_, db));
      if (lag < 0) {
        // Changes since it went are gone from the replication stream: no rerun can mend that.
        Status s = Status::FailedPrecondition(
            "replication slot " + state_.SubscriptionName(db) + " of database " + db.name +
            " is missing on the source, so changes made since it was dropped will never reach "
            "the target; the migration cannot go on: run `pgshift abort` and start again");
        state_.last_error = s.message();
        PGSHIFT_RETURN_IF_ERROR(Move(Phase::kFailed));
        return s;
      }
      total += lag;
      PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
      PGSHIFT_RETURN_IF_ERROR(watch_.Observe(*dst, db.name, state_.SubscriptionName(db)));
    }
    MaybeSampleStats();
    PGSHIFT_RETURN_IF_ERROR(GuardWal());
    if (total <= state_.options.max_lag_bytes) break;
    const std::string eta = lag_estimate_.Describe();
    Progress("catching up: lag " + FormatBytes(static_cast<double>(total)) +
             (eta.empty() ? "" : "; " + eta));
    PGSHIFT_RETURN_IF_ERROR(Wait(1000));
  }
  // DDL carried while verification reads the two sides can make a table differ for a moment
  // (its columns read on one side before the change, on the other after): a verification
  // that fails while the DDL log grew is run again, after that DDL is checked.
  for (int round = 1;; ++round) {
    PGSHIFT_ASSIGN_OR_RETURN(int64_t logged, DdlLogSize());
    PGSHIFT_RETURN_IF_ERROR(CheckDdlLog());
    Status v = Verify();
    if (v.ok()) break;
    PGSHIFT_ASSIGN_OR_RETURN(int64_t now_logged, DdlLogSize());
    if (v.code() != StatusCode::kFailedPrecondition || now_logged == logged || round >= 5) return v;
    Progress("DDL ran on the source during verification; checking it, then verifying again");
  }
  // Large objects: the first pass copies them all, before the cutover is ready.
  PGSHIFT_RETURN_IF_ERROR(CarryLargeObjects(Direction::Forward()));
  // Materialized views come over empty with the schema; fill them on the target.
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult mv,
        dst->Query("SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews "
                   "WHERE schemaname NOT IN ('pg_catalog', 'information_schema', '_pgshift')"));
    for (int i = 0; i < mv.rows(); ++i) {
      PGSHIFT_RETURN_IF_ERROR(dst->Exec("REFRESH MATERIALIZED VIEW " + mv.Get(i, 0)));
    }
    // The reverse publication exists before cutover so that the cutover only makes a slot.
    if (state_.options.rollback_replication) {
      std::string rev = state_.ReverseName(db);
      if (!Exists(*dst, kHasPublication, rev)) {
        PGSHIFT_RETURN_IF_ERROR(dst->Exec("CREATE PUBLICATION " + dst->QuoteIdent(rev) +
                                          " FOR TABLE " + Join(db.tables, ", "))
                                    .WithContext("target " + db.name + ": reverse publication"));
      }
    }
  }
  PGSHIFT_RETURN_IF_ERROR(WarmStatistics());
  PGSHIFT_RETURN_IF_ERROR(FenceTarget());
  // The lag as the cutover's preconditions left it, whatever the throttle.
  (void)SampleStats();
  return Move(Phase::kReadyForCutover);
}

// Before the target can take clients, its planner gets statistics of the data it now holds
// (statistics.h); the cutover's precondition waits for it. Done once per database: a resumed
// run does not analyze again.
Status Migration::WarmStatistics() {
  for (auto& db : state_.databases) {
    if (db.analyzed) continue;
    int jobs = 0;
    {
      PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
      jobs = CopyJobs(*dst);
    }
    // 18+ targets take the source's own statistics (pg_dump --statistics-only); ANALYZE then
    // only does what that leaves out. Any other case, or a copy that fails: ANALYZE it all.
    db.statistics_copied = -1;
    if (state_.target_major >= 18) {
      PGSHIFT_ASSIGN_OR_RETURN(std::string sdsn, pg::DsnForDatabase(state_.source_dsn, db.name));
      PGSHIFT_ASSIGN_OR_RETURN(std::string tdsn, pg::DsnForDatabase(state_.target_dsn, db.name));
      const int64_t copy_start = MonotonicMicros();
      auto copied = CopyStatistics(sdsn, tdsn, tools_);
      if (copied.ok()) {
        db.statistics_copied = *copied;
        db.statistics_copy_ms = static_cast<double>(MonotonicMicros() - copy_start) / 1000.0;
        Progress("statistics " + db.name + ": the source's statistics of " +
                 std::to_string(*copied) + " relations copied to the target (pg_dump "
                 "--statistics-only) in " + Ms(db.statistics_copy_ms) + " ms");
      } else {
        Progress("statistics " + db.name + ": copying the source's statistics failed (" +
                 copied.status().message() + "); analyzing every table instead");
      }
    }
    const bool only_missing = db.statistics_copied >= 0;
    Progress("statistics " + db.name + ": ANALYZE of the target's " +
             (only_missing ? "tables the copy left without statistics (none on the source, or "
                             "extended statistics objects), "
                           : "tables, ") +
             std::to_string(jobs) + " at once");
    PGSHIFT_ASSIGN_OR_RETURN(AnalyzeReport rep, AnalyzeDatabase(state_.target_dsn, db.name, jobs,
                                                                stop_, only_missing));
    for (const auto& s : rep.skipped) Progress("statistics " + db.name + ": not analyzed: " + s);
    db.analyzed = true;
    db.analyzed_tables = rep.tables;
    db.analyze_ms = rep.elapsed_ms;
    Progress("statistics " + db.name + ": " + std::to_string(rep.tables) +
             " tables analyzed on the target in " + Ms(rep.elapsed_ms) + " ms (" +
             std::to_string(rep.jobs) + " at once): the planner has fresh statistics at cutover");
    PGSHIFT_RETURN_IF_ERROR(Save());
  }
  return Status::Ok();
}

// From ReadyForCutover on the target takes no client write: a write there now would conflict
// with replication, and during the cutover both servers must never take writes at once. Step
// open of the cutover lifts it; abort does too.
Status Migration::FenceTarget() {
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_RETURN_IF_ERROR(InstallFence(*dst, state_.FenceName()).WithContext("target " + db.name));
    PGSHIFT_ASSIGN_OR_RETURN(bool on, FenceState(*dst));
    if (!on) {
      PGSHIFT_RETURN_IF_ERROR(FenceOn(*dst, db.name, {dst->BackendPid()}, MonotonicMillis() + 10000)
                                  .WithContext("target " + db.name));
    }
  }
  return Status::Ok();
}

}  // namespace pgshift::engine

namespace pgshift::engine {

Status Migration::CarryLargeObjects(const Direction& d) {
  const bool forward = &d == &Direction::Forward();
  for (auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_ASSIGN_OR_RETURN(bool any, AnyLargeObjects(*src, *dst));
    if (!any) continue;
    pg::Connection& from = forward ? *src : *dst;
    pg::Connection& to = forward ? *dst : *src;
    std::string& horizon = forward ? db.lo_horizon : db.lo_reverse_horizon;
    // Writers keep writing while a pass runs: passes again while one still found much, so
    // that the pass inside the cutover's pause has little left.
    for (int round = 1; round <= 3; ++round) {
      const int64_t t0 = MonotonicMillis();
      auto pass = SyncLargeObjects(from, to, horizon);
      if (!pass.ok()) return pass.status().WithContext(db.name + ": large objects");
      horizon = pass->horizon;
      PGSHIFT_RETURN_IF_ERROR(Save());
      Progress(db.name + ": large objects " + (forward ? "source -> target" : "target -> source") +
               ": " + std::to_string(pass->objects) + " on the " +
               (forward ? "source" : "target") + ", " + std::to_string(pass->copied) +
               " copied (" + FormatBytes(static_cast<double>(pass->bytes)) + "), " +
               std::to_string(pass->unlinked) + " unlinked in " +
               std::to_string(MonotonicMillis() - t0) + " ms");
      if (pass->copied + pass->unlinked <= 10) break;
    }
  }
  return Status::Ok();
}

}  // namespace pgshift::engine
