// The exact comparison at the cutover's switch point (switch_point.h): prepared before a forward
// cutover, its snapshots taken in the cutover's consistent-point step, compared after the
// clients moved; a difference rolls back or stops, as --on-difference says.
#include "common/clock.h"
#include "common/strings.h"
#include "engine/migration.h"
#include "engine/server_ops.h"

namespace pgshift::engine {

Status Migration::PrepareSwitchPoint() {
  switch_point_.reset();
  if (state_.options.verify == VerifyLevel::kNone) return Status::Ok();
  VerifyOptions vo;
  vo.level = state_.options.verify;
  for (const auto& db : state_.databases) vo.databases.push_back(db.name);
  vo.stop = stop_;
  PGSHIFT_ASSIGN_OR_RETURN(switch_point_,
                           SwitchPointCheck::Prepare(state_.source_dsn, state_.target_dsn, vo));
  return Status::Ok();
}

void Migration::NoteLostSwitchPoint() {
  const auto& v = state_.switch_point_verification;
  if (!v.is_object() || v.value("state", "") != "running") return;
  state_.switch_point_verification = {
      {"error",
       "pgshift stopped while comparing; the snapshots of the switch point ended with it, so "
       "that point in history can no longer be compared (run `pgshift verify --snapshot` once "
       "writes stop, or `pgshift rollback`)"}};
  state_.notes.push_back("the exact comparison at the switch point did not finish");
  (void)Save();
}

Status Migration::CheckSwitchPoint(Router* router) {
  std::unique_ptr<SwitchPointCheck> check = std::move(switch_point_);
  if (state_.options.verify == VerifyLevel::kNone) return Status::Ok();
  if (check == nullptr || !check->taken()) {
    // A cutover finished by crash recovery: its snapshots were never taken in this process.
    state_.switch_point_verification = {
        {"error", "no snapshots were taken at the switch point (the cutover was finished by "
                  "crash recovery)"}};
    return Save();
  }
  state_.switch_point_verification = {{"state", "running"}, {"take_ms", check->take_ms()}};
  PGSHIFT_RETURN_IF_ERROR(Save());
  Progress("comparing both sides exactly as they were at the switch point (snapshots taken in " +
           Ms(check->take_ms()) + " ms; clients already use the target)");
  stats_.Update([&](StatsSnapshot& s) {
    s.verify_tables_done = s.verify_mismatches = 0;
  });
  auto rep = check->Compare();
  check.reset();  // the snapshots end here: vacuum may go on
  if (!rep.ok() && rep.status().code() == StatusCode::kAborted && stop_ && stop_()) {
    // Stopped on request (SIGTERM, Ctrl-C, an operator's lease): the cutover itself is done
    // and whole; only the comparison is lost with its snapshots. Say so, do not fail.
    const std::string why =
        "stopped on request before the exact comparison at the switch point finished; its "
        "snapshots ended with it, so that point in history can no longer be compared (`pgshift "
        "verify --snapshot` compares once writes stop)";
    state_.switch_point_verification = {{"error", why}};
    state_.notes.push_back("the exact comparison at the switch point did not finish");
    Progress(why);
    return Save();
  }
  if (!rep.ok()) {
    state_.switch_point_verification = {{"error", rep.status().message()}};
    (void)Save();
    Status s = rep.status().WithContext(
        "the exact comparison at the switch point could not be done; clients use the target; "
        "`pgshift verify --snapshot` can compare once writes stop, `pgshift rollback` moves them "
        "back");
    RecordError(s);
    return s;
  }
  nlohmann::json j = rep->ToJson();
  j["take_ms"] = state_.switch_point_verification.value("take_ms", 0.0);
  VerifyProgress p;
  p.mode = "switch-point";
  p.done = p.total = rep->compared();
  p.mismatches = rep->mismatches();
  p.summary = rep->Summary();
  stats_.Update([&](StatsSnapshot& s) {
    s.verify_tables_total = s.verify_tables_done = p.done;
    s.verify_mismatches = p.mismatches;
  });
  if (rep->clean()) {
    j["action"] = p.action = "none";
    state_.switch_point_verification = j;
    history_.AppendOrLog(HistoryVerify(UnixMillis(), p));
    Progress("verification at the switch point: " + rep->Summary());
    return Save();
  }
  const bool rollback = state_.options.on_difference == OnDifference::kRollback &&
                        state_.options.rollback_replication;
  j["action"] = p.action = rollback ? "rolled back" : "stopped for a person";
  state_.switch_point_verification = j;
  history_.AppendOrLog(HistoryVerify(UnixMillis(), p));
  PGSHIFT_RETURN_IF_ERROR(Save());
  const std::string found =
      "the exact comparison at the switch point found differences:\n" + rep->Render();
  if (!rollback) {
    Status s = Status::FailedPrecondition(
        found + "clients stay on the target (--on-difference stop" +
        (state_.options.rollback_replication ? "" : ", or no rollback replication") +
        "); decide: `pgshift rollback --state DIR` moves them back to the source, nothing lost; "
        "`pgshift finish --state DIR` keeps the target as it is");
    RecordError(s);
    return s;
  }
  Progress(found + "rolling back: clients return to the source (reverse replication carried "
                   "every write made on the target since the switch)");
  Status s = Rollback(router);
  if (!s.ok()) {
    state_.switch_point_verification["action"] = "rollback failed: " + s.message();
    (void)Save();
    return s.WithContext("rolling back after the switch point found differences");
  }
  Status out = Status::FailedPrecondition(
      found + "rolled back: clients use the source again and nothing was lost; fix the "
              "difference, then start a new migration");
  RecordError(out);
  return out;
}

}  // namespace pgshift::engine
