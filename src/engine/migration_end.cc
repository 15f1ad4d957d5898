// The ends of a migration (finish, abort) and what status shows.
#include "engine/migration.h"

#include <algorithm>
#include <map>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/fence.h"
#include "engine/inspect.h"
#include "engine/preflight.h"
#include "engine/replication_health.h"
#include "engine/server_ops.h"
#include "engine/snapshot_keeper.h"
#include "engine/verify.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

Status Migration::DropEverything(std::optional<Side> keep_read_only) {
  Status first;
  auto note = [&first](const Status& s) {
    if (!s.ok() && first.ok()) first = s;
  };
  // Each side's fence goes with pgshift's schema; the read-only default stays on the side
  // clients left, on purpose, and is reset on the other.
  auto drop_fence = [&](pg::Connection& c, const DatabaseState& db, Side side) {
    note(c.Exec("DROP EVENT TRIGGER IF EXISTS " + c.QuoteIdent(state_.FenceName())));
    if (keep_read_only != side) note(FenceOff(c, db.name));
  };
  for (const auto& db : state_.databases) {
    // A copy that was stopped half way still holds its snapshot (and so VACUUM's horizon).
    StopSnapshotKeeper(KeeperFile(db));
    auto src = Connect(state_.source_dsn, db.name, "source");
    auto dst = Connect(state_.target_dsn, db.name, "target");
    if (src.ok()) {
      note(DropSubscription(**src, state_.ReverseName(db)));
    }
    if (dst.ok()) {
      auto& t = **dst;
      note(DropSubscription(t, state_.SubscriptionName(db)));
      note(t.Exec("DROP PUBLICATION IF EXISTS " + t.QuoteIdent(state_.ReverseName(db))));
      note(DropSlotIfIdle(t, state_.ReverseName(db)));
      drop_fence(t, db, Side::kTarget);
      note(t.Exec("DROP SCHEMA IF EXISTS _pgshift CASCADE"));
    } else {
      note(dst.status());
    }
    if (src.ok()) {
      auto& s = **src;
      note(s.Exec("DROP PUBLICATION IF EXISTS " + s.QuoteIdent(state_.PublicationName(db))));
      note(DropSlotIfIdle(s, state_.SubscriptionName(db)));
      note(s.Exec("DROP EVENT TRIGGER IF EXISTS " + s.QuoteIdent(state_.EventTriggerName())));
      drop_fence(s, db, Side::kSource);
      note(s.Exec("DROP SCHEMA IF EXISTS _pgshift CASCADE"));
    } else {
      note(src.status());
    }
  }
  return first;
}

// Refuses while a cutover or rollback is in flight: it must be finished or undone first, by
// the command that can reach the router.
Status Migration::NothingInFlight(const char* action) const {
  if (state_.cutover_in_flight.empty() && state_.phase != Phase::kCuttingOver) return Status::Ok();
  const bool rollback = state_.cutover_in_flight == Direction::Rollback().name;
  return Status::FailedPrecondition(
      std::string("a ") + (rollback ? "rollback" : "cutover") + " of migration " + state_.id +
      " was interrupted (at step " + state_.cutover_journal.row_name + "); run `pgshift " +
      (rollback ? "rollback" : "cutover") + "` again to finish or undo it, then " + action);
}

Status Migration::Finish() {
  // Run again after it finished: the goal holds (automation reruns commands).
  if (state_.phase == Phase::kCompleted) {
    Progress("migration " + state_.id + " already finished: nothing to do");
    return Status::Ok();
  }
  PGSHIFT_RETURN_IF_ERROR(NothingInFlight("finish"));
  if (state_.phase != Phase::kRollbackReady && state_.phase != Phase::kRolledBack) {
    return Status::FailedPrecondition("finish needs phase RollbackReady or RolledBack; migration " +
                                      state_.id + " is in " + PhaseName(state_.phase) +
                                      (state_.phase < Phase::kCuttingOver ? " (use abort before cutover)" : ""));
  }
  bool rolled_back = state_.phase == Phase::kRolledBack;
  sampler_.Close();
  const Side left = rolled_back ? Side::kTarget : Side::kSource;
  PGSHIFT_RETURN_IF_ERROR(DropEverything(left));
  state_.notes.push_back(std::string("the ") + (rolled_back ? "target" : "source") +
                         " databases stay read-only (default_transaction_read_only) so nothing "
                         "writes to the old server by mistake; undo with ALTER DATABASE ... "
                         "RESET default_transaction_read_only");
  PGSHIFT_RETURN_IF_ERROR(Move(Phase::kCompleted));
  return WriteReport();
}

Status Migration::Abort(Router* router) {
  if (!state_.cutover_in_flight.empty() || state_.phase == Phase::kCuttingOver) {
    if (router == nullptr) return NothingInFlight("abort");
    PGSHIFT_RETURN_IF_ERROR(RecoverInFlight(router));
  }
  if (state_.phase == Phase::kRollbackReady || state_.phase == Phase::kCuttingOver) {
    return Status::FailedPrecondition(
        "traffic already moved to the target: use `pgshift rollback` to return to the source, "
        "or `pgshift finish` to keep the target");
  }
  if (state_.phase == Phase::kAborted) {
    Progress("migration " + state_.id + " already aborted: nothing to do");
    return Status::Ok();
  }
  if (IsTerminal(state_.phase) && state_.phase != Phase::kFailed) {
    return Status::FailedPrecondition("migration " + state_.id + " already ended (" +
                                      PhaseName(state_.phase) + ")");
  }
  sampler_.Close();
  PGSHIFT_RETURN_IF_ERROR(DropEverything(std::nullopt));
  PGSHIFT_RETURN_IF_ERROR(DropCreatedDatabases());
  PGSHIFT_RETURN_IF_ERROR(Move(Phase::kAborted));
  return WriteReport();
}

// The target databases pgshift created go (nothing of the application was ever there); those
// that existed before stay, with whatever pgshift loaded into them, and a note says so.
Status Migration::DropCreatedDatabases() {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo tinfo, pg::ConnInfo::Parse(state_.target_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr admin, Connect(state_.target_dsn, tinfo.dbname(), "target"));
  std::vector<std::string> dropped;
  for (auto& db : state_.databases) {
    if (!db.target_created) {
      if (db.schema_copied) {
        std::string note = "kept database " + db.name +
                           " on the target: it existed before this migration (pgshift did not "
                           "create it); it holds the schema and rows pgshift loaded, so drop or "
                           "empty it before migrating into it again";
        Progress("abort: " + note);
        state_.notes.push_back(note);
      }
      continue;
    }
    // No session of pgshift's is left on it (subscription and samplers are gone); one of
    // someone else's makes DROP DATABASE fail, and that is said rather than forced.
    Status s = admin->Exec("DROP DATABASE IF EXISTS " + admin->QuoteIdent(db.name));
    if (!s.ok()) {
      return s.WithContext("abort: dropping database " + db.name +
                           ", which pgshift created on the target (end the sessions on it, "
                           "then run abort again)");
    }
    db.target_created = false;
    db.schema_copied = false;
    dropped.push_back(db.name);
    PGSHIFT_RETURN_IF_ERROR(Save());
  }
  if (!dropped.empty()) {
    const bool many = dropped.size() > 1;
    Progress("abort: dropped database" + std::string(many ? "s " : " ") + Join(dropped, ", ") +
             " on the target (pgshift created " + (many ? "them)" : "it)"));
    state_.notes.push_back("dropped on the target (pgshift created them): " + Join(dropped, ", "));
  }
  Progress("abort: the source keeps every row; pgshift's objects are gone from both servers");
  return Status::Ok();
}

nlohmann::json Migration::StatusJson(bool live) {
  nlohmann::json j = state_.ToJson();
  // Status is for people and dashboards: no DSN carries a password there.
  for (const char* k : {"source_dsn", "target_dsn"}) j[k] = RedactSecrets(j[k].get<std::string>());
  j["options"]["router_admin"] = RedactSecrets(j["options"]["router_admin"].get<std::string>());
  if (!state_.cutovers.empty()) {
    for (auto it = state_.cutovers.rbegin(); it != state_.cutovers.rend(); ++it) {
      if (it->succeeded) {
        j["last_cutover_pause_ms"] = it->pause_ms;
        break;
      }
    }
  }
  if (!live) return j;
  nlohmann::json dbs = nlohmann::json::array();
  int64_t lag_total = 0;
  int ready = 0, total = 0;
  bool lag_known = true;
  // After cutover: how far the source is behind the target, through reverse replication.
  const bool reverse_shown =
      state_.phase == Phase::kRollbackReady && state_.options.rollback_replication;
  int64_t reverse_total = 0;
  bool reverse_known = true;
  for (const auto& db : state_.databases) {
    nlohmann::json d = {{"name", db.name}};
    auto dst = Connect(state_.target_dsn, db.name, "target");
    if (dst.ok() && state_.phase >= Phase::kInitialCopy) {
      auto tables = TableSyncStates(**dst, state_.SubscriptionName(db));
      if (tables.ok() && tables->empty() && state_.options.copy == CopyMethod::kSnapshot) {
        tables = OwnCopyTableStates(**dst);  // before the subscription exists: the own copy
      }
      if (tables.ok()) {
        nlohmann::json t = nlohmann::json::array();
        for (const auto& [name, st] : *tables) {
          t.push_back({{"table", name}, {"state", st}});
          total++;
          if (st == "ready") ready++;
        }
        d["tables"] = t;
      }
      if (state_.phase <= Phase::kCuttingOver) {
        // Workers that fail: counters, tables waiting for a retry, and what the log says.
        auto trouble = DescribeWorkerTrouble(**dst, state_.SubscriptionName(db));
        if (trouble.ok()) {
          nlohmann::json w = nlohmann::json::object();
          if (trouble->sync_errors) w["sync_errors"] = *trouble->sync_errors;
          if (trouble->apply_errors) w["apply_errors"] = *trouble->apply_errors;
          w["enabled"] = trouble->enabled;
          w["conflicts"] = trouble->conflicts;
          w["retrying"] = trouble->retrying;
          nlohmann::json errs = nlohmann::json::array();
          for (const auto& e : trouble->log_errors) {
            errs.push_back({{"table", e.table}, {"error", e.text}});
          }
          w["errors"] = errs;
          if (!trouble->log_note.empty()) w["log"] = trouble->log_note;
          d["workers"] = w;
        }
      }
      auto secs = (*dst)->QueryValue(
          "SELECT coalesce(extract(epoch FROM now() - latest_end_time), 0)::float8 "
          "FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL",
          {state_.SubscriptionName(db)});
      double s = 0;
      if (secs.ok() && ParseDouble(*secs, &s)) d["lag_seconds"] = s;
    } else if (!dst.ok()) {
      d["error"] = dst.status().message();
    }
    if (state_.phase >= Phase::kInitialCopy && state_.phase <= Phase::kCuttingOver) {
      auto lag = ForwardLagBytes(state_, db);
      if (lag.ok() && *lag >= 0) {
        d["lag_bytes"] = *lag;
        lag_total += *lag;
      } else {
        lag_known = false;
        if (!lag.ok()) d["error"] = lag.status().message();
      }
    }
    if (reverse_shown) {
      auto lag = ReverseLagBytes(state_, db);
      if (lag.ok() && *lag >= 0) {
        d["reverse_lag_bytes"] = *lag;
        reverse_total += *lag;
      } else {
        reverse_known = false;
        if (!lag.ok()) d["error"] = lag.status().message();
      }
    }
    dbs.push_back(d);
  }
  j["live"] = {{"databases", dbs}, {"tables_ready", ready}, {"tables_total", total}};
  if (lag_known && state_.phase >= Phase::kInitialCopy && state_.phase <= Phase::kCuttingOver) {
    j["live"]["lag_bytes"] = lag_total;
  }
  if (reverse_shown && reverse_known) j["live"]["reverse_lag_bytes"] = reverse_total;
  return j;
}

Status Migration::WriteReport() {
  if (state_.options.report_file.empty()) return Status::Ok();
  return WriteFileAtomic(state_.options.report_file, StatusJson(false).dump(2) + "\n", 0600);
}

}  // namespace pgshift::engine
