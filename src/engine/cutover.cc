// Cutover and rollback: attempts of the cutover table (cutover_steps.cc) run by the executor
// (cutover_executor.cc), and the recovery of one a crash interrupted.
#include "engine/cutover.h"

#include <algorithm>

#include "common/clock.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/cutover_executor.h"
#include "engine/cutover_steps.h"
#include "engine/migration.h"
#include "engine/server_ops.h"

namespace pgshift::engine {

Status Migration::Cutover(Router* router) {
  if (router == nullptr) return Status::InvalidArgument("cutover needs a router");
  PGSHIFT_RETURN_IF_ERROR(RecoverInFlight(router));
  if (state_.phase == Phase::kRollbackReady) {  // the recovery finished it, or a run before
    Progress("migration " + state_.id + " is cut over: clients use the target");
    return Status::Ok();
  }
  if (state_.phase != Phase::kReadyForCutover) {
    return Status::FailedPrecondition("cutover needs phase ReadyForCutover; migration " +
                                      state_.id + " is in " + PhaseName(state_.phase));
  }
  PGSHIFT_RETURN_IF_ERROR(router->Check().WithContext("router"));
  NoteLostSwitchPoint();
  // The exact comparison's sessions open before the pause; its snapshots are taken inside it.
  Status prepared = PrepareSwitchPoint();
  if (!prepared.ok()) {
    prepared = prepared.WithContext("opening the sessions of the switch point's comparison");
    RecordError(prepared);
    return prepared;
  }
  PGSHIFT_RETURN_IF_ERROR(Attempts(router, Direction::Forward()));
  if (state_.phase != Phase::kRollbackReady) return Status::Ok();
  return CheckSwitchPoint(router);
}

Status Migration::Rollback(Router* router) {
  if (router == nullptr) return Status::InvalidArgument("rollback needs a router");
  PGSHIFT_RETURN_IF_ERROR(RecoverInFlight(router));
  if (state_.phase == Phase::kRolledBack) {  // done, maybe by the recovery, maybe by a run before
    Progress("migration " + state_.id + " is rolled back: clients use the source");
    return WriteReport();
  }
  if (state_.phase != Phase::kRollbackReady) {
    return Status::FailedPrecondition("rollback needs phase RollbackReady; migration " + state_.id +
                                      " is in " + PhaseName(state_.phase));
  }
  if (!state_.options.rollback_replication) {
    return Status::FailedPrecondition(
        "this migration ran with --rollback-replication off: writes made on the target since "
        "cutover were not replicated back, so a rollback would lose them");
  }
  PGSHIFT_RETURN_IF_ERROR(router->Check().WithContext("router"));
  PGSHIFT_RETURN_IF_ERROR(Attempts(router, Direction::Rollback()));
  return WriteReport();
}

// Up to --cutover-attempts attempts, each completed or undone as a whole; a precondition that
// will not change (DDL, a fence that cannot be set) ends them at once.
Status Migration::Attempts(Router* router, const Direction& d) {
  PGSHIFT_RETURN_IF_ERROR(router->PrepareSwitch().WithContext("router"));
  Status last;
  for (int attempt = 1; attempt <= std::max(1, state_.options.cutover_attempts); ++attempt) {
    if (stop_ && stop_()) return Status::Aborted("stopped on request; nothing is in flight");
    if (&d == &Direction::Forward()) {
      PGSHIFT_RETURN_IF_ERROR(CheckDdlLog());
      last = CheckReplicationFlows();
      if (last.code() == StatusCode::kFailedPrecondition) break;  // a worker fails, a conflict
      if (!last.ok()) {
        Progress("cutover attempt " + std::to_string(attempt) + " not started: " +
                 last.message());
        PGSHIFT_RETURN_IF_ERROR(Wait(1000 * attempt));
        continue;
      }
    }
    // Large objects written since the last pass, copied while clients still run: the pass
    // in the pause then has little left to do.
    last = CarryLargeObjects(d);
    if (!last.ok()) break;
    last = SwitchOver(router, d);
    if (last.ok() || state_.phase == d.done) return Status::Ok();
    if (!state_.cutover_in_flight.empty()) break;  // stuck: neither done nor undone
    if (last.code() == StatusCode::kFailedPrecondition) break;
    Progress(std::string(d.name) + " attempt " + std::to_string(attempt) +
             " undone: " + last.message() + "; clients stay on the " +
             (d.old_side == Side::kSource ? "source" : "target"));
    PGSHIFT_RETURN_IF_ERROR(Wait(1000 * attempt));
  }
  RecordError(last);
  // `status` (and the operator's Degraded condition) says why clients did not move.
  state_.last_error = last.message();
  (void)Save();
  return last;
}

// One attempt: the table from its first row.
Status Migration::SwitchOver(Router* router, const Direction& d) {
  state_.cutover_in_flight = d.name;
  state_.cutover_journal = CutoverJournal{0, "prepare", false};
  attempt_started_at_ = NowUtc();
  stats_.Update([](StatsSnapshot& st) { st.cutover_attempts++; });
  if (&d == &Direction::Forward()) {
    PGSHIFT_RETURN_IF_ERROR(Move(Phase::kCuttingOver));
  } else {
    PGSHIFT_RETURN_IF_ERROR(Save());
  }
  return RunTable(router, d, nullptr);
}

// A crash left a cutover or rollback in flight: observe, then finish it or undo it.
Status Migration::RecoverInFlight(Router* router) {
  if (state_.cutover_in_flight.empty() && state_.phase != Phase::kCuttingOver) return Status::Ok();
  const Direction* d = Direction::Named(state_.cutover_in_flight);
  if (d == nullptr) d = &Direction::Forward();  // CuttingOver without a record: an old state
  if (router == nullptr) {
    return Status::FailedPrecondition(std::string("a ") + d->name +
                                      " was interrupted; run `pgshift " +
                                      (d == &Direction::Forward() ? "cutover" : "rollback") +
                                      "` (or upgrade) again to finish or undo it");
  }
  Progress(std::string("resuming after a crash inside the ") +
           (d == &Direction::Forward() ? "cutover" : "rollback") + " at step " +
           std::to_string(state_.cutover_journal.row) + ": reading the servers and the router");
  if (attempt_started_at_.empty()) attempt_started_at_ = NowUtc();
  CutoverJournal j = state_.cutover_journal;
  Status s = RunTable(router, *d, &j);
  // Finished or undone, the interrupted run is whole again and the command goes on from the
  // phase it left (an undone cutover is retried); only a stuck one is the command's error.
  if (state_.cutover_in_flight.empty()) return Status::Ok();
  return s;
}

Status Migration::RunTable(Router* router, const Direction& d, const CutoverJournal* recover) {
  router->set_stop(stop_);
  // The consistent-point row: the switch point's snapshots (forward, when prepared), then the
  // hook set from outside, if any.
  std::optional<CutoverHook> hook = hook_;
  if (&d == &Direction::Forward() && switch_point_ != nullptr && recover == nullptr) {
    SwitchPointCheck* check = switch_point_.get();
    CutoverHook outer = hook_.value_or(CutoverHook{});
    hook = CutoverHook{
        outer.name.empty() ? "switch point" : "switch point, " + outer.name,
        [check, outer](const CutoverContext& ctx) {
          if (check->taken()) check->Release();  // a retried attempt takes them again
          PGSHIFT_RETURN_IF_ERROR(check->Take().WithContext("taking the switch point's snapshots"));
          return outer.run ? outer.run(ctx) : Status::Ok();
        },
        [check, outer] {
          check->Release();
          if (outer.undo) outer.undo();
        },
        [check, outer](Side side) {
          std::vector<int> pids = check->Pids(side == Side::kSource);
          if (outer.sessions) {
            for (int pid : outer.sessions(side)) pids.push_back(pid);
          }
          return pids;
        }};
  }
  CutoverSteps steps(state_, router, d, hook ? &*hook : nullptr,
                     [this](const std::string& n) {
                       state_.notes.push_back(n);
                       attempt_notes_.push_back(n);
                       Progress(n);
                     });
  std::vector<CutoverRow> rows = steps.Rows();
  CutoverCallbacks cb;
  cb.journal = [this](const CutoverJournal& j, bool durable) {
    state_.cutover_journal = j;
    return Save(durable);
  };
  cb.commit = [this, &d, &steps](CutoverOutcome outcome, const CutoverReport& rep) {
    state_.cutover_in_flight.clear();
    state_.cutover_journal = CutoverJournal{};
    if (outcome == CutoverOutcome::kCompleted && &d == &Direction::Forward()) {
      for (auto& db : state_.databases) {
        auto it = steps.reverse_lo_horizons().find(db.name);
        // Not taken (a recovery that did not redo the step): a pass back compares everything.
        db.lo_reverse_horizon = it == steps.reverse_lo_horizons().end() ? "" : it->second;
      }
    }
    RecordAttempt(d, rep, outcome == CutoverOutcome::kCompleted);
    if (outcome == CutoverOutcome::kCompleted) return Move(d.done);
    return d.undone == state_.phase ? Save() : Move(d.undone);
  };
  const int64_t budget = state_.options.max_pause_ms;
  cb.over_budget = [&steps, router] {
    return !router->WaitsForPeople() && steps.pause_deadline_ms() > 0 &&
           MonotonicMillis() > steps.pause_deadline_ms();
  };
  (void)budget;
  cb.stop = stop_;
  cb.progress = [this](const std::string& line) { Progress(line); };
  cb.sleep = [](int64_t ms) { SleepMillis(ms); };
  cb.fault_point_for_test = [&d](const std::string& point) {
    FaultPointForTest(std::string(d.name) + ":" + point);
    return false;
  };
  auto rep = recover ? RecoverCutover(rows, *recover, cb) : RunCutover(rows, cb);
  if (!rep.ok()) return rep.status();
  const char* what = &d == &Direction::Forward() ? "cutover" : "rollback";
  switch (rep->outcome) {
    case CutoverOutcome::kCompleted: {
      std::string steps_text;
      for (const auto& [k, v] : rep->rows_ms) steps_text += " " + k + "=" + Ms(v);
      if (rep->journal_ms >= 0.05) steps_text += "; journal writes " + Ms(rep->journal_ms);
      Progress(std::string(what) + " done" + (rep->recovered ? " (recovered)" : "") +
               ": clients held for " + Ms(rep->pause_ms) + " ms (" + Trim(steps_text).data() + ")");
      return Status::Ok();
    }
    case CutoverOutcome::kUndone:
      Progress(std::string(what) + " undone: clients are back on the " +
               (d.old_side == Side::kSource ? "source" : "target"));
      return Status(
          rep->cause.code() == StatusCode::kFailedPrecondition ? StatusCode::kFailedPrecondition
                                                               : StatusCode::kAborted,
          std::string(what) + " undone at step " + rep->failed_row + ": " + rep->cause.message());
    case CutoverOutcome::kStuck: break;
  }
  state_.last_error = rep->cause.message();
  (void)Save();
  return Status::Unavailable(std::string(what) + " neither finished nor undone: " +
                             rep->cause.message() + "; run the same command again to go on");
}

void Migration::RecordAttempt(const Direction& d, const CutoverReport& rep, bool succeeded) {
  CutoverAttempt a;
  a.direction = d.name;
  a.started_at = attempt_started_at_.empty() ? NowUtc() : attempt_started_at_;
  a.succeeded = succeeded;
  a.pause_ms = rep.pause_ms;
  a.failed_step = rep.failed_row;
  a.error = rep.cause.ok() ? "" : rep.cause.message();
  a.recovered = rep.recovered;
  for (const auto& [k, v] : rep.rows_ms) {
    if (k != "prepare") a.steps_ms.emplace_back(k, v);
  }
  constexpr size_t kMaxNotes = 20;
  std::vector<std::string> notes = rep.notes;
  notes.insert(notes.end(), attempt_notes_.begin(), attempt_notes_.end());
  for (size_t i = 0; i < notes.size() && i < kMaxNotes; ++i) a.notes.push_back(notes[i]);
  attempt_notes_.clear();
  attempt_started_at_.clear();
  RecordCutover(a);
  state_.cutovers.push_back(a);
}

}  // namespace pgshift::engine
