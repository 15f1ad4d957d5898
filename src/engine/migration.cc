// The orchestrator: opening and saving a migration, the phase loop, live figures.
#include "engine/migration.h"

#include <stdio.h>

#include <algorithm>
#include <map>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/inspect.h"
#include "engine/preflight.h"
#include "engine/server_ops.h"
#include "engine/verify.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

Result<std::unique_ptr<Migration>> Migration::Open(const std::string& state_dir,
                                                   const ToolPaths& tools) {
  PGSHIFT_ASSIGN_OR_RETURN(MigrationState s, LoadState(state_dir));
  return std::unique_ptr<Migration>(new Migration(state_dir, std::move(s), tools));
}

Result<std::unique_ptr<Migration>> Migration::OpenOrCreate(const MigrationRequest& req,
                                                           const ToolPaths& tools) {
  if (StateExists(req.state_dir)) {
    PGSHIFT_ASSIGN_OR_RETURN(auto m, Open(req.state_dir, tools));
    if (m->state_.phase == Phase::kAborted) {
      // An aborted migration left nothing on either server: `upgrade` with its folder starts
      // a new one (with the given servers, else the aborted one's servers and options), and
      // the old state and history are kept aside under the old id.
      MigrationRequest again = req;
      if (again.source_dsn.empty() && again.target_dsn.empty()) {
        again.source_dsn = m->state_.source_dsn;
        again.target_dsn = m->state_.target_dsn;
        again.options = m->state_.options;
      }
      const std::string old_id = m->state_.id;
      for (const std::string& name :
           {std::string("state.json"), std::string(kReportsFile), std::string(kHistoryFile)}) {
        std::string from = req.state_dir + "/" + name;
        std::string to = req.state_dir + "/aborted-" + old_id + "-" + name;
        if (PathExists(from) && ::rename(from.c_str(), to.c_str()) != 0) {
          return Status::Unavailable("cannot move " + from + " aside to " + to);
        }
      }
      LogInfo("migration " + old_id + " was aborted: starting a new one in " + req.state_dir +
              " (the old state is aborted-" + old_id + "-state.json)");
      return OpenOrCreate(again, tools);
    }
    if ((!req.source_dsn.empty() && req.source_dsn != m->state_.source_dsn) ||
        (!req.target_dsn.empty() && req.target_dsn != m->state_.target_dsn)) {
      return Status::InvalidArgument(
          "the state folder " + req.state_dir + " holds migration " + m->state_.id +
          " between other servers; use another --state folder, or omit --source/--target to "
          "resume it");
    }
    if (req.max_retained_wal && *req.max_retained_wal != m->state_.options.max_retained_wal) {
      LogInfo("--max-retained-wal changes from " +
              std::to_string(m->state_.options.max_retained_wal) + " to " +
              std::to_string(*req.max_retained_wal) + " bytes");
      m->state_.options.max_retained_wal = *req.max_retained_wal;
      PGSHIFT_RETURN_IF_ERROR(m->Save());
    }
    return m;
  }
  if (req.source_dsn.empty() || req.target_dsn.empty()) {
    return Status::InvalidArgument("--source and --target are required to start a migration");
  }
  for (const auto& dsn : {req.source_dsn, req.target_dsn}) {
    auto parsed = pg::ConnInfo::Parse(dsn);
    if (!parsed.ok()) return parsed.status();
  }
  MigrationState s;
  s.id = RandomHex(8);
  s.source_dsn = req.source_dsn;
  s.target_dsn = req.target_dsn;
  s.options = req.options;
  s.created_at = NowUtc();
  s.Enter(Phase::kPending);
  auto m = std::unique_ptr<Migration>(new Migration(req.state_dir, std::move(s), tools));
  return m;
}

Result<std::unique_ptr<Migration>> Migration::FromState(std::optional<MigrationState> state,
                                                        const MigrationRequest& req,
                                                        const ToolPaths& tools, StateSink sink) {
  for (const auto& dsn : {req.source_dsn, req.target_dsn}) {
    auto parsed = pg::ConnInfo::Parse(dsn);
    if (!parsed.ok()) return parsed.status();
  }
  MigrationState s;
  if (state.has_value()) {
    s = std::move(*state);
  } else {
    s.id = RandomHex(8);
    s.options = req.options;
    s.created_at = NowUtc();
    s.Enter(Phase::kPending);
  }
  s.source_dsn = req.source_dsn;
  s.target_dsn = req.target_dsn;
  auto m = std::unique_ptr<Migration>(new Migration(req.state_dir, std::move(s), tools));
  m->sink_ = std::move(sink);
  return m;
}

Status Migration::Save(bool sync) {
  if (sink_) {
    // A save that need not survive a crash of the machine (a cutover journal entry inside the
    // clients' pause, before the switch: CutoverCallbacks::journal) is not sent: the sink is a
    // round trip to the API server, milliseconds of the pause each, and the undo after a crash
    // checks every row before the switch whatever the journal says.
    if (!sync) return Status::Ok();
    state_.updated_at = NowUtc();
    return sink_(state_);
  }
  return SaveState(dir_, &state_, sync);
}

Status Migration::Wait(int64_t ms) {
  const int64_t until = MonotonicMillis() + ms;
  while (true) {
    if (stop_ && stop_()) return Status::Aborted("stopped on request");
    int64_t left = until - MonotonicMillis();
    if (left <= 0) return Status::Ok();
    SleepMillis(std::min<int64_t>(left, 100));
  }
}

Status Migration::Move(Phase to) {
  if (!TransitionAllowed(state_.phase, to)) {
    return Status::Internal("illegal transition " + PhaseName(state_.phase) + " -> " +
                            PhaseName(to));
  }
  Progress("phase " + PhaseName(state_.phase) + " -> " + PhaseName(to));
  state_.Enter(to);
  PGSHIFT_RETURN_IF_ERROR(Save());
  const int64_t now = UnixMillis();
  stats_.Update([&](StatsSnapshot& st) {
    st.phase = PhaseName(to);
    st.phase_entered_unix_ms = now;
    // StepCatchUp checked every precondition just before this move; samples refine it.
    st.ready_for_cutover = to == Phase::kReadyForCutover;
  });
  history_.AppendOrLog(HistoryPhase(now, PhaseName(to)));
  FaultPointForTest(PhaseName(to));
  return Status::Ok();
}

void Migration::Progress(const std::string& line) {
  if (progress_) {
    progress_(line);
  } else {
    LogInfo(line, {{"migration", state_.id}});
  }
}

void Migration::InitStats() {
  history_ = HistoryWriter(dir_.empty() ? "" : dir_ + "/" + kHistoryFile);
  stats_.Update([&](StatsSnapshot& st) {
    st.migration_id = state_.id;
    st.phase = PhaseName(state_.phase);
    auto t = state_.phase_times.find(st.phase);
    st.phase_entered_unix_ms =
        t == state_.phase_times.end() ? 0 : ParseUtcMillis(t->second.started_at).value_or(0);
    st.ready_for_cutover = state_.phase == Phase::kReadyForCutover;
    for (const auto& a : state_.cutovers) {
      st.cutover_attempts++;
      if (!a.succeeded) st.cutover_failures++;
      if (a.succeeded) st.last_pause_ms = a.pause_ms;
    }
    const auto& v = state_.verification;
    if (v.is_object() && v.contains("tables_verified") && v.contains("mismatches") &&
        v["tables_verified"].is_number_integer() && v["mismatches"].is_number_integer()) {
      st.verify_tables_total = st.verify_tables_done = v["tables_verified"].get<int64_t>();
      st.verify_mismatches = v["mismatches"].get<int64_t>();
    }
  });
}

Status Migration::SampleStats() {
  last_sample_ms_ = MonotonicMillis();
  if (IsTerminal(state_.phase)) {
    sampler_.Close();
    return Status::Ok();
  }
  Status s = sampler_.Sample(state_, &stats_);
  StatsSnapshot snap = stats_.Snapshot(MonotonicMillis());
  UpdateLagTrend(snap);
  snap = stats_.Snapshot(MonotonicMillis());
  if (state_.phase == Phase::kReadyForCutover) {
    // Still ready only while the lag stays under the threshold.
    std::optional<double> lag = snap.Total(&DatabaseStats::lag_bytes);
    bool ready = lag && *lag <= static_cast<double>(state_.options.max_lag_bytes);
    stats_.Update([&](StatsSnapshot& st) { st.ready_for_cutover = ready; });
  }
  // Only whole samples go to the history: every database answered.
  if (s.ok() && state_.phase >= Phase::kInitialCopy && state_.phase <= Phase::kCuttingOver) {
    history_.AppendOrLog(HistorySample(UnixMillis(), snap));
  }
  return s;
}

void Migration::UpdateLagTrend(const StatsSnapshot& snap) {
  const bool catching_up =
      state_.phase == Phase::kCatchingUp || state_.phase == Phase::kReadyForCutover;
  if (!catching_up) lag_trend_.Reset();
  const std::optional<double> lag =
      catching_up ? snap.Total(&DatabaseStats::lag_bytes) : std::nullopt;
  if (!lag) {
    lag_estimate_ = {};
    return;
  }
  const int64_t now = MonotonicMillis();
  lag_trend_.Add(now, *lag);
  lag_estimate_ = lag_trend_.Estimate(static_cast<double>(state_.options.max_lag_bytes));
  stats_.Update([&](StatsSnapshot& st) {
    if (lag_estimate_.drain_bytes_per_s) {
      st.lag_drain_bytes_per_s = {*lag_estimate_.drain_bytes_per_s, now};
    }
    if (lag_estimate_.ready_in_s) st.ready_in_s = {*lag_estimate_.ready_in_s, now};
    st.lag_stalled = lag_estimate_.stalled;
  });
}

void Migration::MaybeSampleStats() {
  if (last_sample_ms_ >= 0 && MonotonicMillis() - last_sample_ms_ < 1000) return;
  Status s = SampleStats();
  if (!s.ok()) LogDebug("live figures: " + s.message(), {{"migration", state_.id}});
}

void Migration::RecordError(const Status& s) {
  if (s.ok()) return;
  std::string kind(StatusCodeName(s.code()));
  std::replace(kind.begin(), kind.end(), ' ', '_');
  stats_.Update([&](StatsSnapshot& st) { st.errors[kind]++; });
  history_.AppendOrLog(HistoryError(UnixMillis(), s.message()));
}

void Migration::RecordCutover(const CutoverAttempt& a) {
  stats_.Update([&](StatsSnapshot& st) {
    if (!a.succeeded) st.cutover_failures++;
    if (a.succeeded) st.last_pause_ms = a.pause_ms;
  });
  history_.AppendOrLog(HistoryCutover(UnixMillis(), a));
}

Status Migration::Run(Router* router) {
  if (IsTerminal(state_.phase)) {
    return Status::FailedPrecondition("migration " + state_.id + " already ended (" +
                                      PhaseName(state_.phase) + ")");
  }
  if (router != nullptr) {
    Status s = router->Check().WithContext("router");
    if (!s.ok()) {
      RecordError(s);
      return s;
    }
  }
  // A rollback a crash interrupted is finished or undone first (a cutover shows as
  // CuttingOver, below).
  if (state_.cutover_in_flight == Direction::Rollback().name) {
    PGSHIFT_RETURN_IF_ERROR(RecoverInFlight(router));
  }
  while (true) {
    Status s;
    const Phase step = state_.phase;
    switch (state_.phase) {
      case Phase::kPending:
      case Phase::kPreflight: s = StepPreflight(); break;
      case Phase::kProvisioning: s = StepProvision(); break;
      case Phase::kRoles: s = StepRoles(); break;
      case Phase::kSchema: s = StepSchema(); break;
      case Phase::kInitialCopy: s = StepInitialCopy(); break;
      case Phase::kCatchingUp: s = StepCatchUp(); break;
      case Phase::kReadyForCutover:
        if (state_.options.cutover == CutoverMode::kManual || router == nullptr) {
          Progress("ready for cutover: run `pgshift cutover --state " + dir_ + "`");
          return WriteReport();
        }
        s = Cutover(router);
        if (s.ok()) return WriteReport();
        break;
      case Phase::kCuttingOver: s = RecoverInFlight(router); break;
      default: return WriteReport();
    }
    if (!s.ok()) {
      if (s.code() == StatusCode::kAborted && stop_ && stop_()) return s;  // resumable as is
      if (step != Phase::kReadyForCutover) RecordError(s);  // Cutover() records its own
      if (state_.phase == Phase::kFailed) return s;  // the step said so, and saved it
      if (state_.phase == Phase::kPending || state_.phase == Phase::kPreflight) {
        // Nothing exists on either server before Provisioning: forget the attempt, so that
        // a corrected command (another DSN, a fixed server) starts afresh with this folder.
        if (!sink_) {
          (void)RemoveAll(dir_ + "/state.json");
          (void)RemoveAll(dir_ + "/" + kReportsFile);
        }
        if (!dir_.empty()) (void)RemoveAll(dir_ + "/" + kHistoryFile);
        return s;
      }
      state_.last_error = s.message();
      (void)Save();
      return s;
    }
  }
}

}  // namespace pgshift::engine
